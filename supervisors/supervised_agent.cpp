#include "supervisors/supervised_agent.hpp"

#include <algorithm>

#include <caf/actor_system.hpp>
#include <caf/exit_reason.hpp>
#include <caf/sec.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

#include "actors/agent.hpp"
#include "actors/events.hpp"
#include "messages/errors.hpp"
#include "runtime/clock.hpp"

namespace troupe {

namespace {

/// How long a run may wait when its task names no deadline.
constexpr auto default_run_timeout = std::chrono::minutes{10};

/// How long the front waits for the supervisor to hand out the agent.
constexpr auto await_timeout = std::chrono::seconds{60};

struct front_state {
  static inline const char* name = "troupe.supervised_agent";
  std::string agent;
  supervisor_actor sup;
  int32_t run_retries = 0;
  /// Set once the supervisor is gone (it gave up): why.
  std::string sup_gone;
  /// Runs that found the supervisor gone before its down message arrived:
  /// answered with the reason when it does.
  std::vector<std::pair<run_task, caf::typed_response_promise<run_result>>>
    orphaned;
  /// Subscribers: they see the front's runs (each retried run once).
  event_hub events;
};


using front_ptr = runnable_actor::stateful_pointer<front_state>;

/// Answers the caller and tells the subscribers how the run ended.
void answer(front_ptr self, const run_task& task,
            caf::typed_response_promise<run_result>& rp, run_result r) {
  self->state.events.publish(
    finished_event(self->state.agent, r, task.ref.trace_id));
  rp.deliver(std::move(r));
}

/// Answers the caller with an error (a crash, the supervisor gone...); the
/// subscribers see a failed run naming it.
void answer(front_ptr self, const run_task& task,
            caf::typed_response_promise<run_result>& rp, caf::error err) {
  if (self->state.events.wants(event_kind::task_failed))
    self->state.events.publish(finished_event(
      self->state.agent, failed_result(task, error_text(err), self->state.agent),
      task.ref.trace_id));
  rp.deliver(std::move(err));
}

void answer_gone(front_ptr self, const run_task& task,
                 caf::typed_response_promise<run_result>& rp) {
  answer(self, task, rp,
         make_error(errc::crashed, "agent '" + self->state.agent + "' run "
                                     + task.ref.run_id
                                     + " failed: its supervisor gave up: "
                                     + self->state.sup_gone));
}

std::chrono::milliseconds run_timeout(const run_task& task) {
  if (task.budget.deadline_ms <= 0)
    return default_run_timeout;
  return std::chrono::milliseconds{
    std::max<int64_t>(task.budget.deadline_ms - now_ms(), 1)};
}

void attempt(front_ptr self, run_task task,
             caf::typed_response_promise<run_result> rp, int32_t attempt_no,
             caf::actor_addr stale = {}) {
  auto& st = self->state;
  self->request(st.sup, await_timeout, sup_await_atom::value, st.agent, stale)
    .then(
      [self, task, rp, attempt_no](caf::actor& incarnation) mutable {
        auto agent = caf::actor_cast<runnable_actor>(incarnation);
        auto used = incarnation.address();
        self->request(agent, run_timeout(task), task)
          .then(
            [self, task, rp](run_result& r) mutable {
              answer(self, task, rp, std::move(r));
            },
            [self, task, rp, attempt_no, used](caf::error& err) mutable {
              auto& st = self->state;
              if (is_crash(err) && attempt_no <= st.run_retries) {
                spdlog::warn("agent {}: run {} crashed (attempt {}); trying "
                             "again on the restarted agent: {}",
                             st.agent, task.ref.run_id, attempt_no,
                             error_text(err));
                attempt(self, std::move(task), std::move(rp), attempt_no + 1,
                        used);
                return;
              }
              answer(self, task, rp, make_error(
                is_crash(err) ? errc::crashed : errc::unavailable,
                "agent '" + st.agent + "' run " + task.ref.run_id + " failed after "
                  + std::to_string(attempt_no) + " attempt(s): "
                  + error_text(err)));
            });
      },
      [self, task, rp](caf::error& err) mutable {
        auto& st = self->state;
        if (err == caf::sec::request_receiver_down) {
          // The supervisor is gone; its down message says why.
          if (st.sup_gone.empty())
            st.orphaned.emplace_back(task, rp);
          else
            answer_gone(self, task, rp);
          return;
        }
        answer(self, task, rp, make_error(errc::unavailable,
                              "agent '" + st.agent + "' run "
                                + task.ref.run_id + ": " + error_text(err)));
      });
}

runnable_actor::behavior_type front(front_ptr self, std::string agent,
                                    supervisor_actor sup, int32_t run_retries) {
  self->state.agent = std::move(agent);
  self->state.sup = std::move(sup);
  self->state.run_retries = run_retries;
  // Past its intensity the supervisor gives up; the front stays to answer
  // every later run with the reason (quitting would drop promises unanswered).
  self->monitor(self->state.sup);
  self->set_down_handler([self](caf::down_msg& msg) {
    if (msg.source != self->state.sup.address())
      return;
    self->state.sup_gone = error_text(msg.reason);
    for (auto& [task, rp] : self->state.orphaned)
      answer_gone(self, task, rp);
    self->state.orphaned.clear();
  });
  self->set_exit_handler([self](caf::exit_msg& msg) {
    self->send_exit(self->state.sup, msg.reason);
    self->quit(msg.reason);
  });
  return {
    [self](run_task& task) -> caf::result<run_result> {
      if (!self->state.sup_gone.empty())
        return make_error(errc::crashed, "agent '" + self->state.agent
                                           + "' is no longer supervised: "
                                           + self->state.sup_gone);
      if (task.ref.run_id.empty())
        task.ref.run_id = "run-" + random_hex(8);
      if (task.ref.trace_id.empty())
        task.ref.trace_id = new_trace_id();
      auto& events = self->state.events;
      if (events.wants(event_kind::run_started))
        events.publish(started_event(self->state.agent, task));
      auto rp = self->make_response_promise<run_result>();
      attempt(self, std::move(task), rp, 1);
      return rp;
    },
    subscribe_handler(self),
    unsubscribe_handler(self),
  };
}

} // namespace

bool is_crash(const caf::error& err) {
  if (err.category() == error_category)
    return err.code() == static_cast<uint8_t>(errc::crashed);
  return err == caf::sec::request_receiver_down;
}

runnable_actor spawn_supervised_agent(caf::actor_system& sys, std::string name,
                                      child_factory agent,
                                      supervision_options opts,
                                      tracer_actor tracer) {
  if (opts.run_retries < 0)
    throw std::invalid_argument("supervised agent '" + name
                                + "': run_retries must not be negative");
  supervisor_config cfg;
  cfg.name = name + ".supervisor";
  cfg.strategy = restart_strategy::one_for_one;
  cfg.max_restarts = opts.max_restarts;
  cfg.window = opts.window;
  cfg.backoff_base = opts.backoff_base;
  cfg.backoff_cap = opts.backoff_cap;
  cfg.tracer = std::move(tracer);
  child_spec child;
  child.name = name;
  child.factory = std::move(agent);
  child.restart = restart_policy::permanent;
  auto sup = spawn_supervisor(sys, std::move(cfg), {std::move(child)});
  return sys.spawn(front, std::move(name), std::move(sup), opts.run_retries);
}

} // namespace troupe

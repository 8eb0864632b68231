#include "actors/events.hpp"

#include <algorithm>
#include <chrono>

#include <caf/abstract_actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/agent.hpp"
#include "messages/errors.hpp"
#include "runtime/clock.hpp"

namespace troupe {

void event_hub::subscribe(caf::actor sink, event_mask mask) {
  if (!sink)
    return;
  unsubscribe(sink);
  if (mask == 0)
    return;
  subs_.emplace_back(std::move(sink), mask);
  any_ |= mask;
}

void event_hub::unsubscribe(const caf::actor& sink) {
  auto i = std::remove_if(subs_.begin(), subs_.end(),
                          [&](const auto& s) { return s.first == sink; });
  if (i == subs_.end())
    return;
  subs_.erase(i, subs_.end());
  any_ = 0;
  for (const auto& s : subs_)
    any_ |= s.second;
}

bool event_hub::wants(event_kind kind) const noexcept {
  return (any_ & mask_of(kind)) != 0;
}

namespace {

bool has_terminated(const caf::actor& sink) {
  auto* ptr = caf::actor_cast<caf::abstract_actor*>(sink);
  return ptr != nullptr && ptr->getf(caf::abstract_actor::is_terminated_flag);
}

} // namespace

void event_hub::publish(const agent_event& ev) {
  if (!wants(ev.kind))
    return;
  // Subscribers that stopped without unsubscribing are dropped here, so a
  // long-lived agent does not keep every observer it ever had.
  auto dead = std::remove_if(subs_.begin(), subs_.end(), [](const auto& s) {
    return has_terminated(s.first);
  });
  if (dead != subs_.end()) {
    subs_.erase(dead, subs_.end());
    any_ = 0;
    for (const auto& s : subs_)
      any_ |= s.second;
  }
  for (const auto& [sink, mask] : subs_)
    if ((mask & mask_of(ev.kind)) != 0)
      caf::anon_send(caf::actor_cast<event_sink>(sink), ev);
}

agent_event finished_event(const std::string& source, const run_result& r,
                           const std::string& trace_id) {
  agent_event ev;
  ev.source = source;
  ev.kind = r.status == run_status::complete ? event_kind::task_completed
                                             : event_kind::task_failed;
  ev.run_id = r.run_id;
  ev.trace_id = trace_id;
  ev.step = static_cast<int32_t>(r.steps.size());
  ev.status = r.status;
  ev.answer = r.answer;
  ev.error = r.error;
  ev.time_ns = now_ns();
  return ev;
}

agent_event started_event(const std::string& source, const run_task& task) {
  agent_event ev;
  ev.source = source;
  ev.kind = event_kind::run_started;
  ev.run_id = task.ref.run_id;
  ev.trace_id = task.ref.trace_id;
  ev.time_ns = now_ns();
  return ev;
}

namespace {

event_sink::behavior_type observer(event_sink::pointer, event_callback fn) {
  return {
    [fn](const agent_event& ev) { fn(ev); },
  };
}

/// How long a woken run may take when its task names no deadline.
constexpr auto default_wake_timeout = std::chrono::minutes{10};

event_sink::behavior_type waker(event_sink::pointer self, event_kind kind,
                                runnable_actor target, wake_task_fn make_task,
                                std::function<void(run_result)> done) {
  return {
    [=](const agent_event& ev) {
      if (ev.kind != kind)
        return;
      run_task task;
      if (make_task) {
        task = make_task(ev);
      } else {
        task.goal = ev.answer;
        task.ref.trace_id = ev.trace_id;
        task.context = json{{"woken_by", ev.source}, {"event", ev}};
      }
      if (task.ref.run_id.empty())
        task.ref.run_id = "run-" + random_hex(8);
      std::chrono::milliseconds timeout = default_wake_timeout;
      if (task.budget.deadline_ms > 0)
        timeout = std::chrono::milliseconds{
          std::max<int64_t>(task.budget.deadline_ms - now_ms(), 1)};
      auto copy = task;
      self->request(target, timeout, std::move(task))
        .then(
          [done](run_result& r) {
            if (done)
              done(std::move(r));
          },
          [done, copy](caf::error& err) {
            if (done)
              done(failed_result(copy, "woken run gave no result: "
                                         + error_text(err)));
          });
    },
  };
}

} // namespace

event_sink spawn_event_observer(caf::actor_system& sys,
                                const runnable_actor& source, event_mask mask,
                                event_callback fn) {
  auto sink = sys.spawn(observer, std::move(fn));
  caf::anon_send(source, ev_subscribe_atom::value,
                 caf::actor_cast<caf::actor>(sink), mask);
  return sink;
}

event_sink wake_on(caf::actor_system& sys, const runnable_actor& source,
                   event_kind kind, const runnable_actor& target,
                   wake_task_fn make_task,
                   std::function<void(run_result)> done) {
  auto sink = sys.spawn(waker, kind, target, std::move(make_task),
                        std::move(done));
  caf::anon_send(source, ev_subscribe_atom::value,
                 caf::actor_cast<caf::actor>(sink), mask_of(kind));
  return sink;
}

} // namespace troupe

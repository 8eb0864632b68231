#include "actors/tool_adapter.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

#include "messages/errors.hpp"
#include "runtime/blocking_pool.hpp"
#include "runtime/clock.hpp"
#include "runtime/json_schema.hpp"

namespace troupe {

/// A body finished on the blocking pool, or was skipped because nobody waited
/// for it any more (internal to the adapter).
struct tool_job_done {
  uint64_t job = 0;
  bool ran = false;
  tool_result result;
};
TROUPE_MESSAGE(tool_job_done, job, ran, result)

/// A caller's timer fired (internal to the adapter).
struct tool_job_timeout {
  uint64_t waiter = 0;
};
TROUPE_MESSAGE(tool_job_timeout, waiter)

namespace {

using adapter_actor = tool_actor::extend<caf::reacts_to<tool_job_done>,
                                         caf::reacts_to<tool_job_timeout>>;

/// A caller waiting for a result.
struct waiter {
  caf::typed_response_promise<tool_result> promise;
  tool_call call;
  std::chrono::steady_clock::time_point started;
  /// The key it waits on ("" for a call without one).
  std::string key;
};

/// One execution of the body, shared by every caller with its key.
struct execution {
  uint64_t job = 0;
  tool_call call;
  std::vector<uint64_t> waiters;
  /// Set when nobody waits any more: a body still queued then does not run.
  std::shared_ptr<std::atomic<bool>> cancelled;
  /// The first caller has been answered by this execution already.
  bool answered_first = false;
};

struct adapter_state {
  static inline const char* name = "troupe.tool_adapter";
  tool_ptr tool;
  std::shared_ptr<blocking_pool> pool;
  ledger_actor ledger;
  std::unordered_map<uint64_t, waiter> waiters;
  /// By job id.
  std::unordered_map<uint64_t, execution> executions;
  /// Executions by idempotency key (keyed calls only).
  std::unordered_map<std::string, uint64_t> by_key;
  uint64_t next_id = 1;
  /// Bodies that may run at once (the tool's limits.max_concurrent; 0 = no
  /// cap), bodies started and not yet done, and executions waiting for one
  /// to finish. A body counts until it returns, also after its callers timed
  /// out, so a hung downstream never sees more than the cap.
  int32_t max_bodies = 0;
  int32_t running_bodies = 0;
  std::deque<uint64_t> pending_bodies;
};

using adapter_self = adapter_actor::stateful_pointer<adapter_state>;

tool_result failure(const tool_call& call, tool_error_kind kind,
                    std::string message) {
  return failed_tool_result(call, kind, std::move(message), 1);
}

/// Runs a tool body and turns whatever happens into a tool_result.
tool_result run_body(const tool_function& fn, const tool_call& call,
                     const tool_context& ctx) {
  try {
    tool_result r;
    r.call_id = call.call_id;
    r.name = call.name;
    r.content = fn(call.args.value, ctx);
    r.ok = true;
    r.attempts = 1;
    return r;
  } catch (const tool_failure& ex) {
    return failure(call, ex.kind(), ex.what());
  } catch (const std::exception& ex) {
    return failure(call, tool_error_kind::permanent,
                   std::string{"tool threw: "} + ex.what());
  } catch (...) {
    return failure(call, tool_error_kind::permanent,
                   "tool threw a non-standard exception");
  }
}

/// How long a caller waits: the tool's timeout, cut to the call's deadline
/// (zero or less when it has passed).
std::chrono::milliseconds wait_limit(const adapter_state& st,
                                     const tool_call& call) {
  auto timeout = st.tool->definition.timeout;
  if (call.deadline_ms > 0)
    timeout = std::min(timeout,
                       std::chrono::milliseconds{call.deadline_ms - now_ms()});
  return timeout;
}

/// Answers one waiter with `r` (its own call id) and forgets it.
void answer(adapter_self self, uint64_t id, tool_result r, bool replayed) {
  auto& st = self->state;
  auto i = st.waiters.find(id);
  if (i == st.waiters.end())
    return;
  r.call_id = i->second.call.call_id;
  r.name = i->second.call.name;
  r.replayed = r.replayed || replayed;
  i->second.promise.deliver(std::move(r));
  st.waiters.erase(i);
}

/// Starts the body of an execution: in place for a non-blocking tool,
/// otherwise on the blocking pool.
void start_body(adapter_self self, uint64_t job) {
  auto& st = self->state;
  if (st.max_bodies > 0 && st.running_bodies >= st.max_bodies) {
    st.pending_bodies.push_back(job);
    return;
  }
  ++st.running_bodies;
  auto& ex = st.executions.at(job);
  const auto& def = st.tool->definition;
  auto timeout = wait_limit(st, ex.call);
  tool_context ctx{ex.call.ref, ex.call.agent, ex.call.call_id,
                   ex.call.idempotency_key,
                   now_ms() + std::max<int64_t>(timeout.count(), 0)};
  if (!def.blocking) {
    // Declared quick and non-blocking: run in place.
    auto result = run_body(def.fn, ex.call, ctx);
    self->send(self, tool_job_done{job, true, std::move(result)});
    return;
  }
  auto weak = caf::actor_cast<caf::weak_actor_ptr>(self);
  auto posted = st.pool->post([weak, job, cancelled = ex.cancelled,
                               gate = st.pool->gate(), fn = def.fn,
                               call = ex.call, ctx = std::move(ctx)] {
    // A call nobody waits for any more must not run late: its callers were
    // told it failed and may run it elsewhere.
    tool_job_done done{job, false, {}};
    if (!*cancelled) {
      done.ran = true;
      done.result = run_body(fn, call, ctx);
    }
    gate->deliver([&] {
      if (auto handle = caf::actor_cast<adapter_actor>(weak))
        caf::anon_send(handle, std::move(done));
    });
  });
  if (!posted) {
    auto r = failure(ex.call, tool_error_kind::transient,
                     "tool '" + def.name
                       + "' is unavailable: the runtime is shutting down");
    self->send(self, tool_job_done{job, false, std::move(r)});
  }
}

/// Makes a new execution for `call` with its first waiter.
uint64_t new_execution(adapter_self self, const tool_call& call,
                       uint64_t first_waiter) {
  auto& st = self->state;
  auto job = st.next_id++;
  execution ex;
  ex.job = job;
  ex.call = call;
  ex.waiters.push_back(first_waiter);
  ex.cancelled = std::make_shared<std::atomic<bool>>(false);
  st.executions.emplace(job, std::move(ex));
  if (!call.idempotency_key.empty())
    st.by_key[call.idempotency_key] = job;
  return job;
}

/// Ends an execution: forgets it and its key.
void drop_execution(adapter_state& st, uint64_t job) {
  auto i = st.executions.find(job);
  if (i == st.executions.end())
    return;
  const auto& key = i->second.call.idempotency_key;
  if (!key.empty()) {
    auto k = st.by_key.find(key);
    if (k != st.by_key.end() && k->second == job)
      st.by_key.erase(k);
  }
  st.executions.erase(i);
}

void finish_job(adapter_self self, tool_job_done& done) {
  auto& st = self->state;
  auto i = st.executions.find(done.job);
  if (i == st.executions.end())
    return;
  auto& ex = i->second;
  const auto& def = st.tool->definition;
  if (!done.ran && done.result.name.empty()) {
    // Skipped because nobody waited; a caller that attached meanwhile still
    // needs it to run.
    if (!ex.waiters.empty()) {
      ex.cancelled = std::make_shared<std::atomic<bool>>(false);
      start_body(self, done.job);
      return;
    }
    drop_execution(st, done.job);
    return;
  }
  if (done.ran && done.result.ok && st.ledger
      && !ex.call.idempotency_key.empty())
    self->send(st.ledger, ld_record_atom::value, ex.call.idempotency_key,
               done.result);
  if (ex.waiters.empty() && done.ran)
    spdlog::info("tool '{}' call {} finished after its callers gave up; {}",
                 def.name, ex.call.call_id,
                 done.result.ok && st.ledger ? "result recorded in the ledger"
                                             : "result dropped");
  auto waiters = std::move(ex.waiters);
  auto first = !ex.answered_first;
  drop_execution(st, done.job);
  for (auto w : waiters) {
    answer(self, w, done.result, !first);
    first = false;
  }
}

/// A body returned (or was skipped): its slot goes to the next execution
/// waiting for one that still has callers.
void on_done(adapter_self self, tool_job_done& done) {
  auto& st = self->state;
  --st.running_bodies;
  finish_job(self, done);
  while (!st.pending_bodies.empty()
         && (st.max_bodies <= 0 || st.running_bodies < st.max_bodies)) {
    auto job = st.pending_bodies.front();
    st.pending_bodies.pop_front();
    auto i = st.executions.find(job);
    if (i == st.executions.end())
      continue;
    if (i->second.waiters.empty()) {
      drop_execution(st, job); // every caller gave up while it waited
      continue;
    }
    start_body(self, job);
  }
}

void on_timeout(adapter_self self, uint64_t id) {
  auto& st = self->state;
  auto i = st.waiters.find(id);
  if (i == st.waiters.end())
    return; // already answered
  const auto& def = st.tool->definition;
  auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
    std::chrono::steady_clock::now() - i->second.started);
  auto r = failure(i->second.call, tool_error_kind::timeout,
                   "tool '" + def.name + "' timed out after "
                     + std::to_string(waited.count()) + " ms");
  // Leave the execution in flight: a retry with the same key waits for it.
  for (auto& [job, ex] : st.executions) {
    auto w = std::find(ex.waiters.begin(), ex.waiters.end(), id);
    if (w == ex.waiters.end())
      continue;
    if (w == ex.waiters.begin())
      ex.answered_first = true;
    ex.waiters.erase(w);
    if (ex.waiters.empty())
      *ex.cancelled = true;
    break;
  }
  answer(self, id, std::move(r), false);
}

adapter_actor::behavior_type tool_adapter(adapter_self self, tool_ptr tool,
                                          std::shared_ptr<blocking_pool> pool,
                                          ledger_actor ledger) {
  self->state.tool = std::move(tool);
  self->state.pool = std::move(pool);
  self->state.ledger = std::move(ledger);
  self->state.max_bodies
    = self->state.tool->definition.guards.limits.max_concurrent;
  return {
    [self](tool_call& call) -> caf::result<tool_result> {
      auto& st = self->state;
      const auto& def = st.tool->definition;
      if (!call.args.value.is_object())
        return failure(call, tool_error_kind::invalid_arguments,
                       "arguments for tool '" + def.name
                         + "' must be a JSON object, got "
                         + call.args.value.type_name());
      if (auto err = st.tool->schema->first_error(call.args.value);
          !err.empty())
        return failure(call, tool_error_kind::invalid_arguments,
                       "arguments for tool '" + def.name
                         + "' are invalid: " + err);
      auto limit = wait_limit(st, call);
      if (limit <= std::chrono::milliseconds{0})
        return failure(call, tool_error_kind::timeout,
                       "deadline passed before tool '" + def.name
                         + "' could start");
      auto promise = self->make_response_promise<tool_result>();
      auto id = st.next_id++;
      const auto key = call.idempotency_key;
      st.waiters.emplace(id, waiter{promise, call,
                                    std::chrono::steady_clock::now(), key});
      self->delayed_send(self, limit, tool_job_timeout{id});
      if (!key.empty()) {
        auto running = st.by_key.find(key);
        if (running != st.by_key.end()) {
          // The same call is in flight: wait for it, do not run it twice.
          auto& ex = st.executions.at(running->second);
          ex.waiters.push_back(id);
          *ex.cancelled = false;
          return promise;
        }
      }
      auto job = new_execution(self, call, id);
      if (key.empty() || !st.ledger) {
        start_body(self, job);
        return promise;
      }
      self->request(st.ledger, std::chrono::seconds{10}, ld_lookup_atom::value,
                    key)
        .then(
          [self, job](ledger_entry& entry) {
            auto& st = self->state;
            auto i = st.executions.find(job);
            if (i == st.executions.end())
              return;
            if (!entry.found) {
              start_body(self, job);
              return;
            }
            // Done before: every caller gets the recorded result.
            auto waiters = std::move(i->second.waiters);
            drop_execution(st, job);
            for (auto w : waiters)
              answer(self, w, entry.result, true);
          },
          [self, job](caf::error& err) {
            spdlog::warn("tool '{}': idempotency ledger did not answer ({}); "
                         "running the call",
                         self->state.tool->definition.name, error_text(err));
            if (self->state.executions.count(job) != 0)
              start_body(self, job);
          });
      return promise;
    },
    [self](tool_job_done& done) { on_done(self, done); },
    [self](tool_job_timeout& t) { on_timeout(self, t.waiter); },
  };
}

} // namespace

tool_actor spawn_tool_adapter(caf::actor_system& sys, tool_ptr tool,
                              std::shared_ptr<blocking_pool> pool,
                              ledger_actor ledger) {
  return sys.spawn(tool_adapter, std::move(tool), std::move(pool),
                   std::move(ledger));
}

} // namespace troupe

#include "actors/tool_adapter.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <unordered_map>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

#include "runtime/blocking_pool.hpp"
#include "runtime/clock.hpp"
#include "runtime/json_schema.hpp"

namespace troupe {

/// A body finished on the blocking pool (internal to the adapter).
struct tool_job_done {
  uint64_t job = 0;
  tool_result result;
};
TROUPE_MESSAGE(tool_job_done, job, result)

/// A call's timer fired (internal to the adapter).
struct tool_job_timeout {
  uint64_t job = 0;
};
TROUPE_MESSAGE(tool_job_timeout, job)

namespace {

using adapter_actor = tool_actor::extend<caf::reacts_to<tool_job_done>,
                                         caf::reacts_to<tool_job_timeout>>;

struct pending_call {
  caf::typed_response_promise<tool_result> promise;
  std::shared_ptr<std::atomic<bool>> cancelled;
  std::string call_id;
  std::chrono::steady_clock::time_point started;
};

struct adapter_state {
  static inline const char* name = "troupe.tool_adapter";
  tool_ptr tool;
  std::shared_ptr<blocking_pool> pool;
  std::unordered_map<uint64_t, pending_call> pending;
  uint64_t next_job = 1;
};

tool_result failure(const tool_call& call, tool_error_kind kind,
                    std::string message) {
  tool_result r;
  r.call_id = call.call_id;
  r.name = call.name;
  r.ok = false;
  r.error = {kind, std::move(message)};
  r.attempts = 1;
  return r;
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

adapter_actor::behavior_type
tool_adapter(adapter_actor::stateful_pointer<adapter_state> self, tool_ptr tool,
             std::shared_ptr<blocking_pool> pool) {
  self->state.tool = std::move(tool);
  self->state.pool = std::move(pool);
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
      auto timeout = def.timeout;
      if (call.deadline_ms > 0) {
        auto left = std::chrono::milliseconds{call.deadline_ms - now_ms()};
        if (left <= std::chrono::milliseconds{0})
          return failure(call, tool_error_kind::timeout,
                         "deadline passed before tool '" + def.name
                           + "' could start");
        timeout = std::min(timeout, left);
      }
      if (!def.blocking) {
        // Declared quick and non-blocking: run in place.
        tool_context ctx{call.ref, call.agent, call.call_id,
                         call.idempotency_key, now_ms() + timeout.count()};
        return run_body(def.fn, call, ctx);
      }
      auto job = st.next_job++;
      // The body always learns the limit the adapter enforces.
      auto deadline = now_ms() + timeout.count();
      tool_context ctx{call.ref, call.agent, call.call_id,
                       call.idempotency_key, deadline};
      auto cancelled = std::make_shared<std::atomic<bool>>(false);
      auto weak = caf::actor_cast<caf::weak_actor_ptr>(self);
      auto posted = st.pool->post([weak, job, cancelled, gate = st.pool->gate(),
                                   fn = def.fn, call, ctx = std::move(ctx)] {
        // A call that timed out while queued must not run late: its caller
        // was told it failed and may well retry.
        if (*cancelled || now_ms() >= ctx.deadline_ms)
          return;
        auto result = run_body(fn, call, ctx);
        gate->deliver([&] {
          if (auto handle = caf::actor_cast<adapter_actor>(weak))
            caf::anon_send(handle, tool_job_done{job, std::move(result)});
        });
      });
      if (!posted)
        return failure(call, tool_error_kind::transient,
                       "tool '" + def.name
                         + "' is unavailable: the runtime is shutting down");
      auto promise = self->make_response_promise<tool_result>();
      st.pending.emplace(job, pending_call{promise, cancelled, call.call_id,
                                           std::chrono::steady_clock::now()});
      self->delayed_send(self, timeout, tool_job_timeout{job});
      return promise;
    },
    [self](tool_job_done& done) {
      auto i = self->state.pending.find(done.job);
      if (i == self->state.pending.end()) {
        spdlog::warn("tool '{}' call {} finished after its timeout; result "
                     "dropped",
                     self->state.tool->definition.name, done.result.call_id);
        return;
      }
      i->second.promise.deliver(std::move(done.result));
      self->state.pending.erase(i);
    },
    [self](tool_job_timeout& t) {
      auto i = self->state.pending.find(t.job);
      if (i == self->state.pending.end())
        return; // already answered
      *i->second.cancelled = true;
      const auto& def = self->state.tool->definition;
      auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - i->second.started);
      tool_result r;
      r.call_id = i->second.call_id;
      r.name = def.name;
      r.error = {tool_error_kind::timeout,
                 "tool '" + def.name + "' timed out after "
                   + std::to_string(waited.count()) + " ms"};
      r.attempts = 1;
      i->second.promise.deliver(std::move(r));
      self->state.pending.erase(i);
    },
  };
}

} // namespace

tool_actor spawn_tool_adapter(caf::actor_system& sys, tool_ptr tool,
                              std::shared_ptr<blocking_pool> pool) {
  return sys.spawn(tool_adapter, std::move(tool), std::move(pool));
}

} // namespace troupe

#pragma once

// The agent: an explicit state machine that pursues one goal at a time.
//
//   IDLE -> PLANNING (await model) -> ACTING (await tools, bounded parallel)
//             ^                          |
//             \----- PROCESSING <--------/
//   PLANNING -> COMPLETE (final answer)
//   any      -> FAILED (model endpoint failed) | HALTED (deadline) | MAX_STEPS
//
// The model proposes; the runtime disposes. A reply's tool calls are checked
// here (known to this agent, parseable, an object) and by the tool adapter
// (the JSON Schema) before anything runs; whatever fails becomes an
// observation the model sees on the next step, never a crash. Every
// transition is a trace event; every run, step, model call and tool call a span.
// Runs that arrive while one is active wait in FIFO order. If the agent
// crashes (an exception escapes a handler), the active run and the queued ones
// are answered with an errc::crashed error, which a supervising front
// (supervisors/supervised_agent.hpp) retries on the restarted agent; if it is
// stopped, they are answered with status cancelled.

#include <atomic>
#include <chrono>
#include <memory>
#include <cstdint>
#include <string>
#include <vector>

#include <caf/fwd.hpp>

#include "messages/json_value.hpp"
#include "messages/model.hpp"
#include "messages/run.hpp"
#include "messages/tool.hpp"
#include "messages/trace.hpp"

namespace troupe {

/// The states of the agent state machine.
enum class agent_phase : uint8_t {
  idle,
  planning,
  acting,
  awaiting_approval,
  processing,
  complete,
  max_steps,
  failed,
  halted,
};

/// Upper-case state name, as in traces ("PLANNING").
const char* to_string(agent_phase x);

/// Fault injection for tests: makes an agent crash (throw from its handler) when
/// it is about to start step `crash_at_step`, while `crashes_left` (shared by
/// every incarnation of the agent; null = unlimited) is above zero.
struct agent_faults {
  int32_t crash_at_step = 0;
  std::shared_ptr<std::atomic<int32_t>> crashes_left;
};

/// What an agent is: its prompt, model, tools and limits.
struct agent_spec {
  std::string name;
  std::string system_prompt;
  /// The model name, e.g. "scripted:support.script.json".
  std::string model;
  /// Names of the registered tools this agent may use (a subset of the registry).
  std::vector<std::string> tools;
  /// Model calls per run before it ends with status max_steps.
  int32_t max_steps = 10;
  /// Tool calls of one reply that may run at the same time.
  int32_t max_parallel_tools = 4;
  /// How long one model call may take.
  std::chrono::milliseconds model_timeout{std::chrono::seconds{120}};
  /// Provider parameters passed on every chat_request.
  json model_params = json::object();
  /// Off unless a test sets it.
  agent_faults faults;
};

/// A tool as one agent sees it: its description and the actor that runs it.
struct agent_tool {
  tool_spec spec;
  tool_actor actor;
  /// The tool's own per-call timeout (the adapter enforces it).
  std::chrono::milliseconds timeout{std::chrono::seconds{30}};
};

/// The actors an agent talks to, resolved by the runtime.
struct agent_links {
  model_actor model;
  std::vector<agent_tool> tools;
  /// Optional; without one nothing is traced.
  tracer_actor tracer;
};

/// A failed run_result for a run that never produced one of its own (the
/// caller gave up, the agent stopped before it began...).
run_result failed_result(const run_task& task, std::string error,
                         std::string agent = "");

/// Checks a spec, throwing std::invalid_argument naming the bad field.
void validate(const agent_spec& spec);

/// Spawns an agent. Throws std::invalid_argument when the spec is invalid or
/// a link is missing.
runnable_actor spawn_agent(caf::actor_system& sys, agent_spec spec,
                           agent_links links);

} // namespace troupe

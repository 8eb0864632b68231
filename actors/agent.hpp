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
// here (known to this agent, parseable, an object, allowed by the policy) and
// by the tool adapter (the JSON Schema) before anything runs; whatever fails
// becomes an observation the model sees on the next step, never a crash. A
// call the policy says needs a human waits in AWAITING_APPROVAL (the run's
// state stays as it is) until the approval gate answers; the other calls of
// that reply wait with it, so nothing the reply proposed runs before the
// action it goes with is decided.
//
// Guardrails around each step: before a model call the agent reserves an
// estimate with the budget actor and starts the call only when it is granted;
// after the call it settles the real usage and cost. A denied reservation
// ends the run as halted, naming the limit. A reply's stated confidence can
// route it (confidence_routing), and repeated calls or steps that learn
// nothing raise warnings or halt the run (loop_detection). Every
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

#include "actors/budget.hpp"
#include "actors/store_actor.hpp"
#include "messages/approval.hpp"
#include "messages/json_value.hpp"
#include "messages/model.hpp"
#include "messages/run.hpp"
#include "messages/tool.hpp"
#include "messages/trace.hpp"
#include "runtime/policy.hpp"
#include "runtime/tool_registry.hpp"

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

/// Routes a model reply by the confidence it states. The reply carries it as
/// a field of its structured output (a JSON object in its text, e.g.
/// {"confidence": 0.42, ...}); a reply without one is executed as usual.
///   confidence >= execute_at      execute the reply
///   confidence >= clarify_at      ask the model to clarify (nothing runs)
///   confidence >= alternative_at  ask the alternative model the same step
///                                 (escalate when there is none)
///   below                         escalate: a human approves the reply (it
///                                 then runs) or denies it (the model is told)
/// After `max_reroutes` clarifications or alternatives in a run, a low
/// confidence escalates.
struct confidence_routing {
  bool enabled = false;
  std::string field = "confidence";
  double execute_at = 0.8;
  double clarify_at = 0.5;
  double alternative_at = 0.3;
  /// The model asked when a reply falls in the alternative band.
  std::string alternative_model;
  int32_t max_reroutes = 2;
};

/// Warns about (and optionally halts) runs that go round in circles.
struct loop_detection {
  /// The same tool with the same arguments this many times in a run; 0 = off.
  int32_t repeat_threshold = 3;
  /// This many tool-calling steps in a row that learn nothing new (every
  /// call, with its result, seen before in the run); 0 = off.
  int32_t stall_steps = 3;
  /// Halt the run (status halted) instead of only warning.
  bool halt = false;
};

/// What an agent is: its prompt, model, tools and limits.
struct agent_spec {
  std::string name;
  /// The role policies match on; empty = the name.
  std::string role;
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
  /// What one model call is reserved against the budget before it starts;
  /// a zero field is derived (input: the conversation's length / 4; output:
  /// model_params.max_tokens, else 512).
  token_usage usage_estimate;
  confidence_routing confidence;
  loop_detection loops;
  /// How long a human has to decide an approval the policy asks for, when
  /// the rule names no time-to-live.
  std::chrono::milliseconds approval_ttl{std::chrono::minutes{15}};
  /// The node hosting the agent, set when a cluster places it there: its
  /// traces, events and results then name it "name@node". Its model requests
  /// and idempotency keys keep the plain name, so replicas of one agent on
  /// several nodes make the same keys.
  std::string node;
  /// Off unless a test sets it.
  agent_faults faults;
};

/// A spec as JSON, for sending it to another node (faults stay behind).
json agent_spec_to_json(const agent_spec& spec);

/// A spec from agent_spec_to_json's JSON; missing fields keep their defaults.
/// Throws std::invalid_argument naming the bad field.
agent_spec agent_spec_from_json(const json& doc);

/// A tool as one agent sees it: its description and the actor that runs it.
struct agent_tool {
  tool_spec spec;
  tool_actor actor;
  /// The tool's own per-call timeout (the adapter enforces it).
  std::chrono::milliseconds timeout{std::chrono::seconds{30}};
  /// How its calls' idempotency keys are made.
  idempotency_config idempotency;
};

/// The actors an agent talks to, resolved by the runtime.
struct agent_links {
  model_actor model;
  std::vector<agent_tool> tools;
  /// Optional; without one nothing is traced.
  tracer_actor tracer;
  /// Optional; without one the run's own limits are checked in the agent
  /// (steps, tokens, cost, deadline) and nothing nests.
  budget_actor budget;
  /// Prices for the cost of model calls; optional.
  std::shared_ptr<const price_table> prices;
  /// Optional; without one every well-formed call is allowed.
  std::shared_ptr<const policy> rules;
  /// Where calls that need a human wait; without one they are denied.
  approval_gate_actor approvals;
  /// The model of confidence_routing::alternative_model, resolved.
  model_actor alternative;
  /// Optional: the durable store. With one, the agent saves its run state
  /// after every step and when the run ends (keyed by run id, agent name and
  /// task), and a run that begins looks for a saved state first: it
  /// continues an unfinished one from its last step, and answers a completed
  /// one with the saved result (a resumed run, see runtime/run_service.hpp).
  store_actor store;
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

#pragma once

// The tool protocol: agent -> (breaker ->) tool adapter.
//   tool_call{call_id, name, args, idempotency_key, deadline} -> tool_result{ok, content, error, attempts}
// A tool adapter always replies with a tool_result; failures are values in it, so
// the agent can show them to the model as observations.

#include <cstdint>
#include <string>
#include <vector>

#include <caf/atom.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "messages/common.hpp"
#include "messages/json_value.hpp"

namespace troupe {

/// Why a tool call failed.
enum class tool_error_kind : uint8_t {
  none,
  /// The arguments failed the tool's JSON Schema or could not be parsed.
  invalid_arguments,
  /// No tool of that name is available to the caller.
  unknown_tool,
  /// The call did not finish before its deadline.
  timeout,
  /// Worth retrying: the tool said so (network blip, 503...).
  transient,
  /// Not worth retrying: the tool said so, or threw.
  permanent,
  /// The tool's circuit breaker is open.
  circuit_open,
  /// Policy or a human said no.
  denied,
  /// The call waited in a rate or concurrency limiter's queue past its wait
  /// timeout (or the queue was full).
  rate_limited,
};

TROUPE_JSON_ENUM(tool_error_kind,
                             {{tool_error_kind::none, "none"},
                              {tool_error_kind::invalid_arguments,
                               "invalid_arguments"},
                              {tool_error_kind::unknown_tool, "unknown_tool"},
                              {tool_error_kind::timeout, "timeout"},
                              {tool_error_kind::transient, "transient"},
                              {tool_error_kind::permanent, "permanent"},
                              {tool_error_kind::circuit_open, "circuit_open"},
                              {tool_error_kind::denied, "denied"},
                              {tool_error_kind::rate_limited, "rate_limited"}})

/// A typed tool failure.
struct tool_error {
  tool_error_kind kind = tool_error_kind::none;
  std::string message;
};
TROUPE_MESSAGE(tool_error, kind, message)

/// A request to run one tool once.
struct tool_call {
  run_ref ref;
  std::string agent;
  int32_t step = 0;
  std::string call_id;
  std::string name;
  json_value args;
  /// Stable across retries; passed to the tool for external systems.
  std::string idempotency_key;
  /// Unix time in milliseconds after which the result is useless; 0 = none.
  int64_t deadline_ms = 0;
};
TROUPE_MESSAGE(tool_call, ref, agent, step, call_id, name, args,
               idempotency_key, deadline_ms)

/// One attempt of a tool call, as the retrier saw it.
struct tool_attempt {
  int32_t number = 0;
  /// Steady-clock nanoseconds (runtime/clock.hpp now_ns).
  int64_t started_ns = 0;
  int64_t ended_ns = 0;
  /// The backoff waited before this attempt (0 for the first).
  int64_t backoff_ms = 0;
  /// none when it succeeded.
  tool_error_kind outcome = tool_error_kind::none;
};
TROUPE_MESSAGE(tool_attempt, number, started_ns, ended_ns, backoff_ms, outcome)

/// The outcome of a tool call.
struct tool_result {
  std::string call_id;
  std::string name;
  bool ok = false;
  json_value content;
  tool_error error;
  int32_t attempts = 0;
  /// Every attempt when a retrier ran the call (empty otherwise).
  std::vector<tool_attempt> attempt_log;
  /// The result was recorded earlier under the same idempotency key and was
  /// returned without running the tool again.
  bool replayed = false;
  /// Notes for the model besides the content (a cap the policy applied...).
  std::vector<std::string> notes;
};
TROUPE_MESSAGE(tool_result, call_id, name, ok, content, error, attempts,
               attempt_log, replayed, notes)

/// A failed result for `call`: `attempts` is 0 when the call never reached
/// the tool (a guard refused it), 1 when the tool was tried once.
inline tool_result failed_tool_result(const tool_call& call,
                                      tool_error_kind kind, std::string message,
                                      int32_t attempts) {
  tool_result r;
  r.call_id = call.call_id;
  r.name = call.name;
  r.ok = false;
  r.error = {kind, std::move(message)};
  r.attempts = attempts;
  return r;
}

/// What the idempotency ledger knows about a key.
struct ledger_entry {
  std::string key;
  bool found = false;
  tool_result result;
  /// Unix time in milliseconds when it was recorded.
  int64_t recorded_ms = 0;
};
TROUPE_MESSAGE(ledger_entry, key, found, result, recorded_ms)

/// Looks a key up in the idempotency ledger: (ld_lookup_atom, key).
using ld_lookup_atom = caf::atom_constant<caf::atom("ld_lookup")>;

/// Records a completed call: (ld_record_atom, key, result).
using ld_record_atom = caf::atom_constant<caf::atom("ld_record")>;

/// The idempotency ledger: completed tool calls by idempotency key.
using ledger_actor = caf::typed_actor<
  caf::replies_to<ld_lookup_atom, std::string>::with<ledger_entry>,
  caf::reacts_to<ld_record_atom, std::string, tool_result>>;

/// Anything that runs tool calls: an adapter, a breaker, a remote proxy.
using tool_actor =
  caf::typed_actor<caf::replies_to<tool_call>::with<tool_result>>;

} // namespace troupe

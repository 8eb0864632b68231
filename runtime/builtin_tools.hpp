#pragma once

// Tools that ship with troupe, for examples and tests. Each returns a complete
// tool_definition, ready for tool_registry::add: a strict argument schema
// (additionalProperties false), capabilities and a body. Bodies report bad
// input as tool_failure(tool_error_kind::permanent, ...) with a message a model
// can act on.

#include <string>
#include <vector>

#include "runtime/tool_registry.hpp"

namespace troupe {

/// "calculator": evaluates {"expression": "2 * (3 + 4) ^ 2"} and returns
/// {"expression": ..., "result": number}. Numbers (decimals, exponents),
/// + - * / % ^ (power, right-associative, binding tighter than unary minus:
/// -2^2 = -4), unary + and -, parentheses, the constants pi and e, and the
/// functions sqrt, abs, round, floor, ceil (one argument) and min, max (one or
/// more). An integral result within +-2^53 comes back as a JSON integer.
/// Errors name the problem and its 1-based character position, e.g.
/// "unexpected ')' at position 5". Capabilities: math.
tool_definition calculator_tool();

/// "kv_lookup": looks up {"key": "..."} in a JSON object loaded from
/// `json_file_path` now, and returns {"key": ..., "found": true, "value": ...};
/// an unknown key fails with the known keys listed (at most 20). Throws
/// std::invalid_argument naming the file when it cannot be read, is not JSON
/// or is not an object. Capabilities: lookup, knowledge.
tool_definition kv_lookup_tool(std::string json_file_path);

/// "clock": takes no arguments and returns the current UTC time as
/// {"utc": "2026-11-21T12:34:56Z", "unix_ms": 1795264496000}. Capabilities:
/// time.
tool_definition clock_tool();

/// A "lookup" tool named `name`: finds the record stored under the argument
/// `key_field` (a string) in a JSON object loaded from `json_file_path` now,
/// and returns it; an unknown key fails (permanent) naming the known keys.
/// Throws std::invalid_argument naming the file when it is unreadable or not
/// an object. Quick and side-effect free.
tool_definition lookup_tool(std::string name, std::string description,
                            std::string json_file_path, std::string key_field);

/// How a "journal" tool behaves (see journal_tool).
struct journal_settings {
  std::string description;
  /// JSON Lines file each call is appended to.
  std::string file;
  /// JSON Schema of the arguments (an object schema).
  json parameters = json{{"type", "object"}};
  /// What a call returns; "{arg}" is replaced by that argument's value.
  std::string result = "done";
  /// The first N calls fail (before any side effect) with `failure`.
  int32_t fail_first = 0;
  tool_error_kind failure = tool_error_kind::transient;
  /// The first N successful calls wait `delay` after their side effect (as a
  /// slow or hung remote system would), so a short timeout catches them.
  int32_t delay_first = 0;
  std::chrono::milliseconds delay{0};
  /// Behave as an idempotent receiver: a call whose idempotency key the file
  /// already holds (from this process or an earlier one) is answered without
  /// a second line. That is how an external system that honours idempotency
  /// keys closes the window between a side effect and its ledger record (a
  /// process killed in between runs the call again on resume).
  bool dedupe_by_key = false;
};

/// A "journal" tool named `name`: its side effect is one JSON line appended
/// to `settings.file`: {"tool", "key" (the idempotency key), "run_id",
/// "args", "at_ms"}. So the file counts how often the tool really ran: the examples
/// and tests use it as the external system a side effect lands in. Throws
/// std::invalid_argument when the file cannot be opened for appending.
tool_definition journal_tool(std::string name, journal_settings settings);

/// The names of the builtin tools, sorted: calculator, clock, kv_lookup.
std::vector<std::string> builtin_tool_names();

} // namespace troupe

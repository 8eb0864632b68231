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

/// The names of the builtin tools, sorted: calculator, clock, kv_lookup.
std::vector<std::string> builtin_tool_names();

} // namespace troupe

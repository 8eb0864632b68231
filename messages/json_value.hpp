#pragma once

// JSON payloads (tool arguments, results, chat content, trace attributes) travel
// inside messages as a json_value. In one process CAF moves messages without
// serializing, so the document is never re-parsed; across nodes it travels as its
// compact text and is parsed on arrival.

#include <string>
#include <utility>

#include <caf/error.hpp>
#include <caf/meta/load_callback.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/sec.hpp>
#include <nlohmann/json.hpp>

namespace troupe {

using json = nlohmann::json;

/// Compact JSON text that never throws: invalid UTF-8 in strings (from a tool
/// or a conversation) becomes U+FFFD instead of an exception.
inline std::string safe_dump(const json& j, int indent = -1) {
  return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

/// A JSON document carried by value inside a message.
struct json_value {
  json value;

  json_value() = default;
  json_value(json v) : value(std::move(v)) {}

  friend bool operator==(const json_value& a, const json_value& b) {
    return a.value == b.value;
  }
  friend bool operator!=(const json_value& a, const json_value& b) {
    return !(a == b);
  }
};

inline void to_json(json& j, const json_value& x) {
  j = x.value;
}

inline void from_json(const json& j, json_value& x) {
  x.value = j;
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, json_value& x) {
  std::string text;
  if constexpr (Inspector::reads_state)
    text = safe_dump(x.value);
  auto load = caf::meta::load_callback([&]() -> caf::error {
    auto parsed = json::parse(text, nullptr, false);
    if (parsed.is_discarded())
      return caf::make_error(caf::sec::invalid_argument,
                             "json_value: payload is not valid JSON");
    x.value = std::move(parsed);
    return caf::none;
  });
  return f(caf::meta::type_name("troupe::json_value"), text, load);
}

} // namespace troupe

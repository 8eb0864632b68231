#pragma once

// A validator for the JSON Schema subset tool definitions use (draft-06 and
// later): type, properties, required, additionalProperties, enum, const,
// minimum, maximum, exclusiveMinimum, exclusiveMaximum (numeric form),
// minLength, maxLength, pattern, items (one schema for every element),
// minItems and maxItems, plus the boolean schemas true and false. Annotations
// (description, title, default, $schema, examples) and unknown keywords are
// ignored.
//
// A schema is compiled once, when a tool is registered, so that a bad schema
// fails there with a message naming the keyword, instead of on the first call.
// Compilation is stricter than the specification where a schema could only be
// a mistake in a tool definition: an empty `type` list or an empty `enum`.
//
// Validation never crashes on hostile input: the schema's nesting depth and
// pattern length are bounded at compile time and validation only descends as
// deep as the schema does, so recursion is bounded; patterns run on a regex
// engine whose stack use does not grow with the input (libstdc++'s polynomial
// mode, which rejects back-references); string lengths count UTF-8 code points
// without trusting the encoding; messages never dump whole instance values.

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "messages/json_value.hpp"

namespace troupe {

namespace detail {
struct schema_node;
} // namespace detail

/// One failed rule.
struct schema_violation {
  /// JSON pointer into the instance, "" for the root, e.g. "/items/2/name".
  std::string pointer;
  /// The keyword that failed, e.g. "minimum".
  std::string rule;
  /// One sentence naming the pointer and the rule, e.g.
  /// "/age: minimum: 3 is less than the minimum 18".
  std::string message;
};

/// Thrown when the schema itself is bad; the message names the JSON pointer
/// inside the schema and the problem.
class schema_error : public std::invalid_argument {
public:
  using std::invalid_argument::invalid_argument;
};

/// A compiled schema. Immutable after construction, so one instance may
/// validate from many threads at once. Cheap to copy.
class json_schema {
public:
  /// Deepest schema document accepted, in JSON nesting levels.
  static constexpr size_t max_depth = 128;

  /// Longest `pattern` accepted, in bytes.
  static constexpr size_t max_pattern_length = 2000;

  /// Compiles a schema once (regexes compiled here). Throws schema_error
  /// naming the pointer inside the schema and the problem, e.g.
  /// "schema /properties/age/minimum: must be a number".
  explicit json_schema(const json& schema);

  /// All violations (empty = valid), in document order: a value's own rules
  /// before those of its members, members in the instance's order. A value
  /// whose type is wrong gets only the type violation. A missing required
  /// property is reported at the object; a property that
  /// additionalProperties forbids is reported at the property.
  std::vector<schema_violation> validate(const json& instance) const;

  /// The first violation's message, or "" when the instance is valid.
  std::string first_error(const json& instance) const;

private:
  std::shared_ptr<const detail::schema_node> root_;
};

/// Appends one reference token to a JSON pointer, escaping '~' as "~0" and
/// '/' as "~1" (RFC 6901).
std::string append_pointer(const std::string& pointer, const std::string& key);

} // namespace troupe

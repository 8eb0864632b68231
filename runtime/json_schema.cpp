#include "runtime/json_schema.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <utility>

#include "runtime/safe_regex.hpp"

namespace troupe {

// -- helpers shared by compiling and validating -------------------------------

namespace {

/// The seven JSON Schema type names, as bits.
enum type_bit : unsigned {
  type_null = 1u << 0,
  type_boolean = 1u << 1,
  type_object = 1u << 2,
  type_array = 1u << 3,
  type_number = 1u << 4,
  type_string = 1u << 5,
  type_integer = 1u << 6,
};

std::optional<unsigned> type_from_name(const std::string& name) {
  static const std::map<std::string, unsigned> names{
    {"null", type_null},     {"boolean", type_boolean},
    {"object", type_object}, {"array", type_array},
    {"number", type_number}, {"string", type_string},
    {"integer", type_integer}};
  auto i = names.find(name);
  if (i == names.end())
    return std::nullopt;
  return i->second;
}

/// Decodes one UTF-8 sequence at `i` and advances past it; an invalid byte
/// (bad lead, truncated, overlong, surrogate, above U+10FFFF) counts as one
/// code point of its own. Returns whether the sequence was valid.
bool next_code_point(const std::string& s, size_t& i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char lead = byte(i);
  size_t len = 0;
  uint32_t cp = 0;
  if (lead < 0x80) {
    ++i;
    return true;
  } else if (lead >= 0xC2 && lead <= 0xDF) {
    len = 2;
    cp = lead & 0x1Fu;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    len = 3;
    cp = lead & 0x0Fu;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    len = 4;
    cp = lead & 0x07u;
  } else {
    ++i;
    return false;
  }
  if (s.size() - i < len) {
    ++i;
    return false;
  }
  for (size_t k = 1; k < len; ++k) {
    auto b = byte(i + k);
    if ((b & 0xC0u) != 0x80u) {
      ++i;
      return false;
    }
    cp = (cp << 6) | (b & 0x3Fu);
  }
  bool overlong = (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
  bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
  if (overlong || surrogate || cp > 0x10FFFF) {
    ++i;
    return false;
  }
  i += len;
  return true;
}

/// Length in code points; each invalid byte counts as one.
size_t code_points(const std::string& s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); ++n)
    next_code_point(s, i);
  return n;
}

/// `s` with every invalid UTF-8 byte replaced by U+FFFD, so that messages can
/// always be serialized as JSON.
std::string valid_utf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t start = i;
    if (next_code_point(s, i))
      out.append(s, start, i - start);
    else
      out += "\xEF\xBF\xBD";
  }
  return out;
}

/// How a pointer reads in a message: the root has no tokens to show.
std::string display(const std::string& pointer) {
  return pointer.empty() ? "(root)" : pointer;
}

std::string dump(const json& j) {
  return safe_dump(j);
}

/// A string as a JSON string literal, cut after `max` bytes.
std::string quoted(const std::string& s, size_t max = 60) {
  if (s.size() <= max)
    return dump(json(s));
  return dump(json(s.substr(0, max))) + "...";
}

/// A JSON number kept exact: comparing through double would call 2^53 + 1
/// equal to 2^53.
struct number {
  enum class kind { signed_int, unsigned_int, floating } k = kind::floating;
  int64_t i = 0;
  uint64_t u = 0;
  double d = 0;
};

number to_number(const json& j) {
  number n;
  if (j.is_number_unsigned()) {
    n.k = number::kind::unsigned_int;
    n.u = j.get<uint64_t>();
  } else if (j.is_number_integer()) {
    n.k = number::kind::signed_int;
    n.i = j.get<int64_t>();
  } else {
    n.d = j.get<double>();
  }
  return n;
}

template <class T>
int three_way(T a, T b) {
  return a < b ? -1 : (b < a ? 1 : 0);
}

/// Compares an integer with a double exactly; nullopt when d is NaN.
std::optional<int> compare_int_double(const number& x, double d) {
  if (std::isnan(d))
    return std::nullopt;
  if (x.k == number::kind::signed_int) {
    if (d >= 9223372036854775808.0)
      return -1;
    if (d < -9223372036854775808.0)
      return 1;
    auto whole = std::trunc(d);
    if (auto c = three_way(x.i, static_cast<int64_t>(whole)); c != 0)
      return c;
    auto frac = d - whole;
    return frac > 0 ? -1 : (frac < 0 ? 1 : 0);
  }
  if (d < 0)
    return 1;
  if (d >= 18446744073709551616.0)
    return -1;
  auto whole = std::trunc(d);
  if (auto c = three_way(x.u, static_cast<uint64_t>(whole)); c != 0)
    return c;
  return d - whole > 0 ? -1 : 0;
}

/// <0, 0 or >0; nullopt when either side is NaN.
std::optional<int> compare(const number& a, const number& b) {
  using k = number::kind;
  if (a.k == k::floating && b.k == k::floating) {
    if (std::isnan(a.d) || std::isnan(b.d))
      return std::nullopt;
    return three_way(a.d, b.d);
  }
  if (a.k == k::floating) {
    auto c = compare_int_double(b, a.d);
    if (!c)
      return c;
    return -*c;
  }
  if (b.k == k::floating)
    return compare_int_double(a, b.d);
  if (a.k == k::signed_int && b.k == k::signed_int)
    return three_way(a.i, b.i);
  if (a.k == k::unsigned_int && b.k == k::unsigned_int)
    return three_way(a.u, b.u);
  if (a.k == k::signed_int)
    return a.i < 0 ? -1 : three_way(static_cast<uint64_t>(a.i), b.u);
  return b.i < 0 ? 1 : three_way(a.u, static_cast<uint64_t>(b.i));
}

std::string to_string(const number& n) {
  switch (n.k) {
    case number::kind::signed_int:
      return std::to_string(n.i);
    case number::kind::unsigned_int:
      return std::to_string(n.u);
    case number::kind::floating:
      break;
  }
  if (std::isnan(n.d))
    return "nan";
  if (std::isinf(n.d))
    return n.d > 0 ? "inf" : "-inf";
  return dump(json(n.d));
}

bool is_integral(const json& j) {
  if (j.is_number_integer())
    return true;
  if (!j.is_number_float())
    return false;
  auto d = j.get<double>();
  return std::isfinite(d) && std::floor(d) == d;
}

/// "1 item", "2 items".
std::string count(uint64_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

/// A short rendering of an instance value; never dumps a whole structure,
/// whose depth the schema does not bound.
std::string preview(const json& v) {
  switch (v.type()) {
    case json::value_t::string:
      return quoted(v.get_ref<const std::string&>());
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float:
      return to_string(to_number(v));
    case json::value_t::array:
      return "an array of " + count(v.size(), "item", "items");
    case json::value_t::object:
      return "an object with " + count(v.size(), "property", "properties");
    case json::value_t::binary:
      return "binary data";
    default:
      return dump(v);
  }
}

/// The instance's type name as a schema would spell it.
std::string type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "boolean";
    case json::value_t::object:
      return "object";
    case json::value_t::array:
      return "array";
    case json::value_t::string:
      return "string";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "integer";
    case json::value_t::number_float:
      return "number";
    default:
      return "binary";
  }
}

/// Joins names as "a", "a or b", "a, b or c".
std::string alternatives(const std::vector<std::string>& names) {
  std::string out;
  for (size_t k = 0; k < names.size(); ++k) {
    if (k > 0)
      out += k + 1 == names.size() ? " or " : ", ";
    out += names[k];
  }
  return out;
}

/// Joins values with ", ", stopping once the text passes `max` bytes.
std::string joined(const std::vector<std::string>& items, size_t max = 200) {
  std::string out;
  for (size_t k = 0; k < items.size(); ++k) {
    if (k > 0)
      out += ", ";
    if (out.size() > max) {
      out += "... (" + std::to_string(items.size() - k) + " more)";
      break;
    }
    out += items[k];
  }
  return out;
}

} // namespace

std::string append_pointer(const std::string& pointer, const std::string& key) {
  std::string out = pointer;
  out.reserve(pointer.size() + key.size() + 1);
  out += '/';
  for (char c : key) {
    if (c == '~')
      out += "~0";
    else if (c == '/')
      out += "~1";
    else
      out += c;
  }
  return out;
}

// -- the compiled schema ------------------------------------------------------

namespace detail {

struct schema_node {
  /// The boolean schema false: no value is valid.
  bool reject_all = false;

  /// type: a set of type bits (0 = any) and the names in schema order.
  unsigned types = 0;
  std::vector<std::string> type_names;

  std::optional<json> enum_values;
  std::optional<json> const_value;

  std::optional<number> minimum;
  std::optional<number> maximum;
  std::optional<number> exclusive_minimum;
  std::optional<number> exclusive_maximum;

  std::optional<uint64_t> min_length;
  std::optional<uint64_t> max_length;
  std::optional<std::string> pattern_text;
  std::optional<std::regex> pattern;

  std::unique_ptr<schema_node> items;
  std::optional<uint64_t> min_items;
  std::optional<uint64_t> max_items;

  std::map<std::string, std::unique_ptr<schema_node>> properties;
  std::vector<std::string> required;
  bool additional_forbidden = false;
  std::unique_ptr<schema_node> additional;
};

} // namespace detail

namespace {

using detail::schema_node;

[[noreturn]] void fail(const std::string& pointer, const std::string& problem) {
  throw schema_error(valid_utf8("schema " + display(pointer) + ": " + problem));
}

/// Rejects documents nested deeper than json_schema::max_depth before the
/// recursive compiler sees them (iterative, so it cannot overflow itself).
void check_depth(const json& schema) {
  std::vector<std::pair<const json*, size_t>> todo{{&schema, 1}};
  while (!todo.empty()) {
    auto [j, depth] = todo.back();
    todo.pop_back();
    if (depth > json_schema::max_depth)
      fail("", "nests deeper than " + std::to_string(json_schema::max_depth)
                 + " levels");
    if (j->is_structured())
      for (const auto& child : *j)
        todo.emplace_back(&child, depth + 1);
  }
}

uint64_t non_negative_integer(const json& j, const std::string& pointer) {
  if (j.is_number_unsigned())
    return j.get<uint64_t>();
  if (j.is_number_integer() && j.get<int64_t>() >= 0)
    return static_cast<uint64_t>(j.get<int64_t>());
  if (j.is_number_float() && is_integral(j) && j.get<double>() >= 0) {
    auto d = j.get<double>();
    if (d >= 18446744073709551616.0)
      return std::numeric_limits<uint64_t>::max();
    return static_cast<uint64_t>(d);
  }
  fail(pointer, "must be a non-negative integer, got " + dump(j));
}

number finite_number(const json& j, const std::string& pointer) {
  if (j.is_boolean())
    fail(pointer, "must be a number (the draft-04 boolean form is not "
                  "supported)");
  if (!j.is_number())
    fail(pointer, "must be a number");
  auto n = to_number(j);
  if (n.k == number::kind::floating && !std::isfinite(n.d))
    fail(pointer, "must be a finite number");
  return n;
}

std::regex compile_pattern(const std::string& text, const std::string& pointer) {
  if (text.size() > json_schema::max_pattern_length)
    fail(pointer, "pattern is longer than "
                    + std::to_string(json_schema::max_pattern_length)
                    + " characters");
  try {
    return std::regex(text, safe_regex_flags);
  } catch (const std::regex_error& e) {
    fail(pointer, "invalid regular expression " + quoted(text, 200) + ": "
                    + e.what());
  }
}

std::unique_ptr<schema_node> compile(const json& s, const std::string& pointer);

void compile_type(const json& t, const std::string& pointer, schema_node& n) {
  auto add = [&](const json& name, const std::string& where) {
    if (!name.is_string())
      fail(where, "must be a type name string");
    const auto& text = name.get_ref<const std::string&>();
    auto bit = type_from_name(text);
    if (!bit)
      fail(where, "unknown type " + quoted(text)
                    + " (expected object, array, string, number, integer, "
                      "boolean or null)");
    n.types |= *bit;
    n.type_names.push_back(text);
  };
  if (t.is_array()) {
    if (t.empty())
      fail(pointer, "must name at least one type");
    for (size_t k = 0; k < t.size(); ++k)
      add(t[k], append_pointer(pointer, std::to_string(k)));
  } else if (t.is_string()) {
    add(t, pointer);
  } else {
    fail(pointer, "must be a type name or an array of type names");
  }
}

void compile_object_keywords(const json& s, const std::string& pointer,
                             schema_node& n) {
  if (auto i = s.find("properties"); i != s.end()) {
    auto where = append_pointer(pointer, "properties");
    if (!i->is_object())
      fail(where, "must be an object mapping property names to schemas");
    for (const auto& [key, sub] : i->items())
      n.properties.emplace(key, compile(sub, append_pointer(where, key)));
  }
  if (auto i = s.find("required"); i != s.end()) {
    auto where = append_pointer(pointer, "required");
    if (!i->is_array())
      fail(where, "must be an array of property names");
    std::set<std::string> seen;
    for (size_t k = 0; k < i->size(); ++k) {
      const auto& name = (*i)[k];
      auto at = append_pointer(where, std::to_string(k));
      if (!name.is_string())
        fail(at, "must be a property name string");
      if (!seen.insert(name.get<std::string>()).second)
        fail(at, "duplicate property name " + quoted(name.get<std::string>()));
      n.required.push_back(name.get<std::string>());
    }
  }
  if (auto i = s.find("additionalProperties"); i != s.end()) {
    auto where = append_pointer(pointer, "additionalProperties");
    if (i->is_boolean())
      n.additional_forbidden = !i->get<bool>();
    else if (i->is_object())
      n.additional = compile(*i, where);
    else
      fail(where, "must be a boolean or a schema");
  }
}

void compile_array_keywords(const json& s, const std::string& pointer,
                            schema_node& n) {
  if (auto i = s.find("items"); i != s.end()) {
    auto where = append_pointer(pointer, "items");
    if (i->is_array())
      fail(where, "must be a schema (the array form of items is not "
                  "supported)");
    n.items = compile(*i, where);
  }
  if (auto i = s.find("minItems"); i != s.end())
    n.min_items = non_negative_integer(*i, append_pointer(pointer, "minItems"));
  if (auto i = s.find("maxItems"); i != s.end())
    n.max_items = non_negative_integer(*i, append_pointer(pointer, "maxItems"));
}

void compile_scalar_keywords(const json& s, const std::string& pointer,
                             schema_node& n) {
  if (auto i = s.find("enum"); i != s.end()) {
    auto where = append_pointer(pointer, "enum");
    if (!i->is_array())
      fail(where, "must be an array of values");
    if (i->empty())
      fail(where, "must list at least one value");
    n.enum_values = *i;
  }
  if (auto i = s.find("const"); i != s.end())
    n.const_value = *i;
  auto bound = [&](const char* keyword, std::optional<number>& out) {
    if (auto i = s.find(keyword); i != s.end())
      out = finite_number(*i, append_pointer(pointer, keyword));
  };
  bound("minimum", n.minimum);
  bound("maximum", n.maximum);
  bound("exclusiveMinimum", n.exclusive_minimum);
  bound("exclusiveMaximum", n.exclusive_maximum);
  if (auto i = s.find("minLength"); i != s.end())
    n.min_length = non_negative_integer(*i,
                                        append_pointer(pointer, "minLength"));
  if (auto i = s.find("maxLength"); i != s.end())
    n.max_length = non_negative_integer(*i,
                                        append_pointer(pointer, "maxLength"));
  if (auto i = s.find("pattern"); i != s.end()) {
    auto where = append_pointer(pointer, "pattern");
    if (!i->is_string())
      fail(where, "must be a regular expression string");
    n.pattern_text = i->get<std::string>();
    n.pattern = compile_pattern(*n.pattern_text, where);
  }
}

/// Keywords that change what is valid but that this validator does not
/// implement: a schema using one is refused rather than under-validated.
constexpr const char* unsupported_keywords[] = {
  "$ref",  "allOf",        "anyOf",     "oneOf",   "not",
  "if",    "then",         "else",      "patternProperties",
  "dependencies", "dependentRequired", "dependentSchemas", "propertyNames",
  "contains", "uniqueItems", "multipleOf", "minProperties",
  "maxProperties", "prefixItems", "additionalItems", "unevaluatedProperties",
  "unevaluatedItems"};

std::unique_ptr<schema_node> compile(const json& s, const std::string& pointer) {
  auto n = std::make_unique<schema_node>();
  if (s.is_object())
    for (auto keyword : unsupported_keywords)
      if (s.contains(keyword))
        fail(append_pointer(pointer, keyword),
             "keyword not supported by troupe's validator (supported: type, "
             "properties, required, additionalProperties, enum, const, "
             "minimum, maximum, exclusiveMinimum, exclusiveMaximum, "
             "minLength, maxLength, pattern, items, minItems, maxItems)");
  if (s.is_boolean()) {
    n->reject_all = !s.get<bool>();
    return n;
  }
  if (!s.is_object())
    fail(pointer, "must be a schema (an object or a boolean), got "
                    + type_name(s));
  if (auto i = s.find("type"); i != s.end())
    compile_type(*i, append_pointer(pointer, "type"), *n);
  compile_scalar_keywords(s, pointer, *n);
  compile_array_keywords(s, pointer, *n);
  compile_object_keywords(s, pointer, *n);
  return n;
}

// -- validation ---------------------------------------------------------------

/// Walks an instance along a compiled schema, collecting violations until
/// `limit` of them are found.
class validator {
public:
  validator(std::vector<schema_violation>& out, size_t limit)
    : out_(out), limit_(limit) {
    // nop
  }

  void check(const schema_node& n, const json& v, std::string& pointer) {
    if (full())
      return;
    if (n.reject_all) {
      add(pointer, "false", "no value is allowed here");
      return;
    }
    if (n.types != 0 && !type_matches(n.types, v)) {
      add(pointer, "type",
          "expected " + alternatives(n.type_names) + ", got " + type_name(v));
      return;
    }
    if (n.enum_values)
      check_enum(*n.enum_values, v, pointer);
    if (n.const_value && !(v == *n.const_value))
      add(pointer, "const",
          preview(v) + " is not equal to the constant "
            + quoted_value(*n.const_value));
    if (v.is_number())
      check_number(n, to_number(v), pointer);
    else if (v.is_string())
      check_string(n, v.get_ref<const std::string&>(), pointer);
    else if (v.is_array())
      check_array(n, v, pointer);
    else if (v.is_object())
      check_object(n, v, pointer);
  }

private:
  bool full() const {
    return out_.size() >= limit_;
  }

  void add(const std::string& pointer, const char* rule,
           const std::string& detail) {
    if (full())
      return;
    out_.push_back(schema_violation{
      pointer, rule, valid_utf8(display(pointer) + ": " + rule + ": " + detail)});
  }

  static bool type_matches(unsigned types, const json& v) {
    switch (v.type()) {
      case json::value_t::null:
        return types & type_null;
      case json::value_t::boolean:
        return types & type_boolean;
      case json::value_t::object:
        return types & type_object;
      case json::value_t::array:
        return types & type_array;
      case json::value_t::string:
        return types & type_string;
      case json::value_t::number_integer:
      case json::value_t::number_unsigned:
      case json::value_t::number_float:
        return (types & type_number) || ((types & type_integer) && is_integral(v));
      default:
        return false;
    }
  }

  /// A schema value in a message; the schema's depth is bounded, but not its
  /// size, so long renderings are cut.
  static std::string quoted_value(const json& v) {
    auto text = dump(v);
    if (text.size() > 100)
      text = text.substr(0, 100) + "...";
    return text;
  }

  void check_enum(const json& allowed, const json& v, const std::string& pointer) {
    for (const auto& candidate : allowed)
      if (v == candidate)
        return;
    std::vector<std::string> names;
    for (const auto& candidate : allowed)
      names.push_back(quoted_value(candidate));
    add(pointer, "enum", preview(v) + " is not one of " + joined(names));
  }

  void check_number(const schema_node& n, const number& x,
                    const std::string& pointer) {
    auto text = to_string(x);
    if (n.minimum) {
      auto c = compare(x, *n.minimum);
      if (!c || *c < 0)
        add(pointer, "minimum",
            text + " is less than the minimum " + to_string(*n.minimum));
    }
    if (n.maximum) {
      auto c = compare(x, *n.maximum);
      if (!c || *c > 0)
        add(pointer, "maximum",
            text + " is greater than the maximum " + to_string(*n.maximum));
    }
    if (n.exclusive_minimum) {
      auto c = compare(x, *n.exclusive_minimum);
      if (!c || *c <= 0)
        add(pointer, "exclusiveMinimum",
            text + " is not greater than the exclusive minimum "
              + to_string(*n.exclusive_minimum));
    }
    if (n.exclusive_maximum) {
      auto c = compare(x, *n.exclusive_maximum);
      if (!c || *c >= 0)
        add(pointer, "exclusiveMaximum",
            text + " is not less than the exclusive maximum "
              + to_string(*n.exclusive_maximum));
    }
  }

  void check_string(const schema_node& n, const std::string& s,
                    const std::string& pointer) {
    if (n.min_length || n.max_length) {
      auto len = code_points(s);
      if (n.min_length && len < *n.min_length)
        add(pointer, "minLength",
            quoted(s) + " has " + count(len, "character", "characters")
              + ", fewer than the minimum "
              + std::to_string(*n.min_length));
      if (n.max_length && len > *n.max_length)
        add(pointer, "maxLength",
            quoted(s) + " has " + count(len, "character", "characters")
              + ", more than the maximum "
              + std::to_string(*n.max_length));
    }
    if (n.pattern) {
      bool found = false;
      try {
        found = std::regex_search(s, *n.pattern);
      } catch (const std::regex_error& e) {
        add(pointer, "pattern",
            quoted(s) + " could not be matched against the pattern "
              + *n.pattern_text + ": " + e.what());
        return;
      }
      if (!found)
        add(pointer, "pattern",
            quoted(s) + " does not match the pattern " + *n.pattern_text);
    }
  }

  void check_array(const schema_node& n, const json& v, std::string& pointer) {
    if (n.min_items && v.size() < *n.min_items)
      add(pointer, "minItems",
          "the array has " + count(v.size(), "item", "items")
            + ", fewer than the minimum " + std::to_string(*n.min_items));
    if (n.max_items && v.size() > *n.max_items)
      add(pointer, "maxItems",
          "the array has " + count(v.size(), "item", "items")
            + ", more than the maximum " + std::to_string(*n.max_items));
    if (!n.items)
      return;
    auto base = pointer.size();
    for (size_t k = 0; k < v.size() && !full(); ++k) {
      pointer += '/';
      pointer += std::to_string(k);
      check(*n.items, v[k], pointer);
      pointer.resize(base);
    }
  }

  void check_object(const schema_node& n, const json& v, std::string& pointer) {
    for (const auto& name : n.required)
      if (!v.contains(name))
        add(pointer, "required", "missing required property " + quoted(name));
    for (const auto& [key, value] : v.items()) {
      if (full())
        return;
      auto base = pointer.size();
      pointer = append_pointer(pointer, key);
      if (auto i = n.properties.find(key); i != n.properties.end())
        check(*i->second, value, pointer);
      else if (n.additional_forbidden)
        add(pointer, "additionalProperties",
            "property " + quoted(key) + " is not allowed" + allowed_list(n));
      else if (n.additional)
        check(*n.additional, value, pointer);
      pointer.resize(base);
    }
  }

  static std::string allowed_list(const schema_node& n) {
    if (n.properties.empty())
      return "; the object takes no properties";
    std::vector<std::string> names;
    for (const auto& entry : n.properties)
      names.push_back(quoted(entry.first));
    return "; expected only " + joined(names);
  }

  std::vector<schema_violation>& out_;
  size_t limit_;
};

} // namespace

// -- json_schema ----------------------------------------------------------------

json_schema::json_schema(const json& schema) {
  check_depth(schema);
  root_ = compile(schema, "");
}

std::vector<schema_violation> json_schema::validate(const json& instance) const {
  std::vector<schema_violation> out;
  std::string pointer;
  validator{out, std::numeric_limits<size_t>::max()}.check(*root_, instance,
                                                           pointer);
  return out;
}

std::string json_schema::first_error(const json& instance) const {
  std::vector<schema_violation> out;
  std::string pointer;
  validator{out, 1}.check(*root_, instance, pointer);
  return out.empty() ? std::string{} : out.front().message;
}

} // namespace troupe

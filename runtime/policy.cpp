#include "runtime/policy.hpp"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <map>
#include <set>

#include "runtime/json_schema.hpp"
#include "runtime/safe_regex.hpp"

namespace troupe {

namespace {

/// Longest string a pattern is checked against: std::regex is slow on long
/// input, so longer strings fail the constraint instead.
constexpr size_t max_pattern_input = 10000;

/// Longest JSON text quoted in a reason before it is cut.
constexpr size_t max_shown = 60;

struct decision_name {
  policy_decision decision;
  const char* name;
};

constexpr decision_name decision_names[] = {
  {policy_decision::allow, "allow"},
  {policy_decision::allow_with_caps, "allow_with_caps"},
  {policy_decision::require_approval, "require_approval"},
  {policy_decision::deny, "deny"},
};

/// Bytes of the UTF-8 sequence starting at s[i]; an invalid byte counts as a
/// character of its own.
size_t char_size(const std::string& s, size_t i) {
  auto lead = static_cast<unsigned char>(s[i]);
  size_t len = lead < 0x80             ? 1
               : (lead & 0xE0) == 0xC0 ? 2
               : (lead & 0xF0) == 0xE0 ? 3
               : (lead & 0xF8) == 0xF0 ? 4
                                       : 1;
  if (len > s.size() - i)
    return 1;
  for (size_t k = 1; k < len; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80)
      return 1;
  return len;
}

/// Length in characters (code points).
size_t char_count(const std::string& s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); i += char_size(s, i))
    ++n;
  return n;
}

/// The first `n` characters of `s`.
std::string first_chars(const std::string& s, size_t n) {
  size_t i = 0;
  for (size_t k = 0; k < n && i < s.size(); ++k)
    i += char_size(s, i);
  return s.substr(0, i);
}

/// A JSON value as it appears in a reason, cut when long.
std::string shown(const json& x) {
  auto text = safe_dump(x);
  if (text.size() <= max_shown)
    return text;
  return first_chars(text, max_shown) + "...";
}

/// A number as it appears in a reason: "5000", "2.5".
std::string number_text(double x) {
  if (std::trunc(x) == x && std::abs(x) < 1e15)
    return std::to_string(static_cast<int64_t>(x));
  return shown(json(x));
}

/// "a string", "an object", "null"...
std::string a_type(const json& x) {
  if (x.is_null())
    return "null";
  std::string name = x.type_name();
  auto vowel = name[0] == 'a' || name[0] == 'o';
  return (vowel ? "an " : "a ") + name;
}

/// "1 time", "3 times".
std::string times(int64_t n) {
  return std::to_string(n) + (n == 1 ? " time" : " times");
}

bool listed(const std::vector<std::string>& list, const std::string& x) {
  return list.empty()
         || std::any_of(list.begin(), list.end(), [&x](const std::string& y) {
              return y == "*" || y == x;
            });
}

/// How one constraint fared against the arguments.
struct outcome {
  enum { holds, missing, fails } state = holds;
  std::string why;
};

outcome failed(std::string why) {
  return {outcome::fails, std::move(why)};
}

outcome check(const std::string& name, const arg_constraint& c,
              const json& args) {
  auto arg = "argument '" + name + "'";
  if (!args.is_object())
    return {outcome::missing, arg + " is missing (the arguments are "
                                + a_type(args) + ", not an object)"};
  auto i = args.find(name);
  if (i == args.end())
    return {outcome::missing, arg + " is missing"};
  const auto& x = *i;
  if (c.min || c.max) {
    if (!x.is_number())
      return failed(arg + " is " + a_type(x) + ", not a number");
    auto value = x.get<double>();
    if (std::isnan(value))
      return failed(arg + " is not a number (NaN)");
    if (c.min && value < *c.min)
      return failed(arg + " is " + shown(x) + ", below the minimum "
                    + number_text(*c.min));
    if (c.max && value > *c.max)
      return failed(arg + " is " + shown(x) + ", above the maximum "
                    + number_text(*c.max));
  }
  if (c.max_length || !c.pattern.empty()) {
    if (!x.is_string())
      return failed(arg + " is " + a_type(x) + ", not a string");
    const auto& s = x.get_ref<const std::string&>();
    if (c.max_length) {
      auto n = char_count(s);
      if (n > *c.max_length)
        return failed(arg + " is " + std::to_string(n)
                      + " characters long, above the maximum length "
                      + std::to_string(*c.max_length));
    }
    if (!c.pattern.empty()) {
      if (s.size() > max_pattern_input)
        return failed(arg + " is too long to check against the pattern '"
                      + c.pattern + "' (" + std::to_string(s.size())
                      + " bytes, at most " + std::to_string(max_pattern_input)
                      + ")");
      try {
        auto re = c.compiled;
        if (!re) // not compiled by compile(): do it now
          re = std::make_shared<const std::regex>(c.pattern, safe_regex_flags);
        if (!std::regex_match(s, *re))
          return failed(arg + " is " + shown(x)
                        + ", which does not match the pattern '" + c.pattern
                        + "'");
      } catch (const std::regex_error& ex) {
        return failed(arg + " could not be checked against the pattern '"
                      + c.pattern + "': " + ex.what());
      }
    }
  }
  if (!c.one_of.empty()
      && std::find(c.one_of.begin(), c.one_of.end(), x) == c.one_of.end()) {
    std::string allowed;
    for (const auto& y : c.one_of)
      allowed += (allowed.empty() ? "" : ", ") + shown(y);
    return failed(arg + " is " + shown(x) + ", not one of: " + allowed);
  }
  return {};
}

/// Clamps the arguments to the rule's caps, saying what changed.
void apply_caps(const policy_rule& rule, json& args,
                std::vector<std::string>& capped) {
  if (!args.is_object())
    return;
  for (const auto& [name, cap] : rule.caps) {
    auto i = args.find(name);
    if (i == args.end())
      continue;
    auto& x = *i;
    auto arg = "argument '" + name + "'";
    if (x.is_number() && (cap.min || cap.max)) {
      auto value = x.get<double>();
      std::optional<double> bound;
      if (cap.min && value < *cap.min)
        bound = *cap.min;
      else if (cap.max && value > *cap.max)
        bound = *cap.max;
      if (!bound)
        continue;
      auto before = shown(x);
      // An integer stays an integer when the bound is a whole number.
      if (!x.is_number_float() && std::trunc(*bound) == *bound
          && std::abs(*bound) < 9e18)
        x = static_cast<int64_t>(*bound);
      else
        x = *bound;
      capped.push_back(arg + " capped from " + before + " to " + shown(x));
    } else if (x.is_string() && cap.max_length) {
      const auto& s = x.get_ref<const std::string&>();
      auto n = char_count(s);
      if (n <= *cap.max_length)
        continue;
      x = first_chars(s, *cap.max_length);
      capped.push_back(arg + " capped from " + std::to_string(n) + " to "
                       + std::to_string(*cap.max_length) + " characters");
    }
  }
}

policy_verdict deny(const policy_rule& rule, const policy_query& q,
                    const std::string& why) {
  policy_verdict v;
  v.decision = policy_decision::deny;
  v.rule = rule.name;
  v.reason = "denied by rule '" + rule.name + "': " + why;
  v.args = q.args;
  return v;
}

policy_verdict decide(const policy_rule& rule, const policy_query& q) {
  for (const auto& [name, c] : rule.require)
    if (auto o = check(name, c, q.args); o.state != outcome::holds)
      return deny(rule, q, o.why);
  policy_verdict v;
  v.decision = rule.decision;
  v.rule = rule.name;
  v.args = q.args;
  switch (rule.decision) {
    case policy_decision::allow:
      v.reason = rule.reason.empty() ? "allowed by rule '" + rule.name + "'"
                                     : rule.reason;
      break;
    case policy_decision::allow_with_caps:
      if (rule.max_calls_per_run > 0
          && q.calls_so_far >= rule.max_calls_per_run)
        return deny(rule, q,
                    "tool '" + q.tool + "' may be called at most "
                      + times(rule.max_calls_per_run)
                      + " per run, and this run has called it "
                      + times(q.calls_so_far));
      apply_caps(rule, v.args, v.capped);
      v.reason = rule.reason.empty()
                   ? "allowed by rule '" + rule.name + "'"
                       + (v.capped.empty() ? "" : " with capped arguments")
                   : rule.reason;
      break;
    case policy_decision::require_approval:
      v.reason = rule.reason.empty()
                   ? "rule '" + rule.name + "' requires a human's approval"
                   : rule.reason;
      v.ttl_ms = rule.ttl_ms;
      break;
    case policy_decision::deny:
      return deny(rule, q,
                  rule.reason.empty()
                    ? "calls of tool '" + q.tool + "' are not allowed"
                    : rule.reason);
  }
  return v;
}

// --- parsing ----------------------------------------------------------------

/// Reads the fields of one JSON object, naming origin and pointer in errors.
class field_reader {
public:
  field_reader(const std::string& origin, std::string pointer, const json& obj)
    : origin_(origin), pointer_(std::move(pointer)), obj_(obj) {
    if (!obj_.is_object())
      fail(pointer_,
           std::string{"must be a JSON object, got "} + obj_.type_name());
  }

  [[noreturn]] void fail(const std::string& pointer,
                         const std::string& what) const {
    throw policy_error(origin_ + ": " + (pointer.empty() ? "/" : pointer) + ": "
                       + what);
  }

  std::string at(const std::string& key) const {
    return append_pointer(pointer_, key);
  }

  const std::string& origin() const {
    return origin_;
  }

  /// Rejects keys not in `known`.
  void only(std::initializer_list<const char*> known) const {
    for (auto& item : obj_.items()) {
      auto hit = std::any_of(known.begin(), known.end(),
                             [&](const char* k) { return item.key() == k; });
      if (!hit) {
        std::string list;
        for (auto k : known)
          list += (list.empty() ? "" : ", ") + std::string{k};
        fail(at(item.key()), "unknown field (expected one of: " + list + ")");
      }
    }
  }

  const json* get(const std::string& key) const {
    auto i = obj_.find(key);
    return i == obj_.end() ? nullptr : &*i;
  }

  std::string str(const std::string& key, bool required) const {
    auto v = get(key);
    if (v == nullptr) {
      if (required)
        fail(pointer_, "missing required field '" + key + "'");
      return {};
    }
    if (!v->is_string())
      fail(at(key), std::string{"must be a string, got "} + v->type_name());
    return v->get<std::string>();
  }

  std::optional<double> number(const std::string& key) const {
    auto v = get(key);
    if (v == nullptr)
      return std::nullopt;
    if (!v->is_number())
      fail(at(key), std::string{"must be a number, got "} + v->type_name());
    auto x = v->get<double>();
    if (!std::isfinite(x))
      fail(at(key), "must be a finite number");
    return x;
  }

  std::optional<int64_t> integer(const std::string& key, int64_t min,
                                 int64_t max) const {
    auto v = get(key);
    if (v == nullptr)
      return std::nullopt;
    if (!v->is_number_integer())
      fail(at(key), std::string{"must be an integer, got "} + v->type_name());
    if (v->is_number_unsigned()
        && v->get<uint64_t>() > static_cast<uint64_t>(max))
      fail(at(key), "must be at most " + std::to_string(max));
    auto x = v->get<int64_t>();
    if (x < min || x > max)
      fail(at(key), "must be between " + std::to_string(min) + " and "
                      + std::to_string(max) + ", got " + std::to_string(x));
    return x;
  }

  /// An array of non-empty strings without repeats ("*" allowed).
  std::vector<std::string> names(const std::string& key) const {
    std::vector<std::string> out;
    auto v = get(key);
    if (v == nullptr)
      return out;
    if (!v->is_array())
      fail(at(key),
           std::string{"must be an array of names, got "} + v->type_name());
    for (size_t i = 0; i < v->size(); ++i) {
      auto p = append_pointer(at(key), std::to_string(i));
      const auto& item = (*v)[i];
      if (!item.is_string() || item.get_ref<const std::string&>().empty())
        fail(p, "must be a non-empty name");
      auto name = item.get<std::string>();
      if (std::find(out.begin(), out.end(), name) != out.end())
        fail(p, "'" + name + "' is listed twice");
      out.push_back(std::move(name));
    }
    return out;
  }

  policy_decision decision(const std::string& key, bool required,
                           policy_decision fallback) const {
    if (get(key) == nullptr && !required)
      return fallback;
    auto text = str(key, true);
    for (const auto& d : decision_names)
      if (text == d.name)
        return d.decision;
    std::string known;
    for (const auto& d : decision_names)
      known += (known.empty() ? "" : ", ") + std::string{d.name};
    fail(at(key),
         "unknown decision '" + text + "' (expected one of: " + known + ")");
  }

private:
  const std::string& origin_;
  std::string pointer_;
  const json& obj_;
};

arg_constraint parse_constraint(const std::string& origin,
                                const std::string& pointer, const json& doc,
                                bool is_cap) {
  field_reader r{origin, pointer, doc};
  if (is_cap)
    r.only({"min", "max", "max_length"});
  else
    r.only({"min", "max", "pattern", "enum", "max_length"});
  arg_constraint c;
  c.min = r.number("min");
  c.max = r.number("max");
  if (c.min && c.max && *c.min > *c.max)
    r.fail(r.at("min"), "the minimum " + number_text(*c.min)
                          + " is above the maximum " + number_text(*c.max));
  c.pattern = r.str("pattern", false);
  if (r.get("pattern") != nullptr) {
    if (c.pattern.empty())
      r.fail(r.at("pattern"), "must not be empty");
    try {
      c.compiled = std::make_shared<const std::regex>(c.pattern,
                                                      safe_regex_flags);
    } catch (const std::regex_error& ex) {
      r.fail(r.at("pattern"),
             "invalid regular expression '" + c.pattern + "': " + ex.what());
    }
  }
  if (auto v = r.get("enum")) {
    if (!v->is_array() || v->empty())
      r.fail(r.at("enum"), std::string{"must be a non-empty array of values, "
                                       "got "}
                             + (v->is_array() ? "an empty array" : a_type(*v)));
    c.one_of.assign(v->begin(), v->end());
  }
  if (auto n = r.integer("max_length", 0, std::numeric_limits<int64_t>::max()))
    c.max_length = static_cast<size_t>(*n);
  return c;
}

std::vector<std::pair<std::string, arg_constraint>>
parse_constraints(const field_reader& rule, const std::string& key,
                  bool is_cap) {
  std::vector<std::pair<std::string, arg_constraint>> out;
  auto v = rule.get(key);
  if (v == nullptr)
    return out;
  field_reader r{rule.origin(), rule.at(key), *v};
  for (auto& item : v->items())
    out.emplace_back(item.key(),
                     parse_constraint(rule.origin(), r.at(item.key()),
                                      item.value(), is_cap));
  return out;
}

policy_rule parse_rule(const std::string& origin, const std::string& pointer,
                       const json& doc) {
  field_reader r{origin, pointer, doc};
  r.only({"name", "roles", "principals", "tools", "when", "require", "decision",
          "caps", "max_calls_per_run", "reason", "ttl_ms"});
  policy_rule rule;
  rule.name = r.str("name", true);
  if (rule.name.empty())
    r.fail(r.at("name"), "must not be empty");
  rule.roles = r.names("roles");
  rule.principals = r.names("principals");
  rule.tools = r.names("tools");
  rule.when = parse_constraints(r, "when", false);
  rule.require = parse_constraints(r, "require", false);
  rule.decision = r.decision("decision", true, policy_decision::allow);
  auto with_caps = rule.decision == policy_decision::allow_with_caps;
  if (r.get("caps") != nullptr && !with_caps)
    r.fail(r.at("caps"), "caps are only for rules whose decision is "
                         "allow_with_caps");
  rule.caps = parse_constraints(r, "caps", true);
  if (r.get("max_calls_per_run") != nullptr && !with_caps)
    r.fail(r.at("max_calls_per_run"), "max_calls_per_run is only for rules "
                                      "whose decision is allow_with_caps");
  rule.max_calls_per_run = static_cast<int32_t>(
    r.integer("max_calls_per_run", 0, std::numeric_limits<int32_t>::max())
      .value_or(0));
  rule.reason = r.str("reason", false);
  if (r.get("ttl_ms") != nullptr
      && rule.decision != policy_decision::require_approval)
    r.fail(r.at("ttl_ms"), "ttl_ms is only for rules whose decision is "
                           "require_approval");
  rule.ttl_ms
    = r.integer("ttl_ms", 0, max_approval_ttl_ms).value_or(0);
  return rule;
}

/// compile()'s checks of one constraint list.
void compile_constraints(
  const policy_rule& rule, const char* field,
  std::vector<std::pair<std::string, arg_constraint>>& cs, bool is_cap) {
  auto where = [&](const std::string& name) {
    return "policy rule '" + rule.name + "', '" + field
           + "' constraint on argument '" + name + "': ";
  };
  for (auto& [name, c] : cs) {
    if (c.min && c.max && *c.min > *c.max)
      throw policy_error(where(name) + "the minimum " + number_text(*c.min)
                         + " is above the maximum " + number_text(*c.max));
    if (is_cap && (!c.pattern.empty() || !c.one_of.empty()))
      throw policy_error(where(name)
                         + "caps take only min, max and "
                           "max_length");
    c.compiled.reset();
    if (c.pattern.empty())
      continue;
    try {
      c.compiled = std::make_shared<const std::regex>(c.pattern,
                                                      safe_regex_flags);
    } catch (const std::regex_error& ex) {
      throw policy_error(where(name) + "invalid pattern '" + c.pattern
                         + "': " + ex.what());
    }
  }
}

} // namespace

const char* to_string(policy_decision x) {
  for (const auto& d : decision_names)
    if (d.decision == x)
      return d.name;
  return "invalid";
}

policy_verdict evaluate(const policy& p, const policy_query& q) {
  for (const auto& rule : p.rules) {
    if (!listed(rule.roles, q.role) || !listed(rule.principals, q.principal)
        || !listed(rule.tools, q.tool))
      continue;
    auto matches
      = std::all_of(rule.when.begin(), rule.when.end(), [&q](const auto& w) {
          return check(w.first, w.second, q.args).state == outcome::holds;
        });
    if (matches)
      return decide(rule, q);
  }
  policy_verdict v;
  v.decision = p.default_decision;
  v.args = q.args;
  v.reason = std::string{"no policy rule matched; the default is "}
             + to_string(p.default_decision);
  return v;
}

policy parse_policy(const json& doc, const std::string& origin,
                    const std::string& pointer) {
  field_reader r{origin, pointer, doc};
  r.only({"default", "rules"});
  policy out;
  out.default_decision = r.decision("default", false, policy_decision::allow);
  if (out.default_decision == policy_decision::allow_with_caps)
    r.fail(r.at("default"), "the default decision cannot be allow_with_caps "
                            "(it has no caps); use allow");
  if (auto rules = r.get("rules")) {
    if (!rules->is_array())
      r.fail(r.at("rules"), std::string{"must be an array of rules, got "}
                              + rules->type_name());
    std::map<std::string, std::string> seen;
    for (size_t i = 0; i < rules->size(); ++i) {
      auto at = append_pointer(r.at("rules"), std::to_string(i));
      auto rule = parse_rule(origin, at, (*rules)[i]);
      if (auto [it, added] = seen.emplace(rule.name, at); !added)
        r.fail(append_pointer(at, "name"), "rule name '" + rule.name
                                             + "' is already used by "
                                             + it->second);
      out.rules.push_back(std::move(rule));
    }
  }
  compile(out);
  return out;
}

void compile(policy& p) {
  if (p.default_decision == policy_decision::allow_with_caps)
    throw policy_error("policy: the default decision cannot be "
                       "allow_with_caps (it has no caps)");
  std::set<std::string> seen;
  for (auto& rule : p.rules) {
    if (rule.name.empty())
      throw policy_error("policy: every rule needs a name");
    if (!seen.insert(rule.name).second)
      throw policy_error("policy: two rules are named '" + rule.name + "'");
    if (!rule.caps.empty() && rule.decision != policy_decision::allow_with_caps)
      throw policy_error("policy rule '" + rule.name
                         + "': caps are only for allow_with_caps rules");
    if (rule.max_calls_per_run < 0)
      throw policy_error("policy rule '" + rule.name
                         + "': max_calls_per_run must not be negative");
    if (rule.ttl_ms < 0 || rule.ttl_ms > max_approval_ttl_ms)
      throw policy_error("policy rule '" + rule.name
                         + "': ttl_ms must be between 0 and "
                         + std::to_string(max_approval_ttl_ms) + " (7 days)");
    compile_constraints(rule, "when", rule.when, false);
    compile_constraints(rule, "require", rule.require, false);
    compile_constraints(rule, "caps", rule.caps, true);
  }
}

} // namespace troupe

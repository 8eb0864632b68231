#include "actors/scripted_model.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>
#include <regex>
#include <sstream>
#include <string_view>
#include <unordered_map>
#include <utility>

#include <caf/meta/type_name.hpp>
#include <caf/replies_to.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <caf/typed_response_promise.hpp>
#include <spdlog/spdlog.h>

#include "actors/model_codecs_detail.hpp"
#include "messages/errors.hpp"
#include "runtime/json_schema.hpp"
#include "runtime/safe_regex.hpp"

namespace troupe {

/// The scripted model's reminder to itself that a held-back reply is due.
/// Internal: only the actor itself holds a handle that accepts it.
struct scripted_model_due {
  uint64_t id = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, scripted_model_due& x) {
  return f(caf::meta::type_name("troupe::scripted_model_due"), x.id);
}

namespace {

// -- templates ----------------------------------------------------------------

/// One piece of a reply template: literal text or a placeholder.
struct template_part {
  enum kind_t { literal, last, goal, agent, step, group, tool };
  kind_t kind = literal;
  /// The literal text, or for `tool` the tool's name.
  std::string text;
  int group_index = 0;
  /// For `tool`: the JSON pointer into the tool's result ("" = all of it).
  std::string pointer;
};

using text_template = std::vector<template_part>;

/// What placeholders expand to for one request.
struct template_context {
  const std::string* last = nullptr;
  const std::string* goal = nullptr;
  const std::string* agent = nullptr;
  int64_t step = 0;
  /// Regex groups, [0] the whole match; empty without a regex.
  std::vector<std::string> groups;
  /// The conversation, for {{tool:NAME:/pointer}}.
  const std::vector<chat_message>* messages = nullptr;
};

/// Parses "tool:NAME" or "tool:NAME:/json/pointer" into `part`; false when
/// `name` is not of that form.
bool parse_tool_placeholder(const std::string& name, template_part& part) {
  static constexpr std::string_view prefix = "tool:";
  if (name.compare(0, prefix.size(), prefix) != 0)
    return false;
  auto rest = name.substr(prefix.size());
  auto colon = rest.find(':');
  auto tool = rest.substr(0, colon);
  std::string pointer = colon == std::string::npos ? "" : rest.substr(colon + 1);
  if (tool.empty() || !std::all_of(tool.begin(), tool.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_'
               || c == '-' || c == '.';
      }))
    return false;
  if (!pointer.empty() && pointer[0] != '/')
    return false;
  try {
    json::json_pointer check{pointer};
  } catch (const json::exception&) {
    return false;
  }
  part.kind = template_part::tool;
  part.text = std::move(tool);
  part.pointer = std::move(pointer);
  return true;
}

/// The latest result of tool `part.text` in the conversation, or the value at
/// `part.pointer` inside it; empty when there is none.
std::string tool_value(const template_part& part, const template_context& ctx) {
  if (ctx.messages == nullptr)
    return {};
  for (auto i = ctx.messages->rbegin(); i != ctx.messages->rend(); ++i) {
    if (i->role != chat_role::tool || i->name != part.text)
      continue;
    if (part.pointer.empty())
      return i->content;
    auto doc = json::parse(i->content, nullptr, false);
    if (doc.is_discarded())
      return {};
    json::json_pointer ptr{part.pointer};
    if (!doc.contains(ptr))
      return {};
    const auto& value = doc.at(ptr);
    return value.is_string()
             ? value.get<std::string>()
             : safe_dump(value);
  }
  return {};
}

bool is_word(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
}

/// Splits `text` into literal runs and `{{name}}` placeholders. Returns the
/// unknown placeholder's name in `unknown` (and an empty template) when `text`
/// uses a word-like placeholder troupe does not know; text such as `{{ x }}`
/// that is not word-like stays literal.
text_template compile_template(const std::string& text, std::string& unknown) {
  text_template out;
  std::string literal;
  size_t pos = 0;
  while (pos < text.size()) {
    auto open = text.find("{{", pos);
    if (open == std::string::npos)
      break;
    auto close = text.find("}}", open + 2);
    if (close == std::string::npos)
      break;
    auto name = text.substr(open + 2, close - open - 2);
    template_part part;
    if (name == "last")
      part.kind = template_part::last;
    else if (name == "goal")
      part.kind = template_part::goal;
    else if (name == "agent")
      part.kind = template_part::agent;
    else if (name == "step")
      part.kind = template_part::step;
    else if (name.size() == 1 && name[0] >= '0' && name[0] <= '9') {
      part.kind = template_part::group;
      part.group_index = name[0] - '0';
    } else if (parse_tool_placeholder(name, part)) {
      // {{tool:NAME}} or {{tool:NAME:/pointer}}
    } else if (is_word(name) || name.compare(0, 5, "tool:") == 0) {
      unknown = name;
      return {};
    } else {
      literal.append(text, pos, open + 2 - pos);
      pos = open + 2;
      continue;
    }
    literal.append(text, pos, open - pos);
    if (!literal.empty()) {
      out.push_back(
        template_part{template_part::literal, std::move(literal), 0, {}});
      literal.clear();
    }
    out.push_back(std::move(part));
    pos = close + 2;
  }
  literal.append(text, pos, std::string::npos);
  if (!literal.empty())
    out.push_back(template_part{template_part::literal, std::move(literal), 0, {}});
  return out;
}

std::string expand(const text_template& tpl, const template_context& ctx) {
  std::string out;
  for (auto& part : tpl) {
    switch (part.kind) {
      case template_part::literal:
        out += part.text;
        break;
      case template_part::last:
        out += *ctx.last;
        break;
      case template_part::goal:
        out += *ctx.goal;
        break;
      case template_part::agent:
        out += *ctx.agent;
        break;
      case template_part::step:
        out += std::to_string(ctx.step);
        break;
      case template_part::group:
        if (static_cast<size_t>(part.group_index) < ctx.groups.size())
          out += ctx.groups[static_cast<size_t>(part.group_index)];
        break;
      case template_part::tool:
        out += tool_value(part, ctx);
        break;
    }
  }
  return out;
}

/// Highest regex group a template refers to (0 when none).
int max_group(const text_template& tpl) {
  int result = 0;
  for (auto& part : tpl)
    if (part.kind == template_part::group)
      result = std::max(result, part.group_index);
  return result;
}

/// Expands every string value inside `doc` (keys stay as written). Templates
/// were validated at load, so compiling again cannot fail.
json expand_json(const json& doc, const template_context& ctx) {
  if (doc.is_string()) {
    std::string unknown;
    return expand(
      compile_template(doc.get_ref<const std::string&>(), unknown), ctx);
  }
  if (doc.is_array()) {
    auto out = json::array();
    for (auto& x : doc)
      out.push_back(expand_json(x, ctx));
    return out;
  }
  if (doc.is_object()) {
    auto out = json::object();
    for (auto& [key, value] : doc.items())
      out[key] = expand_json(value, ctx);
    return out;
  }
  return doc;
}

// -- the compiled script ------------------------------------------------------

struct tool_call_spec {
  std::string name;
  /// Set when the script gives "arguments": string values are templates.
  std::optional<json> arguments;
  /// Set when the script gives "arguments_raw": parsed like a provider's text.
  std::optional<text_template> arguments_raw;
};

struct rule_spec {
  /// The rule's pointer, "/rules/N".
  std::string pointer;
  /// The rule's name, or its pointer when unnamed.
  std::string label;
  std::optional<std::string> agent;
  std::optional<chat_role> role;
  std::optional<std::string> contains;
  std::optional<std::regex> regex;
  std::string regex_text;
  std::optional<int64_t> step_min;
  std::optional<int64_t> step_max;
  std::optional<text_template> content;
  std::vector<tool_call_spec> tool_calls;
  std::optional<int64_t> input_tokens;
  std::optional<int64_t> output_tokens;
  std::optional<std::string> finish_reason;
  std::chrono::milliseconds latency{0};

  /// True when the rule matches every request.
  bool unconditional() const {
    return !agent && !role && !contains && !regex && !step_min && !step_max;
  }
};

/// True when `text` compiles as a plain ECMAScript regex.
bool plain_regex_ok(const std::string& text) {
  try {
    std::regex probe{text, std::regex::ECMAScript};
    return true;
  } catch (const std::regex_error&) {
    return false;
  }
}

/// Longest latency a script may ask for; more is almost surely a unit mistake.
constexpr int64_t max_latency_ms = 3'600'000;

// -- validation ---------------------------------------------------------------


/// Builds rules from JSON, throwing script_error at the first bad value.
class script_parser {
public:
  explicit script_parser(const std::string& origin) : origin_(origin) {
  }

  [[noreturn]] void fail(
    const std::string& pointer, const std::string& what) const {
    if (pointer.empty())
      throw script_error(origin_ + ": " + what);
    throw script_error(origin_ + ": " + pointer + ": " + what);
  }

  void expect_object(const json& j, const std::string& ptr) const {
    if (!j.is_object())
      fail(ptr, std::string{"must be an object, not "} + j.type_name());
  }

  void check_keys(const json& j, const std::string& ptr,
    std::initializer_list<const char*> known) const {
    for (auto& item : j.items()) {
      auto hit = std::any_of(known.begin(), known.end(),
        [&item](const char* k) { return item.key() == k; });
      if (!hit) {
        std::string list;
        for (auto k : known) {
          if (!list.empty())
            list += ", ";
          list += k;
        }
        fail(append_pointer(ptr, item.key()),
          "unknown key \"" + item.key() + "\" (expected one of: " + list + ")");
      }
    }
  }

  std::string get_string(
    const json& j, const std::string& ptr, bool allow_empty) const {
    if (!j.is_string())
      fail(ptr, std::string{"must be a string, not "} + j.type_name());
    auto& s = j.get_ref<const std::string&>();
    if (!allow_empty && s.empty())
      fail(ptr, "must not be empty");
    return s;
  }

  int64_t get_int(const json& j, const std::string& ptr, int64_t min) const {
    if (!j.is_number_integer())
      fail(ptr, std::string{"must be an integer, not "}
                  + (j.is_number() ? "a fraction" : j.type_name()));
    if (j.is_number_unsigned()
        && j.get<uint64_t>()
             > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(ptr, "is too large");
    auto value = j.get<int64_t>();
    if (value < min) {
      if (min == 0)
        fail(ptr, "must not be negative");
      fail(ptr, "must be at least " + std::to_string(min));
    }
    return value;
  }

  text_template get_template(const json& j, const std::string& ptr) const {
    auto text = get_string(j, ptr, true);
    return compile(text, ptr);
  }

  text_template compile(const std::string& text, const std::string& ptr) const {
    std::string unknown;
    auto tpl = compile_template(text, unknown);
    if (!unknown.empty())
      fail(ptr, "unknown template {{" + unknown
                  + "}} (known: {{last}}, {{goal}}, {{agent}}, {{step}}, "
                    "{{0}}..{{9}}, {{tool:NAME}}, {{tool:NAME:/pointer}})");
    return tpl;
  }

  /// Validates the templates in every string value of `j`; returns the
  /// highest regex group they use.
  int check_json_templates(const json& j, const std::string& ptr) const {
    if (j.is_string())
      return max_group(compile(j.get_ref<const std::string&>(), ptr));
    int result = 0;
    if (j.is_array()) {
      size_t i = 0;
      for (auto& x : j)
        result = std::max(
          result, check_json_templates(x, ptr + "/" + std::to_string(i++)));
    } else if (j.is_object()) {
      for (auto& item : j.items())
        result
          = std::max(result, check_json_templates(item.value(),
                               append_pointer(ptr, item.key())));
    }
    return result;
  }

  std::vector<rule_spec> parse(const json& doc) const {
    if (!doc.is_object())
      fail("", std::string{"a script must be a JSON object with a \"rules\" "
                           "array, not "}
                 + doc.type_name());
    check_keys(doc, "", {"rules", "description"});
    if (auto i = doc.find("description"); i != doc.end())
      get_string(*i, "/description", true);
    auto rules = doc.find("rules");
    if (rules == doc.end())
      fail("", "a script needs a \"rules\" array");
    if (!rules->is_array())
      fail(
        "/rules", std::string{"must be an array, not "} + rules->type_name());
    if (rules->empty())
      fail("/rules", "must hold at least one rule");
    std::vector<rule_spec> out;
    out.reserve(rules->size());
    for (size_t i = 0; i < rules->size(); ++i)
      out.push_back(parse_rule((*rules)[i], "/rules/" + std::to_string(i)));
    warn_unreachable(out);
    return out;
  }

private:
  rule_spec parse_rule(const json& j, const std::string& ptr) const {
    expect_object(j, ptr);
    check_keys(
      j, ptr, {"name", "agent", "role", "contains", "regex", "step", "reply"});
    rule_spec r;
    r.pointer = ptr;
    r.label = ptr;
    if (auto i = j.find("name"); i != j.end())
      r.label = get_string(*i, ptr + "/name", false);
    if (auto i = j.find("agent"); i != j.end()) {
      auto agent = get_string(*i, ptr + "/agent", false);
      if (agent != "*")
        r.agent = std::move(agent);
    }
    if (auto i = j.find("role"); i != j.end()) {
      auto role = get_string(*i, ptr + "/role", false);
      if (role == "system")
        r.role = chat_role::system;
      else if (role == "user")
        r.role = chat_role::user;
      else if (role == "assistant")
        r.role = chat_role::assistant;
      else if (role == "tool")
        r.role = chat_role::tool;
      else
        fail(
          ptr + "/role", "unknown role \"" + role
                           + "\" (expected system, user, assistant or tool)");
    }
    if (auto i = j.find("contains"); i != j.end())
      r.contains = get_string(*i, ptr + "/contains", false);
    if (auto i = j.find("regex"); i != j.end()) {
      r.regex_text = get_string(*i, ptr + "/regex", false);
      try {
        r.regex.emplace(r.regex_text, safe_regex_flags);
      } catch (const std::regex_error& e) {
        if (safe_regex_flags != std::regex::ECMAScript
            && plain_regex_ok(r.regex_text))
          fail(ptr + "/regex", "backreferences (\\1) are not supported");
        fail(ptr + "/regex",
          std::string{"invalid regular expression: "} + e.what());
      }
    }
    if (auto i = j.find("step"); i != j.end())
      parse_step(*i, ptr + "/step", r);
    auto reply = j.find("reply");
    if (reply == j.end())
      fail(ptr, "a rule needs a \"reply\"");
    auto groups = parse_reply(*reply, ptr + "/reply", r);
    if (!r.regex && groups > 0)
      spdlog::warn("scripted model {}: {}: reply uses {{{{{}}}}} but the rule "
                   "has no regex; it expands to nothing",
        origin_, ptr, groups);
    else if (r.regex && static_cast<size_t>(groups) > r.regex->mark_count())
      spdlog::warn(
        "scripted model {}: {}: reply uses {{{{{}}}}} but the rule's "
        "regex has {} group(s); it expands to nothing",
        origin_, ptr, groups, r.regex->mark_count());
    return r;
  }

  void parse_step(const json& j, const std::string& ptr, rule_spec& r) const {
    if (j.is_object()) {
      check_keys(j, ptr, {"min", "max"});
      if (j.empty())
        fail(ptr, "needs \"min\", \"max\" or both");
      if (auto i = j.find("min"); i != j.end())
        r.step_min = get_int(*i, ptr + "/min", 1);
      if (auto i = j.find("max"); i != j.end())
        r.step_max = get_int(*i, ptr + "/max", 1);
      if (r.step_min && r.step_max && *r.step_min > *r.step_max)
        fail(ptr, "min (" + std::to_string(*r.step_min)
                    + ") is greater than max (" + std::to_string(*r.step_max)
                    + ")");
      return;
    }
    if (!j.is_number())
      fail(
        ptr, std::string{"must be a step number or {\"min\": a, \"max\": b}, "
                         "not "}
               + j.type_name());
    r.step_min = r.step_max = get_int(j, ptr, 1);
  }

  /// Returns the highest regex group the reply's templates use.
  int parse_reply(const json& j, const std::string& ptr, rule_spec& r) const {
    expect_object(j, ptr);
    check_keys(j, ptr,
      {"content", "tool_calls", "usage", "finish_reason", "latency_ms"});
    int groups = 0;
    if (auto i = j.find("content"); i != j.end()) {
      r.content = get_template(*i, ptr + "/content");
      groups = max_group(*r.content);
    }
    if (auto i = j.find("tool_calls"); i != j.end()) {
      if (!i->is_array())
        fail(ptr + "/tool_calls",
          std::string{"must be an array, not "} + i->type_name());
      for (size_t k = 0; k < i->size(); ++k)
        groups
          = std::max(groups, parse_tool_call((*i)[k],
                               ptr + "/tool_calls/" + std::to_string(k), r));
    }
    if (!r.content && r.tool_calls.empty())
      fail(ptr, "needs content or tool_calls");
    if (auto i = j.find("usage"); i != j.end()) {
      auto uptr = ptr + "/usage";
      expect_object(*i, uptr);
      check_keys(*i, uptr, {"input_tokens", "output_tokens"});
      if (auto k = i->find("input_tokens"); k != i->end())
        r.input_tokens = get_int(*k, uptr + "/input_tokens", 0);
      if (auto k = i->find("output_tokens"); k != i->end())
        r.output_tokens = get_int(*k, uptr + "/output_tokens", 0);
    }
    if (auto i = j.find("finish_reason"); i != j.end())
      r.finish_reason = get_string(*i, ptr + "/finish_reason", false);
    if (auto i = j.find("latency_ms"); i != j.end()) {
      auto ms = get_int(*i, ptr + "/latency_ms", 0);
      if (ms > max_latency_ms)
        fail(ptr + "/latency_ms",
          "must be at most " + std::to_string(max_latency_ms) + " (one hour)");
      r.latency = std::chrono::milliseconds{ms};
    }
    return groups;
  }

  int parse_tool_call(
    const json& j, const std::string& ptr, rule_spec& r) const {
    expect_object(j, ptr);
    check_keys(j, ptr, {"name", "arguments", "arguments_raw"});
    tool_call_spec call;
    auto name = j.find("name");
    if (name == j.end())
      fail(ptr, "a tool call needs a \"name\"");
    call.name = get_string(*name, ptr + "/name", false);
    auto args = j.find("arguments");
    auto raw = j.find("arguments_raw");
    if (args != j.end() && raw != j.end())
      fail(ptr, "give either \"arguments\" or \"arguments_raw\", not both");
    int groups = 0;
    if (args != j.end()) {
      if (!args->is_object())
        fail(ptr + "/arguments",
          std::string{"must be an object, not "} + args->type_name());
      groups = check_json_templates(*args, ptr + "/arguments");
      call.arguments = *args;
    } else if (raw != j.end()) {
      call.arguments_raw = get_template(*raw, ptr + "/arguments_raw");
      groups = max_group(*call.arguments_raw);
    } else {
      call.arguments = json::object();
    }
    r.tool_calls.push_back(std::move(call));
    return groups;
  }

  void warn_unreachable(const std::vector<rule_spec>& rules) const {
    for (size_t i = 0; i + 1 < rules.size(); ++i) {
      if (rules[i].unconditional()) {
        spdlog::warn("scripted model {}: {} matches every request; the {} "
                     "rule(s) after it can never match",
          origin_, rules[i].pointer, rules.size() - i - 1);
        return;
      }
    }
  }

  const std::string& origin_;
};

// -- replying -----------------------------------------------------------------

/// Tokens for `chars` characters: ceil(chars / 4), at least 1.
int64_t estimate_tokens(size_t chars) {
  return std::max<int64_t>(1, static_cast<int64_t>((chars + 3) / 4));
}

size_t message_chars(const chat_message& msg) {
  auto n = msg.content.size();
  for (auto& call : msg.tool_calls) {
    n += call.name.size();
    n += call.raw_arguments.empty() ? safe_dump(call.arguments.value).size()
                                    : call.raw_arguments.size();
  }
  return n;
}

/// At most `max` bytes of `text` on one line, cut at a UTF-8 boundary.
std::string excerpt(const std::string& text, size_t max = 200) {
  std::string flat;
  flat.reserve(std::min(text.size(), max + 4));
  for (char c : text) {
    if (flat.size() > max)
      break;
    auto u = static_cast<unsigned char>(c);
    flat += (u < 0x20 || u == 0x7f) ? ' ' : c;
  }
  if (flat.size() <= max)
    return flat;
  auto cut = max - 3;
  while (cut > 0 && (static_cast<unsigned char>(flat[cut]) & 0xC0) == 0x80)
    --cut;
  flat.resize(cut);
  flat += "...";
  return flat;
}

const char* role_name(chat_role role) {
  switch (role) {
    case chat_role::system:
      return "system";
    case chat_role::user:
      return "user";
    case chat_role::assistant:
      return "assistant";
    case chat_role::tool:
      return "tool";
  }
  return "unknown";
}

} // namespace

struct model_script::rule {
  rule_spec spec;
};

model_script::model_script(std::string origin) : origin_(std::move(origin)) {
}

model_script::~model_script() = default;

const std::string& model_script::origin() const {
  return origin_;
}

size_t model_script::size() const {
  return rules_.size();
}

std::shared_ptr<const model_script> model_script::parse(
  const json& doc, const std::string& origin) {
  script_parser parser{origin};
  auto specs = parser.parse(doc);
  std::shared_ptr<model_script> script{new model_script(origin)};
  script->rules_.reserve(specs.size());
  for (auto& spec : specs)
    script->rules_.push_back(rule{std::move(spec)});
  spdlog::debug(
    "scripted model {}: loaded {} rule(s)", origin, script->rules_.size());
  return script;
}

std::shared_ptr<const model_script> model_script::load(
  const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  if (!in)
    throw script_error(
      path + ": cannot open the script file: " + std::strerror(errno));
  std::string text{
    std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
  if (in.bad())
    throw script_error(
      path + ": cannot read the script file: " + std::strerror(errno));
  json doc;
  try {
    doc = json::parse(text, nullptr, true, true);
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    if (auto pos = what.find("] "); pos != std::string::npos)
      what.erase(0, pos + 2);
    throw script_error(
      path + ": not valid JSON (byte " + std::to_string(e.byte) + "): " + what);
  }
  return parse(doc, path);
}

caf::expected<scripted_reply> model_script::select(
  const chat_request& req) const {
  if (req.messages.empty())
    return make_error(
      errc::invalid_input, origin_ + ": agent \"" + req.agent
                             + "\" sent a request without messages");
  auto& latest = req.messages.back();
  int64_t step = 1;
  const std::string* goal = nullptr;
  for (auto& msg : req.messages) {
    if (msg.role == chat_role::assistant)
      ++step;
    else if (msg.role == chat_role::user && goal == nullptr)
      goal = &msg.content;
  }
  static const std::string empty;
  template_context ctx;
  ctx.last = &latest.content;
  ctx.goal = goal != nullptr ? goal : &empty;
  ctx.agent = &req.agent;
  ctx.step = step;
  ctx.messages = &req.messages;
  const rule_spec* match = nullptr;
  for (auto& entry : rules_) {
    auto& r = entry.spec;
    if (r.agent && *r.agent != req.agent)
      continue;
    if (r.role && *r.role != latest.role)
      continue;
    if (r.contains && latest.content.find(*r.contains) == std::string::npos)
      continue;
    if ((r.step_min && step < *r.step_min)
        || (r.step_max && step > *r.step_max))
      continue;
    if (r.regex) {
      std::smatch m;
      try {
        if (!std::regex_search(latest.content, m, *r.regex))
          continue;
      } catch (const std::regex_error& e) {
        return make_error(errc::model_failed,
          origin_ + ": " + r.pointer + ": regex search failed: " + e.what());
      }
      ctx.groups.clear();
      for (auto& sub : m)
        ctx.groups.push_back(sub.matched ? sub.str() : std::string{});
    }
    match = &r;
    break;
  }
  if (match == nullptr)
    return make_error(errc::no_matching_rule,
      origin_ + ": no rule matches agent \"" + req.agent + "\" at step "
        + std::to_string(step) + "; latest message (" + role_name(latest.role)
        + "): \"" + excerpt(latest.content) + "\"");
  auto& r = *match;
  scripted_reply out;
  out.rule = r.label;
  out.latency = r.latency;
  auto& resp = out.response;
  resp.model = "scripted:" + origin_;
  resp.message.role = chat_role::assistant;
  if (r.content)
    resp.message.content = expand(*r.content, ctx);
  for (size_t i = 0; i < r.tool_calls.size(); ++i) {
    auto& spec = r.tool_calls[i];
    model_tool_call call;
    call.id = "call_" + std::to_string(step) + "_" + std::to_string(i);
    call.name = spec.name;
    if (spec.arguments_raw) {
      // Parsed as the provider codecs parse a model's argument text.
      detail::parse_tool_arguments(call, expand(*spec.arguments_raw, ctx));
    } else {
      // Round-trip through text so the arguments hold valid UTF-8 even when
      // a template copied invalid bytes from the conversation.
      detail::parse_tool_arguments(call,
                                   safe_dump(expand_json(*spec.arguments, ctx)));
    }
    resp.message.tool_calls.push_back(std::move(call));
  }
  if (r.finish_reason)
    resp.finish_reason = *r.finish_reason;
  else
    resp.finish_reason
      = resp.message.tool_calls.empty() ? "stop" : "tool_calls";
  if (r.input_tokens) {
    resp.usage.input_tokens = *r.input_tokens;
  } else {
    size_t chars = 0;
    for (auto& msg : req.messages)
      chars += message_chars(msg);
    resp.usage.input_tokens = estimate_tokens(chars);
  }
  if (r.output_tokens)
    resp.usage.output_tokens = *r.output_tokens;
  else
    resp.usage.output_tokens = estimate_tokens(message_chars(resp.message));
  return out;
}

caf::expected<chat_response> model_script::reply(
  const chat_request& req) const {
  auto selected = select(req);
  if (!selected)
    return std::move(selected.error());
  return std::move(selected->response);
}

// -- the actor ----------------------------------------------------------------

namespace {

/// model_actor plus the reminder the actor sends itself for delayed replies.
using scripted_model_impl
  = model_actor::extend<caf::reacts_to<scripted_model_due>>;

struct pending_reply {
  caf::typed_response_promise<chat_response> promise;
  chat_response response;
};

struct scripted_model_state {
  static inline const char* name = "troupe.scripted_model";
  std::shared_ptr<const model_script> script;
  /// Replies held back for their latency, by reminder id.
  std::unordered_map<uint64_t, pending_reply> pending;
  uint64_t next_id = 0;
};

scripted_model_impl::behavior_type scripted_model(
  scripted_model_impl::stateful_pointer<scripted_model_state> self,
  std::shared_ptr<const model_script> script) {
  self->state.script = std::move(script);
  return {
    [self](const chat_request& req) -> caf::result<chat_response> {
      auto& script = *self->state.script;
      auto selected = script.select(req);
      if (!selected) {
        spdlog::debug("scripted model {}: {}", script.origin(),
          error_text(selected.error()));
        return std::move(selected.error());
      }
      spdlog::debug("scripted model {}: agent {} -> rule {} (latency {} ms)",
        script.origin(), req.agent, selected->rule, selected->latency.count());
      if (selected->latency.count() <= 0)
        return std::move(selected->response);
      auto promise = self->make_response_promise<chat_response>();
      auto id = self->state.next_id++;
      self->state.pending.emplace(
        id, pending_reply{promise, std::move(selected->response)});
      self->delayed_send(self, selected->latency, scripted_model_due{id});
      return promise;
    },
    [self](const scripted_model_due& due) {
      auto i = self->state.pending.find(due.id);
      if (i == self->state.pending.end())
        return;
      auto entry = std::move(i->second);
      self->state.pending.erase(i);
      entry.promise.deliver(std::move(entry.response));
    },
  };
}

} // namespace

model_actor spawn_scripted_model(
  caf::actor_system& sys, std::shared_ptr<const model_script> script) {
  if (script == nullptr)
    throw std::invalid_argument("spawn_scripted_model: script is null");
  return sys.spawn(scripted_model, std::move(script));
}

} // namespace troupe

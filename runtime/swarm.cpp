#include "runtime/swarm.hpp"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <functional>
#include <limits>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "actors/scripted_model.hpp"
#include "runtime/builtin_tools.hpp"
#include "runtime/json_schema.hpp"
#include "runtime/runtime.hpp"
#include "supervisors/pipeline.hpp"

namespace troupe {

namespace fs = std::filesystem;

namespace {

constexpr const char* scripted_prefix = "scripted:";

/// Names as one comma-separated list, for messages.
template <class Names>
std::string join(const Names& names, const char* sep = ", ") {
  std::string out;
  for (const auto& name : names)
    out += (out.empty() ? "" : sep) + std::string{name};
  return out;
}

/// A number as short text for messages: 0.8, 1e+09.
std::string format_number(double x) {
  std::ostringstream out;
  out << x;
  return out.str();
}

/// Reads fields of one JSON object, naming file and pointer in every error.
class object_reader {
public:
  object_reader(const std::string& origin, std::string pointer, const json& obj)
    : origin_(origin), pointer_(std::move(pointer)), obj_(obj) {
    if (!obj_.is_object())
      fail(pointer_, std::string{"must be a JSON object, got "}
                       + obj_.type_name());
  }

  [[noreturn]] void fail(const std::string& pointer,
                         const std::string& what) const {
    throw swarm_error(origin_ + ": " + (pointer.empty() ? "/" : pointer) + ": "
                      + what);
  }

  std::string at(const std::string& key) const {
    return append_pointer(pointer_, key);
  }

  /// Rejects keys not in `known` (usually typos).
  void only(std::initializer_list<const char*> known) const {
    for (auto& item : obj_.items()) {
      auto hit = std::any_of(known.begin(), known.end(), [&](const char* k) {
        return item.key() == k;
      });
      if (!hit) {
        std::string list;
        for (auto k : known)
          list += (list.empty() ? "" : ", ") + std::string{k};
        fail(at(item.key()), "unknown field (expected one of: " + list + ")");
      }
    }
  }

  bool has(const std::string& key) const {
    return obj_.contains(key);
  }

  std::string str(const std::string& key, bool required,
                  const std::string& fallback = "") const {
    if (!obj_.contains(key)) {
      if (required)
        fail(pointer_, "missing required field '" + key + "'");
      return fallback;
    }
    const auto& v = obj_.at(key);
    if (!v.is_string())
      fail(at(key), std::string{"must be a string, got "} + v.type_name());
    return v.get<std::string>();
  }

  /// A required, non-empty string: the name of something.
  std::string name(const std::string& key) const {
    auto out = str(key, true);
    if (out.empty())
      fail(at(key), "must not be empty");
    return out;
  }

  int64_t integer(const std::string& key, int64_t fallback, int64_t min,
                  int64_t max) const {
    if (!obj_.contains(key))
      return fallback;
    const auto& v = obj_.at(key);
    if (!v.is_number_integer())
      fail(at(key), std::string{"must be an integer, got "} + v.type_name());
    // An unsigned value past int64_t's range would wrap around.
    auto x = v.is_number_unsigned()
                 && v.get<uint64_t>()
                      > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
               ? std::numeric_limits<int64_t>::max()
               : v.get<int64_t>();
    if (x < min || x > max)
      fail(at(key), "must be between " + std::to_string(min) + " and "
                      + std::to_string(max) + ", got " + v.dump());
    return x;
  }

  const json& get(const std::string& key) const {
    return obj_.at(key);
  }

  /// A non-empty array of non-empty strings without repeats.
  std::vector<std::string> names(const std::string& key, bool required,
                                 size_t min_size = 1) const {
    std::vector<std::string> out;
    if (!obj_.contains(key)) {
      if (required)
        fail(pointer_, "missing required field '" + key + "'");
      return out;
    }
    const auto& v = obj_.at(key);
    if (!v.is_array())
      fail(at(key), std::string{"must be an array of names, got "}
                      + v.type_name());
    for (size_t i = 0; i < v.size(); ++i) {
      auto p = append_pointer(at(key), std::to_string(i));
      if (!v[i].is_string() || v[i].get<std::string>().empty())
        fail(p, "must be a non-empty name");
      auto name = v[i].get<std::string>();
      if (std::find(out.begin(), out.end(), name) != out.end())
        fail(p, "'" + name + "' is listed twice");
      out.push_back(std::move(name));
    }
    if (out.size() < min_size)
      fail(at(key), "needs at least " + std::to_string(min_size) + " name(s), got "
                      + std::to_string(out.size()));
    return out;
  }

  const std::string& pointer() const {
    return pointer_;
  }

private:
  const std::string& origin_;
  std::string pointer_;
  const json& obj_;
};

/// "scripted:x.json" relative to the swarm file's folder.
std::string resolve_model(const std::string& model, const std::string& base_dir) {
  if (model.rfind(scripted_prefix, 0) != 0)
    return model;
  fs::path file = model.substr(std::char_traits<char>::length(scripted_prefix));
  if (file.empty() || file.is_absolute() || base_dir.empty())
    return model;
  return scripted_prefix + (fs::path{base_dir} / file).lexically_normal().string();
}

/// Checks that a swarm names a model troupe can make.
void check_model_name(const object_reader& r, const std::string& pointer,
                      const std::string& model) {
  if (split_model_name(model).first.empty())
    r.fail(pointer, "model '" + model
                      + "' must be scripted:FILE, openai:MODEL_ID or "
                        "anthropic:MODEL_ID");
}

std::string resolve_path(const std::string& path, const std::string& base_dir) {
  fs::path p = path;
  if (p.is_absolute() || base_dir.empty())
    return path;
  return (fs::path{base_dir} / p).lexically_normal().string();
}

/// A number in [min, max] (a share, a rate).
double number(const object_reader& r, const std::string& key, double fallback,
              double min, double max) {
  if (!r.has(key))
    return fallback;
  const auto& v = r.get(key);
  if (!v.is_number())
    r.fail(r.at(key), std::string{"must be a number, got "} + v.type_name());
  auto x = v.get<double>();
  if (!(x >= min && x <= max))
    r.fail(r.at(key), "must be between " + format_number(min) + " and "
                        + format_number(max) + ", got " + format_number(x));
  return x;
}

bool boolean(const object_reader& r, const std::string& key, bool fallback) {
  if (!r.has(key))
    return fallback;
  const auto& v = r.get(key);
  if (!v.is_boolean())
    r.fail(r.at(key), std::string{"must be true or false, got "}
                        + v.type_name());
  return v.get<bool>();
}

std::chrono::milliseconds millis(const object_reader& r, const std::string& key,
                                 std::chrono::milliseconds fallback,
                                 int64_t min = 0) {
  return std::chrono::milliseconds{
    r.integer(key, fallback.count(), min, 7 * 24 * 3600 * 1000LL)};
}

/// An entry of /models: how one model is reached and guarded.
model_settings parse_model_settings(const std::string& model, const json& doc,
                                    const std::string& pointer,
                                    const std::string& origin,
                                    const std::string& base_dir) {
  object_reader r{origin, pointer, doc};
  r.only({"base_url", "api_key_env", "stream", "connect_timeout_ms",
          "request_timeout_ms", "retry", "default_max_tokens", "fallback",
          "cache"});
  model_settings s;
  auto kind = split_model_name(model).first;
  bool http = kind == "openai" || kind == "anthropic";
  for (const char* key : {"base_url", "api_key_env", "stream",
                          "connect_timeout_ms", "request_timeout_ms", "retry",
                          "default_max_tokens"})
    if (!http && r.has(key))
      r.fail(r.at(key), std::string{"only HTTP models (openai:, anthropic:) "
                                    "take '"} + key + "'");
  s.base_url = r.str("base_url", false);
  if (!s.base_url.empty() && s.base_url.rfind("http://", 0) != 0
      && s.base_url.rfind("https://", 0) != 0)
    r.fail(r.at("base_url"), "must start with http:// or https://");
  if (url_has_user_info(s.base_url))
    r.fail(r.at("base_url"), "must not carry user info (user:password@); the "
                             "key comes from the environment");
  s.api_key_env = r.str("api_key_env", false);
  // The name of a variable, never its value: a key pasted here by mistake
  // is refused without being repeated.
  if (r.has("api_key_env") && !is_env_var_name(s.api_key_env))
    r.fail(r.at("api_key_env"), "must name an environment variable (letters, "
                                "digits and _, not starting with a digit); "
                                "put the key itself in that variable");
  s.stream = boolean(r, "stream", false);
  s.connect_timeout = millis(r, "connect_timeout_ms", s.connect_timeout, 1);
  s.request_timeout = millis(r, "request_timeout_ms", s.request_timeout, 1);
  s.default_max_tokens =
    r.integer("default_max_tokens", s.default_max_tokens, 1, 10000000);
  if (r.has("retry")) {
    object_reader x{origin, r.at("retry"), r.get("retry")};
    x.only({"max_retries", "base_ms", "cap_ms", "max_retry_after_ms"});
    auto& p = s.retry;
    p.max_retries =
      static_cast<int32_t>(x.integer("max_retries", p.max_retries, 0, 100));
    p.base = millis(x, "base_ms", p.base);
    p.cap = millis(x, "cap_ms", p.cap);
    p.max_retry_after = millis(x, "max_retry_after_ms", p.max_retry_after);
    if (p.base > p.cap)
      x.fail(x.at("base_ms"), "must not exceed cap_ms");
  }
  s.fallback = r.names("fallback", false);
  for (size_t i = 0; i < s.fallback.size(); ++i) {
    auto at = append_pointer(r.at("fallback"), std::to_string(i));
    s.fallback[i] = resolve_model(s.fallback[i], base_dir);
    check_model_name(r, at, s.fallback[i]);
    if (s.fallback[i] == model)
      r.fail(at, "a model cannot fall back to itself");
  }
  if (r.has("cache")) {
    const auto& c = r.get("cache");
    if (c.is_boolean()) {
      s.cache = c.get<bool>();
    } else {
      object_reader x{origin, r.at("cache"), c};
      x.only({"max_entries", "ttl_ms"});
      s.cache = true;
      s.cache_config.max_entries = static_cast<size_t>(
        x.integer("max_entries", 1024, 1, 100000000));
      s.cache_config.ttl = millis(x, "ttl_ms", s.cache_config.ttl, 1);
    }
  }
  return s;
}

/// An enum field read through its JSON names.
template <class Enum>
Enum enum_value(const object_reader& r, const std::string& key, Enum fallback) {
  if (!r.has(key))
    return fallback;
  try {
    return r.get(key).get<Enum>();
  } catch (const std::exception& ex) {
    r.fail(r.at(key), ex.what());
  }
}

std::vector<tool_error_kind> error_kinds(const object_reader& r,
                                         const std::string& key,
                                         std::vector<tool_error_kind> fallback) {
  if (!r.has(key))
    return fallback;
  const auto& v = r.get(key);
  if (!v.is_array())
    r.fail(r.at(key), "must be an array of error kinds");
  std::vector<tool_error_kind> out;
  for (size_t i = 0; i < v.size(); ++i) {
    try {
      out.push_back(v[i].get<tool_error_kind>());
    } catch (const std::exception& ex) {
      r.fail(append_pointer(r.at(key), std::to_string(i)), ex.what());
    }
  }
  return out;
}

limiter_config parse_limits(const json& doc, const std::string& pointer,
                            const std::string& origin) {
  object_reader r{origin, pointer, doc};
  r.only({"rate_per_sec", "requests_per_minute", "tokens_per_minute", "burst",
          "max_concurrent", "max_concurrent_per_agent", "max_wait_ms",
          "max_queue"});
  limiter_config out;
  out.rate_per_sec = number(r, "rate_per_sec", 0, 0, 1e9);
  if (r.has("requests_per_minute")) {
    if (r.has("rate_per_sec"))
      r.fail(r.at("requests_per_minute"),
             "set rate_per_sec or requests_per_minute, not both");
    out.rate_per_sec = number(r, "requests_per_minute", 0, 0, 6e10) / 60;
  }
  out.tokens_per_minute = number(r, "tokens_per_minute", 0, 0, 1e12);
  out.burst = static_cast<int32_t>(r.integer("burst", 1, 1, 1000000));
  out.max_concurrent =
    static_cast<int32_t>(r.integer("max_concurrent", 0, 0, 1000000));
  out.max_concurrent_per_agent =
    static_cast<int32_t>(r.integer("max_concurrent_per_agent", 0, 0, 1000000));
  out.max_wait = millis(r, "max_wait_ms", out.max_wait);
  out.max_queue = static_cast<int32_t>(r.integer("max_queue", out.max_queue, 0,
                                                 100000000));
  return out;
}

/// A tool's entry under /tools: a builtin's settings or a declared tool,
/// with its guards.
tool_declaration parse_tool(const std::string& name, const json& doc,
                            const std::string& pointer,
                            const std::string& origin,
                            const std::string& base_dir) {
  object_reader r{origin, pointer, doc};
  tool_declaration t;
  t.name = name;
  auto builtins = builtin_tool_names();
  bool builtin = std::find(builtins.begin(), builtins.end(), name)
                 != builtins.end();
  t.kind = r.str("kind", !builtin, "builtin");
  if (builtin && t.kind != "builtin")
    r.fail(r.at("kind"), "'" + name + "' is a builtin tool; pick another "
                         "name for a " + t.kind + " tool");
  if (!builtin && t.kind == "builtin")
    r.fail(r.at("kind"), "'" + name + "' is not a builtin tool (builtin "
                         "tools: " + join(builtins, ", ") + "); declare it "
                         "as a lookup, journal or remote tool");
  if (t.kind == "builtin") {
    if (name == "kv_lookup") {
      r.only({"kind", "file", "timeout_ms", "retry", "breaker", "limits",
              "idempotency"});
      t.settings["file"] = resolve_path(r.str("file", true), base_dir);
    } else {
      r.only({"kind", "timeout_ms", "retry", "breaker", "limits",
              "idempotency"});
    }
  } else if (t.kind == "lookup") {
    r.only({"kind", "description", "file", "key", "timeout_ms", "retry",
            "breaker", "limits", "idempotency"});
    t.settings = {{"description", r.str("description", false)},
                  {"file", resolve_path(r.str("file", true), base_dir)},
                  {"key", r.str("key", false, "id")}};
    if (t.settings["key"].get<std::string>().empty())
      r.fail(r.at("key"), "must not be empty");
  } else if (t.kind == "journal") {
    r.only({"kind", "description", "file", "parameters", "result",
            "fail_first", "failure", "delay_first", "delay_ms", "timeout_ms",
            "retry", "breaker", "limits", "idempotency", "dedupe_by_key"});
    // Relative to the working directory: a run never writes into the
    // swarm's own folder.
    t.settings = {{"description", r.str("description", false)},
                  {"file", r.str("file", true)},
                  {"result", r.str("result", false, "done")},
                  {"fail_first", r.integer("fail_first", 0, 0, 1000000)},
                  {"delay_first", r.integer("delay_first", 0, 0, 1000000)},
                  {"delay_ms", r.integer("delay_ms", 0, 0, 600000)},
                  {"dedupe_by_key", boolean(r, "dedupe_by_key", false)}};
    auto failure = enum_value(r, "failure", tool_error_kind::transient);
    if (failure != tool_error_kind::transient
        && failure != tool_error_kind::permanent)
      r.fail(r.at("failure"), "must be \"transient\" or \"permanent\"");
    t.settings["failure"] = failure;
    if (r.has("parameters")) {
      const auto& params = r.get("parameters");
      try {
        json_schema check{params};
      } catch (const std::exception& ex) {
        r.fail(r.at("parameters"), ex.what());
      }
      if (!params.is_object() || params.value("type", "") != "object")
        r.fail(r.at("parameters"), "must be an object schema "
                                   "({\"type\": \"object\", ...})");
      t.settings["parameters"] = params;
    }
  } else if (t.kind == "remote") {
    // Hosted by cluster nodes; only its name is needed here.
    r.only({"kind", "description"});
    t.settings = {{"description", r.str("description", false)}};
  } else {
    r.fail(r.at("kind"), "unknown tool kind '" + t.kind
                           + "' (expected lookup, journal or remote)");
  }
  t.timeout = millis(r, "timeout_ms", std::chrono::milliseconds{0}, 0);
  if (r.has("retry")) {
    object_reader x{origin, r.at("retry"), r.get("retry")};
    x.only({"max_retries", "backoff", "base_ms", "cap_ms",
            "attempt_timeout_ms", "retry_on"});
    auto& p = t.guards.retry;
    p.max_retries = static_cast<int32_t>(x.integer("max_retries", 3, 0, 100));
    auto backoff = x.str("backoff", false, "exponential_jitter");
    if (backoff == "constant")
      p.backoff = backoff_kind::constant;
    else if (backoff == "linear")
      p.backoff = backoff_kind::linear;
    else if (backoff == "exponential_jitter")
      p.backoff = backoff_kind::exponential_jitter;
    else
      x.fail(x.at("backoff"), "unknown backoff '" + backoff
                                + "' (expected constant, linear or "
                                  "exponential_jitter)");
    p.base = millis(x, "base_ms", p.base);
    p.cap = millis(x, "cap_ms", p.cap);
    p.attempt_timeout = millis(x, "attempt_timeout_ms", p.attempt_timeout);
    p.retry_on = error_kinds(x, "retry_on", p.retry_on);
  }
  if (r.has("breaker")) {
    object_reader x{origin, r.at("breaker"), r.get("breaker")};
    x.only({"failure_threshold", "cooldown_ms", "half_open_probes", "trip_on"});
    auto& b = t.guards.breaker;
    b.failure_threshold =
      static_cast<int32_t>(x.integer("failure_threshold", 5, 1, 1000000));
    b.cooldown = millis(x, "cooldown_ms", b.cooldown, 1);
    b.half_open_probes =
      static_cast<int32_t>(x.integer("half_open_probes", 1, 1, 1000));
    b.trip_on = error_kinds(x, "trip_on", b.trip_on);
  }
  if (r.has("limits"))
    t.guards.limits = parse_limits(r.get("limits"), r.at("limits"), origin);
  if (r.has("idempotency")) {
    object_reader x{origin, r.at("idempotency"), r.get("idempotency")};
    x.only({"scope", "fields"});
    auto scope = x.str("scope", false, "call");
    if (scope == "call")
      t.idempotency.scope = idempotency_scope::call;
    else if (scope == "run")
      t.idempotency.scope = idempotency_scope::run;
    else if (scope == "global")
      t.idempotency.scope = idempotency_scope::global;
    else
      x.fail(x.at("scope"), "unknown scope '" + scope
                              + "' (expected call, run or global)");
    t.idempotency.fields = x.names("fields", false);
  }
  try {
    validate(t.guards, name);
  } catch (const std::invalid_argument& ex) {
    r.fail(pointer, ex.what());
  }
  return t;
}

budget_limits parse_limits_of_budget(const object_reader& r) {
  budget_limits out;
  out.max_steps = r.integer("max_steps", 0, 0, INT64_MAX);
  out.max_input_tokens = r.integer("max_input_tokens", 0, 0, INT64_MAX);
  out.max_output_tokens = r.integer("max_output_tokens", 0, 0, INT64_MAX);
  out.max_cost_usd = number(r, "max_cost_usd", 0, 0, max_budget_usd);
  return out;
}

agent_spec parse_agent(const json& doc,
                       const std::string& pointer, const std::string& origin,
                       const std::string& default_model,
                       const std::string& base_dir,
                       const std::set<std::string>& known) {
  object_reader r{origin, pointer, doc};
  r.only({"name", "role", "system_prompt", "model", "tools", "max_steps",
          "max_parallel_tools", "model_timeout_ms", "model_params",
          "usage_estimate", "confidence", "loops", "approval_ttl_ms",
          "nodes"});
  agent_spec spec;
  spec.name = r.name("name");
  spec.role = r.str("role", false);
  spec.system_prompt = r.str("system_prompt", false);
  if (r.has("usage_estimate")) {
    object_reader x{origin, r.at("usage_estimate"), r.get("usage_estimate")};
    x.only({"input_tokens", "output_tokens"});
    spec.usage_estimate.input_tokens =
      x.integer("input_tokens", 0, 0, 1000000000);
    spec.usage_estimate.output_tokens =
      x.integer("output_tokens", 0, 0, 1000000000);
  }
  if (r.has("confidence")) {
    object_reader x{origin, r.at("confidence"), r.get("confidence")};
    x.only({"field", "execute_at", "clarify_at", "alternative_at",
            "alternative_model", "max_reroutes"});
    auto& c = spec.confidence;
    c.enabled = true;
    c.field = x.str("field", false, c.field);
    c.execute_at = number(x, "execute_at", c.execute_at, 0, 1);
    c.clarify_at = number(x, "clarify_at", c.clarify_at, 0, 1);
    c.alternative_at = number(x, "alternative_at", c.alternative_at, 0, 1);
    if (!(c.alternative_at <= c.clarify_at && c.clarify_at <= c.execute_at))
      x.fail(x.pointer(), "thresholds must satisfy alternative_at <= "
                          "clarify_at <= execute_at");
    c.alternative_model = resolve_model(x.str("alternative_model", false),
                                        base_dir);
    c.max_reroutes = static_cast<int32_t>(x.integer("max_reroutes", 2, 0, 100));
  }
  if (r.has("loops")) {
    object_reader x{origin, r.at("loops"), r.get("loops")};
    x.only({"repeat_threshold", "stall_steps", "halt"});
    spec.loops.repeat_threshold = static_cast<int32_t>(
      x.integer("repeat_threshold", spec.loops.repeat_threshold, 0, 1000));
    spec.loops.stall_steps = static_cast<int32_t>(
      x.integer("stall_steps", spec.loops.stall_steps, 0, 1000));
    spec.loops.halt = boolean(x, "halt", false);
  }
  spec.approval_ttl = millis(r, "approval_ttl_ms", spec.approval_ttl, 1);
  spec.model = resolve_model(r.str("model", false, default_model), base_dir);
  if (!spec.model.empty())
    check_model_name(r, r.has("model") ? r.at("model") : pointer, spec.model);
  if (spec.model.empty())
    r.fail(pointer, "agent '" + spec.name
                      + "' has no model: set 'model' here or at the top level");
  spec.max_steps = static_cast<int32_t>(r.integer("max_steps", 10, 1, 10000));
  spec.max_parallel_tools =
    static_cast<int32_t>(r.integer("max_parallel_tools", 4, 1, 1024));
  spec.model_timeout = std::chrono::milliseconds{
    r.integer("model_timeout_ms", 120000, 1, 24 * 3600 * 1000)};
  if (r.has("model_params")) {
    if (!r.get("model_params").is_object())
      r.fail(r.at("model_params"), "must be a JSON object");
    spec.model_params = r.get("model_params");
  }
  if (r.has("tools")) {
    const auto& tools = r.get("tools");
    if (!tools.is_array())
      r.fail(r.at("tools"), std::string{"must be an array of tool names, got "}
                              + tools.type_name());
    std::set<std::string> seen;
    for (size_t i = 0; i < tools.size(); ++i) {
      auto at = append_pointer(r.at("tools"), std::to_string(i));
      if (!tools[i].is_string())
        r.fail(at, "must be a tool name (a string)");
      auto name = tools[i].get<std::string>();
      if (known.count(name) == 0)
        r.fail(at, "unknown tool '" + name + "' (builtin tools and the "
                   "tools of /tools: " + join(known) + ")");
      if (!seen.insert(name).second)
        r.fail(at, "tool '" + name + "' is listed twice");
      spec.tools.push_back(std::move(name));
    }
  }
  return spec;
}

constexpr const char* team_patterns[] = {
  "orchestrator_worker", "hierarchical", "pipeline", "debate", "map_reduce",
  "evaluator_optimizer"};

team_definition parse_team(const json& doc, const std::string& pointer,
                           const std::string& origin) {
  object_reader r{origin, pointer, doc};
  team_definition t;
  t.name = r.name("name");
  t.pattern = r.str("pattern", true);
  auto known = std::find_if(std::begin(team_patterns), std::end(team_patterns),
                            [&](const char* p) { return t.pattern == p; });
  if (known == std::end(team_patterns)) {
    std::string list;
    for (auto p : team_patterns)
      list += (list.empty() ? "" : ", ") + std::string{p};
    r.fail(r.at("pattern"),
           "unknown pattern '" + t.pattern + "' (expected one of: " + list + ")");
  }
  const auto& pat = t.pattern;
  if (pat == "orchestrator_worker" || pat == "hierarchical") {
    r.only({"name", "pattern", "description", "planner", "plan", "workers",
            "synthesizer", "max_attempts", "max_parallel", "max_subtasks",
            "plan_retries"});
    t.planner = r.str("planner", false);
    t.synthesizer = r.str("synthesizer", false);
    t.max_attempts = static_cast<int32_t>(r.integer("max_attempts", 2, 1, 100));
    t.max_parallel = static_cast<int32_t>(r.integer("max_parallel", 0, 0, 1000000));
    t.max_subtasks = static_cast<int32_t>(r.integer("max_subtasks", 1000, 1, 1000000));
    t.plan_retries = static_cast<int32_t>(r.integer("plan_retries", 1, 0, 100));
    if (!r.has("workers"))
      r.fail(pointer, "missing required field 'workers'");
    object_reader w{origin, r.at("workers"), r.get("workers")};
    if (r.get("workers").empty())
      w.fail(w.pointer(), "needs at least one role");
    for (auto& item : r.get("workers").items()) {
      if (item.key().empty())
        w.fail(w.pointer(), "a role has an empty name");
      if (item.value().is_string()) {
        if (item.value().get<std::string>().empty())
          w.fail(w.at(item.key()), "must be a non-empty name");
        t.workers[item.key()] = {item.value().get<std::string>()};
      } else {
        t.workers[item.key()] = w.names(item.key(), true);
      }
      // The team's coordinator needs every worker under one role only.
      const auto& mine = t.workers.at(item.key());
      for (const auto& [role, names] : t.workers)
        for (const auto& n : mine)
          if (role != item.key()
              && std::find(names.begin(), names.end(), n) != names.end())
            w.fail(w.at(item.key()), "'" + n + "' is already a worker of role '"
                                       + role + "'");
    }
    std::vector<std::string> roles;
    for (auto& [role, _] : t.workers)
      roles.push_back(role);
    if (r.has("plan")) {
      try {
        t.plan = parse_plan(r.get("plan"));
        check_plan(t.plan, roles, static_cast<size_t>(t.max_subtasks));
      } catch (const std::invalid_argument& ex) {
        // parse_plan names the field as "plan/subtasks/0/role: ...": make it
        // one JSON pointer with the team's.
        std::string what = ex.what();
        auto sep = what.find(": ");
        if (what.rfind("plan/", 0) == 0 && sep != std::string::npos)
          r.fail(r.at("plan") + what.substr(4, sep - 4), what.substr(sep + 2));
        if (what.rfind("plan: ", 0) == 0)
          what = what.substr(6);
        r.fail(r.at("plan"), what);
      }
    }
    if (t.planner.empty() && t.plan.subtasks.empty())
      r.fail(pointer, "team '" + t.name + "' needs a 'planner' or a fixed 'plan'");
  } else if (pat == "pipeline") {
    r.only({"name", "pattern", "description", "stages"});
    t.stages = r.names("stages", true);
  } else if (pat == "debate") {
    r.only({"name", "pattern", "description", "debaters", "judge", "rounds"});
    t.debaters = r.names("debaters", true, 2);
    if (!r.has("judge"))
      r.fail(pointer, "debate team '" + t.name + "' has no judge: missing "
                      "required field 'judge'");
    t.judge = r.name("judge");
    t.rounds = static_cast<int32_t>(r.integer("rounds", 0, 0, 100));
  } else if (pat == "map_reduce") {
    r.only({"name", "pattern", "description", "mappers", "reducer", "splitter",
            "max_attempts", "max_parallel", "max_items"});
    t.mappers = r.names("mappers", true);
    t.reducer = r.str("reducer", false);
    t.splitter = r.str("splitter", false);
    t.max_attempts = static_cast<int32_t>(r.integer("max_attempts", 2, 1, 100));
    t.max_parallel = static_cast<int32_t>(r.integer("max_parallel", 0, 0, 1000000));
    t.max_subtasks = static_cast<int32_t>(r.integer("max_items", 100000, 1, 10000000));
  } else {
    r.only({"name", "pattern", "description", "generator", "evaluator",
            "max_rounds"});
    t.generator = r.name("generator");
    t.evaluator = r.name("evaluator");
    t.max_rounds = static_cast<int32_t>(r.integer("max_rounds", 3, 1, 100));
  }
  return t;
}

/// Checks every member reference and orders teams so members come first;
/// names a reference to nothing and a team that contains itself.
void link_teams(swarm_definition& def, const object_reader& r,
                const std::set<std::string>& agents) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < def.teams.size(); ++i) {
    const auto& name = def.teams[i].name;
    auto pointer = "/teams/" + std::to_string(i) + "/name";
    if (agents.count(name))
      r.fail(pointer, "team name '" + name + "' is also an agent's name");
    if (!index.emplace(name, i).second)
      r.fail(pointer, "team name '" + name + "' is used twice");
  }
  for (size_t i = 0; i < def.teams.size(); ++i) {
    const auto& t = def.teams[i];
    for (const auto& m : t.members())
      if (!agents.count(m) && !index.count(m)) {
        std::string list;
        for (const auto& a : agents)
          list += (list.empty() ? "" : ", ") + a;
        for (const auto& [n, _] : index)
          list += (list.empty() ? "" : ", ") + n;
        r.fail("/teams/" + std::to_string(i),
               "team '" + t.name + "' names unknown member '" + m
                 + "' (agents and teams: " + list + ")");
      }
    if (t.pattern == "hierarchical") {
      bool nested = false;
      for (const auto& [role, names] : t.workers)
        for (const auto& n : names)
          nested = nested || index.count(n) > 0;
      if (!nested)
        r.fail("/teams/" + std::to_string(i) + "/workers",
               "hierarchical team '" + t.name
                 + "' needs at least one worker that is a team");
    }
  }
  // Depth-first, members before the team; a team met again on the path is a cycle.
  std::vector<int> state(def.teams.size(), 0); // 0 new, 1 on path, 2 done
  std::vector<std::string> path;
  std::vector<team_definition> ordered;
  std::function<void(size_t)> visit = [&](size_t i) {
    state[i] = 1;
    path.push_back(def.teams[i].name);
    for (const auto& m : def.teams[i].members()) {
      auto j = index.find(m);
      if (j == index.end())
        continue;
      if (state[j->second] == 1) {
        std::string cycle;
        auto from = std::find(path.begin(), path.end(), m);
        for (auto k = from; k != path.end(); ++k)
          cycle += *k + " -> ";
        r.fail("/teams/" + std::to_string(j->second),
               "team cycle: " + cycle + m + " (a team cannot contain itself)");
      }
      if (state[j->second] == 0)
        visit(j->second);
    }
    path.pop_back();
    state[i] = 2;
    ordered.push_back(def.teams[i]);
  };
  for (size_t i = 0; i < def.teams.size(); ++i)
    if (state[i] == 0)
      visit(i);
  def.teams = std::move(ordered);
}

} // namespace

std::vector<std::string> team_definition::members() const {
  std::vector<std::string> out;
  auto add = [&](const std::string& n) {
    if (!n.empty() && std::find(out.begin(), out.end(), n) == out.end())
      out.push_back(n);
  };
  add(planner);
  for (const auto& [role, names] : workers)
    for (const auto& n : names)
      add(n);
  add(synthesizer);
  for (const auto& n : stages)
    add(n);
  for (const auto& n : debaters)
    add(n);
  add(judge);
  add(splitter);
  for (const auto& n : mappers)
    add(n);
  add(reducer);
  add(generator);
  add(evaluator);
  return out;
}

namespace {

/// A policy rule that names a role or tool the swarm does not have would
/// never match: that is a typo, so it is refused with its pointer.
void check_policy_names(const swarm_definition& def, const object_reader& r,
                        const std::set<std::string>& tools) {
  std::set<std::string> roles;
  for (const auto& a : def.agents)
    roles.insert(a.role.empty() ? a.name : a.role);
  for (size_t i = 0; i < def.rules.rules.size(); ++i) {
    const auto& rule = def.rules.rules[i];
    auto at = "/policy/rules/" + std::to_string(i);
    for (size_t k = 0; k < rule.roles.size(); ++k)
      if (rule.roles[k] != "*" && roles.count(rule.roles[k]) == 0)
        r.fail(at + "/roles/" + std::to_string(k),
               "rule '" + rule.name + "' names role '" + rule.roles[k]
                 + "', which no agent has (roles: " + join(roles)
                 + "; an agent's role is its name unless it sets one)");
    for (size_t k = 0; k < rule.tools.size(); ++k)
      if (rule.tools[k] != "*" && tools.count(rule.tools[k]) == 0)
        r.fail(at + "/tools/" + std::to_string(k),
               "rule '" + rule.name + "' names unknown tool '" + rule.tools[k]
                 + "' (builtin tools and the tools of /tools: " + join(tools)
                 + ")");
  }
}

} // namespace

swarm_definition parse_swarm(const json& doc, const std::string& origin,
                             const std::string& base_dir) {
  object_reader r{origin, "", doc};
  r.only({"name", "description", "model", "tools", "agents", "teams", "entry",
          "budget", "prices", "policy", "model_limits", "models"});
  swarm_definition def;
  def.origin = origin;
  def.name = r.str("name", false, fs::path{origin}.stem().string());
  def.description = r.str("description", false);
  auto default_model = r.str("model", false);
  if (!r.has("agents"))
    r.fail("", "missing required field 'agents'");
  const auto& agents = r.get("agents");
  // A node's swarm file may only declare tools for the cluster.
  if (!agents.is_array() || (agents.empty() && !r.has("tools")))
    r.fail("/agents", "must be a non-empty array of agents (or, in a "
                      "node's swarm file that declares /tools, empty)");
  // Tools first: agents may name the tools declared here.
  auto builtins = builtin_tool_names();
  std::set<std::string> known(builtins.begin(), builtins.end());
  if (r.has("tools")) {
    object_reader tools{origin, "/tools", r.get("tools")};
    for (auto& item : r.get("tools").items()) {
      if (item.key().empty())
        tools.fail("/tools", "a tool name must not be empty");
      def.tools.emplace(item.key(),
                        parse_tool(item.key(), item.value(),
                                   tools.at(item.key()), origin, base_dir));
      known.insert(item.key());
    }
  }
  if (r.has("budget")) {
    object_reader b{origin, "/budget", r.get("budget")};
    b.only({"max_steps", "max_input_tokens", "max_output_tokens",
            "max_cost_usd", "warn_share"});
    def.budget.global = parse_limits_of_budget(b);
    def.budget.warn_share = number(b, "warn_share", 0.8, 0.01, 1);
  }
  if (r.has("prices")) {
    object_reader prices{origin, "/prices", r.get("prices")};
    for (auto& item : r.get("prices").items()) {
      object_reader x{origin, prices.at(item.key()), item.value()};
      x.only({"input_usd_per_mtok", "output_usd_per_mtok"});
      model_price price;
      price.input_usd_per_mtok = number(x, "input_usd_per_mtok", 0, 0, 1e6);
      price.output_usd_per_mtok = number(x, "output_usd_per_mtok", 0, 0, 1e6);
      if (item.key().empty())
        prices.fail("/prices", "a model name must not be empty");
      def.prices.set(resolve_model(item.key(), base_dir), price);
    }
  }
  if (r.has("policy")) {
    try {
      def.rules = parse_policy(r.get("policy"), origin, "/policy");
    } catch (const policy_error& ex) {
      throw swarm_error(ex.what());
    }
  }
  if (r.has("models")) {
    object_reader models{origin, "/models", r.get("models")};
    for (auto& item : r.get("models").items()) {
      auto name = resolve_model(item.key(), base_dir);
      check_model_name(models, models.at(item.key()), name);
      if (def.models.count(name) != 0)
        models.fail(models.at(item.key()),
                    "names model '" + name + "' a second time");
      def.models[name] = parse_model_settings(
        name, item.value(), models.at(item.key()), origin, base_dir);
    }
  }
  if (r.has("model_limits")) {
    object_reader limits{origin, "/model_limits", r.get("model_limits")};
    for (auto& item : r.get("model_limits").items())
      def.model_limits[resolve_model(item.key(), base_dir)] =
        parse_limits(item.value(), limits.at(item.key()), origin);
  }
  std::set<std::string> names;
  for (size_t i = 0; i < agents.size(); ++i) {
    auto pointer = "/agents/" + std::to_string(i);
    auto spec = parse_agent(agents[i], pointer, origin, default_model,
                            base_dir, known);
    if (!names.insert(spec.name).second)
      r.fail(pointer + "/name", "agent name '" + spec.name + "' is used twice");
    if (agents[i].is_object() && agents[i].contains("nodes")) {
      const auto& nodes = agents[i]["nodes"];
      auto at = pointer + "/nodes";
      if (!nodes.is_array() || nodes.empty())
        r.fail(at, "must be a non-empty array of node names (or [\"*\"] "
                   "for every node)");
      std::vector<std::string> list;
      for (size_t k = 0; k < nodes.size(); ++k) {
        if (!nodes[k].is_string() || nodes[k].get<std::string>().empty())
          r.fail(at + "/" + std::to_string(k), "must be a node name");
        auto n = nodes[k].get<std::string>();
        if (std::find(list.begin(), list.end(), n) != list.end())
          r.fail(at + "/" + std::to_string(k),
                 "node '" + n + "' is named twice");
        list.push_back(std::move(n));
      }
      def.placement[spec.name] = std::move(list);
    }
    def.agents.push_back(std::move(spec));
  }
  check_policy_names(def, r, known);
  if (r.has("teams")) {
    const auto& teams = r.get("teams");
    if (!teams.is_array())
      r.fail("/teams", std::string{"must be an array of teams, got "}
                         + teams.type_name());
    for (size_t i = 0; i < teams.size(); ++i)
      def.teams.push_back(
        parse_team(teams[i], "/teams/" + std::to_string(i), origin));
    link_teams(def, r, names);
  }
  // By default the last team (it usually holds the others), else the first agent.
  def.entry = r.str("entry", false,
                    !def.teams.empty()    ? def.teams.back().name
                    : def.agents.empty() ? std::string{}
                                         : def.agents.front().name);
  auto is_team = std::any_of(def.teams.begin(), def.teams.end(),
                             [&](const auto& t) { return t.name == def.entry; });
  if (!def.entry.empty() && names.count(def.entry) == 0 && !is_team)
    r.fail("/entry", "no agent or team is named '" + def.entry + "'");
  std::set<std::string> used;
  for (auto& a : def.agents)
    used.insert(a.tools.begin(), a.tools.end());
  if (used.count("kv_lookup") && !def.tools.count("kv_lookup"))
    r.fail("/tools", "an agent uses kv_lookup, so /tools/kv_lookup/file must "
                     "name its JSON file");
  return def;
}

namespace {

/// The tool a declaration describes, with its guards (loads its files).
tool_definition tool_of(const tool_declaration& decl) {
  tool_definition def;
  const auto& set = decl.settings;
  if (decl.kind == "lookup") {
    def = lookup_tool(decl.name, set.at("description").get<std::string>(),
                      set.at("file").get<std::string>(),
                      set.at("key").get<std::string>());
  } else if (decl.kind == "journal") {
    journal_settings js;
    js.description = set.at("description").get<std::string>();
    js.file = set.at("file").get<std::string>();
    js.result = set.at("result").get<std::string>();
    js.fail_first = set.at("fail_first").get<int32_t>();
    js.failure = set.at("failure").get<tool_error_kind>();
    js.delay_first = set.at("delay_first").get<int32_t>();
    js.delay = std::chrono::milliseconds{set.at("delay_ms").get<int64_t>()};
    js.dedupe_by_key = set.value("dedupe_by_key", false);
    if (set.contains("parameters"))
      js.parameters = set.at("parameters");
    def = journal_tool(decl.name, std::move(js));
  } else if (decl.name == "kv_lookup") {
    def = kv_lookup_tool(set.at("file").get<std::string>());
  } else if (decl.name == "calculator") {
    def = calculator_tool();
  } else if (decl.name == "clock") {
    def = clock_tool();
  } else {
    throw std::invalid_argument("tool '" + decl.name + "' is of kind '"
                                + decl.kind + "', which has no tool to build");
  }
  if (decl.timeout.count() > 0)
    def.timeout = decl.timeout;
  def.guards = decl.guards;
  def.idempotency = decl.idempotency;
  return def;
}

} // namespace

void configure(runtime_config& cfg, const swarm_definition& def) {
  cfg.budget = def.budget;
  for (const auto& [model, price] : def.prices.all())
    cfg.prices.set(model, price);
  if (!def.rules.rules.empty()
      || def.rules.default_decision != policy_decision::allow)
    cfg.policy = def.rules;
  for (const auto& [model, limits] : def.model_limits)
    cfg.model_limits[model] = limits;
  for (const auto& [model, settings] : def.models)
    cfg.models[model] = settings;
}

swarm_definition load_swarm(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  if (!in)
    throw swarm_error(path + ": cannot open the swarm file");
  std::stringstream buf;
  buf << in.rdbuf();
  json doc;
  try {
    doc = json::parse(buf.str());
  } catch (const json::parse_error& ex) {
    throw swarm_error(path + ": not valid JSON: " + ex.what());
  }
  auto base_dir = fs::path{path}.parent_path().string();
  auto def = parse_swarm(doc, path, base_dir);
  // Check every script and tool file now, so a bad one fails before any run.
  auto check_script = [&path](const std::string& model,
                               const std::string& pointer) {
    if (model.rfind(scripted_prefix, 0) != 0)
      return;
    try {
      model_script::load(
        model.substr(std::char_traits<char>::length(scripted_prefix)));
    } catch (const std::exception& ex) {
      throw swarm_error(path + ": " + pointer + ": " + ex.what());
    }
  };
  for (size_t i = 0; i < def.agents.size(); ++i) {
    const auto& agent = def.agents[i];
    auto at = "/agents/" + std::to_string(i);
    check_script(agent.model, at + "/model");
    if (agent.confidence.enabled)
      check_script(agent.confidence.alternative_model,
                   at + "/confidence/alternative_model");
  }
  for (auto& [name, decl] : def.tools) {
    if (decl.kind == "journal" || decl.kind == "remote")
      continue; // a journal is opened at run time (checking would create its
                // file); a remote tool lives on another node
    try {
      tool_of(decl);
    } catch (const std::exception& ex) {
      throw swarm_error(path + ": /tools/" + name + "/file: " + ex.what());
    }
  }
  return def;
}

namespace {

runnable_actor member(const swarm_instance& inst, const std::string& name) {
  if (auto a = inst.agents.find(name); a != inst.agents.end())
    return a->second;
  return inst.teams.at(name); // link_teams checked it, and ordered the teams
}

std::vector<team_member> members(const swarm_instance& inst,
                                 const std::vector<std::string>& names) {
  std::vector<team_member> out;
  for (const auto& n : names)
    out.push_back({n, member(inst, n)});
  return out;
}

runnable_actor optional_member(const swarm_instance& inst,
                               const std::string& name) {
  return name.empty() ? runnable_actor{} : member(inst, name);
}

runnable_actor spawn_team(runtime& rt, const team_definition& t,
                          const swarm_instance& inst) {
  auto& sys = rt.system();
  const auto& p = t.pattern;
  if (p == "orchestrator_worker" || p == "hierarchical") {
    orchestrator_config cfg;
    cfg.name = t.name;
    cfg.planner = optional_member(inst, t.planner);
    cfg.plan = t.plan;
    for (const auto& [role, names] : t.workers)
      cfg.workers[role] = members(inst, names);
    cfg.synthesizer = optional_member(inst, t.synthesizer);
    cfg.max_attempts = t.max_attempts;
    cfg.max_parallel = t.max_parallel;
    cfg.max_subtasks = t.max_subtasks;
    cfg.plan_retries = t.plan_retries;
    cfg.tracer = rt.tracer();
    return spawn_orchestrator(sys, std::move(cfg));
  }
  if (p == "pipeline")
    return spawn_pipeline(sys, t.name, members(inst, t.stages), rt.tracer());
  if (p == "debate") {
    debate_config cfg;
    cfg.name = t.name;
    cfg.debaters = members(inst, t.debaters);
    cfg.judge = member(inst, t.judge);
    cfg.rounds = t.rounds;
    cfg.tracer = rt.tracer();
    return spawn_debate(sys, std::move(cfg));
  }
  if (p == "map_reduce") {
    map_reduce_config cfg;
    cfg.name = t.name;
    cfg.mappers = members(inst, t.mappers);
    cfg.reducer = optional_member(inst, t.reducer);
    cfg.splitter = optional_member(inst, t.splitter);
    cfg.max_attempts = t.max_attempts;
    cfg.max_parallel = t.max_parallel;
    cfg.max_items = t.max_subtasks;
    cfg.tracer = rt.tracer();
    return spawn_map_reduce(sys, std::move(cfg));
  }
  evaluator_optimizer_config cfg;
  cfg.name = t.name;
  cfg.generator = member(inst, t.generator);
  cfg.evaluator = member(inst, t.evaluator);
  cfg.max_rounds = t.max_rounds;
  cfg.tracer = rt.tracer();
  return spawn_evaluator_optimizer(sys, std::move(cfg));
}

} // namespace

void register_tools(runtime& rt, const swarm_definition& def) {
  try {
    for (const auto& [name, decl] : def.tools)
      if (decl.kind != "remote" && !rt.tools().find(name))
        rt.tools().add(tool_of(decl));
    for (const char* name : {"calculator", "clock"})
      if (!rt.tools().find(name))
        rt.tools().add(tool_of(
          tool_declaration{name, "builtin", json::object(), {}, {}, {}}));
  } catch (const std::exception& ex) {
    throw swarm_error(def.origin + ": " + ex.what());
  }
}

swarm_instance instantiate(runtime& rt, const swarm_definition& def,
                           bool in_cluster) {
  std::set<std::string> used;
  for (auto& a : def.agents)
    used.insert(a.tools.begin(), a.tools.end());
  try {
    for (auto& name : used) {
      if (rt.tools().find(name))
        continue;
      auto decl = def.tools.find(name);
      if (decl != def.tools.end() && decl->second.kind == "remote") {
        if (!in_cluster)
          throw swarm_error(def.origin + ": /tools/" + name
                            + ": a remote tool is hosted by cluster nodes, so "
                              "only a swarm run on a cluster (troupe run "
                              "--cluster HOST:PORT) can use it; a node's own "
                              "agents cannot yet");
        continue;
      }
      rt.tools().add(decl != def.tools.end()
                       ? tool_of(decl->second)
                       : tool_of(tool_declaration{name, "builtin", json::object(),
                                                  {}, {}, {}}));
    }
    // Tools this process registered are listed in the directory, so agents
    // placed on other nodes can call them here.
    if (in_cluster)
      rt.announce();
    swarm_instance out;
    for (auto& spec : def.agents) {
      auto placed = def.placement.find(spec.name);
      if (in_cluster && placed != def.placement.end())
        out.agents.emplace(spec.name,
                           rt.spawn_replicated(spec, placed->second));
      else
        out.agents.emplace(spec.name, rt.spawn_agent(spec));
    }
    for (const auto& t : def.teams)
      out.teams.emplace(t.name, rt.adopt(spawn_team(rt, t, out)));
    auto entry = out.agents.find(def.entry);
    if (entry != out.agents.end())
      out.entry = entry->second;
    else if (auto team = out.teams.find(def.entry); team != out.teams.end())
      out.entry = team->second;
    return out;
  } catch (const swarm_error&) {
    throw;
  } catch (const std::exception& ex) {
    throw swarm_error(def.origin + ": " + ex.what());
  }
}

} // namespace troupe

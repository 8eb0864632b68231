#include "runtime/tool_registry.hpp"

#include <algorithm>
#include <cctype>

#include <spdlog/spdlog.h>

#include "runtime/clock.hpp"
#include "runtime/json_schema.hpp"

namespace troupe {

tool_spec registered_tool::spec() const {
  return tool_spec{definition.name, definition.description,
                   json_value{definition.parameters}};
}

namespace {

/// One dot-separated component: its leading digits and the rest.
struct version_part {
  std::string digits;
  std::string rest;
};

version_part split_part(const std::string& text) {
  size_t k = 0;
  while (k < text.size() && std::isdigit(static_cast<unsigned char>(text[k])))
    ++k;
  auto digits = text.substr(0, k);
  auto first = digits.find_first_not_of('0');
  digits = first == std::string::npos ? "" : digits.substr(first);
  return {digits, text.substr(k)};
}

std::vector<std::string> split_dots(const std::string& version) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    auto dot = version.find('.', start);
    parts.push_back(version.substr(start, dot - start));
    if (dot == std::string::npos)
      return parts;
    start = dot + 1;
  }
}

int sign(int x) {
  return (x > 0) - (x < 0);
}

/// Compares one component: numerically by its leading digits (of any length),
/// then a component without a suffix ("0") above one with ("0-beta"), then
/// suffixes as text.
int compare_parts(const version_part& a, const version_part& b) {
  if (a.digits.size() != b.digits.size())
    return a.digits.size() < b.digits.size() ? -1 : 1;
  if (auto c = a.digits.compare(b.digits); c != 0)
    return sign(c);
  if (a.rest.empty() != b.rest.empty())
    return a.rest.empty() ? 1 : -1;
  return sign(a.rest.compare(b.rest));
}

std::string tool_label(const tool_definition& def) {
  return "tool '" + def.name + "' version " + def.version;
}

[[noreturn]] void reject(const tool_definition& def, const std::string& why) {
  throw tool_registry_error(tool_label(def) + ": " + why);
}

bool valid_version(const std::string& version) {
  if (version.empty())
    return false;
  for (const auto& part : split_dots(version))
    if (part.empty() || !std::isdigit(static_cast<unsigned char>(part[0])))
      return false;
  return true;
}

} // namespace

int compare_versions(const std::string& a, const std::string& b) {
  auto xs = split_dots(a);
  auto ys = split_dots(b);
  auto n = std::max(xs.size(), ys.size());
  for (size_t k = 0; k < n; ++k) {
    auto x = split_part(k < xs.size() ? xs[k] : "0");
    auto y = split_part(k < ys.size() ? ys[k] : "0");
    if (auto c = compare_parts(x, y); c != 0)
      return c;
  }
  return 0;
}

std::string task_digest(const std::string& goal, const json& context) {
  return stable_hash(goal + "|" + safe_dump(context));
}

const char* to_string(idempotency_scope x) {
  switch (x) {
    case idempotency_scope::call:
      return "call";
    case idempotency_scope::run:
      return "run";
    case idempotency_scope::global:
      return "global";
  }
  return "call";
}

idempotency_scope idempotency_scope_from(const std::string& name) {
  if (name == "run")
    return idempotency_scope::run;
  if (name == "global")
    return idempotency_scope::global;
  return idempotency_scope::call;
}

std::chrono::milliseconds call_budget(const tool_definition& def) {
  const auto& g = def.guards;
  auto attempts = 1 + std::max(g.retry.max_retries, 0);
  auto per_attempt = g.retry.attempt_timeout.count() > 0
                       ? std::min(g.retry.attempt_timeout, def.timeout)
                       : def.timeout;
  if (g.limits.any())
    per_attempt += g.limits.max_wait;
  return per_attempt * attempts + g.retry.cap * (attempts - 1);
}

std::string idempotency_key(const idempotency_config& cfg,
                            const tool_call& call, const std::string& task) {
  if (cfg.key)
    return cfg.key(call);
  json args = call.args.value;
  if (!cfg.fields.empty() && args.is_object()) {
    json picked = json::object();
    for (const auto& field : cfg.fields)
      if (auto i = args.find(field); i != args.end())
        picked[field] = *i;
    args = std::move(picked);
  }
  // Object keys are sorted in nlohmann::json, so equal arguments give equal
  // text whatever order the model wrote them in.
  std::string basis;
  switch (cfg.scope) {
    case idempotency_scope::call:
      basis = call.ref.run_id + "|" + call.agent + "|" + task + "|"
              + std::to_string(call.step) + "|";
      break;
    case idempotency_scope::run:
      basis = call.ref.run_id + "|";
      break;
    case idempotency_scope::global:
      break;
  }
  basis += call.name + "|" + safe_dump(args);
  return call.name + ":" + stable_hash(basis);
}

tool_ptr tool_registry::add(tool_definition def) {
  if (def.name.empty())
    reject(def, "the name is empty");
  if (!valid_version(def.version))
    reject(def, "the version must be dotted numbers like 1.0.0");
  if (!def.fn)
    reject(def, "it has no function to run");
  if (def.timeout.count() <= 0)
    reject(def, "the timeout must be positive");
  try {
    validate(def.guards, def.name);
  } catch (const std::invalid_argument& e) {
    reject(def, e.what());
  }
  for (const auto& field : def.idempotency.fields)
    if (field.empty())
      reject(def, "idempotency.fields must not contain an empty name");
  const auto& params = def.parameters;
  auto type = params.is_object() ? params.find("type") : params.end();
  if (!params.is_object() || type == params.end() || *type != "object")
    reject(def, "parameters must be an object schema ({\"type\": \"object\", "
                "...}), got "
                  + safe_dump(params)
                      .substr(0, 100));
  std::shared_ptr<const json_schema> schema;
  try {
    schema = std::make_shared<const json_schema>(params);
  } catch (const schema_error& e) {
    reject(def, std::string{"bad parameters schema: "} + e.what());
  }
  auto tool = std::make_shared<const registered_tool>(
    registered_tool{std::move(def), std::move(schema)});
  const auto& d = tool->definition;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    auto& versions = tools_[d.name];
    for (const auto& entry : versions)
      if (compare_versions(entry.first, d.version) == 0)
        reject(d, "already registered"
                    + (entry.first == d.version
                         ? std::string{}
                         : " (as the equal version " + entry.first + ")"));
    versions.emplace(d.version, tool);
  }
  spdlog::debug("tool registry: added {} ({} capabilities, timeout {} ms)",
                tool_label(d), d.capabilities.size(), d.timeout.count());
  return tool;
}

tool_ptr tool_registry::find(const std::string& name,
                             const std::string& version) const {
  std::lock_guard<std::mutex> guard{mtx_};
  auto i = tools_.find(name);
  if (i == tools_.end())
    return nullptr;
  tool_ptr best;
  for (const auto& [v, tool] : i->second) {
    if (version.empty()) {
      if (!best || compare_versions(v, best->definition.version) > 0)
        best = tool;
    } else if (compare_versions(v, version) == 0) {
      return tool;
    }
  }
  return best;
}

std::vector<tool_ptr>
tool_registry::find_by_capability(const std::string& capability,
                                  const std::string& preferred_version) const {
  std::vector<tool_ptr> found;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    for (const auto& entry : tools_)
      for (const auto& version : entry.second) {
        const auto& caps = version.second->definition.capabilities;
        if (std::find(caps.begin(), caps.end(), capability) != caps.end())
          found.push_back(version.second);
      }
  }
  auto preferred = [&](const tool_ptr& t) {
    return !preferred_version.empty()
           && compare_versions(t->definition.version, preferred_version) == 0;
  };
  std::stable_sort(found.begin(), found.end(),
                   [&](const tool_ptr& a, const tool_ptr& b) {
                     auto pa = preferred(a);
                     auto pb = preferred(b);
                     if (pa != pb)
                       return pa;
                     auto c = compare_versions(a->definition.version,
                                               b->definition.version);
                     if (c != 0)
                       return c > 0;
                     return a->definition.name < b->definition.name;
                   });
  return found;
}

std::vector<tool_ptr> tool_registry::all() const {
  std::vector<tool_ptr> out;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    for (const auto& entry : tools_)
      for (const auto& version : entry.second)
        out.push_back(version.second);
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const tool_ptr& a, const tool_ptr& b) {
                     if (a->definition.name != b->definition.name)
                       return a->definition.name < b->definition.name;
                     return compare_versions(a->definition.version,
                                             b->definition.version)
                            < 0;
                   });
  return out;
}

} // namespace troupe

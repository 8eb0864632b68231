#include "runtime/swarm.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "actors/scripted_model.hpp"
#include "runtime/builtin_tools.hpp"
#include "runtime/json_schema.hpp"
#include "runtime/runtime.hpp"

namespace troupe {

namespace fs = std::filesystem;

namespace {

constexpr const char* scripted_prefix = "scripted:";

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

  int64_t integer(const std::string& key, int64_t fallback, int64_t min,
                  int64_t max) const {
    if (!obj_.contains(key))
      return fallback;
    const auto& v = obj_.at(key);
    if (!v.is_number_integer())
      fail(at(key), std::string{"must be an integer, got "} + v.type_name());
    auto x = v.get<int64_t>();
    if (x < min || x > max)
      fail(at(key), "must be between " + std::to_string(min) + " and "
                      + std::to_string(max) + ", got " + std::to_string(x));
    return x;
  }

  const json& get(const std::string& key) const {
    return obj_.at(key);
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

std::string resolve_path(const std::string& path, const std::string& base_dir) {
  fs::path p = path;
  if (p.is_absolute() || base_dir.empty())
    return path;
  return (fs::path{base_dir} / p).lexically_normal().string();
}

agent_spec parse_agent(const json& doc,
                       const std::string& pointer, const std::string& origin,
                       const std::string& default_model,
                       const std::string& base_dir) {
  object_reader r{origin, pointer, doc};
  r.only({"name", "system_prompt", "model", "tools", "max_steps",
          "max_parallel_tools", "model_timeout_ms", "model_params"});
  agent_spec spec;
  spec.name = r.str("name", true);
  if (spec.name.empty())
    r.fail(r.at("name"), "must not be empty");
  spec.system_prompt = r.str("system_prompt", false);
  spec.model = resolve_model(r.str("model", false, default_model), base_dir);
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
    auto known = builtin_tool_names();
    std::set<std::string> seen;
    for (size_t i = 0; i < tools.size(); ++i) {
      auto at = append_pointer(r.at("tools"), std::to_string(i));
      if (!tools[i].is_string())
        r.fail(at, "must be a tool name (a string)");
      auto name = tools[i].get<std::string>();
      if (std::find(known.begin(), known.end(), name) == known.end()) {
        std::string list;
        for (auto& k : known)
          list += (list.empty() ? "" : ", ") + k;
        r.fail(at, "unknown tool '" + name + "' (builtin tools: " + list + ")");
      }
      if (!seen.insert(name).second)
        r.fail(at, "tool '" + name + "' is listed twice");
      spec.tools.push_back(std::move(name));
    }
  }
  return spec;
}

} // namespace

swarm_definition parse_swarm(const json& doc, const std::string& origin,
                             const std::string& base_dir) {
  object_reader r{origin, "", doc};
  r.only({"name", "description", "model", "tools", "agents", "entry"});
  swarm_definition def;
  def.origin = origin;
  def.name = r.str("name", false, fs::path{origin}.stem().string());
  def.description = r.str("description", false);
  auto default_model = r.str("model", false);
  if (!r.has("agents"))
    r.fail("", "missing required field 'agents'");
  const auto& agents = r.get("agents");
  if (!agents.is_array() || agents.empty())
    r.fail("/agents", "must be a non-empty array of agents");
  std::set<std::string> names;
  for (size_t i = 0; i < agents.size(); ++i) {
    auto pointer = "/agents/" + std::to_string(i);
    auto spec = parse_agent(agents[i], pointer, origin, default_model,
                            base_dir);
    if (!names.insert(spec.name).second)
      r.fail(pointer + "/name", "agent name '" + spec.name + "' is used twice");
    def.agents.push_back(std::move(spec));
  }
  def.entry = r.str("entry", false, def.agents.front().name);
  if (names.count(def.entry) == 0)
    r.fail("/entry", "no agent is named '" + def.entry + "'");
  // Builtin tool settings.
  std::set<std::string> used;
  for (auto& a : def.agents)
    used.insert(a.tools.begin(), a.tools.end());
  if (r.has("tools")) {
    object_reader tools{origin, "/tools", r.get("tools")};
    for (auto& item : r.get("tools").items()) {
      auto at = tools.at(item.key());
      if (item.key() != "kv_lookup")
        tools.fail(at, "tool '" + item.key() + "' takes no settings");
      object_reader kv{origin, at, item.value()};
      kv.only({"file"});
      auto file = kv.str("file", true);
      def.tool_settings[item.key()] =
        json{{"file", resolve_path(file, base_dir)}};
    }
  }
  if (used.count("kv_lookup") && !def.tool_settings.count("kv_lookup"))
    r.fail("/tools", "an agent uses kv_lookup, so /tools/kv_lookup/file must "
                     "name its JSON file");
  return def;
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
  for (size_t i = 0; i < def.agents.size(); ++i) {
    const auto& model = def.agents[i].model;
    if (model.rfind(scripted_prefix, 0) != 0)
      continue;
    try {
      model_script::load(model.substr(std::char_traits<char>::length(scripted_prefix)));
    } catch (const std::exception& ex) {
      throw swarm_error(path + ": /agents/" + std::to_string(i)
                        + "/model: " + ex.what());
    }
  }
  for (auto& [name, settings] : def.tool_settings) {
    try {
      kv_lookup_tool(settings.at("file").get<std::string>());
    } catch (const std::exception& ex) {
      throw swarm_error(path + ": /tools/" + name + "/file: " + ex.what());
    }
  }
  return def;
}

swarm_instance instantiate(runtime& rt, const swarm_definition& def) {
  std::set<std::string> used;
  for (auto& a : def.agents)
    used.insert(a.tools.begin(), a.tools.end());
  try {
    for (auto& name : used) {
      if (rt.tools().find(name))
        continue;
      if (name == "calculator")
        rt.tools().add(calculator_tool());
      else if (name == "clock")
        rt.tools().add(clock_tool());
      else if (name == "kv_lookup")
        rt.tools().add(kv_lookup_tool(
          def.tool_settings.at("kv_lookup").at("file").get<std::string>()));
    }
    swarm_instance out;
    for (auto& spec : def.agents)
      out.agents.emplace(spec.name, rt.spawn_agent(spec));
    out.entry = out.agents.at(def.entry);
    return out;
  } catch (const swarm_error&) {
    throw;
  } catch (const std::exception& ex) {
    throw swarm_error(def.origin + ": " + ex.what());
  }
}

} // namespace troupe

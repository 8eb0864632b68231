#include "runtime/swarm.hpp"

#include <algorithm>
#include <functional>
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
    auto x = v.get<int64_t>();
    if (x < min || x > max)
      fail(at(key), "must be between " + std::to_string(min) + " and "
                      + std::to_string(max) + ", got " + std::to_string(x));
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
  spec.name = r.name("name");
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

swarm_definition parse_swarm(const json& doc, const std::string& origin,
                             const std::string& base_dir) {
  object_reader r{origin, "", doc};
  r.only({"name", "description", "model", "tools", "agents", "teams", "entry"});
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
                    def.teams.empty() ? def.agents.front().name
                                      : def.teams.back().name);
  auto is_team = std::any_of(def.teams.begin(), def.teams.end(),
                             [&](const auto& t) { return t.name == def.entry; });
  if (names.count(def.entry) == 0 && !is_team)
    r.fail("/entry", "no agent or team is named '" + def.entry + "'");
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
    for (const auto& t : def.teams)
      out.teams.emplace(t.name, rt.adopt(spawn_team(rt, t, out)));
    auto entry = out.agents.find(def.entry);
    out.entry = entry != out.agents.end() ? entry->second
                                          : out.teams.at(def.entry);
    return out;
  } catch (const swarm_error&) {
    throw;
  } catch (const std::exception& ex) {
    throw swarm_error(def.origin + ": " + ex.what());
  }
}

} // namespace troupe

#pragma once

// Swarm files: a swarm of agents described in JSON, so `troupe run` can run it
// without C++. The format (docs/swarm-files.md has the reference):
//
//   {
//     "name": "support-desk",
//     "model": "scripted:support.script.json",   // default model of its agents
//     "tools": {"kv_lookup": {"file": "knowledge.json"}},  // tool settings and
//                                                 // declared tools, with guards
//     "budget": {...}, "prices": {...}, "policy": {...},  // guardrails
//     "agents": [{"name": "support", "system_prompt": "...",
//                 "tools": ["calculator", "kv_lookup", "clock"],
//                 "max_steps": 8, "max_parallel_tools": 4}],
//     "teams": [{"name": "desk", "pattern": "debate", "debaters": [...],
//                "judge": "..."}],                // optional; see the doc
//     "entry": "support"                          // an agent or a team
//   }
//
// Relative paths of files a swarm reads (scripts, lookup tables) are resolved
// against the swarm file's folder; files it writes (a journal tool's) against
// the working directory, so a run never writes into the swarm's folder. Every
// error of the file itself names the file and the JSON pointer of the bad
// field; errors that only show when the swarm is spawned (a journal file that
// cannot be opened) name the tool.

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "actors/agent.hpp"
#include "actors/budget.hpp"
#include "actors/tool_guards.hpp"
#include "runtime/model_config.hpp"
#include "runtime/policy.hpp"
#include "runtime/tool_registry.hpp"
#include "messages/json_value.hpp"
#include "messages/run.hpp"
#include "supervisors/teams.hpp"

namespace troupe {

class runtime;
struct runtime_config;

/// A swarm file is unreadable or wrong; what() names the file and the field.
class swarm_error : public std::invalid_argument {
public:
  using std::invalid_argument::invalid_argument;
};

/// A team in a swarm file (docs/swarm-files.md). Members are named agents or
/// other teams of the same file.
struct team_definition {
  std::string name;
  /// orchestrator_worker, hierarchical, pipeline, debate, map_reduce or
  /// evaluator_optimizer.
  std::string pattern;
  // orchestrator_worker / hierarchical
  std::string planner;
  team_plan plan;
  std::map<std::string, std::vector<std::string>> workers;
  std::string synthesizer;
  int32_t max_attempts = 2;
  int32_t max_parallel = 0;
  int32_t max_subtasks = 1000;
  int32_t plan_retries = 1;
  // pipeline
  std::vector<std::string> stages;
  // debate
  std::vector<std::string> debaters;
  std::string judge;
  int32_t rounds = 0;
  // map_reduce
  std::vector<std::string> mappers;
  std::string reducer;
  std::string splitter;
  // evaluator_optimizer
  std::string generator;
  std::string evaluator;
  int32_t max_rounds = 3;
  /// Every member named anywhere above, in order.
  std::vector<std::string> members() const;
};

/// A tool a swarm file declares or configures under /tools: a builtin
/// (calculator, clock, kv_lookup) with settings, one of the declarative
/// kinds (lookup, journal; see docs/swarm-files.md) with its guards, or a
/// remote tool that cluster nodes host.
struct tool_declaration {
  std::string name;
  /// "builtin", "lookup", "journal" or "remote".
  std::string kind = "builtin";
  /// The kind's own settings (files already resolved to full paths).
  json settings = json::object();
  /// 0 = the tool's default.
  std::chrono::milliseconds timeout{0};
  tool_guards guards;
  idempotency_config idempotency;
};

/// A parsed, checked swarm file.
struct swarm_definition {
  std::string origin;
  std::string name;
  std::string description;
  /// Every tool of /tools, by name.
  std::map<std::string, tool_declaration> tools;
  /// The global budget (/budget), model prices (/prices), the policy
  /// (/policy) and model limits (/model_limits); see configure().
  budget_config budget;
  price_table prices;
  troupe::policy rules;
  std::map<std::string, limiter_config> model_limits;
  /// How each model of /models is reached (endpoint, streaming, retries,
  /// fallback chain, cache).
  std::map<std::string, model_settings> models;
  std::vector<agent_spec> agents;
  /// Where agents run on a cluster (/agents/N/nodes): node names, or "*"
  /// for every listening member. Ignored when the swarm runs in one process.
  std::map<std::string, std::vector<std::string>> placement;
  /// Teams, in an order where every team comes after the teams it contains.
  std::vector<team_definition> teams;
  /// The agent or team that receives the goal.
  std::string entry;
};

/// Reads and checks a swarm file, including the script files its scripted
/// models name. Throws swarm_error.
swarm_definition load_swarm(const std::string& path);

/// Checks a swarm document; `origin` names it in errors and `base_dir`
/// resolves relative paths. Throws swarm_error.
swarm_definition parse_swarm(const json& doc, const std::string& origin,
                             const std::string& base_dir);

/// Puts a swarm's global budget, prices, policy and model limits into the
/// config of the runtime that will run it.
void configure(runtime_config& cfg, const swarm_definition& def);

/// A swarm's agents and teams, spawned.
struct swarm_instance {
  std::map<std::string, runnable_actor> agents;
  std::map<std::string, runnable_actor> teams;
  runnable_actor entry;
};

/// Registers every tool the swarm declares (but remote ones) and the
/// builtins that need no settings (calculator, clock), for a node that hosts
/// them for a cluster. Throws swarm_error naming the swarm on failure.
void register_tools(runtime& rt, const swarm_definition& def);

/// Registers the builtin tools the swarm uses (unless already registered) and
/// spawns its agents. In a cluster (`in_cluster`, the runtime has connected),
/// agents with /nodes are spread over those nodes (runtime::spawn_replicated)
/// and remote tools come from the directory. Throws swarm_error naming the
/// swarm on failure.
swarm_instance instantiate(runtime& rt, const swarm_definition& def,
                           bool in_cluster = false);

} // namespace troupe

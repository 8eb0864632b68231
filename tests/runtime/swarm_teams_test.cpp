// Teams in swarm files: what load_swarm refuses (naming the file, the JSON
// pointer and the problem), and every pattern parsed from JSON and run end to
// end on the scripted model.

#include "runtime/swarm.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "runtime/runtime.hpp"
#include "support/paths.hpp"
#include "support/runtime_fixture.hpp"
#include "support/temp_dir.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

/// Three agents, w1..w3, on a one-rule script, with `teams` (a JSON array)
/// and `extra` top-level fields.
std::string swarm_text(const std::string& teams, const std::string& extra = "") {
  return R"({"model": "scripted:t.script.json",
             "agents": [{"name": "w1"}, {"name": "w2"}, {"name": "w3"}],
             "teams": )"
         + teams + extra + "}";
}

/// A folder holding a script and swarm files that use it.
struct swarm_dir {
  temp_dir dir;

  explicit swarm_dir(
    const std::string& script = R"js({"rules": [{"reply": {"content": "ok"}}]})js") {
    dir.write("t.script.json", script);
  }

  std::string path(const std::string& name = "t.swarm.json") const {
    return dir.file(name);
  }

  swarm_definition load(const std::string& text,
                        const std::string& name = "t.swarm.json") const {
    return load_swarm(dir.write(name, text));
  }

  /// What load_swarm says about a file it must refuse.
  std::string rejection(const std::string& text,
                        const std::string& name = "t.swarm.json") const {
    try {
      load(text, name);
    } catch (const swarm_error& ex) {
      return ex.what();
    }
    FAIL("the swarm file was accepted:\n" << text);
    return {};
  }
};

/// Spawns the swarm on a fresh runtime and runs `entry` (default: the swarm's
/// entry) on the goal.
run_result run_swarm(const swarm_definition& def, const std::string& goal,
                     json context = nullptr, const std::string& entry = "") {
  runtime rt{test_runtime_config()};
  auto inst = instantiate(rt, def);
  run_options opts;
  opts.timeout = 60s;
  opts.context = std::move(context);
  auto target = entry.empty() ? inst.entry : inst.teams.at(entry);
  auto r = rt.run(target, goal, opts);
  rt.shutdown();
  return r;
}

/// A subtask's entry in an orchestrator's or map_reduce's detail.
json subtask(const run_result& r, const std::string& id) {
  for (const auto& s : r.detail.value.at("subtasks"))
    if (s.at("id") == id)
      return s;
  FAIL("no subtask '" << id << "' in " << r.detail.value.dump());
  return {};
}

int64_t ns(const json& s, const char* key) {
  return s.at(key).get<int64_t>();
}

std::vector<std::string> team_names(const swarm_definition& def) {
  std::vector<std::string> out;
  for (const auto& t : def.teams)
    out.push_back(t.name);
  return out;
}

/// Every team comes after the teams it names.
bool members_first(const swarm_definition& def) {
  std::set<std::string> seen;
  std::set<std::string> teams;
  for (const auto& t : def.teams)
    teams.insert(t.name);
  for (const auto& t : def.teams) {
    for (const auto& m : t.members())
      if (teams.count(m) && !seen.count(m))
        return false;
    seen.insert(t.name);
  }
  return true;
}

/// Each stage wraps the first line of its goal in its own name.
constexpr const char* wrapping_script = R"js({"rules": [
  {"agent": "draft", "regex": "^([^\\n]*)", "reply": {"content": "draft({{1}})"}},
  {"agent": "edit", "regex": "^([^\\n]*)", "reply": {"content": "edit({{1}})"}},
  {"agent": "stamp", "regex": "^([^\\n]*)", "reply": {"content": "stamp({{1}})"}},
  {"agent": "checker", "regex": "\\[s1\\] ([^\\n]*)", "reply": {"content": "checked {{1}}"}}
]})js";

constexpr const char* wrapping_agents =
  R"([{"name": "draft"}, {"name": "edit"}, {"name": "stamp"}, {"name": "checker"}])";

} // namespace

// -- rejections ------------------------------------------------------------------

SCENARIO("a team file with a bad plan is refused naming the file, the pointer "
         "and the problem",
         "[swarm-teams]") {
  swarm_dir d;
  auto file = d.path();
  auto team = [](const std::string& workers, const std::string& subtasks) {
    return swarm_text(R"([{"name": "t", "pattern": "orchestrator_worker",
                           "workers": )"
                      + workers + R"(, "plan": {"subtasks": )" + subtasks + "}}]");
  };
  GIVEN("two subtasks that depend on each other") {
    auto err = d.rejection(team(R"({"w": ["w1", "w2"]})",
                                R"([{"id": "x", "role": "w", "goal": "g", "depends_on": ["y"]},
                                    {"id": "y", "role": "w", "goal": "g", "depends_on": ["x"]}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/plan: ")
                      && Catch::Contains("dependency cycle: x -> y -> x"));
    THEN("without the back edge the same file loads") {
      auto def = d.load(team(R"({"w": ["w1", "w2"]})",
                             R"([{"id": "x", "role": "w", "goal": "g", "depends_on": ["y"]},
                                 {"id": "y", "role": "w", "goal": "g"}])"));
      REQUIRE(def.teams.size() == 1);
      CHECK(def.teams[0].plan.subtasks.size() == 2);
    }
  }
  GIVEN("a cycle reached through a subtask that is not on it") {
    auto err = d.rejection(team(R"({"w": "w1"})",
                                R"([{"id": "start", "role": "w", "goal": "g", "depends_on": ["b"]},
                                    {"id": "b", "role": "w", "goal": "g", "depends_on": ["c"]},
                                    {"id": "c", "role": "w", "goal": "g", "depends_on": ["b"]}])"));
    // The path shows the cycle alone.
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/plan: ")
                      && Catch::Contains("dependency cycle: b -> c -> b"));
    CHECK_THAT(err, !Catch::Contains("start ->"));
  }
  GIVEN("a subtask that depends on itself") {
    auto err = d.rejection(team(R"({"w": "w1"})",
                                R"([{"id": "x", "role": "w", "goal": "g", "depends_on": ["x"]}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/plan: ")
                      && Catch::Contains("subtask 'x' depends on itself"));
  }
  GIVEN("a subtask for a role the team does not have") {
    auto err = d.rejection(team(R"({"researcher": ["w1", "w2"], "analyst": "w3"})",
                                R"([{"id": "x", "role": "writer", "goal": "g"}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/plan: ")
                      && Catch::Contains("subtask 'x' names unknown role 'writer'")
                      && Catch::Contains("(roles: analyst, researcher)"));
  }
  GIVEN("a dependency on a subtask that does not exist") {
    auto err = d.rejection(team(R"({"w": "w1"})",
                                R"([{"id": "x", "role": "w", "goal": "g", "depends_on": ["ghost"]}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/plan: ")
                      && Catch::Contains("subtask 'x' depends on unknown subtask 'ghost'"));
  }
  GIVEN("two subtasks with one id") {
    auto err = d.rejection(team(R"({"w": "w1"})",
                                R"([{"id": "x", "role": "w", "goal": "g"},
                                    {"id": "x", "role": "w", "goal": "h"}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/plan: ")
                      && Catch::Contains("subtask id 'x' is used twice"));
  }
  GIVEN("a subtask without a role") {
    auto err = d.rejection(team(R"({"w": "w1"})", R"([{"id": "x", "goal": "g"}])"));
    // One JSON pointer, into the plan.
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/plan/subtasks/0/role: ")
                      && Catch::Contains("missing"));
  }
  GIVEN("a plan that is not an object") {
    auto err = d.rejection(swarm_text(R"([{"name": "t", "pattern": "orchestrator_worker",
      "workers": {"w": "w1"}, "plan": [1]}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/plan: must be a JSON object"));
  }
  GIVEN("more subtasks than max_subtasks") {
    auto err = d.rejection(swarm_text(R"([{"name": "t", "pattern": "orchestrator_worker",
      "workers": {"w": "w1"}, "max_subtasks": 1,
      "plan": {"subtasks": [{"id": "x", "role": "w", "goal": "g"},
                            {"id": "y", "role": "w", "goal": "g"}]}}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/plan: ")
                      && Catch::Contains("2 subtasks, more than the limit of 1"));
  }
  GIVEN("neither a planner nor a plan") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "t", "pattern": "orchestrator_worker", "workers": {"w": "w1"}}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0: ")
                      && Catch::Contains("team 't' needs a 'planner' or a fixed 'plan'"));
  }
}

SCENARIO("a debate without a judge or with one debater is refused",
         "[swarm-teams]") {
  swarm_dir d;
  auto file = d.path();
  GIVEN("no judge") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "panel", "pattern": "debate", "debaters": ["w1", "w2"]}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0: ")
                      && Catch::Contains("debate team 'panel' has no judge"));
    THEN("with a judge it loads") {
      auto def = d.load(swarm_text(
        R"([{"name": "panel", "pattern": "debate", "debaters": ["w1", "w2"], "judge": "w3"}])"));
      REQUIRE(def.teams.size() == 1);
      CHECK(def.teams[0].judge == "w3");
      CHECK(def.teams[0].debaters == std::vector<std::string>{"w1", "w2"});
    }
  }
  GIVEN("an empty judge") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "panel", "pattern": "debate", "debaters": ["w1", "w2"], "judge": ""}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/judge: ")
                      && Catch::Contains("must not be empty"));
  }
  GIVEN("one debater") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "panel", "pattern": "debate", "debaters": ["w1"], "judge": "w3"}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/debaters: ")
                      && Catch::Contains("needs at least 2 name(s), got 1"));
  }
  GIVEN("a debater listed twice") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "panel", "pattern": "debate", "debaters": ["w1", "w1"], "judge": "w3"}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/debaters/1: ")
                      && Catch::Contains("'w1' is listed twice"));
  }
}

SCENARIO("team members must name agents or teams of the file, without cycles",
         "[swarm-teams]") {
  swarm_dir d;
  auto file = d.path();
  GIVEN("a member that is neither an agent nor a team") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "p", "pattern": "pipeline", "stages": ["w1", "x"]}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0: ")
                      && Catch::Contains("team 'p' names unknown member 'x'")
                      && Catch::Contains("(agents and teams: w1, w2, w3, p)"));
  }
  GIVEN("two teams that contain each other") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "a", "pattern": "pipeline", "stages": ["w1", "b"]},
          {"name": "b", "pattern": "pipeline", "stages": ["a"]}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0: ")
                      && Catch::Contains("team cycle: a -> b -> a")
                      && Catch::Contains("a team cannot contain itself"));
  }
  GIVEN("a cycle below a team that is not on it") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "top", "pattern": "pipeline", "stages": ["a"]},
          {"name": "a", "pattern": "pipeline", "stages": ["b"]},
          {"name": "b", "pattern": "debate", "debaters": ["w1", "a"], "judge": "w2"}])"));
    // The pointer is the team met again, the path the cycle alone.
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/1: ")
                      && Catch::Contains("team cycle: a -> b -> a"));
    CHECK_THAT(err, !Catch::Contains("top ->"));
  }
  GIVEN("a team that contains itself") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "solo", "pattern": "pipeline", "stages": ["w1", "solo"]}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0: ")
                      && Catch::Contains("team cycle: solo -> solo"));
  }
  GIVEN("a hierarchical team whose workers are all agents") {
    auto hier = [](const char* pattern) {
      return swarm_text(std::string{R"([{"name": "h", "pattern": ")"} + pattern
                        + R"(", "workers": {"r": ["w1", "w2"]},
                             "plan": {"subtasks": [{"id": "s", "role": "r", "goal": "g"}]}}])");
    };
    auto err = d.rejection(hier("hierarchical"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/workers: ")
                      && Catch::Contains("hierarchical team 'h' needs at least one "
                                         "worker that is a team"));
    THEN("the same team as orchestrator_worker loads") {
      CHECK(d.load(hier("orchestrator_worker")).teams.at(0).pattern
            == "orchestrator_worker");
    }
  }
  GIVEN("a team named like an agent") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "w1", "pattern": "pipeline", "stages": ["w2"]}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/name: ")
                      && Catch::Contains("team name 'w1' is also an agent's name"));
  }
  GIVEN("two teams with one name") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "p", "pattern": "pipeline", "stages": ["w1"]},
          {"name": "p", "pattern": "pipeline", "stages": ["w2"]}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/1/name: ")
                      && Catch::Contains("team name 'p' is used twice"));
  }
  GIVEN("one worker under two roles") {
    auto err = d.rejection(swarm_text(R"([{"name": "t", "pattern": "orchestrator_worker",
      "workers": {"x": "w1", "y": ["w2", "w1"]},
      "plan": {"subtasks": [{"id": "s", "role": "x", "goal": "g"}]}}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/workers/y: ")
                      && Catch::Contains("'w1' is already a worker of role 'x'"));
  }
}

SCENARIO("an unknown pattern or an unknown field of a team is refused",
         "[swarm-teams]") {
  swarm_dir d;
  auto file = d.path();
  GIVEN("an unknown pattern") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "t", "pattern": "swarm", "stages": ["w1"]}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/pattern: ")
                      && Catch::Contains("unknown pattern 'swarm'")
                      && Catch::Contains("orchestrator_worker, hierarchical, pipeline, "
                                         "debate, map_reduce, evaluator_optimizer"));
  }
  GIVEN("a misspelt field") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "p", "pattern": "pipeline", "stages": ["w1"], "stage": ["w2"]}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/stage: ")
                      && Catch::Contains("unknown field (expected one of: name, pattern, "
                                         "description, stages)"));
  }
  GIVEN("a field of another pattern, in the second team") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "p", "pattern": "pipeline", "stages": ["w1"]},
          {"name": "d", "pattern": "debate", "debaters": ["w1", "w2"], "judge": "w3",
           "max_rounds": 2}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/1/max_rounds: ")
                      && Catch::Contains("unknown field"));
  }
  GIVEN("an evaluator_optimizer with an empty generator") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "e", "pattern": "evaluator_optimizer", "generator": "", "evaluator": "w2"}])"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /teams/0/generator: ")
                      && Catch::Contains("must not be empty"));
  }
  GIVEN("an entry that names no agent or team") {
    auto err = d.rejection(swarm_text(
      R"([{"name": "p", "pattern": "pipeline", "stages": ["w1"]}])",
      R"(, "entry": "q")"));
    CHECK_THAT(err, Catch::StartsWith(file + ": /entry: ")
                      && Catch::Contains("no agent or team is named 'q'"));
  }
}

// -- every pattern, end to end ----------------------------------------------------

SCENARIO("a pipeline from a swarm file passes each stage's answer to the next",
         "[swarm-teams]") {
  swarm_dir d{wrapping_script};
  auto def = d.load(std::string{R"({"model": "scripted:t.script.json", "agents": )"}
                    + wrapping_agents + R"(,
    "teams": [{"name": "line", "pattern": "pipeline", "stages": ["draft", "edit", "stamp"]},
              {"name": "reversed", "pattern": "pipeline", "stages": ["stamp", "edit", "draft"]}],
    "entry": "line"})");
  CHECK(def.entry == "line");
  auto r = run_swarm(def, "hello");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.agent == "line");
  CHECK(r.answer == "stamp(edit(draft(hello)))");
  CHECK(r.steps.size() == 3);
  // The stages run in the order the file lists them.
  auto back = run_swarm(def, "hello", nullptr, "reversed");
  REQUIRE(back.status == run_status::complete);
  CHECK(back.answer == "draft(edit(stamp(hello)))");
}

SCENARIO("a map_reduce team from a swarm file maps every item and reduces them",
         "[swarm-teams]") {
  swarm_dir d{R"js({"rules": [
    {"agent": "reducer", "regex": "Results:\\n((?:\\[item-[^\\n]*\\n)+)",
     "reply": {"content": "reduced:\n{{1}}end"}},
    {"regex": "^([^\\n]*)", "reply": {"content": "mapped({{1}})"}}
  ]})js"};
  auto def = d.load(R"({"model": "scripted:t.script.json",
    "agents": [{"name": "m1"}, {"name": "m2"}, {"name": "reducer"}],
    "teams": [{"name": "mr", "pattern": "map_reduce", "mappers": ["m1", "m2"],
               "reducer": "reducer"}]})");
  REQUIRE(def.teams.size() == 1);
  CHECK(def.teams[0].mappers == std::vector<std::string>{"m1", "m2"});
  auto members_used = [](const run_result& r) {
    std::set<std::string> out;
    for (const auto& s : r.detail.value.at("subtasks")) {
      CHECK(s.at("status") == "complete");
      out.insert(s.at("member").get<std::string>());
    }
    return out;
  };
  WHEN("the goal has several lines") {
    auto r = run_swarm(def, "apple\n\n  banana \ncherry");
    REQUIRE(r.status == run_status::complete);
    // Blank lines are no items; the others are trimmed.
    CHECK(r.answer == "reduced:\n[item-1] mapped(apple)\n[item-2] mapped(banana)\n"
                      "[item-3] mapped(cherry)\nend");
    CHECK(r.detail.value.at("subtasks").size() == 3);
    CHECK(members_used(r) == std::set<std::string>{"m1", "m2"});
    CHECK(r.steps.size() == 4); // three maps and the reduce
  }
  WHEN("the context has \"items\"") {
    auto r = run_swarm(def, "a goal line\nand another", json{{"items", {"kiwi", "lime", 7}}});
    REQUIRE(r.status == run_status::complete);
    // The items, not the goal's lines, are mapped; a non-string as JSON text.
    CHECK(r.answer == "reduced:\n[item-1] mapped(kiwi)\n[item-2] mapped(lime)\n"
                      "[item-3] mapped(7)\nend");
    CHECK(r.detail.value.at("subtasks").size() == 3);
  }
}

SCENARIO("an evaluator_optimizer team from a swarm file loops until the "
         "evaluator passes",
         "[swarm-teams]") {
  // The writer's answer carries its round and the feedback it got; the critic
  // passes only the third draft.
  swarm_dir d{R"js({"rules": [
    {"agent": "writer", "regex": "feedback:\\n([^\\n]*)\\n\\nImprove the answer \\(round (\\d+)\\)",
     "reply": {"content": "draft v{{2}} ({{1}})"}},
    {"agent": "writer", "reply": {"content": "draft v1"}},
    {"agent": "critic", "contains": "Candidate answer:\ndraft v3", "reply": {"content": "PASS: good now"}},
    {"agent": "critic", "reply": {"content": "FAIL: cite a source"}}
  ]})js"};
  auto def = d.load(R"({"model": "scripted:t.script.json",
    "agents": [{"name": "writer"}, {"name": "critic"}],
    "teams": [{"name": "loop", "pattern": "evaluator_optimizer", "generator": "writer",
               "evaluator": "critic", "max_rounds": 5},
              {"name": "short", "pattern": "evaluator_optimizer", "generator": "writer",
               "evaluator": "critic", "max_rounds": 2}],
    "entry": "loop"})");
  WHEN("the bound allows enough rounds") {
    auto r = run_swarm(def, "Write a claim.");
    REQUIRE(r.status == run_status::complete);
    CHECK(r.answer == "draft v3 (cite a source)");
    const auto& detail = r.detail.value;
    CHECK(detail.at("rounds") == 3);
    const auto& history = detail.at("history");
    REQUIRE(history.size() == 3);
    CHECK(history[0].at("candidate") == "draft v1");
    CHECK(history[0].at("pass") == false);
    CHECK(history[0].at("feedback") == "cite a source");
    CHECK(history[1].at("candidate") == "draft v2 (cite a source)");
    CHECK(history[1].at("pass") == false);
    CHECK(history[2].at("pass") == true);
    CHECK(history[2].at("feedback") == "good now");
    CHECK(r.steps.size() == 6);
  }
  WHEN("the bound is reached first") {
    auto r = run_swarm(def, "Write a claim.", nullptr, "short");
    CHECK(r.status == run_status::max_steps);
    CHECK(r.answer == "draft v2 (cite a source)");
    CHECK_THAT(r.error, Catch::Contains("did not pass the answer in 2 round(s)")
                          && Catch::Contains("cite a source"));
  }
}

SCENARIO("a debate team from a swarm file rebuts and lets the judge decide on "
         "the final answers",
         "[swarm-teams]") {
  swarm_dir d{R"js({"rules": [
    {"agent": "pro", "contains": "rebuttal round 1", "regex": "\\[con\\] ([^\\n]*)",
     "reply": {"content": "pro rebuts ({{1}})"}},
    {"agent": "con", "contains": "rebuttal round 1", "regex": "\\[pro\\] ([^\\n]*)",
     "reply": {"content": "con rebuts ({{1}})"}},
    {"agent": "pro", "reply": {"content": "pro opening"}},
    {"agent": "con", "reply": {"content": "con opening"}},
    {"agent": "judge", "regex": "\\[pro\\] ([^\\n]*)\\n\\[con\\] ([^\\n]*)",
     "reply": {"content": "judged: {{1}} / {{2}}"}}
  ]})js"};
  auto def = d.load(R"({"model": "scripted:t.script.json",
    "agents": [{"name": "pro"}, {"name": "con"}, {"name": "judge"}],
    "teams": [{"name": "panel", "pattern": "debate", "debaters": ["pro", "con"],
               "judge": "judge", "rounds": 1}]})");
  auto r = run_swarm(def, "Is tea better than coffee?");
  REQUIRE(r.status == run_status::complete);
  // Each rebuttal saw the other's opening; the judge saw the rebuttals.
  CHECK(r.answer == "judged: pro rebuts (con opening) / con rebuts (pro opening)");
  const auto& detail = r.detail.value;
  CHECK(detail.at("rounds") == 1);
  CHECK(detail.at("answers").at("pro")
        == json{"pro opening", "pro rebuts (con opening)"});
  CHECK(detail.at("answers").at("con")
        == json{"con opening", "con rebuts (pro opening)"});
  CHECK(r.steps.size() == 5);
}

SCENARIO("an orchestrator with a fixed plan from a swarm file runs dependents "
         "after their dependencies",
         "[swarm-teams]") {
  // Fetches take 50 ms, so a dependent started early would start before they end.
  swarm_dir d{R"js({"rules": [
    {"agent": "joiner", "regex": "^summarise[\\s\\S]*\\[c\\] ([^\\n]*)",
     "reply": {"content": "summary of {{1}}"}},
    {"agent": "joiner", "regex": "\\[a\\] ([^\\n]*)\\n\\[b\\] ([^\\n]*)",
     "reply": {"content": "joined {{1}} + {{2}}"}},
    {"regex": "^fetch (\\w+) for ([^\\n]*)", "reply": {"content": "{{1}} on {{2}}", "latency_ms": 50}}
  ]})js"};
  // The plan lists the dependents first.
  auto def = d.load(R"({"model": "scripted:t.script.json",
    "agents": [{"name": "f1"}, {"name": "f2"}, {"name": "joiner"}],
    "teams": [{"name": "desk", "pattern": "orchestrator_worker",
               "workers": {"fetch": ["f1", "f2"], "combine": "joiner"},
               "plan": {"subtasks": [
                 {"id": "d", "role": "combine", "goal": "summarise", "depends_on": ["c"]},
                 {"id": "c", "role": "combine", "goal": "combine", "depends_on": ["a", "b"]},
                 {"id": "a", "role": "fetch", "goal": "fetch alpha for {{goal}}"},
                 {"id": "b", "role": "fetch", "goal": "fetch beta for {{goal}}"}]}}]})");
  auto r = run_swarm(def, "heat pumps");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.error.empty());
  // No synthesizer: the answer lists the results in plan order.
  CHECK(r.answer
        == "[d (combine)] summary of joined alpha on heat pumps + beta on heat pumps\n"
           "[c (combine)] joined alpha on heat pumps + beta on heat pumps\n"
           "[a (fetch)] alpha on heat pumps\n"
           "[b (fetch)] beta on heat pumps\n");
  auto a = subtask(r, "a"), b = subtask(r, "b"), c = subtask(r, "c"),
       dd = subtask(r, "d");
  for (const auto& s : {a, b, c, dd}) {
    CHECK(s.at("status") == "complete");
    CHECK(s.at("attempts") == 1);
  }
  // a and b ran at once, on the two fetchers.
  CHECK(ns(a, "started_ns") < ns(b, "ended_ns"));
  CHECK(ns(b, "started_ns") < ns(a, "ended_ns"));
  CHECK(std::set<std::string>{a.at("member").get<std::string>(),
                              b.at("member").get<std::string>()}
        == std::set<std::string>{"f1", "f2"});
  // c after both, d after c.
  CHECK(ns(c, "started_ns") >= ns(a, "ended_ns"));
  CHECK(ns(c, "started_ns") >= ns(b, "ended_ns"));
  CHECK(ns(dd, "started_ns") >= ns(c, "ended_ns"));
  CHECK(c.at("member") == "joiner");
}

SCENARIO("the research example loads and runs its planned DAG through the API",
         "[swarm-teams]") {
  auto def = load_swarm(source_dir() + "/examples/research/research.swarm.json");
  REQUIRE(def.teams.size() == 1);
  CHECK(def.teams[0].pattern == "orchestrator_worker");
  CHECK(def.teams[0].planner == "planner");
  CHECK(def.teams[0].workers.at("researcher")
        == std::vector<std::string>{"researcher_1", "researcher_2", "researcher_3"});
  auto r = run_swarm(def, "Should we replace the office gas boiler with a heat pump?");
  REQUIRE(r.status == run_status::complete);
  CHECK_THAT(r.answer, Catch::Contains("Simple payback: 7.5 years (18000 / 2400 EUR)"));
  const auto& plan = r.detail.value.at("plan");
  REQUIRE(plan.size() == 4);
  CHECK(plan[3].at("depends_on") == json{"cost", "savings"});
  auto cost = subtask(r, "cost"), savings = subtask(r, "savings"),
       emissions = subtask(r, "emissions"), payback = subtask(r, "payback");
  CHECK(ns(payback, "started_ns") >= ns(cost, "ended_ns"));
  CHECK(ns(payback, "started_ns") >= ns(savings, "ended_ns"));
  CHECK(payback.at("member") == "analyst");
  // The three researches ran at once, each on its own researcher.
  CHECK(ns(cost, "started_ns") < ns(savings, "ended_ns"));
  CHECK(ns(savings, "started_ns") < ns(emissions, "ended_ns"));
  CHECK(ns(emissions, "started_ns") < ns(cost, "ended_ns"));
  CHECK(std::set<std::string>{cost.at("member").get<std::string>(),
                              savings.at("member").get<std::string>(),
                              emissions.at("member").get<std::string>()}
        == std::set<std::string>{"researcher_1", "researcher_2", "researcher_3"});
}

// -- nesting, link order and the entry ----------------------------------------------

SCENARIO("a hierarchical team runs a team as a worker, whatever the file's team "
         "order",
         "[swarm-teams]") {
  swarm_dir d{wrapping_script};
  auto outer = R"({"name": "outer", "pattern": "hierarchical",
    "workers": {"writing": "desk", "review": "checker"},
    "plan": {"subtasks": [{"id": "s1", "role": "writing", "goal": "write about {{goal}}"},
                          {"id": "s2", "role": "review", "goal": "check", "depends_on": ["s1"]}]}})";
  auto desk = R"({"name": "desk", "pattern": "pipeline", "stages": ["draft", "edit"]})";
  auto file = [&](const std::string& teams) {
    return std::string{R"({"model": "scripted:t.script.json", "agents": )"}
           + wrapping_agents + R"(, "teams": [)" + teams + "]}";
  };
  const std::string expected = "[s1 (writing)] edit(draft(write about tea))\n"
                               "[s2 (review)] checked edit(draft(write about tea))\n";
  for (const auto& teams : {std::string{outer} + ", " + desk,
                            std::string{desk} + ", " + outer}) {
    INFO(teams);
    auto def = d.load(file(teams));
    // Members first, and without an entry the outermost team gets the goal,
    // also when it is not the last one listed.
    CHECK(team_names(def) == std::vector<std::string>{"desk", "outer"});
    CHECK(def.entry == "outer");
    auto r = run_swarm(def, "tea");
    REQUIRE(r.status == run_status::complete);
    CHECK(r.agent == "outer");
    CHECK(r.answer == expected);
    CHECK(subtask(r, "s1").at("member") == "desk");
  }
}

SCENARIO("three nested teams link in any file order", "[swarm-teams]") {
  swarm_dir d{wrapping_script};
  const std::array<std::string, 3> teams = {
    R"({"name": "top", "pattern": "hierarchical", "workers": {"part": "mid"},
        "plan": {"subtasks": [{"id": "p", "role": "part", "goal": "{{goal}}"}]}})",
    R"({"name": "mid", "pattern": "pipeline", "stages": ["low", "edit"]})",
    R"({"name": "low", "pattern": "pipeline", "stages": ["draft"]})"};
  std::array<size_t, 3> order = {0, 1, 2};
  int files = 0;
  do {
    auto text = std::string{R"({"model": "scripted:t.script.json", "agents": )"}
                + wrapping_agents + R"(, "teams": [)" + teams[order[0]] + ", "
                + teams[order[1]] + ", " + teams[order[2]] + "]}";
    INFO(text);
    auto def = d.load(text);
    ++files;
    CHECK(team_names(def) == std::vector<std::string>{"low", "mid", "top"});
    CHECK(members_first(def));
    CHECK(def.entry == "top");
    auto r = run_swarm(def, "tea");
    REQUIRE(r.status == run_status::complete);
    CHECK(r.answer == "[p (part)] edit(draft(tea))\n");
  } while (std::next_permutation(order.begin(), order.end()));
  CHECK(files == 6);
}

SCENARIO("the entry defaults to the outermost team, of several the last listed",
         "[swarm-teams]") {
  swarm_dir d{wrapping_script};
  auto with_teams = [&](const std::string& teams, const std::string& extra = "") {
    return std::string{R"({"model": "scripted:t.script.json", "agents": )"}
           + wrapping_agents + R"(, "teams": )" + teams + extra + "}";
  };
  GIVEN("two teams that do not contain each other") {
    auto def = d.load(with_teams(
      R"([{"name": "first", "pattern": "pipeline", "stages": ["draft"]},
          {"name": "second", "pattern": "pipeline", "stages": ["edit"]}])"));
    CHECK(def.entry == "second");
    auto r = run_swarm(def, "x");
    REQUIRE(r.status == run_status::complete);
    CHECK(r.answer == "edit(x)");
  }
  GIVEN("an outer team listed before the team it contains, and a third team") {
    auto def = d.load(with_teams(
      R"([{"name": "outer", "pattern": "pipeline", "stages": ["inner", "stamp"]},
          {"name": "inner", "pattern": "pipeline", "stages": ["draft"]},
          {"name": "other", "pattern": "pipeline", "stages": ["edit"]}])"));
    // "other" is outermost too and listed last.
    CHECK(def.entry == "other");
  }
  GIVEN("an outer team listed before the team it contains") {
    auto def = d.load(with_teams(
      R"([{"name": "outer", "pattern": "pipeline", "stages": ["inner", "stamp"]},
          {"name": "inner", "pattern": "pipeline", "stages": ["draft"]}])"));
    CHECK(def.entry == "outer");
    auto r = run_swarm(def, "x");
    REQUIRE(r.status == run_status::complete);
    CHECK(r.answer == "stamp(draft(x))");
  }
  GIVEN("an entry naming the inner team") {
    auto def = d.load(with_teams(
      R"([{"name": "outer", "pattern": "pipeline", "stages": ["inner", "stamp"]},
          {"name": "inner", "pattern": "pipeline", "stages": ["draft"]}])",
      R"(, "entry": "inner")"));
    CHECK(def.entry == "inner");
    auto r = run_swarm(def, "x");
    REQUIRE(r.status == run_status::complete);
    CHECK(r.answer == "draft(x)");
  }
  GIVEN("no teams") {
    auto def = d.load(std::string{R"({"model": "scripted:t.script.json", "agents": )"}
                      + wrapping_agents + "}");
    CHECK(def.entry == "draft");
  }
}

SCENARIO("instantiate spawns every agent and team of a team file", "[swarm-teams]") {
  auto def = load_swarm(source_dir() + "/examples/project/project.swarm.json");
  CHECK(team_names(def)
        == std::vector<std::string>{"backend", "engineering", "marketing", "project"});
  CHECK(members_first(def));
  CHECK(def.entry == "project");
  runtime rt{test_runtime_config()};
  auto inst = instantiate(rt, def);
  CHECK(inst.agents.size() == 7);
  CHECK(inst.teams.size() == 4);
  for (const auto& t : def.teams)
    CHECK(inst.teams.count(t.name) == 1);
  CHECK(inst.entry == inst.teams.at("project"));
  rt.shutdown();
}

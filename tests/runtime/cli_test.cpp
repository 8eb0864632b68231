// The troupe CLI, driven as a user drives it: a real process, real files.

#include <catch2/catch.hpp>

#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "messages/json_value.hpp"
#include "support/paths.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

using namespace troupe;
using namespace troupe::test;

namespace {

std::string troupe_cmd(const std::string& args) {
  return shell_quote(cli_path()) + " " + args;
}

std::string example(const std::string& file) {
  return source_dir() + "/examples/support/" + file;
}

void write(const std::string& path, const std::string& text) {
  std::ofstream out{path};
  out << text;
}

std::string example_in(const std::string& folder, const std::string& file) {
  return source_dir() + "/examples/" + folder + "/" + file;
}

/// One row of the timeline `troupe run` prints on stderr.
struct timeline_row {
  bool found = false;
  std::string chart;
  int runs = -1;
  int steps = -1;
  int tools = -1;
};

timeline_row row_of(const std::string& err, const std::string& name) {
  std::istringstream in{err};
  std::string line;
  timeline_row row;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) != 0)
      continue;
    auto rest = line.substr(name.size());
    auto bar = rest.find('|');
    // The name, padding, then the chart: not a longer name or a progress line.
    if (bar == std::string::npos || rest.find_first_not_of(' ') != bar)
      continue;
    auto end = rest.find('|', bar + 1);
    if (end == std::string::npos)
      continue;
    row.found = true;
    row.chart = rest.substr(bar + 1, end - bar - 1);
    std::istringstream nums{rest.substr(end + 1)};
    nums >> row.runs >> row.steps >> row.tools;
    return row;
  }
  return row;
}

/// The row is an agent's ('#' bars) or a team's ('=' bars), all complete.
void check_row(const std::string& err, const std::string& name, bool team,
               int runs) {
  INFO("timeline row " << name);
  auto row = row_of(err, name);
  REQUIRE(row.found);
  CHECK(row.runs == runs);
  CHECK(row.chart.find(team ? '=' : '#') != std::string::npos);
  CHECK(row.chart.find(team ? '#' : '=') == std::string::npos);
  CHECK(row.chart.find('x') == std::string::npos);
}

/// The invoke_agent spans of a trace file, by agent or team name.
std::map<std::string, std::vector<json>> invoke_spans(const std::string& path) {
  std::map<std::string, std::vector<json>> out;
  std::ifstream in{path};
  std::string line;
  const std::string prefix = "invoke_agent ";
  while (std::getline(in, line)) {
    auto rec = json::parse(line);
    auto name = rec.value("name", "");
    if (rec.at("type") == "span" && name.rfind(prefix, 0) == 0)
      out[name.substr(prefix.size())].push_back(rec);
  }
  return out;
}

int64_t start_of(const json& span) {
  return span.at("start_ns").get<int64_t>();
}

int64_t end_of(const json& span) {
  return span.at("end_ns").get<int64_t>();
}

/// The content of a named rule of an example's script.
std::string script_reply(const std::string& script, const std::string& rule) {
  std::ifstream in{script};
  auto doc = json::parse(in);
  for (const auto& r : doc.at("rules"))
    if (r.value("name", "") == rule)
      return r.at("reply").at("content").get<std::string>();
  FAIL("no rule '" << rule << "' in " << script);
  return {};
}

} // namespace

SCENARIO("troupe run answers the support example's goal", "[cli]") {
  temp_dir dir;
  auto trace = dir.file("trace.jsonl");
  auto p = run_command(troupe_cmd(
    "run " + shell_quote(example("support.swarm.json"))
    + " --goal 'A customer asks: what is your refund policy, and how much is "
      "15% of 240 EUR?' --trace "
    + shell_quote(trace)));
  INFO(p.err);
  REQUIRE(p.exit_code == 0);
  // The policy comes from the knowledge file, the amount from the calculator.
  CHECK_THAT(p.out, Catch::Contains("within 30 days of delivery"));
  CHECK_THAT(p.out, Catch::Contains("36 EUR"));
  // Progress on stderr names the tools as they ran.
  CHECK_THAT(p.err, Catch::Contains("tool kv_lookup"));
  CHECK_THAT(p.err, Catch::Contains("tool calculator"));
  CHECK_THAT(p.err, Catch::Contains("complete in 2 step(s)"));
  std::ifstream in{trace};
  std::string line;
  int spans = 0;
  while (std::getline(in, line))
    spans += json::parse(line).at("type") == "span";
  CHECK(spans == 7); // run, 2 steps, 2 model calls, 2 tool calls
}

SCENARIO("troupe run with --json prints the whole result", "[cli]") {
  auto p = run_command(troupe_cmd(
    "run " + shell_quote(example("support.swarm.json"))
    + " --quiet --json --goal 'what time is it?'"));
  REQUIRE(p.exit_code == 0);
  CHECK(p.err.empty());
  auto r = json::parse(p.out);
  CHECK(r.at("status") == "complete");
  CHECK(r.at("steps").size() == 2);
  CHECK_THAT(r.at("answer").get<std::string>(), Catch::Contains("(UTC)"));
}

SCENARIO("troupe rejects a bad swarm file naming the file and the field",
         "[cli]") {
  temp_dir dir;
  auto path = dir.file("bad.swarm.json");
  GIVEN("an agent with an unknown tool") {
    write(path, R"({"model": "scripted:)" + example("support.script.json")
                  + R"(", "agents": [{"name": "a", "tools": ["calculator", "calc"]}]})");
    auto p = run_command(troupe_cmd("run " + shell_quote(path) + " --goal x"));
    CHECK(p.exit_code == 2);
    CHECK_THAT(p.err, Catch::Contains(path) && Catch::Contains("/agents/0/tools/1")
                        && Catch::Contains("unknown tool 'calc'"));
    CHECK(p.out.empty());
  }
  GIVEN("a field of the wrong type") {
    write(path, R"({"model": "scripted:x.json", "agents": [{"name": "a", "max_steps": "ten"}]})");
    auto p = run_command(troupe_cmd("validate " + shell_quote(path)));
    CHECK(p.exit_code == 2);
    CHECK_THAT(p.err, Catch::Contains("/agents/0/max_steps")
                        && Catch::Contains("must be an integer"));
  }
  GIVEN("a misspelt field") {
    write(path, R"({"model": "scripted:x.json", "agents": [{"name": "a", "max_step": 3}]})");
    auto p = run_command(troupe_cmd("validate " + shell_quote(path)));
    CHECK(p.exit_code == 2);
    CHECK_THAT(p.err, Catch::Contains("/agents/0/max_step")
                        && Catch::Contains("unknown field"));
  }
  GIVEN("a file that is not JSON") {
    write(path, "{\"agents\": [");
    auto p = run_command(troupe_cmd("run " + shell_quote(path) + " --goal x"));
    CHECK(p.exit_code == 2);
    CHECK_THAT(p.err, Catch::Contains(path) && Catch::Contains("not valid JSON"));
  }
  GIVEN("a missing file") {
    auto p = run_command(troupe_cmd("run " + shell_quote(dir.file("nope.json"))
                                    + " --goal x"));
    CHECK(p.exit_code == 2);
    CHECK_THAT(p.err, Catch::Contains("nope.json") && Catch::Contains("cannot open"));
  }
  GIVEN("an entry that names no agent") {
    write(path, R"({"model": "scripted:x.json", "agents": [{"name": "a"}], "entry": "b"})");
    auto p = run_command(troupe_cmd("validate " + shell_quote(path)));
    CHECK(p.exit_code == 2);
    CHECK_THAT(p.err, Catch::Contains("/entry") && Catch::Contains("'b'"));
  }
}

SCENARIO("troupe rejects a bad script file naming the script and the JSON path",
         "[cli]") {
  temp_dir dir;
  auto script = dir.file("broken.script.json");
  write(script, R"({"rules": [{"reply": {"content": "hi"}},
                              {"regex": "([unclosed", "reply": {"content": "x"}}]})");
  auto swarm = dir.file("s.swarm.json");
  write(swarm, R"({"model": "scripted:broken.script.json", "agents": [{"name": "a"}]})");
  auto p = run_command(troupe_cmd("run " + shell_quote(swarm) + " --goal x"));
  CHECK(p.exit_code == 2);
  CHECK_THAT(p.err, Catch::Contains(swarm) && Catch::Contains("broken.script.json")
                      && Catch::Contains("/rules/1/regex"));
}

SCENARIO("troupe exits 1 when a run does not complete", "[cli]") {
  temp_dir dir;
  auto script = dir.file("loop.script.json");
  write(script, R"({"rules": [{"reply": {"tool_calls": [{"name": "clock", "arguments": {}}]}}]})");
  auto swarm = dir.file("loop.swarm.json");
  write(swarm, R"({"model": "scripted:loop.script.json",
                   "agents": [{"name": "looper", "tools": ["clock"], "max_steps": 3}]})");
  auto p = run_command(troupe_cmd("run " + shell_quote(swarm) + " --goal x"));
  CHECK(p.exit_code == 1);
  CHECK_THAT(p.err, Catch::Contains("max_steps") && Catch::Contains("step limit (3)"));
}

SCENARIO("troupe --help documents every command", "[cli]") {
  auto p = run_command(troupe_cmd("--help"));
  CHECK(p.exit_code == 0);
  for (auto cmd : {"run", "validate", "tools"})
    CHECK_THAT(p.out, Catch::Contains(cmd));
  auto r = run_command(troupe_cmd("run --help"));
  CHECK(r.exit_code == 0);
  for (auto opt : {"--goal", "--trace", "--quiet", "--json", "--timeout", "--max-steps"})
    CHECK_THAT(r.out, Catch::Contains(opt));
  auto bad = run_command(troupe_cmd("frobnicate"));
  CHECK(bad.exit_code == 2);
}

SCENARIO("troupe run runs the research team example as a DAG", "[cli]") {
  temp_dir dir;
  auto trace = dir.file("trace.jsonl");
  auto p = run_command(troupe_cmd(
    "run " + shell_quote(example_in("research", "research.swarm.json"))
    + " --goal 'Should we replace the office gas boiler with a heat pump?' --trace "
    + shell_quote(trace)));
  INFO(p.err);
  REQUIRE(p.exit_code == 0);
  // The brief, with the analyst's figure from the calculator.
  CHECK_THAT(p.out, Catch::StartsWith("Brief: replace the office gas boiler"));
  CHECK_THAT(p.out, Catch::Contains("Simple payback: 7.5 years (18000 / 2400 EUR)"));
  CHECK_THAT(p.out, !Catch::Contains("incomplete"));
  // The plan, the timeline and the totals on stderr.
  CHECK_THAT(p.err, Catch::Contains("orchestrator_worker team 'research'"));
  CHECK_THAT(p.err, Catch::Contains("plan: 4 subtask(s): cost, savings, emissions, "
                                    "payback (after [\"cost\",\"savings\"])"));
  check_row(p.err, "research", true, 1);
  for (auto agent : {"planner", "researcher_1", "researcher_2", "researcher_3",
                     "analyst", "synthesizer"})
    check_row(p.err, agent, false, 1);
  CHECK_THAT(p.err, Catch::Contains("totals: ")
                      && Catch::Contains(" 7 agents, 7 runs (0 not complete)"));
  // From the trace: the researchers ran at once, the analyst after the cost
  // and savings research it builds on.
  auto spans = invoke_spans(trace);
  std::vector<json> researchers;
  json cost, savings;
  for (auto name : {"researcher_1", "researcher_2", "researcher_3"}) {
    REQUIRE(spans[name].size() == 1);
    const auto& s = spans[name][0];
    researchers.push_back(s);
    auto goal = s.at("attributes").value("troupe.goal", "");
    if (goal.find("Research topic: cost.") == 0)
      cost = s;
    if (goal.find("Research topic: savings.") == 0)
      savings = s;
  }
  for (size_t i = 0; i < researchers.size(); ++i)
    for (size_t j = i + 1; j < researchers.size(); ++j) {
      CHECK(start_of(researchers[i]) < end_of(researchers[j]));
      CHECK(start_of(researchers[j]) < end_of(researchers[i]));
    }
  REQUIRE(cost.is_object());
  REQUIRE(savings.is_object());
  REQUIRE(spans["analyst"].size() == 1);
  const auto& analyst = spans["analyst"][0];
  CHECK(start_of(analyst) >= end_of(cost));
  CHECK(start_of(analyst) >= end_of(savings));
  CHECK(spans.size() == 7);
}

SCENARIO("troupe run runs the debate example: rebuttals, then the judge",
         "[cli]") {
  auto script = example_in("debate", "debate.script.json");
  auto p = run_command(troupe_cmd(
    "run " + shell_quote(example_in("debate", "debate.swarm.json"))
    + " --goal 'Should our support team move to a four-day week?'"));
  INFO(p.err);
  REQUIRE(p.exit_code == 0);
  // The judge quotes each debater's final (rebuttal) answer, not its opening.
  for (auto who : {"optimist", "skeptic", "economist"}) {
    INFO(who);
    auto rebuttal = script_reply(script, std::string{who} + "-rebuttal");
    auto opening = script_reply(script, std::string{who} + "-opening");
    CHECK_THAT(p.out, Catch::Contains("\"" + rebuttal + "\""));
    CHECK_THAT(p.out, !Catch::Contains(opening));
  }
  CHECK_THAT(p.out, Catch::StartsWith("Decision: "));
  CHECK_THAT(p.err, Catch::Contains("debate: opening answers done, 3 answer(s)"));
  CHECK_THAT(p.err, Catch::Contains("debate: rebuttal round 1 done, 3 answer(s)"));
  check_row(p.err, "panel", true, 1);
  for (auto who : {"optimist", "skeptic", "economist"})
    check_row(p.err, who, false, 2);
  check_row(p.err, "judge", false, 1);
  CHECK_THAT(p.err, Catch::Contains(" 5 agents, 8 runs (0 not complete)"));
}

SCENARIO("troupe run runs the three-level project example", "[cli]") {
  temp_dir dir;
  auto trace = dir.file("trace.jsonl");
  auto p = run_command(troupe_cmd(
    "run " + shell_quote(example_in("project", "project.swarm.json"))
    + " --goal 'Ship table booking in the restaurant app' --trace "
    + shell_quote(trace)));
  INFO(p.err);
  REQUIRE(p.exit_code == 0);
  // The report carries the reviewed (second) version of the code.
  CHECK_THAT(p.out, Catch::StartsWith("Project report:"));
  CHECK_THAT(p.out, Catch::Contains("[api (backend)] v2: POST /bookings"));
  CHECK_THAT(p.out, !Catch::Contains("v1:"));
  CHECK_THAT(p.out, Catch::Contains("[launch (marketing)] Announcement: Booking is here!"));
  // The evaluator loop took two rounds.
  CHECK_THAT(p.err, Catch::Contains("evaluation round 1: fail"));
  CHECK_THAT(p.err, Catch::Contains("evaluation round 2: pass"));
  CHECK_THAT(p.err, !Catch::Contains("evaluation round 3"));
  for (auto team : {"project", "engineering", "backend", "marketing"})
    check_row(p.err, team, true, 1);
  for (auto agent : {"lead", "frontend_dev", "copywriter", "editor", "pm"})
    check_row(p.err, agent, false, 1);
  check_row(p.err, "coder", false, 2);
  check_row(p.err, "reviewer", false, 2);
  CHECK_THAT(p.err, Catch::Contains(" 11 agents, 13 runs (0 not complete)"));
  // Three levels of teams: coder runs inside backend, inside engineering,
  // inside project.
  auto spans = invoke_spans(trace);
  for (auto name : {"project", "engineering", "backend"})
    REQUIRE(spans[name].size() == 1);
  REQUIRE(spans["coder"].size() == 2);
  auto id = [&](const char* name) { return spans[name][0].at("span_id"); };
  for (const auto& coder : spans["coder"])
    CHECK(coder.at("parent_span_id") == id("backend"));
  CHECK(spans["backend"][0].at("parent_span_id") == id("engineering"));
  CHECK(spans["engineering"][0].at("parent_span_id") == id("project"));
  CHECK(spans["project"][0].at("parent_span_id") == "");
  CHECK(spans["marketing"][0].at("parent_span_id") == id("project"));
}

SCENARIO("troupe validate lists a swarm's teams and refuses a bad team file",
         "[cli]") {
  GIVEN("the project example") {
    auto p = run_command(troupe_cmd(
      "validate " + shell_quote(example_in("project", "project.swarm.json"))));
    CHECK(p.exit_code == 0);
    CHECK(p.err.empty());
    CHECK_THAT(p.out, Catch::Contains("ok, swarm 'project' with 7 agent(s) and 4 team(s)")
                        && Catch::Contains("entry 'project'"));
    // Every team with its pattern, each after the teams it contains.
    auto backend = p.out.find("backend: evaluator_optimizer");
    auto engineering = p.out.find("engineering: hierarchical");
    auto marketing = p.out.find("marketing: pipeline");
    auto project = p.out.find("project: hierarchical");
    REQUIRE(backend != std::string::npos);
    REQUIRE(engineering != std::string::npos);
    REQUIRE(marketing != std::string::npos);
    REQUIRE(project != std::string::npos);
    CHECK(backend < engineering);
    CHECK(engineering < project);
    CHECK(marketing < project);
  }
  GIVEN("the debate and research examples") {
    auto debate = run_command(troupe_cmd(
      "validate " + shell_quote(example_in("debate", "debate.swarm.json"))));
    CHECK(debate.exit_code == 0);
    CHECK_THAT(debate.out, Catch::Contains("1 team(s) (panel: debate), entry 'panel'"));
    auto research = run_command(troupe_cmd(
      "validate " + shell_quote(example_in("research", "research.swarm.json"))));
    CHECK(research.exit_code == 0);
    CHECK_THAT(research.out,
               Catch::Contains("1 team(s) (research: orchestrator_worker), entry 'research'"));
  }
  GIVEN("two teams that contain each other") {
    temp_dir dir;
    auto path = dir.file("tcycle.swarm.json");
    write(path, R"({"model": "scripted:x.json", "agents": [{"name": "w"}],
                    "teams": [{"name": "a", "pattern": "pipeline", "stages": ["w", "b"]},
                              {"name": "b", "pattern": "pipeline", "stages": ["a"]}]})");
    auto p = run_command(troupe_cmd("validate " + shell_quote(path)));
    CHECK(p.exit_code == 2);
    CHECK(p.out.empty());
    CHECK_THAT(p.err, Catch::StartsWith("error: " + path + ": /teams/0: ")
                        && Catch::Contains("team cycle: a -> b -> a"));
    auto run = run_command(troupe_cmd("run " + shell_quote(path) + " --goal x"));
    CHECK(run.exit_code == 2);
    CHECK(run.out.empty());
    CHECK_THAT(run.err, Catch::Contains("team cycle: a -> b -> a"));
  }
  GIVEN("a fixed plan with an unknown role") {
    temp_dir dir;
    auto path = dir.file("role.swarm.json");
    write(path, R"({"model": "scripted:x.json", "agents": [{"name": "w"}],
                    "teams": [{"name": "t", "pattern": "orchestrator_worker",
                               "workers": {"researcher": "w"},
                               "plan": {"subtasks": [{"id": "x", "role": "writer", "goal": "g"}]}}]})");
    auto p = run_command(troupe_cmd("validate " + shell_quote(path)));
    CHECK(p.exit_code == 2);
    CHECK_THAT(p.err, Catch::Contains(path + ": /teams/0/plan: ")
                        && Catch::Contains("unknown role 'writer' (roles: researcher)"));
  }
}

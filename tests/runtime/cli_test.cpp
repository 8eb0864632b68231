// The troupe CLI, driven as a user drives it: a real process, real files.

#include <catch2/catch.hpp>

#include <fstream>

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

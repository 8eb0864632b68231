// The troupe command line: runs swarms from JSON files.
//
//   troupe run SWARM.json --goal "..."   run a swarm, show progress, print the answer,
//                                        then a timeline of who ran when
//   troupe validate SWARM.json           check a swarm file and its scripts
//   troupe tools                         list the builtin tools and their schemas
//
// Exit codes: 0 the run completed; 1 the run ended without completing
// (failed, halted, max_steps); 2 bad usage or a bad swarm file.

#include <chrono>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <string>

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "runtime/builtin_tools.hpp"
#include "runtime/clock.hpp"
#include "runtime/runtime.hpp"
#include "runtime/swarm.hpp"
#include "runtime/timeline.hpp"

namespace {

using troupe::json;

constexpr int exit_incomplete = 1;
constexpr int exit_bad_input = 2;

std::string shorten(std::string text, size_t max = 120) {
  for (auto& c : text)
    if (c == '\n' || c == '\r')
      c = ' ';
  if (text.size() > max)
    text = text.substr(0, max - 3) + "...";
  return text;
}

/// Prints one line per interesting trace record to stderr while a run goes on.
class progress_view {
public:
  explicit progress_view(int64_t start_ns) : start_ns_(start_ns) {
  }

  void operator()(const json& rec) {
    std::string line;
    try {
      line = describe(rec);
    } catch (const json::exception&) {
      return; // a record of an unexpected shape is not worth a progress line
    }
    if (line.empty())
      return;
    std::lock_guard<std::mutex> guard{mtx_};
    auto t = rec.value("end_ns", rec.value("time_ns", rec.value("start_ns", 0LL)));
    std::fprintf(stderr, "[%7.3fs] %s\n",
                 static_cast<double>(t - start_ns_) / 1e9, line.c_str());
  }

private:
  static std::string describe(const json& rec) {
    static const json no_attrs = json::object();
    if (!rec.is_object())
      return {};
    auto type = rec.value("type", "");
    auto name = rec.value("name", "");
    const auto& attrs = rec.contains("attributes") && rec["attributes"].is_object()
                          ? rec["attributes"]
                          : no_attrs;
    auto agent = attrs.value("gen_ai.agent.name", "");
    if (type == "span_start" && name.rfind("chat ", 0) == 0)
      return agent + " | step " + std::to_string(attrs.value("troupe.step", 0))
             + " | asking " + attrs.value("gen_ai.request.model", "model");
    if (type == "span" && name.rfind("execute_tool ", 0) == 0) {
      auto tool = attrs.value("gen_ai.tool.name", "");
      auto args = attrs.value("gen_ai.tool.call.arguments", "");
      auto ms = rec.value("duration_ms", 0.0);
      std::string outcome = rec.value("status", "") == "ok"
                              ? "-> " + attrs.value("gen_ai.tool.call.result", "")
                              : "!! " + rec.value("status_message", "");
      char took[32];
      std::snprintf(took, sizeof(took), "%.1f ms", ms);
      return agent + " | step " + std::to_string(attrs.value("troupe.step", 0))
             + " | tool " + tool + " " + shorten(args, 60) + " (" + took + ") "
             + shorten(outcome);
    }
    if (type == "event" && name == "tool.rejected")
      return "  rejected " + attrs.value("gen_ai.tool.name", "?") + ": "
             + shorten(attrs.value("troupe.observation", ""));
    if (type == "event" && name.rfind("team.", 0) == 0)
      return describe_team_event(name, attrs);
    if (type == "event" && name == "agent.malformed_reply")
      return "  malformed reply: "
             + shorten(attrs.value("troupe.observation", ""));
    if (type == "span" && name.rfind("invoke_agent ", 0) == 0)
      return agent + " | " + attrs.value("troupe.run.status", "?") + " after "
             + std::to_string(attrs.value("troupe.run.steps", 0)) + " step(s)";
    return {};
  }

  /// Team decisions worth a line: the plan, retries, failures, rounds.
  static std::string describe_team_event(const std::string& name,
                                         const json& attrs) {
    auto id = attrs.value("troupe.subtask.id", "?");
    if (name == "team.plan") {
      std::string ids;
      const auto& plan = attrs.contains("troupe.plan") ? attrs["troupe.plan"]
                                                       : json::array();
      for (const auto& s : plan)
        if (s.is_object()) {
          ids += (ids.empty() ? "" : ", ") + s.value("id", "?");
          if (s.contains("depends_on") && s["depends_on"].is_array()
              && !s["depends_on"].empty())
            ids += " (after " + shorten(s["depends_on"].dump(), 40) + ")";
        }
      return "  plan: " + std::to_string(plan.size()) + " subtask(s): "
             + shorten(ids, 200);
    }
    if (name == "team.plan.rejected")
      return "  plan rejected: " + shorten(attrs.value("troupe.plan.error", ""));
    if (name == "team.subtask.retry")
      return "  subtask " + id + " failed on "
             + attrs.value("troupe.subtask.member", "?") + ", retrying: "
             + shorten(attrs.value("troupe.subtask.error", ""));
    if (name == "team.subtask.failed" || name == "team.subtask.skipped")
      return "  subtask " + id + " "
             + (name == "team.subtask.failed" ? "failed: " : "")
             + shorten(attrs.value("troupe.subtask.error", ""));
    if (name == "team.debate.round") {
      auto round = attrs.value("troupe.debate.round", 0);
      return (round == 0 ? std::string{"  debate: opening answers"}
                         : "  debate: rebuttal round " + std::to_string(round))
             + " done, " + std::to_string(attrs.value("troupe.debate.answers", 0))
             + " answer(s)";
    }
    if (name == "team.evaluation")
      return std::string{"  evaluation round "}
             + std::to_string(attrs.value("troupe.eval.round", 0)) + ": "
             + (attrs.value("troupe.eval.pass", false) ? "pass" : "fail") + " "
             + shorten(attrs.value("troupe.eval.feedback", ""), 80);
    return {};
  }

  int64_t start_ns_;
  std::mutex mtx_;
};

int cmd_run(const std::string& swarm_path, const std::string& goal,
            const std::string& trace_path, bool quiet, bool as_json,
            int timeout_s, int max_steps) {
  troupe::swarm_definition def;
  try {
    def = troupe::load_swarm(swarm_path);
  } catch (const troupe::swarm_error& ex) {
    std::cerr << "error: " << ex.what() << "\n";
    return exit_bad_input;
  }
  troupe::runtime_config cfg;
  cfg.trace_path = trace_path;
  cfg.load_middleman = false;
  auto view = std::make_shared<progress_view>(troupe::now_ns());
  troupe::timeline chart;
  if (!quiet) {
    cfg.trace_listeners.push_back([view](const json& rec) { (*view)(rec); });
    cfg.trace_listeners.push_back(chart.listener());
  }
  std::unique_ptr<troupe::runtime> rt;
  try {
    rt = std::make_unique<troupe::runtime>(cfg);
  } catch (const std::exception& ex) {
    std::cerr << "error: " << ex.what() << "\n";
    return exit_bad_input;
  }
  troupe::swarm_instance swarm;
  try {
    swarm = troupe::instantiate(*rt, def);
  } catch (const std::exception& ex) {
    std::cerr << "error: " << ex.what() << "\n";
    return exit_bad_input;
  }
  if (!quiet) {
    std::string entry = "agent '" + def.entry + "'";
    for (const auto& t : def.teams)
      if (t.name == def.entry)
        entry = t.pattern + " team '" + def.entry + "'";
    std::cerr << "troupe: running swarm '" << def.name << "' (entry: " << entry
              << ")\n";
  }
  troupe::run_options opts;
  opts.timeout = std::chrono::seconds{timeout_s};
  opts.max_steps = max_steps;
  auto result = rt->run(swarm.entry, goal, opts);
  rt->shutdown();
  if (as_json) {
    std::cout << troupe::safe_dump(json(result), 2) << "\n";
  } else if (!result.answer.empty()) {
    std::cout << result.answer << "\n";
  }
  std::cout.flush();
  if (!quiet)
    std::cerr << "\n" << chart.render();
  if (!quiet)
    std::cerr << "troupe: run " << result.run_id << " "
              << troupe::to_string(result.status) << " in "
              << result.steps.size() << " step(s), "
              << result.usage.input_tokens << " input + "
              << result.usage.output_tokens << " output tokens"
              << (trace_path.empty() ? "" : ", trace in " + trace_path) << "\n";
  if (result.status != troupe::run_status::complete) {
    std::cerr << "error: run " << result.run_id << " ended "
              << troupe::to_string(result.status) << ": " << result.error
              << "\n";
    return exit_incomplete;
  }
  return 0;
}

int cmd_validate(const std::string& swarm_path) {
  try {
    auto def = troupe::load_swarm(swarm_path);
    std::cout << swarm_path << ": ok, swarm '" << def.name << "' with "
              << def.agents.size() << " agent(s)";
    if (!def.teams.empty()) {
      std::cout << " and " << def.teams.size() << " team(s) (";
      for (size_t i = 0; i < def.teams.size(); ++i)
        std::cout << (i ? ", " : "") << def.teams[i].name << ": "
                  << def.teams[i].pattern;
      std::cout << ")";
    }
    std::cout << ", entry '" << def.entry << "'\n";
    return 0;
  } catch (const troupe::swarm_error& ex) {
    std::cerr << "error: " << ex.what() << "\n";
    return exit_bad_input;
  }
}

int cmd_tools() {
  for (auto def : {troupe::calculator_tool(), troupe::clock_tool()}) {
    std::cout << def.name << " " << def.version << ": " << def.description
              << "\n  arguments: " << def.parameters.dump() << "\n";
  }
  std::cout << "kv_lookup 1.0.0: looks a key up in a JSON file (set "
               "tools.kv_lookup.file in the swarm file)\n"
               "  arguments: {\"key\": string}\n";
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"troupe: an actor runtime for multi-agent LLM systems"};
  app.require_subcommand(1);
  std::string log_level = "warn";
  app.add_option("--log-level", log_level,
                 "Log level: trace, debug, info, warn, error, off")
    ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));

  auto* run = app.add_subcommand(
    "run", "Run a swarm file on a goal, show progress, print the answer");
  std::string swarm_path, goal, trace_path;
  bool quiet = false, as_json = false;
  int timeout_s = 600, max_steps = 0;
  run->add_option("swarm", swarm_path, "The swarm file (JSON)")->required();
  run->add_option("-g,--goal", goal, "What the swarm should do")->required();
  run->add_option("-t,--trace", trace_path,
                  "Append the run's trace (JSONL spans and events) to FILE");
  run->add_flag("-q,--quiet", quiet, "No progress lines on stderr");
  run->add_flag("--json", as_json, "Print the whole run result as JSON");
  run->add_option("--timeout", timeout_s, "Give up after SECONDS")
    ->check(CLI::Range(1, 86400));
  run->add_option("--max-steps", max_steps,
                  "Lower every agent's step limit to N")
    ->check(CLI::Range(1, 10000));

  auto* validate = app.add_subcommand(
    "validate", "Check a swarm file and the scripts it names, then exit");
  std::string validate_path;
  validate->add_option("swarm", validate_path, "The swarm file (JSON)")
    ->required();

  auto* tools = app.add_subcommand("tools", "List the builtin tools");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    auto code = app.exit(e);
    return code == 0 ? 0 : exit_bad_input;
  }
  // Logs go to stderr: stdout carries the answer.
  spdlog::set_default_logger(spdlog::stderr_color_mt("troupe"));
  spdlog::set_level(spdlog::level::from_str(log_level));
  if (*run)
    return cmd_run(swarm_path, goal, trace_path, quiet, as_json, timeout_s,
                   max_steps);
  if (*validate)
    return cmd_validate(validate_path);
  if (*tools)
    return cmd_tools();
  return exit_bad_input;
}

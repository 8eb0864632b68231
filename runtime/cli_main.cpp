// The troupe command line: runs swarms from JSON files.
//
//   troupe run SWARM.json --goal "..."   run a swarm, show progress, print the answer,
//                                        then a timeline of who ran when
//   troupe validate SWARM.json           check a swarm file and its scripts
//   troupe tools                         list the builtin tools and their schemas
//   troupe approvals list                list the requests waiting for a human
//   troupe approvals approve ID          approve one (--as WHO, --note TEXT)
//   troupe approvals deny ID --note WHY  deny one
//   troupe node --name N --listen H:P    host agents and tools for a cluster
//               [--join H:P] [--swarm FILE] [--tls-cert/--tls-key/--tls-ca]
//   troupe run --cluster H:P SWARM.json  run a swarm whose agents live on the
//                                        cluster's nodes (/agents/N/nodes)
//   troupe run --store FILE SWARM.json   a durable run: checkpoints, journal
//                                        and ledger in a SQLite file
//   troupe resume RUN_ID --store FILE    take a durable run up where it stopped
//   troupe serve SWARM.json... [--listen H:P] [--store FILE] [--auth FILE]
//                                        durable runs behind the HTTP API
//                                        (docs/http-api.md)
//
// `troupe run --approvals HOST:PORT` serves the run's approval gate there;
// `troupe approvals ... --connect HOST:PORT` reaches it. Both default to the
// environment variable TROUPE_APPROVALS (the client then to 127.0.0.1:4343).
//
// Exit codes: 0 the run completed (or the approvals command did its job);
// 1 the run ended without completing (failed, halted, max_steps) or the gate
// refused a decision (no such pending request); 2 bad usage or a bad swarm
// file; 3 the approval gate could not be reached (serve: the address could
// not be bound). `troupe serve` and `troupe node` exit 0 after SIGINT/SIGTERM.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>

#include <CLI/CLI.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>
#include <caf/io/middleman.hpp>

#include "actors/events.hpp"
#include "messages/type_ids.hpp"
#include "runtime/approvals.hpp"
#include "runtime/builtin_tools.hpp"
#include "runtime/clock.hpp"
#include "runtime/runtime.hpp"
#include "runtime/guardrail_lines.hpp"
#include "runtime/node_main.hpp"
#include "runtime/run_service.hpp"
#include "runtime/serve_main.hpp"
#include "runtime/swarm.hpp"
#include "runtime/timeline.hpp"

namespace {

using troupe::json;

constexpr int exit_incomplete = 1;
constexpr int exit_bad_input = 2;
constexpr int exit_unreachable = 3;

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
    auto t = rec.value("end_ns", rec.value("time_ns", rec.value("start_ns", 0LL)));
    print(t, line);
  }

  /// A line for the agent events the trace does not show: a run pausing for
  /// a human, a guardrail warning.
  void operator()(const troupe::agent_event& ev) {
    auto t = ev.time_ns != 0 ? ev.time_ns : troupe::now_ns();
    if (ev.kind == troupe::event_kind::awaiting_approval)
      print(t, "|| " + ev.source + " awaits approval: "
                 + shorten(ev.detail, 200));
    else if (ev.kind == troupe::event_kind::warning)
      print(t, "! " + ev.source + ": " + shorten(ev.detail, 200));
  }

private:
  void print(int64_t time_ns, const std::string& line) {
    std::lock_guard<std::mutex> guard{mtx_};
    std::fprintf(stderr, "[%7.3fs] %s\n",
                 static_cast<double>(time_ns - start_ns_) / 1e9, line.c_str());
  }

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
    // Pauses for approval and warnings come as agent events (below).
    if (type == "event" && name != "approval.requested"
        && name != "guardrail.warning")
      if (auto line = troupe::describe_guardrail_event(rec); !line.empty())
        return "  " + line;
    if (type == "event" && name == "cluster.reassign")
      return "  node " + attrs.value("troupe.node.from", "?") + " lost ("
             + shorten(attrs.value("troupe.node.lost", ""), 80) + "): "
             + agent + " moved to " + attrs.value("troupe.node.to", "no node");
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
            int timeout_s, int max_steps, const std::string& approvals_addr,
            const std::string& cluster, const troupe::cluster_tls& tls) {
  troupe::swarm_definition def;
  std::pair<std::string, uint16_t> approvals_at, seed;
  try {
    def = troupe::load_swarm(swarm_path);
    if (!approvals_addr.empty())
      approvals_at = troupe::parse_host_port(approvals_addr);
    if (!cluster.empty())
      seed = troupe::parse_host_port(cluster);
    if (tls.enabled())
      troupe::validate(tls);
    if (tls.enabled() && !approvals_addr.empty())
      throw std::invalid_argument(
        "--approvals serves the gate over plain TCP, which would let peers "
        "without a certificate into a TLS cluster: use one or the other");
    if (def.entry.empty())
      throw troupe::swarm_error(swarm_path + ": it has no agents to run (a "
                                             "node's swarm file only hosts "
                                             "tools: troupe node --swarm)");
  } catch (const std::exception& ex) {
    std::cerr << "error: " << ex.what() << "\n";
    return exit_bad_input;
  }
  troupe::runtime_config cfg;
  // The swarm's budget, prices, policy, models and model limits.
  troupe::configure(cfg, def);
  try {
    // TROUPE_MODEL moves every agent to one (real) model.
    cfg.model_override = troupe::model_override_from_env();
  } catch (const std::exception& ex) {
    std::cerr << "error: " << ex.what() << "\n";
    return exit_bad_input;
  }
  cfg.trace_path = trace_path;
  // The middleman (a thread, a socket multiplexer) only to serve approvals
  // or to reach a cluster.
  cfg.load_middleman = !approvals_addr.empty() || !cluster.empty();
  cfg.tls = tls;
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
  if (!cluster.empty()) {
    try {
      auto via = rt->connect(seed.first, seed.second);
      if (!quiet)
        std::cerr << "troupe: joined the cluster through " << via
                  << " (members: " << troupe::member_names(rt->members())
                  << ")\n";
    } catch (const std::exception& ex) {
      std::cerr << "error: " << ex.what() << "\n";
      return exit_unreachable;
    }
  }
  troupe::swarm_instance swarm;
  try {
    swarm = troupe::instantiate(*rt, def, !cluster.empty());
  } catch (const std::exception& ex) {
    std::cerr << "error: " << ex.what() << "\n";
    return exit_bad_input;
  }
  if (!approvals_addr.empty()) {
    try {
      auto& [host, port] = approvals_at;
      auto bound = troupe::publish_approval_gate(rt->system(), rt->approvals(),
                                                 host, port);
      // Tests and scripts read the real port from this line (port 0 = any).
      std::cerr << "approvals: listening on "
                << (host.find(':') != std::string::npos ? "[" + host + "]"
                                                        : host)
                << ":" << bound << std::endl;
    } catch (const std::exception& ex) {
      std::cerr << "error: " << ex.what() << "\n";
      return exit_bad_input;
    }
  }
  if (!quiet) {
    constexpr auto mask = troupe::mask_of(troupe::event_kind::awaiting_approval)
                          | troupe::mask_of(troupe::event_kind::warning);
    for (const auto& [name, agent] : swarm.agents)
      rt->adopt(troupe::spawn_event_observer(
        rt->system(), agent, mask,
        [view](const troupe::agent_event& ev) { (*view)(ev); }));
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
              << (result.cost_nusd > 0
                    ? ", $" + std::to_string(troupe::nusd_to_usd(result.cost_nusd))
                    : std::string{})
              << (trace_path.empty() ? "" : ", trace in " + trace_path) << "\n";
  if (result.status != troupe::run_status::complete) {
    std::cerr << "error: run " << result.run_id << " ended "
              << troupe::to_string(result.status) << ": " << result.error
              << "\n";
    return exit_incomplete;
  }
  return 0;
}

/// Prints a durable run's outcome as cmd_run does; returns the exit code.
int report_stored(const troupe::stored_run& rec, bool quiet, bool as_json,
                  const std::string& store_path) {
  if (as_json)
    std::cout << troupe::safe_dump(troupe::run_to_json(rec, true), 2) << "\n";
  else if (!rec.answer.empty())
    std::cout << rec.answer << "\n";
  std::cout.flush();
  if (!quiet)
    std::cerr << "troupe: run " << rec.id << " " << rec.status << " in "
              << rec.steps << " step(s), " << rec.input_tokens << " input + "
              << rec.output_tokens << " output tokens"
              << (rec.cost_nusd > 0
                    ? ", $" + std::to_string(troupe::nusd_to_usd(rec.cost_nusd))
                    : std::string{})
              << ", attempt " << rec.attempts << ", kept in " << store_path
              << "\n";
  if (rec.status == "complete")
    return 0;
  if (!troupe::is_finished_status(rec.status)) {
    std::cerr << "error: run " << rec.id << " is still " << rec.status
              << ": resume it with `troupe resume " << rec.id << " --store "
              << store_path << "`\n";
    return exit_incomplete;
  }
  std::cerr << "error: run " << rec.id << " ended " << rec.status << ": "
            << rec.error << "\n";
  return exit_incomplete;
}

/// A run kept in a store (`troupe run --store`), or one resumed from it
/// (`troupe resume`, `resume_id` set): it survives this process being
/// killed, and `troupe resume ID --store FILE` takes it up again.
int cmd_durable(const std::string& swarm_path, const std::string& goal,
                const std::string& store_path, const std::string& run_id,
                const std::string& resume_id, const std::string& trace_path,
                bool quiet, bool as_json, int timeout_s, int max_steps) {
  std::string path = swarm_path;
  if (!resume_id.empty()) {
    // The swarm comes from the run's record unless one is named.
    try {
      troupe::store_options so;
      so.path = store_path;
      troupe::store db{so};
      auto rec = db.get_run(resume_id);
      if (!rec) {
        std::cerr << "error: " << store_path << " has no run '" << resume_id
                  << "'\n";
        return exit_bad_input;
      }
      if (troupe::is_finished_status(rec->status)) {
        if (!quiet)
          std::cerr << "troupe: run " << resume_id << " has already ended ("
                    << rec->status << "); nothing to resume\n";
        return report_stored(*rec, quiet, as_json, store_path);
      }
      if (path.empty())
        path = rec->swarm_path;
    } catch (const std::exception& ex) {
      std::cerr << "error: " << ex.what() << "\n";
      return exit_bad_input;
    }
  }
  auto view = std::make_shared<progress_view>(troupe::now_ns());
  troupe::timeline chart;
  troupe::run_service_options so;
  so.store.path = store_path;
  so.resume_on_start = false;
  so.max_concurrent_runs = 1;
  so.run_timeout = std::chrono::seconds{timeout_s};
  so.configure = [&](troupe::runtime_config& cfg,
                     const troupe::swarm_definition&) {
    cfg.trace_path = trace_path;
    if (!quiet) {
      cfg.trace_listeners.push_back([view](const json& rec) { (*view)(rec); });
      cfg.trace_listeners.push_back(chart.listener());
    }
  };
  std::unique_ptr<troupe::run_service> svc;
  troupe::stored_run rec;
  try {
    svc = std::make_unique<troupe::run_service>(std::vector<std::string>{path},
                                                so);
    if (resume_id.empty()) {
      troupe::run_submission sub;
      sub.swarm = svc->swarms().front().name;
      sub.goal = goal;
      sub.principal = "cli";
      sub.max_steps = max_steps;
      sub.run_id = run_id;
      rec = svc->submit(sub);
    } else {
      rec = svc->resume(resume_id);
    }
  } catch (const std::exception& ex) {
    std::cerr << "error: " << ex.what() << "\n";
    return exit_bad_input;
  }
  if (!quiet)
    std::cerr << "troupe: " << (resume_id.empty() ? "running" : "resuming")
              << " run " << rec.id << " of swarm '" << rec.swarm
              << "' (kept in " << store_path << ")" << std::endl;
  rec = svc->wait(rec.id, std::chrono::seconds{timeout_s}
                            + std::chrono::seconds{5});
  svc->shutdown();
  if (!quiet)
    std::cerr << "\n" << chart.render();
  return report_stored(rec, quiet, as_json, store_path);
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

/// A duration for people: "850ms", "42s", "14m08s", "3h05m".
std::string human_ms(int64_t ms) {
  if (ms < 0)
    ms = 0;
  char buf[32];
  if (ms < 1000)
    std::snprintf(buf, sizeof(buf), "%lldms", static_cast<long long>(ms));
  else if (ms < 60'000)
    std::snprintf(buf, sizeof(buf), "%llds", static_cast<long long>(ms / 1000));
  else if (ms < 3'600'000)
    std::snprintf(buf, sizeof(buf), "%lldm%02llds",
                  static_cast<long long>(ms / 60'000),
                  static_cast<long long>(ms / 1000 % 60));
  else
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm",
                  static_cast<long long>(ms / 3'600'000),
                  static_cast<long long>(ms / 60'000 % 60));
  return buf;
}

/// Connects to the approval gate at `address` and calls `fn` with a client.
/// Exit codes: 2 for a bad address, 3 when the gate cannot be reached, 1 when
/// `fn` throws (the gate refused or did not answer), else what `fn` returns.
template <class F>
int with_approval_client(const std::string& address, int timeout_s, F fn) {
  std::pair<std::string, uint16_t> at;
  try {
    at = troupe::parse_host_port(address);
  } catch (const std::invalid_argument& ex) {
    std::cerr << "error: " << ex.what() << "\n";
    return exit_bad_input;
  }
  caf::actor_system_config cfg;
  troupe::register_messages(cfg);
  cfg.load<caf::io::middleman>();
  cfg.set("logger.console-verbosity", caf::atom("quiet"));
  cfg.set("scheduler.max-threads", 2);
  caf::actor_system sys{cfg};
  std::unique_ptr<troupe::approval_client> client;
  try {
    client = std::make_unique<troupe::approval_client>(
      sys, at.first, at.second, std::chrono::seconds{timeout_s});
  } catch (const std::exception& ex) {
    std::cerr << "error: " << ex.what() << "\n";
    return exit_unreachable;
  }
  try {
    return fn(*client);
  } catch (const std::exception& ex) {
    std::cerr << "error: " << ex.what() << "\n";
    return exit_incomplete;
  }
}

int cmd_approvals_list(const std::string& address, int timeout_s) {
  return with_approval_client(address, timeout_s, [](troupe::approval_client&
                                                       client) {
    auto pending = client.list();
    if (pending.empty()) {
      std::cout << "no pending approval requests\n";
      return 0;
    }
    auto now = troupe::now_ms();
    for (size_t i = 0; i < pending.size(); ++i) {
      const auto& r = pending[i];
      auto age = now - r.created_ms;
      auto left = r.created_ms + r.ttl_ms - now;
      std::cout << (i == 0 ? "" : "\n") << r.request_id << "  " << r.agent
                << "  " << r.action << "  waiting " << human_ms(age) << ", "
                << human_ms(left) << " left\n"
                << "  args:   " << troupe::safe_dump(r.args.value) << "\n"
                << "  reason: " << r.reason << "\n";
      if (!r.ref.run_id.empty())
        std::cout << "  run:    " << r.ref.run_id
                  << (r.ref.principal.empty() ? "" : " for " + r.ref.principal)
                  << "\n";
    }
    std::cout << pending.size() << " pending approval request"
              << (pending.size() == 1 ? "" : "s") << " at " << client.address()
              << "\n";
    return 0;
  });
}

int cmd_approvals_decide(const std::string& address, int timeout_s,
                         const std::string& id,
                         troupe::approval_verdict verdict,
                         const std::string& who, const std::string& note) {
  return with_approval_client(address, timeout_s, [&](troupe::approval_client&
                                                        client) {
    auto r = client.decide(id, verdict, who, note);
    std::cout << (verdict == troupe::approval_verdict::approve ? "approved "
                                                               : "denied ")
              << r.request_id << ": " << r.action << " "
              << shorten(troupe::safe_dump(r.args.value), 200) << " for "
              << r.agent << ", as " << (who.empty() ? "unknown" : who)
              << (note.empty() ? "" : ": " + note) << "\n";
    return 0;
  });
}

/// Who decides when --as is not given: the login name, else "cli".
std::string default_decider() {
  if (const char* user = std::getenv("USER"); user != nullptr && *user != 0)
    return user;
  return "cli";
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
  std::string serve_approvals;
  run->add_option("--approvals", serve_approvals,
                  "Serve the run's approval gate on HOST:PORT (port 0 = any "
                  "free port; the bound address is printed on stderr) so "
                  "`troupe approvals` can decide from another shell")
    ->envname("TROUPE_APPROVALS");
  std::string store_path, run_id;
  run->add_option("--store", store_path,
                  "Keep the run in this SQLite file (checkpoints, journal, "
                  "ledger): killed, it goes on with `troupe resume`");
  run->add_option("--run-id", run_id,
                  "The run's id (with --store; default: a fresh one)");
  std::string cluster;
  run->add_option("--cluster", cluster,
                  "Join the cluster through the node at HOST:PORT and place "
                  "the agents that name /nodes on its nodes");
  troupe::cluster_tls tls;
  std::string tls_passphrase_env;
  auto tls_options = [&](CLI::App* cmd) {
    cmd->add_option("--tls-cert", tls.certificate,
                    "This process's certificate (PEM) for TLS between nodes")
      ->envname("TROUPE_TLS_CERT");
    cmd->add_option("--tls-key", tls.key, "Its private key (PEM)")
      ->envname("TROUPE_TLS_KEY");
    cmd->add_option("--tls-ca", tls.ca_file,
                    "The cluster's CA certificate (PEM): peers must present "
                    "a certificate it signed")
      ->envname("TROUPE_TLS_CA");
    cmd->add_option("--tls-passphrase-env", tls_passphrase_env,
                    "Read the key's passphrase from this environment "
                    "variable");
  };
  tls_options(run);

  auto* node = app.add_subcommand(
    "node", "Host agents and tools for a cluster until SIGINT or SIGTERM");
  troupe::node_command node_cmd;
  int heartbeat_ms = 500, heartbeat_timeout_ms = 3000, join_timeout_s = 30;
  node->add_option("--name", node_cmd.name, "The node's name, unique in the "
                                            "cluster")
    ->required();
  node->add_option("--listen", node_cmd.listen,
                   "HOST:PORT to accept peers on (default 0.0.0.0:4242; port "
                   "0 = any free port, printed on stderr)");
  node->add_option("--advertise", node_cmd.advertise,
                   "HOST:PORT peers dial to reach this node (default: the "
                   "listen address, 127.0.0.1 for 0.0.0.0)");
  node->add_option("--join", node_cmd.join,
                   "Join the cluster through the node at HOST:PORT (repeat "
                   "for more seeds)");
  node->add_option("--join-timeout", join_timeout_s,
                   "Keep trying the seeds for SECONDS (default 30)")
    ->check(CLI::Range(1, 3600));
  node->add_option("--swarm", node_cmd.swarm,
                   "Host this swarm file's tools, agents and teams");
  node->add_option("--capability", node_cmd.capabilities,
                   "Something this node offers, for look-ups (repeatable)");
  node->add_option("--heartbeat-ms", heartbeat_ms,
                   "Heartbeat interval (default 500)")
    ->check(CLI::Range(10, 60000));
  node->add_option("--heartbeat-timeout-ms", heartbeat_timeout_ms,
                   "A peer silent this long has failed (default 3000)")
    ->check(CLI::Range(20, 600000));
  node->add_option("-t,--trace", node_cmd.trace_path,
                   "Append this node's own trace (JSONL) to FILE");
  tls_options(node);

  auto* resume = app.add_subcommand(
    "resume", "Take up a run kept in a store (troupe run --store) where it "
              "stopped, and wait for its end");
  std::string resume_id, resume_store = "troupe-runs.db", resume_swarm;
  resume->add_option("run_id", resume_id, "The run's id")->required();
  resume->add_option("--store", resume_store,
                     "The store file (default troupe-runs.db)");
  resume->add_option("--swarm", resume_swarm,
                     "The swarm file (default: the one the run was started "
                     "with)");
  resume->add_option("-t,--trace", trace_path,
                     "Append the run's trace (JSONL) to FILE");
  resume->add_flag("-q,--quiet", quiet, "No progress lines on stderr");
  resume->add_flag("--json", as_json, "Print the run's record as JSON");
  resume->add_option("--timeout", timeout_s, "Give up after SECONDS")
    ->check(CLI::Range(1, 86400));
  auto* serve = app.add_subcommand(
    "serve", "Serve durable runs of swarm files over HTTP (docs/http-api.md) "
             "until SIGINT or SIGTERM");
  troupe::serve_command serve_cmd;
  int serve_timeout_s = 600;
  size_t serve_max_body = 0;
  double serve_rate = 0, serve_burst = 0;
  bool serve_no_resume = false;
  serve->add_option("swarms", serve_cmd.swarms,
                    "The swarm files runs can be submitted to")
    ->required();
  serve->add_option("--listen", serve_cmd.listen,
                    "HOST:PORT to serve on (default 127.0.0.1:8080; port 0 = "
                    "any free port, printed on stderr)");
  serve->add_option("--store", serve_cmd.store,
                    "The SQLite file of runs (default troupe-runs.db)");
  serve->add_option("--auth", serve_cmd.auth,
                    "Bearer tokens and their roles (JSON); without it every "
                    "route is open and only loopback addresses are served");
  serve->add_option("--max-runs", serve_cmd.max_runs,
                    "Runs at once; more wait queued (default 8)")
    ->check(CLI::Range(1, 10000));
  auto* serve_timeout_opt =
    serve->add_option("--run-timeout", serve_timeout_s,
                      "A run taking longer than SECONDS fails (default 600)")
      ->check(CLI::Range(1, 7 * 86400));
  auto* serve_max_body_opt =
    serve->add_option("--max-body", serve_max_body,
                      "Largest request body in BYTES (default 1048576)")
      ->check(CLI::Range(size_t{1}, size_t{1} << 30));
  auto* serve_rate_opt =
    serve->add_option("--rate", serve_rate,
                      "Requests per second per token or client address "
                      "(default 50)")
      ->check(CLI::Range(0.001, 1e6));
  auto* serve_burst_opt =
    serve->add_option("--burst", serve_burst,
                      "Requests allowed at once above the rate (default 100)")
      ->check(CLI::Range(1.0, 1e6));
  serve->add_option("-t,--trace", serve_cmd.trace_path,
                    "Append every run's trace (JSONL) to FILE");
  serve->add_option("--otlp", serve_cmd.otlp_url,
                    "Export traces to this OTLP/HTTP endpoint");
  serve->add_option("--http-threads", serve_cmd.http_threads,
                    "Threads serving HTTP (default 4): a request waiting on "
                    "the store holds one of them")
    ->check(CLI::Range(size_t{1}, size_t{64}));
  serve->add_flag("--no-resume", serve_no_resume,
                  "Leave the store's unfinished runs as they are at start");

  auto* validate = app.add_subcommand(
    "validate", "Check a swarm file and the scripts it names, then exit");
  std::string validate_path;
  validate->add_option("swarm", validate_path, "The swarm file (JSON)")
    ->required();

  auto* tools = app.add_subcommand("tools", "List the builtin tools");

  auto* approvals = app.add_subcommand(
    "approvals", "List, approve or deny the actions a running swarm's agents "
                 "wait to have approved (the run must serve its gate: troupe "
                 "run --approvals HOST:PORT)");
  approvals->require_subcommand(1);
  std::string connect = troupe::default_approvals_address;
  int approvals_timeout_s = 10;
  std::string decision_id, decider = default_decider(), note;
  auto client_options = [&](CLI::App* cmd) {
    cmd->add_option("--connect", connect,
                    "The gate's HOST:PORT (default: the environment variable "
                    "TROUPE_APPROVALS, else 127.0.0.1:4343)")
      ->envname("TROUPE_APPROVALS");
    cmd->add_option("--timeout", approvals_timeout_s,
                    "Give up waiting for the gate after SECONDS (default 10)")
      ->check(CLI::Range(1, 3600));
  };
  auto* apr_list = approvals->add_subcommand(
    "list", "Print the pending requests, oldest first");
  client_options(apr_list);
  auto* apr_approve = approvals->add_subcommand(
    "approve", "Approve a pending request: the agent goes on with the action");
  apr_approve->add_option("id", decision_id, "The request's id (apr-...)")
    ->required();
  apr_approve->add_option("--as", decider,
                          "Who decides (default: $USER, else \"cli\")");
  apr_approve->add_option("--note", note, "A note for the agent and the trace");
  client_options(apr_approve);
  auto* apr_deny = approvals->add_subcommand(
    "deny", "Deny a pending request: the agent is told why and goes on "
            "without the action");
  apr_deny->add_option("id", decision_id, "The request's id (apr-...)")
    ->required();
  apr_deny->add_option("--note", note, "Why (the agent reads it)")->required();
  apr_deny->add_option("--as", decider,
                       "Who decides (default: $USER, else \"cli\")");
  client_options(apr_deny);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    auto code = app.exit(e);
    return code == 0 ? 0 : exit_bad_input;
  }
  // Logs go to stderr: stdout carries the answer.
  troupe::log_to_stderr(log_level);
  if (!tls_passphrase_env.empty()) {
    const char* pass = std::getenv(tls_passphrase_env.c_str());
    if (pass == nullptr) {
      std::cerr << "error: --tls-passphrase-env: the environment variable "
                << tls_passphrase_env << " is not set\n";
      return exit_bad_input;
    }
    tls.passphrase = pass;
  }
  if (*run && !store_path.empty()) {
    if (!cluster.empty() || !serve_approvals.empty()) {
      std::cerr << "error: --store runs in this process: it does not go with "
                   "--cluster or --approvals (troupe serve offers approvals "
                   "over HTTP)\n";
      return exit_bad_input;
    }
    return cmd_durable(swarm_path, goal, store_path, run_id, "", trace_path,
                       quiet, as_json, timeout_s, max_steps);
  }
  if (*run && !run_id.empty()) {
    std::cerr << "error: --run-id needs --store\n";
    return exit_bad_input;
  }
  if (*resume)
    return cmd_durable(resume_swarm, "", resume_store, "", resume_id,
                       trace_path, quiet, as_json, timeout_s, 0);
  if (*run)
    return cmd_run(swarm_path, goal, trace_path, quiet, as_json, timeout_s,
                   max_steps, serve_approvals, cluster, tls);
  if (*node) {
    node_cmd.tls = tls;
    node_cmd.heartbeat_interval = std::chrono::milliseconds{heartbeat_ms};
    node_cmd.heartbeat_timeout = std::chrono::milliseconds{heartbeat_timeout_ms};
    node_cmd.join_timeout = std::chrono::seconds{join_timeout_s};
    return troupe::run_node(node_cmd, std::cerr);
  }
  if (*serve) {
    if (*serve_timeout_opt)
      serve_cmd.run_timeout = std::chrono::seconds{serve_timeout_s};
    if (*serve_max_body_opt)
      serve_cmd.max_body = serve_max_body;
    if (*serve_rate_opt)
      serve_cmd.rate = serve_rate;
    if (*serve_burst_opt)
      serve_cmd.burst = serve_burst;
    serve_cmd.resume = !serve_no_resume;
    return troupe::run_serve(serve_cmd, std::cerr);
  }
  if (*apr_list)
    return cmd_approvals_list(connect, approvals_timeout_s);
  if (*apr_approve || *apr_deny)
    return cmd_approvals_decide(connect, approvals_timeout_s, decision_id,
                                *apr_approve ? troupe::approval_verdict::approve
                                             : troupe::approval_verdict::deny,
                                decider, note);
  if (*validate)
    return cmd_validate(validate_path);
  if (*tools)
    return cmd_tools();
  return exit_bad_input;
}

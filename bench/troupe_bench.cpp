// troupe-bench: workloads that print one JSON line each.
//
//   troupe-bench [--workload LIST] [--runs N] [--floor-round-trips N]
//                [--guards-agents N] [--guards-calls N]
//                [--w2-n LIST] [--w2-latency-ms LIST]
//                [--w3-n LIST] [--w3-latency-ms MS] [--w3-max-gib G]
//                [--gateway-requests N] [--gateway-in-flight N]
//                [--gateway-calls N] [--gateway-stream-calls N]
//                [--cluster-calls N] [--cluster-throughput-calls N]
//                [--cluster-in-flight N]
//
// --workload picks a comma-separated subset of floor, W1, guards, durable,
// restart, W2, W3, gateway, cluster (default: all, in that order; W1 also runs floor,
// which its ratio needs). The LIST options are comma-separated integers.
//
// floor      CAF event-based request/response round trip between two actors:
//            the least a message-driven step can cost on this machine.
// W1         "react loop": runs of 10 steps on the scripted model at zero
//            latency (9 steps call a trivial tool, the 10th answers), run one
//            after another; microseconds per step, runs per second, and the
//            ratio of a step to the floor. Four variants: tracing off or to a
//            JSONL file, the tool on the blocking pool (the default) or run in
//            place (tool_definition::blocking = false).
// guards     what the guardrails (issue 4) cost, side by side in one run.
//            "react loop" lines: W1's loop (--runs runs of 10 steps, the tool
//            in place, loop detection off: this script calls noop with the
//            same arguments 9 times a run, which it would flag and log every
//            run) in variants: none (the baseline: the runtime's defaults,
//            which already reserve and settle every step with the budget
//            actor and look every tool call up in the idempotency ledger);
//            no ledger, no budget actor, bare (neither; these three link the
//            agent by hand); budget (global limits, a price table, a run
//            budget); policy (5 rules); tool guards (retrier + breaker +
//            limiter, limits that never hold a call); all (budget + policy +
//            tool guards). 5 rounds, each variant in a fresh runtime per
//            round, the order rotated; a line gives each round's
//            microseconds per step, their median (the figure compared), the
//            ratio to and extra over "none", and the CPU time per step of
//            all threads and of CAF's timer thread ("caf.clock", which every
//            request timeout set or cancelled wakes) with its ratio to
//            "none": on a busy machine CPU per step is the steadier figure.
//            "budget race": --guards-agents agents (default 1000) run 10-step
//            runs back to back on one global money budget worth 50 steps per
//            agent until it refuses each of them; reservations per second
//            through the one budget actor, and its totals checked against the
//            runs' (never above the limit, filled to within one step).
//            "budget race, actors only": as many plain actors reserve and
//            settle straight with the budget actor, the same checks: its own
//            ceiling, to compare with the agents' rate.
//            "per call": one request at a time (--guards-calls, default
//            20000, in 4 rounds), p50/p99/mean microseconds and CPU per call:
//            a tool call straight to the adapter, through its ledger, a
//            retrier, a breaker, a limiter, all three; a budget reservation;
//            and the policy's evaluate() (a function the agent calls).
// durable    what the durable store (issue 7) costs: W1's loop as the
//            guards workload runs it (--runs runs in 5 rotated rounds, a
//            fresh runtime each), in memory against the SQLite store (a
//            checkpoint before every step and a final one, each model reply
//            journaled, each tool call in the store's ledger) and against the
//            store with durable_commits (every commit fsynced); the same
//            figures as the guards lines, the ratio to memory.
// restart    a supervised actor crashes 1000 times in a row: median and p99
//            time from the crash to its replacement answering a request.
// W2         fan-out: a map_reduce team (supervisors/teams.hpp) maps N items
//            over N mapper agents (--w2-n, default 10,100,1000,10000); each
//            mapper takes 3 steps on the scripted model (two call a trivial
//            tool run in place, the third answers), each model reply held
//            back --w2-latency-ms (default 0 and 50); then a reducer answers
//            in one step at zero latency. The mapped steps are counted from
//            the team's result and must be exactly 3 x N. With latency, the
//            floor is 3 x latency and the line gives wall time / floor.
// W3         in-flight runs: N agents (--w3-n, default 1000,10000,100000),
//            each given one run whose only model reply is held back 1 s,
//            all submitted at once. Memory is sampled when the model holds
//            every request and no run has completed (the line says how many
//            had: it must be 0). Getting 100k runs to the model takes longer
//            than 1 s on a small machine, so the latency is raised for an N
//            when the previous one shows it must be (to 3x the estimated
//            time, in whole seconds; the line then has
//            latency_raised_from_ms); --w3-latency-ms MS fixes it instead.
//            An N above the largest one measured runs only if its peak RSS,
//            extrapolated from that one, is below --w3-max-gib (default 12),
//            and an N above 100000 needs such a measurement; else the line
//            says it was skipped. 1M: --w3-n 100000,1000000.
// gateway    HTTP models against a loopback server (bench/gateway_bench.hpp):
//            requests per second with keep-alive pooling and with a new
//            connection per request (--gateway-requests, default 4000,
//            --gateway-in-flight at once, default 16), and the latency the
//            gateway adds over a bare Beast request (p50, p99; --gateway-calls
//            sequential requests per path, default 2000; streamed:
//            --gateway-stream-calls, default 1000, 0 for none).
// cluster    a tool call to an adapter in this process against one on a node
//            process this binary starts (hidden --cluster-serve PORTFILE) on
//            loopback (bench/cluster_bench.hpp): p50/p99 of sequential calls
//            (--cluster-calls, default 2000) and calls/s with
//            --cluster-in-flight (default 64) pipelined
//            (--cluster-throughput-calls per round, default 20000), with the
//            ratios remote/local.
//
// W2 and W3 run on the runtime's defaults; TROUPE_SCHEDULER (stealing or
// sharing, which W1 honours too) and TROUPE_SCHEDULER_THREADS override the
// scheduler, and each line names the one it ran on.
//
// Every W2 and W3 configuration runs in a fresh process (this binary again,
// with the hidden flag --child), so its peak RSS (VmHWM) is its own. The exit
// status is non-zero when a W2 or W3 configuration failed, the restart
// workload fell short, a guards run failed or a guarded tool call was
// refused, the budget race overshot its limit or its totals do not add up, or
// a gateway request failed.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <type_traits>
#include <vector>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "actors/scripted_model.hpp"
#include "actors/tool_adapter.hpp"
#include "bench/cluster_bench.hpp"
#include "bench/gateway_bench.hpp"
#include "messages/type_ids.hpp"
#include "runtime/clock.hpp"
#include "runtime/policy.hpp"
#include "runtime/runtime.hpp"
#include "runtime/store.hpp"
#include "supervisors/supervisor.hpp"
#include "supervisors/teams.hpp"

extern char** environ;

namespace {

using namespace std::chrono;
using troupe::json;

using ping_atom = caf::atom_constant<caf::atom("b_ping")>;

/// Microseconds per request/response round trip between two event-based actors.
double floor_round_trip_us(int round_trips) {
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto pong = sys.spawn([]() -> caf::behavior {
    return {[](ping_atom, int32_t x) { return x + 1; }};
  });
  auto done = std::make_shared<std::promise<double>>();
  auto result = done->get_future();
  sys.spawn([pong, round_trips, done](caf::event_based_actor* self) {
    auto start = std::make_shared<steady_clock::time_point>(steady_clock::now());
    auto left = std::make_shared<int>(round_trips);
    auto step = std::make_shared<std::function<void(int32_t)>>();
    *step = [self, pong, left, start, done, step, round_trips](int32_t x) {
      if (--*left == 0) {
        auto us = duration<double, std::micro>(steady_clock::now() - *start)
                    .count();
        done->set_value(us / round_trips);
        *step = nullptr; // break the cycle
        return;
      }
      self->request(pong, seconds{10}, ping_atom::value, x)
        .then([step](int32_t y) { (*step)(y); });
    };
    self->request(pong, seconds{10}, ping_atom::value, int32_t{0})
      .then([step](int32_t y) { (*step)(y); });
  });
  auto us = result.get();
  caf::anon_send_exit(pong, caf::exit_reason::user_shutdown);
  return us;
}

using b_crash_atom = caf::atom_constant<caf::atom("b_crash")>;

/// Crash-to-service times of a supervised child, in microseconds, sorted.
std::vector<double> restart_times(int restarts) {
  caf::actor_system_config cfg;
  troupe::register_messages(cfg);
  caf::actor_system sys{cfg};
  troupe::supervisor_config sc;
  sc.name = "bench";
  sc.max_restarts = restarts + 1;
  sc.window = std::chrono::hours{1};
  troupe::child_spec child;
  child.name = "victim";
  child.factory = [](caf::actor_system& s) {
    return s.spawn([](caf::event_based_actor* self) -> caf::behavior {
      self->set_exception_handler([](std::exception_ptr&) -> caf::error {
        return caf::sec::runtime_error; // quietly: the crash is the workload
      });
      return {
        [](b_crash_atom) -> caf::result<void> {
          throw std::runtime_error("crash");
        },
        [](ping_atom, int32_t x) { return x; },
      };
    });
  };
  auto sup = troupe::spawn_supervisor(sys, sc, {child});
  caf::scoped_actor self{sys};
  caf::actor current;
  self->request(sup, seconds{10}, troupe::sup_child_atom::value, std::string{"victim"})
    .receive([&](caf::actor& a) { current = a; }, [](caf::error&) {});
  std::vector<double> out;
  for (int i = 0; i < restarts && current; ++i) {
    auto start = steady_clock::now();
    self->send(current, b_crash_atom::value);
    caf::actor next;
    self->request(sup, seconds{10}, troupe::sup_await_atom::value,
                  std::string{"victim"}, current.address())
      .receive([&](caf::actor& a) { next = a; }, [](caf::error&) {});
    if (!next)
      break;
    bool served = false;
    self->request(next, seconds{10}, ping_atom::value, int32_t{i})
      .receive([&](int32_t) { served = true; }, [](caf::error&) {});
    if (!served)
      break;
    out.push_back(duration<double, std::micro>(steady_clock::now() - start).count());
    current = next;
  }
  self->send_exit(sup, caf::exit_reason::user_shutdown);
  std::sort(out.begin(), out.end());
  return out;
}

/// CPU time and wake-ups of some of this process's threads.
struct thread_sample {
  /// Nanoseconds on a CPU (/proc/self/task/TID/schedstat).
  int64_t cpu_ns = 0;
  /// Voluntary context switches: times a thread slept and was woken.
  int64_t wakeups = 0;
};

/// Sums the threads named `comm` (every thread when empty).
thread_sample sample_threads(const std::string& comm = "") {
  thread_sample out;
  std::error_code ec;
  for (const auto& task :
       std::filesystem::directory_iterator{"/proc/self/task", ec}) {
    auto dir = task.path();
    if (!comm.empty()) {
      std::ifstream in{dir / "comm"};
      std::string name;
      if (!std::getline(in, name) || name != comm)
        continue;
    }
    std::ifstream sched{dir / "schedstat"};
    int64_t ns = 0;
    if (sched >> ns)
      out.cpu_ns += ns;
    std::ifstream status{dir / "status"};
    std::string line;
    while (std::getline(status, line))
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0)
        out.wakeups += std::strtoll(line.c_str() + 24, nullptr, 10);
  }
  return out;
}

struct react_figures {
  double us_per_step;
  double runs_per_sec;
  int failed;
  /// Steps measured and the seconds they took (the warm-up run left out).
  int64_t steps = 0;
  double secs = 0;
  /// Tool calls that did not come back ok (a guard or the policy held one).
  int64_t failed_tool_calls = 0;
  /// Reservations the runtime's budget actor granted during the runs.
  int64_t budget_reservations = 0;
  /// CPU of every thread, and of CAF's timer thread ("caf.clock"), during
  /// the runs.
  thread_sample process;
  thread_sample clock;
};

/// The trivial tool the workloads' models call.
troupe::tool_definition noop_tool(bool blocking) {
  troupe::tool_definition noop;
  noop.name = "noop";
  noop.description = "Does nothing";
  noop.parameters = json{{"type", "object"}, {"additionalProperties", false}};
  noop.fn = [](const json&, const troupe::tool_context&) {
    return json::object();
  };
  noop.blocking = blocking;
  return noop;
}

/// How a react loop is set up: W1's variants set the first two fields, the
/// guards workload's variants the others too.
struct react_setup {
  /// JSONL trace file; empty for no tracing.
  std::string trace_path;
  /// The noop tool runs on the blocking pool (else in place).
  bool blocking_tool = true;
  /// Adds to the runtime's configuration (budget, prices, policy).
  std::function<void(troupe::runtime_config&)> configure;
  /// Adds to the noop tool's definition (its guards).
  std::function<void(troupe::tool_definition&)> tool;
  /// Adds to the agent's spec (loop detection).
  std::function<void(troupe::agent_spec&)> agent;
  /// Per-run settings (a run budget).
  troupe::run_options run;
  /// The agent is linked by hand without the runtime's budget actor, or
  /// with a tool adapter that has no idempotency ledger: what the runtime
  /// always puts in a step, left out.
  bool without_budget_actor = false;
  bool without_ledger = false;
};

react_figures react_loop(int runs, const react_setup& setup) {
  troupe::runtime_config cfg;
  cfg.load_middleman = false;
  cfg.trace_path = setup.trace_path;
  if (const char* policy = std::getenv("TROUPE_SCHEDULER"))
    cfg.scheduler_policy = policy;
  if (setup.configure)
    setup.configure(cfg);
  troupe::runtime rt{cfg};
  auto noop = noop_tool(setup.blocking_tool);
  if (setup.tool)
    setup.tool(noop);
  rt.tools().add(std::move(noop));
  auto script = troupe::model_script::parse(
    json::parse(R"({"rules": [
      {"step": {"max": 9},
       "reply": {"tool_calls": [{"name": "noop", "arguments": {}}],
                 "usage": {"input_tokens": 10, "output_tokens": 2}}},
      {"reply": {"content": "done",
                 "usage": {"input_tokens": 10, "output_tokens": 1}}}]})"),
    "w1.json");
  rt.add_model("w1", troupe::spawn_scripted_model(rt.system(), script));
  troupe::agent_spec spec;
  spec.name = "w1";
  spec.model = "w1";
  spec.tools = {"noop"};
  spec.max_steps = 10;
  if (setup.agent)
    setup.agent(spec);
  troupe::runnable_actor agent;
  if (setup.without_budget_actor || setup.without_ledger) {
    // What runtime::spawn_agent links, less the budget actor or the ledger.
    auto def = rt.tools().find("noop");
    troupe::agent_links links;
    links.model = rt.model(spec.model);
    troupe::agent_tool tool;
    tool.spec = def->spec();
    tool.actor = setup.without_ledger
                   ? rt.adopt(troupe::spawn_tool_adapter(rt.system(), def,
                                                         rt.blocking()))
                   : rt.tool("noop");
    tool.timeout = def->definition.timeout;
    tool.idempotency = def->definition.idempotency;
    links.tools.push_back(std::move(tool));
    links.tracer = rt.tracer();
    if (!setup.without_budget_actor)
      links.budget = rt.budget();
    links.prices = std::make_shared<const troupe::price_table>(cfg.prices);
    links.approvals = rt.approvals();
    agent = rt.adopt(troupe::spawn_agent(rt.system(), spec, std::move(links)));
  } else {
    agent = rt.spawn_agent(spec);
  }
  react_figures out{};
  // Warm-up run, not counted.
  rt.run(agent, "warm up", setup.run);
  auto reserved_before = rt.budget_usage().granted;
  auto process_before = sample_threads();
  auto clock_before = sample_threads("caf.clock");
  auto start = steady_clock::now();
  for (int i = 0; i < runs; ++i) {
    auto r = rt.run(agent, "go", setup.run);
    out.failed += r.status != troupe::run_status::complete;
    out.steps += static_cast<int64_t>(r.steps.size());
    for (const auto& step : r.steps)
      for (const auto& t : step.tool_results)
        out.failed_tool_calls += !t.ok;
  }
  out.secs = duration<double>(steady_clock::now() - start).count();
  auto process_after = sample_threads();
  auto clock_after = sample_threads("caf.clock");
  out.process = {process_after.cpu_ns - process_before.cpu_ns,
                 process_after.wakeups - process_before.wakeups};
  out.clock = {clock_after.cpu_ns - clock_before.cpu_ns,
               clock_after.wakeups - clock_before.wakeups};
  out.budget_reservations = rt.budget_usage().granted - reserved_before;
  rt.shutdown();
  out.us_per_step = out.secs * 1e6 / static_cast<double>(out.steps);
  out.runs_per_sec = runs / out.secs;
  return out;
}

/// A "Vm..." line of /proc/self/status (VmRSS, VmHWM), in KiB; -1 if absent.
int64_t vm_kib(const std::string& key) {
  std::ifstream in{"/proc/self/status"};
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0)
      return std::strtoll(line.c_str() + key.size() + 1, nullptr, 10);
  return -1;
}

/// KiB as MiB, to one decimal.
double mib(int64_t kib) {
  return std::round(static_cast<double>(kib) / 1024.0 * 10.0) / 10.0;
}

/// Milliseconds since `start`, to one decimal.
double ms_since(steady_clock::time_point start) {
  auto ms = duration<double, std::milli>(steady_clock::now() - start).count();
  return std::round(ms * 10.0) / 10.0;
}

/// Prints a JSON line to stdout.
void print_line(const json& line) {
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
}

/// The runtime of W2 and W3: the defaults, but for the scheduler policy and
/// thread count the environment may set.
troupe::runtime_config child_runtime_config() {
  troupe::runtime_config cfg;
  cfg.load_middleman = false;
  if (const char* policy = std::getenv("TROUPE_SCHEDULER"))
    cfg.scheduler_policy = policy;
  if (const char* threads = std::getenv("TROUPE_SCHEDULER_THREADS"))
    cfg.scheduler_threads = static_cast<size_t>(std::atoi(threads));
  return cfg;
}

/// The scheduler a runtime ended up with, for a JSON line.
json scheduler_of(troupe::runtime& rt, const troupe::runtime_config& cfg) {
  return json{{"policy", cfg.scheduler_policy},
              {"threads", rt.system().scheduler().num_workers()}};
}

/// One W2 configuration, in this process: prints its JSON line and returns
/// whether the team completed with exactly 3 mapped steps per item.
bool w2_fan_out(int64_t n, int64_t latency_ms) {
  constexpr int64_t steps_per_worker = 3;
  auto rss_before = vm_kib("VmRSS");
  auto cfg = child_runtime_config();
  troupe::runtime rt{cfg};
  auto scheduler = scheduler_of(rt, cfg);
  rt.tools().add(noop_tool(false));
  // The reducer answers at once, so the latency floor is 3 x latency.
  auto script = troupe::model_script::parse(
    json{{"rules",
          {{{"agent", "reducer"},
            {"reply", {{"content", "reduced"},
                       {"usage", {{"input_tokens", 10}, {"output_tokens", 1}}}}}},
           {{"step", {{"max", steps_per_worker - 1}}},
            {"reply", {{"tool_calls", {{{"name", "noop"}, {"arguments", json::object()}}}},
                       {"usage", {{"input_tokens", 10}, {"output_tokens", 2}}},
                       {"latency_ms", latency_ms}}}},
           {{"reply", {{"content", "mapped"},
                       {"usage", {{"input_tokens", 10}, {"output_tokens", 1}}},
                       {"latency_ms", latency_ms}}}}}}},
    "w2.json");
  rt.add_model("w2", troupe::spawn_scripted_model(rt.system(), script));
  auto spawn_start = steady_clock::now();
  troupe::map_reduce_config mr;
  mr.name = "w2";
  // A failed item must show, not be retried into extra steps.
  mr.max_attempts = 1;
  mr.max_items = static_cast<int32_t>(std::max<int64_t>(n, mr.max_items));
  mr.mappers.reserve(static_cast<size_t>(n));
  troupe::agent_spec spec;
  spec.model = "w2";
  spec.tools = {"noop"};
  spec.max_steps = steps_per_worker;
  for (int64_t i = 0; i < n; ++i) {
    spec.name = "mapper-" + std::to_string(i);
    mr.mappers.push_back({spec.name, rt.spawn_agent(spec)});
  }
  spec.name = "reducer";
  spec.tools = {};
  spec.max_steps = 1;
  mr.reducer = rt.spawn_agent(spec);
  auto team = rt.adopt(troupe::spawn_map_reduce(rt.system(), std::move(mr)));
  auto spawn_ms = ms_since(spawn_start);
  std::string goal;
  for (int64_t i = 0; i < n; ++i)
    goal += "item " + std::to_string(i) + "\n";
  troupe::run_options opts;
  opts.timeout = minutes{10};
  auto rss_spawned = vm_kib("VmRSS");
  auto start = steady_clock::now();
  auto r = rt.run(team, goal, opts);
  auto wall_ms = ms_since(start);
  auto rss_after = vm_kib("VmRSS");
  // Mapper steps are those whose noop call ran or that answer "mapped"; the
  // reducer's answers "reduced".
  int64_t worker_steps = 0;
  int64_t reducer_steps = 0;
  for (const auto& step : r.steps) {
    if (step.reply.content == "reduced")
      ++reducer_steps;
    else if (step.reply.content == "mapped"
             || (step.tool_results.size() == 1 && step.tool_results[0].ok
                 && step.tool_results[0].name == "noop"))
      ++worker_steps;
  }
  std::set<std::string> workers;
  int64_t items_complete = 0;
  const auto& detail = r.detail.value;
  if (detail.is_object() && detail.contains("subtasks"))
    for (const auto& s : detail["subtasks"]) {
      workers.insert(s.value("member", ""));
      items_complete += s.value("status", "") == "complete";
    }
  std::string problem;
  if (r.status != troupe::run_status::complete || !r.error.empty())
    problem = std::string{"team ended "} + troupe::to_string(r.status) + ": "
              + r.error;
  else if (worker_steps != steps_per_worker * n)
    problem = "counted " + std::to_string(worker_steps) + " mapper steps, "
              + "expected " + std::to_string(steps_per_worker * n);
  else if (reducer_steps != 1
           || r.steps.size() != static_cast<size_t>(worker_steps + 1))
    problem = "the result holds " + std::to_string(r.steps.size())
              + " steps, expected " + std::to_string(worker_steps + 1);
  else if (items_complete != n)
    problem = std::to_string(items_complete) + " of " + std::to_string(n)
              + " items complete";
  json line{{"workload", "W2"},
            {"what", "map_reduce fan-out: N mappers x 3 steps, then a reducer"},
            {"n", n},
            {"latency_ms", latency_ms},
            {"scheduler", scheduler},
            {"status", troupe::to_string(r.status)},
            {"workers_used", workers.size()},
            {"worker_steps", worker_steps},
            {"spawn_ms", spawn_ms},
            {"wall_ms", wall_ms},
            {"worker_steps_per_sec",
             std::round(static_cast<double>(worker_steps) / (wall_ms / 1e3))},
            {"rss_before_mib", mib(rss_before)},
            {"rss_spawned_mib", mib(rss_spawned)},
            {"rss_after_mib", mib(rss_after)},
            {"peak_rss_mib", mib(vm_kib("VmHWM"))}};
  if (latency_ms > 0) {
    auto floor_ms = static_cast<double>(steps_per_worker * latency_ms);
    line["latency_floor_ms"] = floor_ms;
    line["wall_to_floor_ratio"] = std::round(wall_ms / floor_ms * 1000.0) / 1000.0;
  }
  if (!problem.empty())
    line["error"] = problem;
  rt.shutdown();
  print_line(line);
  return problem.empty();
}

/// A promise that whoever comes first fulfils, from any thread.
struct once_signal {
  std::atomic<bool> fired{false};
  std::promise<void> promise;

  void fire() {
    if (!fired.exchange(true))
      promise.set_value();
  }
};

/// A model_actor in front of another that counts the requests it passes on.
struct counting_proxy_state {
  static inline const char* name = "troupe.bench.counting_proxy";
  int64_t forwarded = 0;
};

/// Passes every chat_request on to `model` (which answers the requester
/// directly) and fires `all_in` when the `expected`-th has gone through.
troupe::model_actor::behavior_type counting_proxy(
  troupe::model_actor::stateful_pointer<counting_proxy_state> self,
  troupe::model_actor model, int64_t expected, std::shared_ptr<once_signal> all_in) {
  return {
    [self, model, expected, all_in](troupe::chat_request& req)
      -> caf::delegated<troupe::chat_response> {
      if (++self->state.forwarded == expected)
        all_in->fire();
      return self->delegate(model, std::move(req));
    },
  };
}

/// How W3's runs ended, written from the callbacks on actor threads.
struct w3_tally {
  std::atomic<int64_t> done{0};
  std::atomic<int64_t> complete{0};
  once_signal all_done;
  std::mutex mtx;
  std::string first_error;
};

/// One W3 configuration, in this process: prints its JSON line and returns
/// whether every run completed and memory was sampled with all of them in
/// flight.
bool w3_in_flight(int64_t n, int64_t latency_ms) {
  auto cfg = child_runtime_config();
  troupe::runtime rt{cfg};
  auto scheduler = scheduler_of(rt, cfg);
  auto script = troupe::model_script::parse(
    json{{"rules",
          {{{"agent", "probe"}, {"reply", {{"content", "probe"}}}},
           {{"reply", {{"content", "done"},
                       {"usage", {{"input_tokens", 10}, {"output_tokens", 1}}},
                       {"latency_ms", latency_ms}}}}}}},
    "w3.json");
  auto model = rt.adopt(troupe::spawn_scripted_model(rt.system(), script));
  // Fired by the proxy, or by the first run that fails (which would never
  // reach the model).
  auto all_in = std::make_shared<once_signal>();
  auto all_in_future = all_in->promise.get_future();
  auto proxy = rt.adopt(rt.system().spawn(counting_proxy, model, n, all_in));
  rt.add_model("w3", proxy);
  auto rss_baseline = vm_kib("VmRSS");
  std::vector<troupe::runnable_actor> agents;
  agents.reserve(static_cast<size_t>(n));
  troupe::agent_spec spec;
  spec.name = "w3";
  spec.model = "w3";
  spec.max_steps = 1;
  auto spawn_start = steady_clock::now();
  for (int64_t i = 0; i < n; ++i)
    agents.push_back(rt.spawn_agent(spec));
  auto spawn_ms = ms_since(spawn_start);
  auto rss_agents = vm_kib("VmRSS");
  auto tally = std::make_shared<w3_tally>();
  auto all_done_future = tally->all_done.promise.get_future();
  troupe::run_options opts;
  opts.timeout = minutes{10};
  auto start = steady_clock::now();
  for (const auto& agent : agents)
    rt.submit(agent, rt.make_task("go", opts), opts.timeout,
              [tally, all_in, n](troupe::run_result r) {
                if (r.status == troupe::run_status::complete) {
                  ++tally->complete;
                } else {
                  {
                    std::lock_guard<std::mutex> guard{tally->mtx};
                    if (tally->first_error.empty())
                      tally->first_error
                        = std::string{troupe::to_string(r.status)} + ": "
                          + r.error;
                  }
                  all_in->fire();
                }
                if (++tally->done == n)
                  tally->all_done.fire();
              });
  auto submit_ms = ms_since(start);
  std::string problem;
  int64_t completed_at_sample = -1;
  int64_t rss_in_flight = -1;
  double in_flight_ms = -1;
  // Every request has reached the proxy; a probe that follows them through
  // it is answered once the model has taken in (and held back) all of them.
  if (all_in_future.wait_for(opts.timeout) != std::future_status::ready) {
    problem = "the model did not get all requests in time";
  } else {
    troupe::chat_request probe;
    probe.agent = "probe";
    troupe::chat_message hello;
    hello.content = "probe";
    probe.messages.push_back(std::move(hello));
    caf::scoped_actor self{rt.system()};
    self->request(proxy, seconds{30}, probe)
      .receive([](troupe::chat_response&) {},
               [&problem](caf::error& err) {
                 problem = "the probe got no reply: " + caf::to_string(err);
               });
    completed_at_sample = tally->done.load();
    rss_in_flight = vm_kib("VmRSS");
    in_flight_ms = ms_since(start);
    if (problem.empty() && completed_at_sample != 0)
      problem = std::to_string(completed_at_sample)
                + " runs had completed when memory was sampled: the latency "
                  "is shorter than submitting them all";
  }
  if (all_done_future.wait_for(opts.timeout) != std::future_status::ready
      && problem.empty())
    problem = "not every run ended in time";
  auto wall_ms = ms_since(start);
  auto rss_after = vm_kib("VmRSS");
  auto peak = vm_kib("VmHWM");
  if (problem.empty() && tally->complete.load() != n) {
    std::lock_guard<std::mutex> guard{tally->mtx};
    problem = std::to_string(n - tally->complete.load())
              + " runs did not complete, the first: " + tally->first_error;
  }
  auto per_n = [n](int64_t kib) {
    return std::round(static_cast<double>(kib) / static_cast<double>(n) * 100.0)
           / 100.0;
  };
  auto shutdown_start = steady_clock::now();
  agents.clear();
  rt.shutdown();
  json line{{"workload", "W3"},
            {"what", "runs in flight at once, each an agent waiting on a "
                     "model reply held back latency_ms"},
            {"n", n},
            {"latency_ms", latency_ms},
            {"scheduler", scheduler},
            {"complete", tally->complete.load()},
            {"spawn_agents_ms", spawn_ms},
            {"submit_ms", submit_ms},
            {"all_in_flight_ms", in_flight_ms},
            {"completed_at_sample", completed_at_sample},
            {"wall_ms", wall_ms},
            {"shutdown_ms", ms_since(shutdown_start)},
            {"rss_baseline_mib", mib(rss_baseline)},
            {"rss_agents_mib", mib(rss_agents)},
            {"rss_in_flight_mib", mib(rss_in_flight)},
            {"rss_after_mib", mib(rss_after)},
            {"peak_rss_mib", mib(peak)},
            {"kib_per_idle_agent", per_n(rss_agents - rss_baseline)},
            {"kib_per_in_flight_run", per_n(rss_in_flight - rss_baseline)},
            {"kib_per_run_beyond_agent", per_n(rss_in_flight - rss_agents)}};
  if (!problem.empty())
    line["error"] = problem;
  print_line(line);
  return problem.empty();
}

/// What a child process printed, and whether it exited with status 0.
struct child_output {
  bool ok = false;
  std::vector<json> lines;
};

/// Runs this binary again with `args` and returns its stdout lines, parsed
/// (its stderr is ours; a line that is not JSON goes there).
child_output run_child(const char* argv0, const std::vector<std::string>& args) {
  child_output out;
  std::fflush(stdout);
  int fds[2];
  if (pipe(fds) != 0) {
    std::perror("troupe-bench: pipe");
    return out;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  posix_spawn_file_actions_addclose(&actions, fds[1]);
  std::vector<std::string> all{argv0};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  auto rc = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(),
                        environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    std::fprintf(stderr, "troupe-bench: cannot start a child: %s\n",
                 std::strerror(rc));
    return out;
  }
  bool parsed = true;
  if (FILE* in = fdopen(fds[0], "r")) {
    char* buf = nullptr;
    size_t cap = 0;
    while (getline(&buf, &cap, in) > 0) {
      auto j = json::parse(buf, nullptr, false);
      if (j.is_discarded()) {
        std::fprintf(stderr, "troupe-bench: not JSON: %s", buf);
        parsed = false;
      } else {
        out.lines.push_back(std::move(j));
      }
    }
    std::free(buf);
    std::fclose(in);
  } else {
    close(fds[0]);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) {
    std::perror("troupe-bench: waitpid");
    return out;
  }
  if (WIFSIGNALED(status))
    std::fprintf(stderr, "troupe-bench: the child was killed by signal %d\n",
                 WTERMSIG(status));
  out.ok = parsed && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!out.ok) {
    std::string what;
    for (const auto& a : args)
      what += " " + a;
    std::fprintf(stderr, "troupe-bench: FAILED:%s\n", what.c_str());
  }
  return out;
}

/// Parses "10,100,1000" into integers of at least `min`; false when it is
/// not such a list.
bool parse_list(const std::string& text, int64_t min, std::vector<int64_t>& out) {
  out.clear();
  std::stringstream in{text};
  std::string item;
  while (std::getline(in, item, ',')) {
    char* end = nullptr;
    auto x = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || x < min)
      return false;
    out.push_back(x);
  }
  return !out.empty();
}

/// W2 over its configurations, each in a child process.
bool run_w2(const char* argv0, const std::vector<int64_t>& ns,
            const std::vector<int64_t>& latencies) {
  bool ok = true;
  for (auto latency : latencies)
    for (auto n : ns) {
      auto out = run_child(argv0, {"--child", "W2", "--n", std::to_string(n),
                                   "--latency-ms", std::to_string(latency)});
      for (const auto& line : out.lines)
        print_line(line);
      ok &= out.ok;
    }
  return ok;
}

/// W3 over its configurations, in increasing N, each in a child process.
///
/// An N above the largest one measured runs only if its peak memory,
/// extrapolated linearly above the baseline from that one, stays under
/// `max_gib`; one above `unguarded_n` needs such a measurement first. With `auto_latency`, the latency is `latency_ms` or, when the
/// previous configuration shows that getting N runs to the model would take
/// more than a third of it, three times that estimate (rounded up to a
/// second): memory is only meaningful once every run is in flight.
bool run_w3(const char* argv0, std::vector<int64_t> ns, int64_t latency_ms,
            bool auto_latency, double max_gib) {
  std::sort(ns.begin(), ns.end());
  bool ok = true;
  int64_t measured_n = 0;
  double baseline_mib = 0;
  double peak_mib = 0;
  double in_flight_ms = 0;
  constexpr int64_t unguarded_n = 100000;
  for (auto n : ns) {
    if (measured_n == 0 && n > unguarded_n) {
      print_line(json{{"workload", "W3"},
                      {"n", n},
                      {"skipped", true},
                      {"why", "no smaller N measured to estimate its memory from "
                              "(list one of at most 100000 before it)"}});
      continue;
    }
    auto scale = measured_n > 0 ? static_cast<double>(n)
                                    / static_cast<double>(measured_n)
                                : 0.0;
    if (measured_n > 0 && n > measured_n) {
      auto estimate_mib = baseline_mib + (peak_mib - baseline_mib) * scale;
      if (estimate_mib / 1024.0 > max_gib) {
        print_line(json{{"workload", "W3"},
                        {"n", n},
                        {"skipped", true},
                        {"why", "estimated peak RSS above the limit"},
                        {"estimated_peak_rss_mib", std::round(estimate_mib)},
                        {"estimated_from_n", measured_n},
                        {"max_gib", max_gib}});
        continue;
      }
    }
    auto latency = latency_ms;
    if (auto_latency && measured_n > 0) {
      auto wanted = 3.0 * in_flight_ms * scale;
      if (wanted > static_cast<double>(latency))
        latency = static_cast<int64_t>(std::ceil(wanted / 1000.0)) * 1000;
    }
    auto out = run_child(argv0, {"--child", "W3", "--n", std::to_string(n),
                                 "--latency-ms", std::to_string(latency)});
    for (auto line : out.lines) {
      if (latency != latency_ms)
        line["latency_raised_from_ms"] = latency_ms;
      print_line(line);
    }
    ok &= out.ok;
    if (!out.ok || out.lines.empty())
      break; // extrapolating from a failed run would mean nothing
    const auto& line = out.lines.back();
    measured_n = n;
    baseline_mib = line.value("rss_baseline_mib", 0.0);
    peak_mib = line.value("peak_rss_mib", 0.0);
    in_flight_ms = line.value("all_in_flight_ms", 0.0);
  }
  return ok;
}

// -- guards -------------------------------------------------------------------

/// The guards workload's policy: five rules from JSON; noop calls are tested
/// against the fourth (its `when` fails: no such argument) and allowed by the
/// fifth, and the regex of the third never runs (another tool).
troupe::policy guards_policy() {
  return troupe::parse_policy(json::parse(R"({
    "default": "allow",
    "rules": [
      {"name": "no-shell", "tools": ["shell", "exec"], "decision": "deny",
       "reason": "no shell access"},
      {"name": "big-refunds", "tools": ["issue_refund"],
       "when": {"amount": {"min": 100}}, "decision": "require_approval",
       "reason": "refunds of $100 or more need a human"},
      {"name": "mail-domains", "tools": ["send_email"],
       "require": {"to": {"pattern": "[^@]+@example\\.com"}},
       "decision": "allow"},
      {"name": "noop-bulk", "roles": ["w1"], "tools": ["noop"],
       "when": {"count": {"min": 1000}}, "decision": "deny",
       "reason": "too many at once"},
      {"name": "w1-noop", "roles": ["w1"], "tools": ["noop"],
       "decision": "allow"}]})"),
                               "guards-policy.json");
}

/// Retrier, breaker and limiter, with limits no call of this bench reaches.
troupe::tool_guards open_guards() {
  troupe::tool_guards g;
  g.retry.max_retries = 2;
  g.breaker.failure_threshold = 5;
  g.limits.rate_per_sec = 1e6;
  g.limits.burst = 100000;
  g.limits.max_concurrent = 10000;
  g.limits.max_concurrent_per_agent = 1000;
  return g;
}

/// Global limits far above what the bench uses, and a price for the model.
void budget_and_prices(troupe::runtime_config& cfg, const std::string& model) {
  cfg.budget.global.max_steps = 1000000000;
  cfg.budget.global.max_input_tokens = 1000000000000;
  cfg.budget.global.max_output_tokens = 1000000000000;
  cfg.budget.global.max_cost_usd = 1e6;
  cfg.prices.set(model, troupe::model_price{1.0, 5.0});
}

/// W1's loop with the tool in place and loop detection off (this script
/// calls noop with the same arguments 9 times a run, which loop detection
/// would flag and log on every run): what the guards and durable workloads
/// vary.
react_setup in_place_loop() {
  react_setup s;
  s.blocking_tool = false;
  s.agent = [](troupe::agent_spec& spec) {
    spec.loops.repeat_threshold = 0;
    spec.loops.stall_steps = 0;
  };
  return s;
}

/// One way to set a react loop up, named for its JSON line.
struct react_variant {
  const char* name;
  const char* what;
  react_setup setup;
};

/// Runs `variants` of W1's loop side by side (`runs` runs each, in rounds)
/// and prints one "react loop" line per variant with `common`'s fields; the
/// first variant is the baseline. Clears `ok` when a run or tool call failed.
void react_rounds(const char* workload,
                  const std::vector<react_variant>& variants, int runs,
                  const json& common, bool& ok) {
  // Rounds, each variant in a fresh runtime, the order rotated every round:
  // drift of the machine spreads over all variants instead of one. A
  // variant's figure is its median round (other work on the machine shows as
  // a slow round, not a slow variant).
  constexpr int rounds = 5;
  const int per_round = std::max(1, runs / rounds);
  const auto n = variants.size();
  // The first runtime of the process pays for warming caches and the heap.
  react_loop(std::max(1, per_round / 4), variants[0].setup);
  std::vector<react_figures> sum(n, react_figures{});
  std::vector<std::vector<double>> by_round(n);
  for (int r = 0; r < rounds; ++r)
    for (size_t k = 0; k < n; ++k) {
      auto v = (k + static_cast<size_t>(r)) % n;
      auto f = react_loop(per_round, variants[v].setup);
      sum[v].steps += f.steps;
      sum[v].secs += f.secs;
      sum[v].failed += f.failed;
      sum[v].failed_tool_calls += f.failed_tool_calls;
      sum[v].budget_reservations += f.budget_reservations;
      sum[v].process.cpu_ns += f.process.cpu_ns;
      sum[v].process.wakeups += f.process.wakeups;
      sum[v].clock.cpu_ns += f.clock.cpu_ns;
      sum[v].clock.wakeups += f.clock.wakeups;
      by_round[v].push_back(std::round(f.us_per_step * 100.0) / 100.0);
    }
  auto median = [&by_round](size_t v) {
    auto xs = by_round[v];
    std::sort(xs.begin(), xs.end());
    return xs[xs.size() / 2];
  };
  auto base_us = median(0);
  for (size_t v = 0; v < n; ++v) {
    auto us = median(v);
    // The first variant is the baseline every ratio is to.
    auto per_step = [&sum, v](double x) {
      return std::round(x / static_cast<double>(sum[v].steps) * 100.0) / 100.0;
    };
    json line = common;
    line.update(json{
              {"workload", workload},
              {"part", "react loop"},
              {"variant", variants[v].name},
              {"what", variants[v].what},
              {"runs", per_round * rounds},
              {"rounds", rounds},
              {"steps_per_run", 10},
              {"failed_runs", sum[v].failed},
              {"failed_tool_calls", sum[v].failed_tool_calls},
              {"budget_reservations", sum[v].budget_reservations},
              {"us_per_step", us},
              {"us_per_step_by_round", by_round[v]},
              {"us_per_step_all_rounds",
               std::round(sum[v].secs * 1e6 / static_cast<double>(sum[v].steps)
                          * 100.0) / 100.0},
              {"runs_per_sec", std::round(1e6 / (us * 10.0))},
              {"ratio_to_baseline", std::round(us / base_us * 1000.0) / 1000.0},
              {"extra_us_per_step", std::round((us - base_us) * 100.0) / 100.0},
              {"cpu_us_per_step", per_step(sum[v].process.cpu_ns / 1e3)},
              {"cpu_ratio_to_baseline",
               std::round(static_cast<double>(sum[v].process.cpu_ns)
                          / static_cast<double>(sum[v].steps)
                          / (static_cast<double>(sum[0].process.cpu_ns)
                             / static_cast<double>(sum[0].steps))
                          * 1000.0) / 1000.0},
              {"clock_thread_cpu_us_per_step", per_step(sum[v].clock.cpu_ns / 1e3)},
              {"clock_thread_wakeups_per_step", per_step(sum[v].clock.wakeups)},
              {"thread_wakeups_per_step", per_step(sum[v].process.wakeups)}});
    if (sum[v].failed > 0 || sum[v].failed_tool_calls > 0) {
      line["error"] = "a run failed or a tool call was refused";
      ok = false;
    }
    print_line(line);
  }
}

/// The guards' react-loop variants, "none" (the baseline) first.
void guards_react_loops(int runs, bool& ok) {
  auto with_budget = [](react_setup s) {
    s.configure = [prev = s.configure](troupe::runtime_config& cfg) {
      if (prev)
        prev(cfg);
      budget_and_prices(cfg, "w1");
    };
    s.run.budget.max_steps = 100;
    s.run.budget.max_cost_usd = 1.0;
    return s;
  };
  auto with_policy = [](react_setup s) {
    s.configure = [prev = s.configure](troupe::runtime_config& cfg) {
      if (prev)
        prev(cfg);
      cfg.policy = guards_policy();
    };
    return s;
  };
  auto with_tool_guards = [](react_setup s) {
    s.tool = [](troupe::tool_definition& def) { def.guards = open_guards(); };
    return s;
  };
  auto without = [](react_setup s, bool budget_actor, bool ledger) {
    s.without_budget_actor = budget_actor;
    s.without_ledger = ledger;
    return s;
  };
  std::vector<react_variant> variants{
    {"none", "baseline: the runtime's defaults (the budget actor reserves and "
             "settles every step, without limits or prices; the tool adapter "
             "looks every call up in the idempotency ledger and records it)",
     in_place_loop()},
    {"no ledger", "as none, but the tool adapter has no ledger (the agent "
                  "linked by hand)",
     without(in_place_loop(), false, true)},
    {"no budget actor", "as none, but the agent has no budget actor (linked "
                        "by hand): no reservation, no settlement",
     without(in_place_loop(), true, false)},
    {"bare", "neither budget actor nor ledger: the baseline less what the "
             "runtime always adds to a step",
     without(in_place_loop(), true, true)},
    {"budget", "global limits on steps, tokens and money, a price table, and a "
               "run budget: every step reserves against the run's account and "
               "global, then settles the priced usage",
     with_budget(in_place_loop())},
    {"policy", "a policy of 5 rules (JSON) judges every proposed call",
     with_policy(in_place_loop())},
    {"tool guards", "noop behind retrier (2 retries), breaker (threshold 5) and "
                    "limiter (1e6/s, burst 100000, 10000 at once, 1000 per "
                    "agent): no call is ever retried, failed or held",
     with_tool_guards(in_place_loop())},
    {"all", "budget + policy + tool guards",
     with_tool_guards(with_policy(with_budget(in_place_loop())))},
  };
  react_rounds("guards", variants, runs,
               json{{"tool", "in place (blocking=false)"},
                    {"loop_detection", "off"}},
               ok);
}

/// What the durable store costs a step: W1's loop (as the guards workload
/// runs it) in memory, with the SQLite store (a checkpoint before every step
/// and a final one, every model reply journaled, every tool call in the
/// store's ledger), and with the store fsyncing every commit. Each runtime
/// gets a fresh store file in a temporary folder, removed at the end.
void durable_react_loops(int runs, bool& ok) {
  auto dir = std::filesystem::temp_directory_path()
             / ("troupe-bench-durable-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto files = std::make_shared<int>(0);
  auto with_store = [&dir, files](bool durable_commits) {
    auto s = in_place_loop();
    s.configure = [dir, files, durable_commits](troupe::runtime_config& cfg) {
      troupe::store_options so;
      so.path = (dir / ("runs-" + std::to_string(++*files) + ".db")).string();
      so.durable_commits = durable_commits;
      cfg.store = std::make_shared<troupe::store>(so);
    };
    return s;
  };
  std::vector<react_variant> variants{
    {"memory", "no store: checkpoints, journal and ledger nowhere but memory "
               "(the runtime's in-memory ledger)",
     in_place_loop()},
    {"sqlite", "the SQLite store (WAL, synchronous=NORMAL): a checkpoint "
               "before every step and a final one, every model reply "
               "journaled before it is used, every tool call in the store's "
               "ledger",
     with_store(false)},
    {"sqlite, durable commits", "as sqlite, with durable_commits "
                                "(synchronous=FULL: every commit fsynced)",
     with_store(true)},
  };
  react_rounds("durable", variants, runs,
               json{{"tool", "in place (blocking=false)"},
                    {"loop_detection", "off"},
                    {"store_dir_filesystem", "the system's temporary folder"}},
               ok);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

/// How the budget race's runs ended, written from callbacks on actor threads.
struct race_tally {
  std::atomic<int64_t> runs{0};
  std::atomic<int64_t> steps{0};
  std::atomic<int64_t> cost_nusd{0};
  std::atomic<int64_t> input_tokens{0};
  std::atomic<int64_t> output_tokens{0};
  std::atomic<int64_t> refused{0};
  std::atomic<int64_t> failed{0};
  std::atomic<int64_t> agents_done{0};
  once_signal all_done;
  std::mutex mtx;
  std::string first_error;
  std::string first_refusal;
};

/// N agents run 10-step runs back to back on one global money budget until
/// it refuses them. Prints its line; false when the budget was overshot, its
/// totals differ from the runs' or a run failed.
bool guards_budget_race(int64_t n_agents) {
  constexpr int64_t steps_per_agent = 50; // what the budget affords, on average
  const troupe::token_usage step_usage{10, 2};
  auto cfg = child_runtime_config();
  cfg.prices.set("race", troupe::model_price{1.0, 5.0});
  const auto step_nusd = cfg.prices.cost_nusd("race", step_usage);
  cfg.budget.global.max_cost_usd
    = troupe::nusd_to_usd(step_nusd * n_agents * steps_per_agent);
  const auto limit_nusd = troupe::usd_to_nusd(cfg.budget.global.max_cost_usd);
  troupe::runtime rt{cfg};
  auto scheduler = scheduler_of(rt, cfg);
  rt.tools().add(noop_tool(false));
  // Every step uses exactly what the agent reserves for it, so the budget
  // fills to within one step of its limit and no further.
  auto usage = json{{"input_tokens", step_usage.input_tokens},
                    {"output_tokens", step_usage.output_tokens}};
  auto script = troupe::model_script::parse(
    json{{"rules",
          {{{"step", {{"max", 9}}},
            {"reply", {{"tool_calls", {{{"name", "noop"}, {"arguments", json::object()}}}},
                       {"usage", usage}}}},
           {{"reply", {{"content", "done"}, {"usage", usage}}}}}}},
    "race.json");
  rt.add_model("race", troupe::spawn_scripted_model(rt.system(), script));
  troupe::agent_spec spec;
  spec.name = "racer";
  spec.model = "race";
  spec.tools = {"noop"};
  spec.max_steps = 10;
  spec.usage_estimate = step_usage;
  spec.loops.repeat_threshold = 0;
  spec.loops.stall_steps = 0;
  std::vector<troupe::runnable_actor> agents;
  agents.reserve(static_cast<size_t>(n_agents));
  for (int64_t i = 0; i < n_agents; ++i)
    agents.push_back(rt.spawn_agent(spec));
  troupe::run_options opts;
  opts.timeout = minutes{5};
  auto tally = std::make_shared<race_tally>();
  auto all_done = tally->all_done.promise.get_future();
  // Starts agent i's next run; a complete run starts another, a halted one
  // (the budget refused) ends the agent.
  auto next = std::make_shared<std::function<void(size_t)>>();
  *next = [&rt, &agents, tally, opts, n_agents, start = next.get()](size_t i) {
    rt.submit(
      agents[i], rt.make_task("go", opts), opts.timeout,
      [tally, start, i, n_agents](troupe::run_result r) {
        ++tally->runs;
        tally->steps += static_cast<int64_t>(r.steps.size());
        tally->cost_nusd += r.cost_nusd;
        tally->input_tokens += r.usage.input_tokens;
        tally->output_tokens += r.usage.output_tokens;
        if (r.status == troupe::run_status::complete) {
          (*start)(i);
          return;
        }
        {
          std::lock_guard<std::mutex> guard{tally->mtx};
          auto& first = r.status == troupe::run_status::halted
                          ? tally->first_refusal
                          : tally->first_error;
          if (first.empty())
            first = std::string{troupe::to_string(r.status)} + ": " + r.error;
        }
        ++(r.status == troupe::run_status::halted ? tally->refused
                                                    : tally->failed);
        if (++tally->agents_done == n_agents)
          tally->all_done.fire();
      });
  };
  auto process_before = sample_threads();
  auto clock_before = sample_threads("caf.clock");
  auto start = steady_clock::now();
  for (size_t i = 0; i < agents.size(); ++i)
    (*next)(i);
  std::string problem;
  if (all_done.wait_for(opts.timeout) != std::future_status::ready)
    problem = "not every agent was refused in time";
  auto wall_ms = ms_since(start);
  auto process = sample_threads();
  auto clock = sample_threads("caf.clock");
  auto snap = rt.budget_usage();
  const auto& used = snap.used;
  auto reservations = snap.granted + snap.denied;
  bool overshoot = used.cost_nusd > limit_nusd;
  bool totals_match = used.steps == tally->steps.load()
                      && used.cost_nusd == tally->cost_nusd.load()
                      && used.tokens.input_tokens == tally->input_tokens.load()
                      && used.tokens.output_tokens == tally->output_tokens.load()
                      && used.steps == snap.granted;
  if (overshoot)
    problem = "the budget was overshot: used " + std::to_string(used.cost_nusd)
              + " of " + std::to_string(limit_nusd) + " nano-dollars";
  else if (!totals_match)
    problem = "the budget's totals differ from the runs'";
  else if (snap.reserved.steps != 0 || snap.reserved.cost_nusd != 0)
    problem = "reservations were left open";
  else if (tally->failed.load() > 0)
    problem = std::to_string(tally->failed.load())
              + " agents ended on a failed run, the first: " + tally->first_error;
  json line{{"workload", "guards"},
            {"part", "budget race"},
            {"what", "N agents run 10-step runs back to back on one global "
                     "money budget until it refuses them; every step reserves "
                     "and then settles in the one budget actor"},
            {"agents", n_agents},
            {"scheduler", scheduler},
            {"limit_nusd", limit_nusd},
            {"step_cost_nusd", step_nusd},
            {"wall_ms", wall_ms},
            {"runs", tally->runs.load()},
            {"steps", tally->steps.load()},
            {"reservations_granted", snap.granted},
            {"reservations_denied", snap.denied},
            {"reservations_per_sec",
             std::round(static_cast<double>(reservations) / (wall_ms / 1e3))},
            {"steps_per_sec",
             std::round(static_cast<double>(tally->steps.load()) / (wall_ms / 1e3))},
            {"used_nusd", used.cost_nusd},
            {"used_steps", used.steps},
            {"used_input_tokens", used.tokens.input_tokens},
            {"used_output_tokens", used.tokens.output_tokens},
            {"runs_steps", tally->steps.load()},
            {"runs_nusd", tally->cost_nusd.load()},
            {"headroom_nusd", limit_nusd - used.cost_nusd},
            {"filled_to_within_one_step", limit_nusd - used.cost_nusd < step_nusd},
            {"overshoot", overshoot},
            {"totals_match", totals_match},
            {"agents_refused", tally->refused.load()},
            {"first_refusal", tally->first_refusal},
            {"cpu_ms", std::round((process.cpu_ns - process_before.cpu_ns) / 1e5) / 10.0},
            {"clock_thread_cpu_ms",
             std::round((clock.cpu_ns - clock_before.cpu_ns) / 1e5) / 10.0}};
  if (!problem.empty())
    line["error"] = problem;
  print_line(line);
  rt.shutdown(); // a run still going (after a time-out) ends cancelled
  *next = nullptr;
  agents.clear();
  return problem.empty();
}

/// The raw budget race's counts.
struct raw_race_tally {
  std::atomic<int64_t> granted{0};
  std::atomic<int64_t> denied{0};
  std::atomic<int64_t> failed{0};
  std::atomic<int64_t> done{0};
  int64_t racers = 0;
  once_signal all_done;
};

/// One plain actor of the raw budget race.
struct raw_racer {
  troupe::budget_actor budget;
  std::string account;
  troupe::budget_amount step;
  int64_t reservations = 0;
  std::shared_ptr<raw_race_tally> tally;
};

/// Reserves one step, settles it and goes again, until the budget refuses.
void raw_reserve(caf::event_based_actor* self, std::shared_ptr<raw_racer> r) {
  troupe::budget_reserve req;
  req.ref.run_id = r->account;
  req.path = {troupe::budget_scope{r->account, {}}};
  req.reservation_id = r->account + "@" + std::to_string(++r->reservations);
  req.model = "raw";
  req.estimate = r->step;
  auto finished = [](raw_race_tally& t) {
    if (++t.done == t.racers)
      t.all_done.fire();
  };
  self->request(r->budget, seconds{60}, std::move(req))
    .then(
      [self, r, finished](troupe::budget_verdict& v) {
        if (!v.granted) {
          ++r->tally->denied;
          finished(*r->tally);
          return;
        }
        ++r->tally->granted;
        self->send(r->budget, troupe::budget_charge{r->account, v.reservation_id,
                                                    "raw", r->step, ""});
        raw_reserve(self, r);
      },
      [r, finished](caf::error&) {
        ++r->tally->failed;
        finished(*r->tally);
      });
}

/// The budget actor's own ceiling: N plain actors (no agent, model or tool)
/// reserve and settle one step at a time on the same kind of budget as the
/// budget race until it refuses them. Prints its line; false on an
/// overshoot or totals that do not add up.
bool guards_budget_race_raw(int64_t n) {
  constexpr int64_t steps_per_racer = 50;
  troupe::budget_amount step{1, troupe::token_usage{10, 2}, 20000};
  auto cfg = child_runtime_config();
  cfg.budget.global.max_cost_usd
    = troupe::nusd_to_usd(step.cost_nusd * n * steps_per_racer);
  const auto limit_nusd = troupe::usd_to_nusd(cfg.budget.global.max_cost_usd);
  troupe::runtime rt{cfg};
  auto scheduler = scheduler_of(rt, cfg);
  auto tally = std::make_shared<raw_race_tally>();
  tally->racers = n;
  auto all_done = tally->all_done.promise.get_future();
  auto process_before = sample_threads();
  auto clock_before = sample_threads("caf.clock");
  auto start = steady_clock::now();
  for (int64_t i = 0; i < n; ++i) {
    auto r = std::make_shared<raw_racer>();
    r->budget = rt.budget();
    r->account = "raw-" + std::to_string(i);
    r->step = step;
    r->tally = tally;
    rt.system().spawn(
      [r](caf::event_based_actor* self) { raw_reserve(self, r); });
  }
  std::string problem;
  if (all_done.wait_for(minutes{5}) != std::future_status::ready)
    problem = "not every racer was refused in time";
  auto wall_ms = ms_since(start);
  auto process = sample_threads();
  auto clock = sample_threads("caf.clock");
  auto snap = rt.budget_usage();
  bool overshoot = snap.used.cost_nusd > limit_nusd;
  bool totals_match = snap.used.steps == tally->granted.load()
                      && snap.granted == tally->granted.load()
                      && snap.used.cost_nusd == tally->granted.load() * step.cost_nusd;
  if (overshoot)
    problem = "the budget was overshot: used " + std::to_string(snap.used.cost_nusd)
              + " of " + std::to_string(limit_nusd) + " nano-dollars";
  else if (!totals_match)
    problem = "the budget's totals differ from the racers'";
  else if (tally->failed.load() > 0)
    problem = std::to_string(tally->failed.load()) + " reservations got no answer";
  auto reservations = snap.granted + snap.denied;
  json line{{"workload", "guards"},
            {"part", "budget race, actors only"},
            {"what", "N plain actors (no agent, model or tool) reserve and "
                     "settle one step at a time on one global money budget "
                     "until it refuses them: the budget actor's own ceiling"},
            {"actors", n},
            {"scheduler", scheduler},
            {"limit_nusd", limit_nusd},
            {"step_cost_nusd", step.cost_nusd},
            {"wall_ms", wall_ms},
            {"reservations_granted", snap.granted},
            {"reservations_denied", snap.denied},
            {"reservations_per_sec",
             std::round(static_cast<double>(reservations) / (wall_ms / 1e3))},
            {"used_nusd", snap.used.cost_nusd},
            {"used_steps", snap.used.steps},
            {"headroom_nusd", limit_nusd - snap.used.cost_nusd},
            {"filled_to_within_one_step",
             limit_nusd - snap.used.cost_nusd < step.cost_nusd},
            {"overshoot", overshoot},
            {"totals_match", totals_match},
            {"cpu_ms", std::round((process.cpu_ns - process_before.cpu_ns) / 1e5) / 10.0},
            {"clock_thread_cpu_ms",
             std::round((clock.cpu_ns - clock_before.cpu_ns) / 1e5) / 10.0}};
  if (!problem.empty())
    line["error"] = problem;
  print_line(line);
  rt.shutdown();
  return problem.empty();
}

/// Sends request `i` from `self` and calls `done(ok)` with its answer.
using probe_issue = std::function<void(caf::event_based_actor* self, int i,
                                       std::function<void(bool)> done)>;

/// A run of requests made one after another by one event-based actor.
struct probe_state {
  probe_issue issue;
  int total = 0;
  int warmup = 0;
  std::vector<double> us;
  int failed = 0;
  std::function<void(int)> step;
  std::promise<void> done;
};

/// Latencies in microseconds of `total` requests made one after another, the
/// first `warmup` left out; counts the failed ones into `failed`.
std::vector<double> sequential_latencies(caf::actor_system& sys, int total,
                                         int warmup, probe_issue issue,
                                         int& failed) {
  auto p = std::make_shared<probe_state>();
  p->issue = std::move(issue);
  p->total = total;
  p->warmup = warmup;
  p->us.reserve(static_cast<size_t>(std::max(total - warmup, 0)));
  auto finished = p->done.get_future();
  auto* raw = p.get();
  auto prober = sys.spawn([raw](caf::event_based_actor* self) {
    raw->step = [self, raw](int i) {
      if (i == raw->total) {
        raw->done.set_value();
        return;
      }
      auto start = steady_clock::now();
      raw->issue(self, i, [raw, i, start](bool ok) {
        if (i >= raw->warmup)
          raw->us.push_back(
            duration<double, std::micro>(steady_clock::now() - start).count());
        raw->failed += !ok;
        raw->step(i + 1);
      });
    };
    raw->step(0);
  });
  finished.wait();
  // The actor may still be on its way out of the last step.
  caf::scoped_actor{sys}->wait_for(prober);
  failed += p->failed;
  return std::move(p->us);
}

/// The raw cost of each guard: one tool call at a time, straight to the
/// adapter or through a guard; one budget reservation at a time; the policy
/// evaluated in place.
void guards_per_call(int calls) {
  auto cfg = child_runtime_config();
  troupe::runtime rt{cfg};
  auto& sys = rt.system();
  rt.tools().add(noop_tool(false));
  auto def = rt.tools().find("noop");
  auto guards = open_guards();
  troupe::tool_actor with_ledger = rt.tool("noop"); // no guards configured
  troupe::tool_actor adapter
    = rt.adopt(troupe::spawn_tool_adapter(sys, def, rt.blocking()));
  troupe::tool_actor retrier
    = rt.adopt(troupe::spawn_retrier(sys, "noop", guards.retry, adapter));
  troupe::tool_actor breaker
    = rt.adopt(troupe::spawn_breaker(sys, "noop", guards.breaker, adapter));
  troupe::tool_actor limiter
    = rt.adopt(troupe::spawn_tool_limiter(sys, "noop", guards.limits, adapter));
  auto stack_over = [&](troupe::tool_actor inner) -> troupe::tool_actor {
    inner = rt.adopt(troupe::spawn_tool_limiter(sys, "noop", guards.limits, inner));
    inner = rt.adopt(troupe::spawn_breaker(sys, "noop", guards.breaker, inner));
    return rt.adopt(troupe::spawn_retrier(sys, "noop", guards.retry, inner));
  };
  auto stack = stack_over(adapter);
  auto stack_ledger = stack_over(with_ledger);
  troupe::tool_call proto;
  proto.ref.run_id = "bench";
  proto.ref.trace_id = "00000000000000000000000000000001";
  proto.ref.principal = "local";
  proto.agent = "bench";
  proto.name = "noop";
  proto.args.value = json::object();
  proto.deadline_ms = troupe::now_ms() + 3600 * 1000;
  auto tool_path = [proto](troupe::tool_actor target, bool keyed,
                           std::string key_prefix) -> probe_issue {
    return [proto, target, keyed, key_prefix](caf::event_based_actor* self,
                                              int i,
                                              std::function<void(bool)> done) {
      auto call = proto;
      call.step = i;
      call.call_id = "c" + std::to_string(i);
      if (keyed)
        call.idempotency_key = key_prefix + std::to_string(i);
      self->request(target, seconds{10}, std::move(call))
        .then([done](troupe::tool_result& r) { done(r.ok); },
              [done](caf::error&) { done(false); });
    };
  };
  auto budget = rt.budget();
  // A reservation in one account below global, then its charge (what a step
  // does; the charge is a send, so only the reservation is timed).
  probe_issue reserve = [budget](caf::event_based_actor* self, int i,
                                 std::function<void(bool)> done) {
    troupe::budget_reserve req;
    req.ref.run_id = "bench";
    req.path = {troupe::budget_scope{"bench-run", {}}};
    req.reservation_id = "bench-run@" + std::to_string(i);
    req.model = "bench";
    req.estimate.steps = 1;
    req.estimate.tokens = troupe::token_usage{10, 2};
    self->request(budget, seconds{10}, std::move(req))
      .then(
        [self, budget, done](troupe::budget_verdict& v) {
          if (v.granted)
            self->send(budget,
                       troupe::budget_charge{"bench-run", v.reservation_id,
                                             "bench",
                                             troupe::budget_amount{
                                               1, troupe::token_usage{10, 2}, 0},
                                             ""});
          done(v.granted);
        },
        [done](caf::error&) { done(false); });
  };
  struct path {
    const char* name = "";
    probe_issue issue;
    std::vector<double> us;
    int failed = 0;
    thread_sample process;
    thread_sample clock;
  };
  // Each keyed path has its own key prefix, so no call is ever replayed.
  std::vector<path> paths;
  auto add = [&paths](const char* name, probe_issue issue) {
    path p;
    p.name = name;
    p.issue = std::move(issue);
    paths.push_back(std::move(p));
  };
  add("adapter (no key: no ledger)", tool_path(adapter, false, ""));
  add("adapter + ledger (key looked up, then recorded)",
      tool_path(with_ledger, true, "k1-"));
  add("retrier -> adapter", tool_path(retrier, false, ""));
  add("breaker -> adapter", tool_path(breaker, false, ""));
  add("limiter -> adapter", tool_path(limiter, false, ""));
  add("retrier -> breaker -> limiter -> adapter", tool_path(stack, false, ""));
  add("retrier -> breaker -> limiter -> adapter + ledger",
      tool_path(stack_ledger, true, "k2-"));
  add("budget reserve (then charge, not timed)", reserve);
  constexpr int rounds = 4;
  constexpr int warmup = 500;
  const int per_round = std::max(1, calls / rounds);
  const auto n = paths.size();
  for (int r = 0; r < rounds; ++r)
    for (size_t k = 0; k < n; ++k) {
      auto& p = paths[(k + static_cast<size_t>(r)) % n];
      // Keys stay unique across rounds: the round goes into the step number.
      auto offset = r * (per_round + warmup);
      auto issue = [inner = p.issue, offset](caf::event_based_actor* self,
                                             int i, std::function<void(bool)> done) {
        inner(self, offset + i, std::move(done));
      };
      auto process = sample_threads();
      auto clock = sample_threads("caf.clock");
      auto us = sequential_latencies(sys, per_round + warmup, warmup, issue,
                                     p.failed);
      auto process_after = sample_threads();
      auto clock_after = sample_threads("caf.clock");
      p.process.cpu_ns += process_after.cpu_ns - process.cpu_ns;
      p.process.wakeups += process_after.wakeups - process.wakeups;
      p.clock.cpu_ns += clock_after.cpu_ns - clock.cpu_ns;
      p.clock.wakeups += clock_after.wakeups - clock.wakeups;
      p.us.insert(p.us.end(), us.begin(), us.end());
    }
  auto pct = [](const std::vector<double>& xs, double q) {
    return xs.empty() ? 0.0
                      : xs[std::min(xs.size() - 1,
                                    static_cast<size_t>(q * static_cast<double>(xs.size())))];
  };
  double base_p50 = 0;
  for (size_t k = 0; k < n; ++k) {
    auto& p = paths[k];
    std::sort(p.us.begin(), p.us.end());
    double mean = 0;
    for (auto x : p.us)
      mean += x;
    mean /= static_cast<double>(std::max<size_t>(p.us.size(), 1));
    auto p50 = pct(p.us, 0.5);
    if (k == 0)
      base_p50 = p50;
    json line{{"workload", "guards"},
              {"part", "per call"},
              {"path", p.name},
              {"calls", p.us.size()},
              {"failed", p.failed},
              {"p50_us", std::round(p50 * 100.0) / 100.0},
              {"p99_us", std::round(pct(p.us, 0.99) * 100.0) / 100.0},
              {"mean_us", std::round(mean * 100.0) / 100.0}};
    // Warm-up calls included: every call costs the same.
    auto per_call = [&p, per_round](double x) {
      return std::round(x / (rounds * (per_round + warmup)) * 100.0) / 100.0;
    };
    line["cpu_us_per_call"] = per_call(p.process.cpu_ns / 1e3);
    line["clock_thread_cpu_us_per_call"] = per_call(p.clock.cpu_ns / 1e3);
    line["clock_thread_wakeups_per_call"] = per_call(p.clock.wakeups);
    if (k > 0 && k + 1 < n)
      line["p50_extra_us"] = std::round((p50 - base_p50) * 100.0) / 100.0;
    print_line(line);
  }
  // The policy is a function the agent calls, not an actor.
  auto rules = guards_policy();
  troupe::policy_query q;
  q.role = "w1";
  q.principal = "local";
  q.tool = "noop";
  q.args = json::object();
  const int evaluations = std::max(calls, 1000) * 5;
  int64_t allowed = 0;
  auto start = steady_clock::now();
  for (int i = 0; i < evaluations; ++i) {
    q.calls_so_far = i;
    allowed += troupe::evaluate(rules, q).decision == troupe::policy_decision::allow;
  }
  auto secs = duration<double>(steady_clock::now() - start).count();
  print_line(json{{"workload", "guards"},
                  {"part", "per call"},
                  {"path", "policy evaluate() (5 rules; noop allowed by the 5th)"},
                  {"calls", evaluations},
                  {"failed", evaluations - allowed},
                  {"mean_us", std::round(secs * 1e6 / evaluations * 1000.0) / 1000.0}});
  rt.shutdown();
}

} // namespace

int main(int argc, char** argv) {
  // stdout carries only the JSON lines.
  spdlog::set_default_logger(spdlog::stderr_color_mt("troupe-bench"));
  spdlog::set_level(spdlog::level::warn);
  const std::vector<std::string> all_workloads{
    "floor", "W1", "guards", "durable", "restart", "W2", "W3", "gateway",
    "cluster"};
  std::set<std::string> workloads{all_workloads.begin(), all_workloads.end()};
  int runs = 2000;
  int floor_trips = 200000;
  int64_t guards_agents = 1000;
  int64_t guards_calls = 20000;
  std::vector<int64_t> w2_n{10, 100, 1000, 10000};
  std::vector<int64_t> w2_latency{0, 50};
  std::vector<int64_t> w3_n{1000, 10000, 100000};
  int64_t w3_latency = 1000;
  bool w3_auto_latency = true;
  double w3_max_gib = 12;
  troupe::bench::gateway_bench_options gateway;
  troupe::bench::cluster_bench_options cluster;
  // Hidden: one W2 or W3 configuration in this process (see run_child).
  std::string child;
  int64_t child_n = 1;
  int64_t child_latency = 0;
  for (int i = 1; i < argc; i += 2) {
    std::string flag = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s needs a value\n", flag.c_str());
      return 2;
    }
    std::string value = argv[i + 1];
    std::vector<int64_t> list;
    const char* expected = nullptr;
    // A flag that takes one integer of at least `min`.
    auto one_integer = [&](int64_t min, auto& target) {
      if (!parse_list(value, min, list) || list.size() != 1)
        expected = min > 0 ? "one positive integer" : "one integer >= 0";
      else
        target = static_cast<std::remove_reference_t<decltype(target)>>(list[0]);
    };
    if (flag == "--runs") {
      runs = std::atoi(value.c_str());
    } else if (flag == "--floor-round-trips") {
      floor_trips = std::atoi(value.c_str());
    } else if (flag == "--workload") {
      workloads.clear();
      std::stringstream in{value};
      std::string name;
      while (std::getline(in, name, ','))
        if (std::find(all_workloads.begin(), all_workloads.end(), name)
            != all_workloads.end())
          workloads.insert(name);
        else
          expected = "a comma-separated subset of floor, W1, guards, durable, "
                     "restart, W2, W3, gateway, cluster";
      if (workloads.empty())
        expected = "a comma-separated subset of floor, W1, guards, durable, "
                   "restart, W2, W3, gateway, cluster";
    } else if (flag == "--guards-agents") {
      one_integer(1, guards_agents);
    } else if (flag == "--guards-calls") {
      one_integer(1, guards_calls);
    } else if (flag == "--w2-n") {
      if (!parse_list(value, 1, w2_n))
        expected = "positive integers, comma-separated";
    } else if (flag == "--w2-latency-ms") {
      if (!parse_list(value, 0, w2_latency))
        expected = "integers >= 0, comma-separated";
    } else if (flag == "--w3-n") {
      if (!parse_list(value, 1, w3_n))
        expected = "positive integers, comma-separated";
    } else if (flag == "--w3-latency-ms") {
      one_integer(1, w3_latency);
      w3_auto_latency = false;
    } else if (flag == "--w3-max-gib") {
      w3_max_gib = std::atof(value.c_str());
      if (!(w3_max_gib > 0))
        expected = "a positive number";
    } else if (flag == "--gateway-requests") {
      one_integer(1, gateway.requests);
    } else if (flag == "--gateway-in-flight") {
      one_integer(1, gateway.in_flight);
    } else if (flag == "--gateway-calls") {
      one_integer(1, gateway.latency_calls);
    } else if (flag == "--gateway-stream-calls") {
      one_integer(0, gateway.stream_calls);
    } else if (flag == "--cluster-calls") {
      one_integer(1, cluster.latency_calls);
    } else if (flag == "--cluster-throughput-calls") {
      one_integer(1, cluster.throughput_calls);
    } else if (flag == "--cluster-in-flight") {
      one_integer(1, cluster.in_flight);
    } else if (flag == "--cluster-serve") {
      // Hidden: the host node of the cluster workload (cluster_bench.hpp).
      return troupe::bench::run_cluster_serve(value);
    } else if (flag == "--child") {
      child = value;
      if (child != "W2" && child != "W3")
        expected = "W2 or W3";
    } else if (flag == "--n") {
      one_integer(1, child_n);
    } else if (flag == "--latency-ms") {
      one_integer(0, child_latency);
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
    if (expected) {
      std::fprintf(stderr, "%s %s: expected %s\n", flag.c_str(), value.c_str(),
                   expected);
      return 2;
    }
  }
  if (runs < 1 || floor_trips < 1) {
    std::fprintf(stderr, "--runs and --floor-round-trips must be positive\n");
    return 2;
  }
  if (!child.empty()) {
    try {
      auto ok = child == "W2" ? w2_fan_out(child_n, child_latency)
                              : w3_in_flight(child_n, child_latency);
      return ok ? 0 : 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "troupe-bench: %s n=%lld: %s\n", child.c_str(),
                   static_cast<long long>(child_n), e.what());
      return 1;
    }
  }
  auto wants = [&workloads](const char* name) {
    return workloads.count(name) > 0;
  };
  bool ok = true;
  double floor_us = 0;
  if (wants("floor") || wants("W1")) {
    floor_us = floor_round_trip_us(floor_trips);
    std::printf("%s\n", json{{"workload", "floor"},
                             {"what", "CAF event-based request/response round trip"},
                             {"round_trips", floor_trips},
                             {"us_per_round_trip", floor_us}}
                          .dump()
                          .c_str());
    std::fflush(stdout);
  }
  if (wants("W1")) {
    auto trace_file = (std::filesystem::temp_directory_path()
                       / "troupe-bench-w1-trace.jsonl")
                        .string();
    struct variant {
      bool traced;
      bool blocking_tool;
    };
    for (auto v : {variant{false, true}, variant{true, true}, variant{false, false},
                   variant{true, false}}) {
      if (v.traced)
        std::filesystem::remove(trace_file);
      react_setup setup;
      setup.trace_path = v.traced ? trace_file : "";
      setup.blocking_tool = v.blocking_tool;
      // W1 calls the same tool with the same arguments nine times: loop
      // detection would warn (and log) twice a run, and that is not the
      // step being measured.
      setup.agent = [](troupe::agent_spec& spec) {
        spec.loops.repeat_threshold = 0;
        spec.loops.stall_steps = 0;
      };
      auto f = react_loop(runs, setup);
      std::printf(
        "%s\n",
        json{{"workload", "W1 react loop"},
             {"tracing", v.traced ? "jsonl file" : "off"},
             {"tool", v.blocking_tool ? "blocking pool (default)"
                                      : "in place (blocking=false)"},
             {"runs", runs},
             {"steps_per_run", 10},
             {"failed_runs", f.failed},
             {"us_per_step", f.us_per_step},
             {"runs_per_sec", f.runs_per_sec},
             {"floor_us", floor_us},
             {"step_to_floor_ratio", f.us_per_step / floor_us}}
          .dump()
          .c_str());
      std::fflush(stdout);
    }
    std::filesystem::remove(trace_file);
  }
  if (wants("guards")) {
    guards_react_loops(runs, ok);
    ok &= guards_budget_race(guards_agents);
    ok &= guards_budget_race_raw(guards_agents);
    guards_per_call(static_cast<int>(guards_calls));
  }
  if (wants("durable"))
    durable_react_loops(runs, ok);
  if (wants("restart")) {
    constexpr int restarts = 1000;
    auto times = restart_times(restarts);
    auto pct = [&](double p) {
      return times.empty() ? 0.0
                           : times[std::min(times.size() - 1,
                                            static_cast<size_t>(p * times.size()))];
    };
    std::printf("%s\n", json{{"workload", "restart"},
                             {"what", "crash of a supervised actor to its "
                                      "replacement answering a request"},
                             {"restarts", times.size()},
                             {"median_us", pct(0.5)},
                             {"p99_us", pct(0.99)}}
                           .dump()
                           .c_str());
    std::fflush(stdout);
    ok &= times.size() == static_cast<size_t>(restarts);
  }
  if (wants("W2"))
    ok &= run_w2(argv[0], w2_n, w2_latency);
  if (wants("W3"))
    ok &= run_w3(argv[0], w3_n, w3_latency, w3_auto_latency, w3_max_gib);
  if (wants("gateway"))
    ok &= troupe::bench::run_gateway_bench(gateway);
  if (wants("cluster"))
    ok &= troupe::bench::run_cluster_bench(cluster);
  return ok ? 0 : 1;
}

// troupe-bench: workloads that print one JSON line each.
//
//   troupe-bench [--workload LIST] [--runs N] [--floor-round-trips N]
//                [--w2-n LIST] [--w2-latency-ms LIST]
//                [--w3-n LIST] [--w3-latency-ms MS] [--w3-max-gib G]
//
// --workload picks a comma-separated subset of floor, W1, restart, W2, W3
// (default: all, in that order; W1 also runs floor, which its ratio needs).
// The LIST options are comma-separated integers.
//
// floor      CAF event-based request/response round trip between two actors:
//            the least a message-driven step can cost on this machine.
// W1         "react loop": runs of 10 steps on the scripted model at zero
//            latency (9 steps call a trivial tool, the 10th answers), run one
//            after another; microseconds per step, runs per second, and the
//            ratio of a step to the floor. Four variants: tracing off or to a
//            JSONL file, the tool on the blocking pool (the default) or run in
//            place (tool_definition::blocking = false).
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
//
// W2 and W3 run on the runtime's defaults; TROUPE_SCHEDULER (stealing or
// sharing, which W1 honours too) and TROUPE_SCHEDULER_THREADS override the
// scheduler, and each line names the one it ran on.
//
// Every W2 and W3 configuration runs in a fresh process (this binary again,
// with the hidden flag --child), so its peak RSS (VmHWM) is its own. The exit
// status is non-zero when a W2 or W3 configuration failed or the restart
// workload fell short.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
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
#include "messages/type_ids.hpp"
#include "runtime/runtime.hpp"
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

struct react_figures {
  double us_per_step;
  double runs_per_sec;
  int failed;
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

react_figures react_loop(int runs, const std::string& trace_path,
                         bool blocking_tool) {
  troupe::runtime_config cfg;
  cfg.load_middleman = false;
  cfg.trace_path = trace_path;
  if (const char* policy = std::getenv("TROUPE_SCHEDULER"))
    cfg.scheduler_policy = policy;
  troupe::runtime rt{cfg};
  rt.tools().add(noop_tool(blocking_tool));
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
  auto agent = rt.spawn_agent(spec);
  int failed = 0;
  int64_t steps = 0;
  // Warm-up run, not counted.
  rt.run(agent, "warm up");
  auto start = steady_clock::now();
  for (int i = 0; i < runs; ++i) {
    auto r = rt.run(agent, "go");
    failed += r.status != troupe::run_status::complete;
    steps += static_cast<int64_t>(r.steps.size());
  }
  auto secs = duration<double>(steady_clock::now() - start).count();
  rt.shutdown();
  return {secs * 1e6 / static_cast<double>(steps), runs / secs, failed};
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

} // namespace

int main(int argc, char** argv) {
  // stdout carries only the JSON lines.
  spdlog::set_default_logger(spdlog::stderr_color_mt("troupe-bench"));
  spdlog::set_level(spdlog::level::warn);
  const std::vector<std::string> all_workloads{"floor", "W1", "restart", "W2", "W3"};
  std::set<std::string> workloads{all_workloads.begin(), all_workloads.end()};
  int runs = 2000;
  int floor_trips = 200000;
  std::vector<int64_t> w2_n{10, 100, 1000, 10000};
  std::vector<int64_t> w2_latency{0, 50};
  std::vector<int64_t> w3_n{1000, 10000, 100000};
  int64_t w3_latency = 1000;
  bool w3_auto_latency = true;
  double w3_max_gib = 12;
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
          expected = "a comma-separated subset of floor, W1, restart, W2, W3";
      if (workloads.empty())
        expected = "a comma-separated subset of floor, W1, restart, W2, W3";
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
      if (!parse_list(value, 1, list) || list.size() != 1)
        expected = "one positive integer";
      else
        w3_latency = list[0];
      w3_auto_latency = false;
    } else if (flag == "--w3-max-gib") {
      w3_max_gib = std::atof(value.c_str());
      if (!(w3_max_gib > 0))
        expected = "a positive number";
    } else if (flag == "--child") {
      child = value;
      if (child != "W2" && child != "W3")
        expected = "W2 or W3";
    } else if (flag == "--n") {
      if (!parse_list(value, 1, list) || list.size() != 1)
        expected = "one positive integer";
      else
        child_n = list[0];
    } else if (flag == "--latency-ms") {
      if (!parse_list(value, 0, list) || list.size() != 1)
        expected = "one integer >= 0";
      else
        child_latency = list[0];
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
      auto f = react_loop(runs, v.traced ? trace_file : "", v.blocking_tool);
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
  return ok ? 0 : 1;
}

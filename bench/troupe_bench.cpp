// troupe-bench: workloads that print one JSON line each.
//
//   troupe-bench [--runs N] [--floor-round-trips N]
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

#include <algorithm>
#include <chrono>
#include <vector>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <string>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "actors/scripted_model.hpp"
#include "messages/type_ids.hpp"
#include "runtime/runtime.hpp"
#include "supervisors/supervisor.hpp"

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

react_figures react_loop(int runs, const std::string& trace_path,
                         bool blocking_tool) {
  troupe::runtime_config cfg;
  cfg.load_middleman = false;
  cfg.trace_path = trace_path;
  if (const char* policy = std::getenv("TROUPE_SCHEDULER"))
    cfg.scheduler_policy = policy;
  troupe::runtime rt{cfg};
  troupe::tool_definition noop;
  noop.name = "noop";
  noop.description = "Does nothing";
  noop.parameters = json{{"type", "object"}, {"additionalProperties", false}};
  noop.fn = [](const json&, const troupe::tool_context&) {
    return json::object();
  };
  noop.blocking = blocking_tool;
  rt.tools().add(noop);
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

} // namespace

int main(int argc, char** argv) {
  // stdout carries only the JSON lines.
  spdlog::set_default_logger(spdlog::stderr_color_mt("troupe-bench"));
  spdlog::set_level(spdlog::level::warn);
  int runs = 2000;
  int floor_trips = 200000;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--runs")
      runs = std::atoi(argv[i + 1]);
    else if (flag == "--floor-round-trips")
      floor_trips = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (runs < 1 || floor_trips < 1) {
    std::fprintf(stderr, "--runs and --floor-round-trips must be positive\n");
    return 2;
  }
  auto floor_us = floor_round_trip_us(floor_trips);
  std::printf("%s\n", json{{"workload", "floor"},
                           {"what", "CAF event-based request/response round trip"},
                           {"round_trips", floor_trips},
                           {"us_per_round_trip", floor_us}}
                        .dump()
                        .c_str());
  std::fflush(stdout);
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
  return times.size() == static_cast<size_t>(restarts) ? 0 : 1;
}

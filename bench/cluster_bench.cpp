#include "bench/cluster_bench.hpp"
#include "bench/driver.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/stateful_actor.hpp>

#include "messages/errors.hpp"
#include "messages/tool.hpp"
#include "runtime/clock.hpp"
#include "runtime/runtime.hpp"

extern char** environ;

namespace troupe::bench {

namespace {

using namespace std::chrono;

constexpr const char* tool_name = "echo";
constexpr const char* host_name = "bench-host";
/// Bound on any one call.
constexpr auto call_timeout = seconds{10};
/// How long the host may take to start and write its port.
constexpr auto host_start_timeout = seconds{20};
constexpr int latency_rounds = 4;
constexpr int64_t latency_warmup = 100;
constexpr int throughput_rounds = 3;

double ratio(double a, double b) {
  return b > 0 ? std::round(a / b * 1000.0) / 1000.0 : 0.0;
}

/// CPU time (user + system) of another process, in microseconds; -1 when it
/// cannot be read.
double other_process_cpu_us(pid_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/stat"};
  std::string text;
  if (!std::getline(in, text))
    return -1;
  // The command name (field 2) may hold spaces: count fields after its ')'.
  auto close = text.rfind(')');
  if (close == std::string::npos)
    return -1;
  std::istringstream fields{text.substr(close + 2)};
  std::string field;
  unsigned long long utime = 0;
  unsigned long long stime = 0;
  // Fields 3.. follow; utime is field 14, stime 15.
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14)
      utime = std::strtoull(field.c_str(), nullptr, 10);
    else if (i == 15)
      stime = std::strtoull(field.c_str(), nullptr, 10);
  }
  auto ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  return static_cast<double>(utime + stime) * 1e6 / ticks;
}

/// The runtime settings of both processes: the scheduler from the
/// environment, as the other workloads honour it.
runtime_config bench_config() {
  runtime_config cfg;
  if (const char* policy = std::getenv("TROUPE_SCHEDULER"))
    cfg.scheduler_policy = policy;
  if (const char* threads = std::getenv("TROUPE_SCHEDULER_THREADS"))
    cfg.scheduler_threads = static_cast<size_t>(std::atoi(threads));
  return cfg;
}

/// The trivial tool: returns its arguments. Quick and pure, so it runs in
/// place in the adapter (no blocking pool hand-off), and read-only, so no
/// ledger round trip: what is measured is the messaging.
tool_definition echo_tool() {
  tool_definition def;
  def.name = tool_name;
  def.description = "Returns its arguments";
  def.parameters = json{{"type", "object"},
                        {"properties", {{"text", {{"type", "string"}}}}},
                        {"required", {"text"}}};
  def.fn = [](const json& args, const tool_context&) { return args; };
  def.blocking = false;
  def.read_only = true;
  def.timeout = call_timeout;
  return def;
}

/// Calls of the echo tool.
using echo_drive_plan = drive_plan<tool_actor, tool_call, tool_result>;

/// A plan sending `call` to `target`, numbered (step n, call_id "c<n>"), each
/// reply checked to echo the call's arguments.
echo_drive_plan echo_plan(const tool_actor& target, const tool_call& call) {
  echo_drive_plan plan;
  plan.name = "cluster_bench_driver";
  plan.target = target;
  plan.request = call;
  plan.timeout = caf::duration{call_timeout};
  plan.prepare = [](tool_call& next, int64_t n) {
    next.step = static_cast<int32_t>(n);
    next.call_id = "c" + std::to_string(n);
  };
  plan.check = [args = call.args](const tool_result& r) -> std::string {
    if (!r.ok)
      return "tool failed: " + r.error.message;
    if (!(r.content == args))
      return "unexpected content: " + r.content.value.dump();
    return {};
  };
  return plan;
}

// -- the host process --------------------------------------------------------

/// The host node process, stopped when this goes out of scope: its stdin
/// closed (it shuts down cleanly), then SIGTERM, then SIGKILL.
class host_process {
public:
  explicit host_process(std::string port_file)
    : port_file_(std::move(port_file)) {
    std::filesystem::remove(port_file_);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
      throw std::runtime_error(std::string{"pipe: "} + std::strerror(errno));
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    // Its stdin is our pipe; its stdout goes to our stderr (our stdout
    // carries only JSON lines). Both pipe ends are close-on-exec.
    posix_spawn_file_actions_adddup2(&actions, fds[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO);
    std::string argv0 = "troupe-bench";
    std::string flag = "--cluster-serve";
    std::string file = port_file_;
    char* argv[] = {argv0.data(), flag.data(), file.data(), nullptr};
    std::fflush(stdout);
    auto rc = posix_spawn(&pid_, "/proc/self/exe", &actions, nullptr, argv,
                          environ);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[0]);
    if (rc != 0) {
      close(fds[1]);
      pid_ = -1;
      throw std::runtime_error(std::string{"cannot start the host node: "}
                               + std::strerror(rc));
    }
    stdin_fd_ = fds[1];
  }

  host_process(const host_process&) = delete;
  host_process& operator=(const host_process&) = delete;

  ~host_process() {
    stop();
  }

  pid_t pid() const noexcept {
    return pid_;
  }

  /// Waits for the port the host bound; throws when it exits or is late.
  uint16_t wait_port() {
    auto deadline = steady_clock::now() + host_start_timeout;
    while (steady_clock::now() < deadline) {
      std::ifstream in{port_file_};
      unsigned port = 0;
      if (in >> port && port > 0 && port < 65536)
        return static_cast<uint16_t>(port);
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("the host node exited before it listened "
                                 "(status "
                                 + std::to_string(status) + ")");
      }
      std::this_thread::sleep_for(milliseconds{10});
    }
    throw std::runtime_error("the host node did not write its port within "
                             + std::to_string(host_start_timeout.count())
                             + " s");
  }

  /// Stops the host; returns how: "exited N", "signal N" or "" when there
  /// was none.
  std::string stop() {
    if (stdin_fd_ >= 0) {
      close(stdin_fd_);
      stdin_fd_ = -1;
    }
    std::string how;
    if (pid_ > 0) {
      int status = 0;
      auto reaped = [&](milliseconds within) {
        auto deadline = steady_clock::now() + within;
        do {
          if (waitpid(pid_, &status, WNOHANG) == pid_)
            return true;
          std::this_thread::sleep_for(milliseconds{5});
        } while (steady_clock::now() < deadline);
        return false;
      };
      if (!reaped(seconds{5})) {
        how = "SIGTERM after 5 s, ";
        kill(pid_, SIGTERM);
        if (!reaped(seconds{3})) {
          how = "SIGKILL after 8 s, ";
          kill(pid_, SIGKILL);
          waitpid(pid_, &status, 0);
        }
      }
      if (WIFEXITED(status))
        how += "exited " + std::to_string(WEXITSTATUS(status));
      else if (WIFSIGNALED(status))
        how += "signal " + std::to_string(WTERMSIG(status));
      pid_ = -1;
    }
    std::error_code ec;
    std::filesystem::remove(port_file_, ec);
    std::filesystem::remove(port_file_ + ".tmp", ec);
    return how;
  }

private:
  std::string port_file_;
  pid_t pid_ = -1;
  int stdin_fd_ = -1;
};

std::atomic<bool> serve_stop{false};

extern "C" void on_serve_signal(int) {
  serve_stop = true;
}

// -- the measurements --------------------------------------------------------

struct path {
  const char* name = "";
  tool_actor target;
  std::vector<double> us;
  int64_t failed = 0;
  std::string first_error;
  /// calls/s of every throughput round.
  std::vector<double> rounds;
  std::vector<double> loaded_us;
  double parent_cpu_us = 0;
  double host_cpu_us = 0;
  int64_t timed_calls = 0;
};

void note(path& p, const drive_result& r) {
  if (p.failed == 0 && r.failed > 0)
    p.first_error = r.first_error;
  p.failed += r.failed;
}

} // namespace

int run_cluster_serve(const std::string& port_file) {
  struct sigaction sa {};
  sa.sa_handler = on_serve_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  try {
    runtime rt{bench_config()};
    rt.tools().add(echo_tool());
    node_options opts;
    opts.name = host_name;
    opts.host = "127.0.0.1";
    opts.port = 0;
    auto port = rt.listen(opts);
    {
      std::ofstream out{port_file + ".tmp"};
      out << port << "\n";
    }
    std::filesystem::rename(port_file + ".tmp", port_file);
    // Serve until stdin closes (the bench stopped, or died) or a signal.
    while (!serve_stop) {
      pollfd p{STDIN_FILENO, POLLIN, 0};
      auto n = poll(&p, 1, 200);
      if (n > 0) {
        char buf[256];
        auto got = read(STDIN_FILENO, buf, sizeof(buf));
        if (got <= 0)
          break;
      } else if (n < 0 && errno != EINTR) {
        break;
      }
    }
    rt.shutdown();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe-bench --cluster-serve: %s\n", e.what());
    return 1;
  }
}

bool run_cluster_bench(const cluster_bench_options& opts) {
  auto port_file = (std::filesystem::temp_directory_path()
                    / ("troupe-bench-cluster-" + std::to_string(getpid())
                       + ".port"))
                     .string();
  bool ok = true;
  try {
    host_process host{port_file};
    auto port = host.wait_port();
    {
      runtime rt{bench_config()};
      auto t0 = steady_clock::now();
      auto seed = rt.connect("127.0.0.1", port, "bench-client");
      auto connect_ms = duration<double, std::milli>(steady_clock::now() - t0)
                          .count();
      // Not registered here yet: rt.tool finds the host's adapter.
      tool_actor remote = rt.tool(tool_name);
      rt.tools().add(echo_tool());
      tool_actor local = rt.tool(tool_name);
      if (!remote || !local || remote.address() == local.address())
        throw std::runtime_error("rt.tool(\"echo\") did not give two "
                                 "different adapters");
      json setup{{"workload", "cluster"},
                 {"case", "setup"},
                 {"seed", seed},
                 {"host_port", port},
                 {"connect_ms", round2(connect_ms)},
                 {"members", rt.members().size()},
                 {"remote_is_remote", remote.node() != rt.system().node()},
                 {"scheduler_threads", rt.system().scheduler().num_workers()}};
      print_line(setup);

      tool_call proto;
      proto.ref.run_id = "bench";
      proto.ref.trace_id = "00000000000000000000000000000001";
      proto.ref.principal = "local";
      proto.agent = "bench";
      proto.name = tool_name;
      proto.args.value = json{{"text", "ping"}};
      proto.deadline_ms = now_ms() + 3600 * 1000;

      std::vector<path> paths(2);
      paths[0].name = "local";
      paths[0].target = local;
      paths[1].name = "remote";
      paths[1].target = remote;
      auto measure = [&](path& p, echo_drive_plan plan) {
        auto cpu = process_cpu_us();
        auto host_cpu = other_process_cpu_us(host.pid());
        auto r = drive(rt.system(), std::move(plan));
        p.parent_cpu_us += process_cpu_us() - cpu;
        p.host_cpu_us += other_process_cpu_us(host.pid()) - host_cpu;
        note(p, r);
        return r;
      };

      // Latency: one call at a time, rounds alternating local/remote.
      const auto per_round
        = std::max<int64_t>(1, opts.latency_calls / latency_rounds);
      for (int round = 0; round < latency_rounds; ++round)
        for (size_t k = 0; k < paths.size(); ++k) {
          auto& p = paths[(k + static_cast<size_t>(round)) % paths.size()];
          auto plan = echo_plan(p.target, proto);
          plan.warmup = latency_warmup;
          plan.total = per_round + latency_warmup;
          plan.in_flight = 1;
          auto r = measure(p, std::move(plan));
          p.us.insert(p.us.end(), r.us.begin(), r.us.end());
        }
      json local_line;
      for (auto& p : paths) {
        json line{{"workload", "cluster"},
                  {"case", std::string{"latency "} + p.name},
                  {"path", p.name == std::string{"local"}
                             ? "caller -> rt.tool adapter, one process"
                             : "caller -> adapter on node process, loopback"},
                  {"calls", p.us.size()},
                  {"rounds", latency_rounds},
                  {"warmup_per_round", latency_warmup}};
        line.update(latency_figures(p.us));
        line["failed"] = p.failed;
        if (p.failed > 0)
          line["first_error"] = p.first_error;
        if (p.name == std::string{"local"}) {
          local_line = line;
        } else {
          line["ratio_p50"] = ratio(line["p50_us"].get<double>(),
                                    local_line["p50_us"].get<double>());
          line["ratio_p99"] = ratio(line["p99_us"].get<double>(),
                                    local_line["p99_us"].get<double>());
          line["ratio"] = line["ratio_p50"];
          line["ratio_of"] = "remote/local p50";
        }
        print_line(line);
        ok &= p.failed == 0;
        p.failed = 0;
        p.first_error.clear();
        p.parent_cpu_us = 0;
        p.host_cpu_us = 0;
      }

      // Throughput: in_flight calls pipelined, rounds alternating.
      for (int round = 0; round < throughput_rounds; ++round)
        for (size_t k = 0; k < paths.size(); ++k) {
          auto& p = paths[(k + static_cast<size_t>(round)) % paths.size()];
          auto plan = echo_plan(p.target, proto);
          plan.warmup = 2 * opts.in_flight;
          plan.total = opts.throughput_calls + plan.warmup;
          plan.in_flight = opts.in_flight;
          auto r = measure(p, std::move(plan));
          p.rounds.push_back(r.secs > 0 ? static_cast<double>(r.us.size()) / r.secs
                                        : 0.0);
          p.loaded_us.insert(p.loaded_us.end(), r.us.begin(), r.us.end());
          p.timed_calls += plan.total;
        }
      double local_rate = 0;
      for (auto& p : paths) {
        auto best = *std::max_element(p.rounds.begin(), p.rounds.end());
        json rounds = json::array();
        for (auto x : p.rounds)
          rounds.push_back(std::round(x));
        json line{{"workload", "cluster"},
                  {"case", std::string{"throughput "} + p.name},
                  {"in_flight", opts.in_flight},
                  {"calls_per_round", opts.throughput_calls},
                  {"rounds", throughput_rounds},
                  {"calls_per_s", std::round(best)},
                  {"calls_per_s_rounds", rounds}};
        line.update(latency_figures(p.loaded_us, "loaded_"));
        line["bench_cpu_us_per_call"]
          = round2(p.parent_cpu_us / static_cast<double>(p.timed_calls));
        line["host_cpu_us_per_call"]
          = p.name == std::string{"local"}
              ? json(nullptr)
              : json(round2(p.host_cpu_us / static_cast<double>(p.timed_calls)));
        line["failed"] = p.failed;
        if (p.failed > 0)
          line["first_error"] = p.first_error;
        if (p.name == std::string{"local"}) {
          local_rate = best;
        } else {
          line["ratio"] = ratio(best, local_rate);
          line["ratio_of"] = "remote/local calls_per_s";
        }
        print_line(line);
        ok &= p.failed == 0;
      }
      rt.shutdown();
    }
    auto how = host.stop();
    if (how != "exited 0") {
      std::fprintf(stderr, "troupe-bench: cluster host node: %s\n", how.c_str());
      ok = false;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe-bench: cluster workload: %s\n", e.what());
    print_line(json{{"workload", "cluster"}, {"case", "error"}, {"error", e.what()}});
    return false;
  }
  return ok;
}

} // namespace troupe::bench

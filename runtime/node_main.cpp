#include "runtime/node_main.hpp"

#include <signal.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <ostream>
#include <thread>

#include <spdlog/spdlog.h>

#include "runtime/approvals.hpp"
#include "runtime/clock.hpp"
#include "runtime/runtime.hpp"
#include "runtime/swarm.hpp"

namespace troupe {

namespace {

constexpr int exit_bad_input = 2;
constexpr int exit_unreachable = 3;

} // namespace

int run_node(const node_command& cmd, std::ostream& out, node_setup setup) {
  auto mtx = std::make_shared<std::mutex>();
  auto say = [&out, mtx, &cmd](const std::string& line) {
    std::lock_guard<std::mutex> guard{*mtx};
    out << "troupe node " << cmd.name << ": " << line << std::endl;
  };
  node_options opts;
  swarm_definition def;
  bool has_swarm = !cmd.swarm.empty();
  try {
    if (cmd.name.empty())
      throw std::invalid_argument("--name is required");
    auto [host, port] = parse_host_port(cmd.listen);
    opts.name = cmd.name;
    opts.host = host;
    opts.port = port;
    opts.advertise = cmd.advertise;
    if (!opts.advertise.empty())
      parse_host_port(opts.advertise);
    opts.capabilities = cmd.capabilities;
    opts.heartbeat_interval = cmd.heartbeat_interval;
    opts.heartbeat_timeout = cmd.heartbeat_timeout;
    for (const auto& seed : cmd.join)
      parse_host_port(seed);
    if (cmd.tls.enabled())
      validate(cmd.tls);
    if (has_swarm) {
      def = load_swarm(cmd.swarm);
      opts.script_dir = std::filesystem::absolute(cmd.swarm).parent_path();
    }
  } catch (const std::exception& ex) {
    out << "error: " << ex.what() << std::endl;
    return exit_bad_input;
  }
  // SIGINT and SIGTERM are taken by sigwait below, in this thread only: every
  // thread the runtime starts inherits the blocked mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  runtime_config cfg;
  if (has_swarm)
    configure(cfg, def);
  cfg.tls = cmd.tls;
  cfg.trace_path = cmd.trace_path;
  std::unique_ptr<runtime> rt;
  try {
    cfg.model_override = model_override_from_env();
    rt = std::make_unique<runtime>(cfg);
    if (has_swarm) {
      register_tools(*rt, def);
      auto swarm = instantiate(*rt, def);
      for (const auto& [name, agent] : swarm.agents)
        rt->host(name, agent);
      for (const auto& [name, team] : swarm.teams)
        rt->host(name, team);
    }
    if (setup)
      setup(*rt);
  } catch (const std::exception& ex) {
    out << "error: " << ex.what() << std::endl;
    return exit_bad_input;
  }
  uint16_t bound = 0;
  try {
    bound = rt->listen(opts);
  } catch (const std::invalid_argument& ex) {
    out << "error: " << ex.what() << std::endl;
    return exit_bad_input;
  } catch (const std::exception& ex) {
    out << "error: " << ex.what() << std::endl;
    return exit_unreachable;
  }
  // Tests and scripts read the bound port from this line.
  say("listening on " + opts.host + ":" + std::to_string(bound)
      + (cmd.tls.enabled() ? " (TLS)" : ""));
  rt->on_cluster_event([say](cluster_event ev) {
    say(ev.node + " " + to_string(ev.kind)
        + (ev.detail.empty() ? "" : ": " + ev.detail));
  });
  if (!cmd.join.empty()) {
    auto deadline = std::chrono::steady_clock::now() + cmd.join_timeout;
    std::string joined, last_error;
    while (joined.empty()) {
      for (const auto& seed : cmd.join) {
        try {
          auto [host, port] = parse_host_port(seed);
          joined = rt->connect(host, port);
          break;
        } catch (const std::exception& ex) {
          last_error = ex.what();
        }
      }
      if (!joined.empty() || std::chrono::steady_clock::now() >= deadline)
        break;
      // A seed that is not up yet: try again shortly (this is the main
      // thread, not an actor).
      std::this_thread::sleep_for(std::chrono::milliseconds{500});
    }
    if (joined.empty()) {
      out << "error: cannot join the cluster: " << last_error << std::endl;
      rt->shutdown();
      return exit_unreachable;
    }
    say("joined the cluster through " + joined + " (members: "
        + member_names(rt->members()) + ")");
  }
  int sig = 0;
  sigwait(&stop_signals, &sig);
  say(std::string{"stopping ("} + (sig == SIGINT ? "SIGINT" : "SIGTERM")
      + "): leaving the cluster");
  rt->shutdown();
  return 0;
}

} // namespace troupe

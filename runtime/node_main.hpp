#pragma once

// `troupe node`: a process that hosts agents and tools for a cluster. The CLI
// calls run_node; a program that links troupe can call it too, after
// registering tools of its own in C++ (the `setup` callback), and so serve
// them to the cluster with the same flags and behaviour.

#include <chrono>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "runtime/cluster.hpp"

namespace troupe {

class runtime;

/// What `troupe node` was asked to do.
struct node_command {
  std::string name;
  /// HOST:PORT to listen on.
  std::string listen = "0.0.0.0:4242";
  /// HOST:PORT peers dial (default: derived from `listen`).
  std::string advertise;
  /// Seeds to join through, tried in order; none = start a new cluster.
  std::vector<std::string> join;
  /// How long to keep trying the seeds (a seed may start later).
  std::chrono::milliseconds join_timeout{std::chrono::seconds{30}};
  /// A swarm file whose tools (and agents and teams) the node hosts.
  std::string swarm;
  std::vector<std::string> capabilities;
  cluster_tls tls;
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds heartbeat_timeout{3000};
  /// JSONL trace file for what runs on this node with its own tracer.
  std::string trace_path;
};

/// Called once the runtime exists and before the node listens: register
/// tools, spawn and host agents.
using node_setup = std::function<void(runtime&)>;

/// Runs a node until SIGINT or SIGTERM (then leaves the cluster and stops).
/// Status lines ("listening on", joins, failures) go to `out`. Returns the
/// process exit code: 0 after a signal, 2 for bad options or a bad swarm
/// file, 3 when no seed could be joined or the port could not be bound.
int run_node(const node_command& cmd, std::ostream& out,
             node_setup setup = {});

} // namespace troupe

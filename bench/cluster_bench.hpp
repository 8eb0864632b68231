#pragma once

// The "cluster" workload of troupe-bench: what a tool call costs when the
// tool lives on another node process, against the same call in one process,
// side by side in one run.
//
// The bench starts itself again (hidden flag --cluster-serve PORTFILE) as a
// node "bench-host" on 127.0.0.1 that hosts a trivial echo tool (registered
// in C++, run in place: blocking=false, read_only, so no ledger), writes its
// bound port to PORTFILE and serves until its stdin closes or it gets
// SIGTERM. This process joins it as a client (rt.connect), takes the remote
// adapter with rt.tool("echo"), then registers the same tool locally, whose
// rt.tool("echo") is then the local adapter. Both paths are driven by one
// event-based driver actor of this process's runtime.
//
// - latency: one tool_call -> tool_result at a time, in 4 rounds whose order
//   alternates (each with a warm-up); p50, p99, mean, and remote/local.
// - throughput: calls per second with `in_flight` calls pipelined at once,
//   in 3 rounds alternating; the best round of each path, every round's
//   figure, and remote/local.
//
// Every reply is checked (ok, echoed content); the lines count failures. The
// child is stopped (stdin closed, then SIGTERM, then SIGKILL) even on error.

#include <cstdint>
#include <string>

namespace troupe::bench {

/// The sizes of the cluster workload.
struct cluster_bench_options {
  /// Sequential calls per latency path, split over 4 rounds (each round adds
  /// a warm-up of 100).
  int64_t latency_calls = 2000;
  /// Calls per throughput round and path (each adds a warm-up of
  /// 2 x in_flight).
  int64_t throughput_calls = 20000;
  /// Calls in flight at once in the throughput rounds.
  int64_t in_flight = 64;
};

/// Runs the workload (starting and stopping the host node process from the
/// binary at /proc/self/exe) and prints its JSON lines to stdout; false when
/// the host could not be started or joined, or a call failed.
bool run_cluster_bench(const cluster_bench_options& opts);

/// The hidden host mode (--cluster-serve PORTFILE): a node hosting the echo
/// tool until stdin closes or SIGTERM. Returns the exit status.
int run_cluster_serve(const std::string& port_file);

} // namespace troupe::bench

#pragma once

// The "gateway" workload of troupe-bench: what the HTTP model gateway costs
// against the loopback model server of the tests (tests/support/
// model_test_server.hpp), side by side in one run.
//
// - rps: --gateway-requests chat requests through rt.model("openai:bench"),
//   --gateway-in-flight at once from one event-based driver actor, in fresh
//   runtimes whose HTTP client keeps a pool as large as the requests in
//   flight, keeps the default pool, or keeps none (a new connection per
//   request); the same load from a bare Beast client (one io_context on the
//   calling thread, as many connections) is the ceiling of the server and the
//   loopback, to tell whether the gateway's figures are its own or the
//   server's.
// - latency: one request at a time after a warm-up, bare Beast against the
//   gateway (keep-alive), whole replies and streamed ones, in 4 rounds whose
//   order rotates; p50 and p99 of each, and what the gateway adds.
//
// Every reply is checked (status, text); the lines count the failures.

#include <cstdint>

namespace troupe::bench {

/// The sizes of the gateway workload.
struct gateway_bench_options {
  /// Requests per rps measurement (after a warm-up of 2 x in_flight).
  int64_t requests = 4000;
  /// Requests in flight at once in the rps measurements.
  int64_t in_flight = 16;
  /// Sequential requests per latency path, split over 4 rounds (each round
  /// adds a warm-up of 50).
  int64_t latency_calls = 2000;
  /// Sequential streamed requests per latency path, split over 4 rounds
  /// (each round adds a warm-up of 5); 0 leaves the streamed paths out.
  int64_t stream_calls = 1000;
};

/// Runs the workload and prints its JSON lines to stdout; false when a
/// request failed or got an unexpected reply.
bool run_gateway_bench(const gateway_bench_options& opts);

} // namespace troupe::bench

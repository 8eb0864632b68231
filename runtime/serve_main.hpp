#pragma once

// `troupe serve`: the swarms it is given, run as durable runs
// (runtime/run_service.hpp) behind the HTTP API (runtime/http_api.hpp,
// docs/http-api.md). The CLI calls run_serve; a program that links troupe can
// call it too, with hooks that add metrics, dashboard files or tools.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "runtime/http_api.hpp"

namespace troupe {

struct run_service_options;

/// What `troupe serve` was asked to do.
struct serve_command {
  /// The swarm files runs can be submitted to.
  std::vector<std::string> swarms;
  /// HOST:PORT to listen on (port 0 = any free port).
  std::string listen = "127.0.0.1:8080";
  /// The SQLite store of runs.
  std::string store = "troupe-runs.db";
  /// The tokens file (docs/http-api.md); empty = open, loopback only.
  std::string auth;
  /// Runs at once; more wait queued.
  int32_t max_runs = 8;
  /// A run that takes longer ends failed.
  std::chrono::milliseconds run_timeout{std::chrono::minutes{10}};
  /// Limits given on the command line; unset = the auth file's, else the
  /// defaults. One set both here and in the auth file is refused.
  std::optional<size_t> max_body;
  std::optional<double> rate;
  std::optional<double> burst;
  /// JSONL trace file every swarm's runs append to.
  std::string trace_path;
  /// OTLP/HTTP endpoint for traces (kept for the exporter).
  std::string otlp_url;
  /// Resume the store's unfinished runs at start.
  bool resume = true;
  /// Threads serving HTTP. A handler holds its thread while it writes the
  /// store (up to the store's busy_timeout when another process holds the
  /// file's lock), so more than one keeps the routes that read the store or
  /// do not need it served meanwhile.
  size_t http_threads = 4;
};

/// Extra parts for a server a program assembles around run_serve.
struct serve_hooks {
  /// Called with the run service's options before it starts (trace
  /// listeners, metrics, tools). Chain the `configure` and `on_status` it
  /// already holds rather than replacing them: they feed the trace file, the
  /// OTLP exporter and troupe's own metrics.
  std::function<void(run_service_options&)> configure;
  /// GET /metrics; empty = troupe's own metrics (runtime/metrics.hpp) of
  /// every swarm's trace and of the run service.
  http_api::metrics_fn metrics_text;
  /// The dashboard's files.
  http_api::assets_fn assets;
};

/// Serves until SIGINT or SIGTERM, then stops the HTTP server and the
/// runs (those still going stay unfinished in the store and resume at the
/// next start). Prints `serve: listening on http://HOST:PORT` to `log` once
/// it listens (scripts and tests read the port from it) and errors as
/// `error: ...`. Returns the process exit code: 0 after a signal, 2 for bad
/// options, a bad swarm, auth or store file, 3 when the address cannot be
/// bound.
int run_serve(const serve_command& cmd, std::ostream& log,
              serve_hooks hooks = {});

} // namespace troupe

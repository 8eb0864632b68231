#include "runtime/serve_main.hpp"

#include <signal.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <ostream>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "messages/json_value.hpp"
#include "runtime/approvals.hpp"
#include "runtime/dashboard.hpp"
#include "runtime/metrics.hpp"
#include "runtime/otlp_exporter.hpp"
#include "runtime/run_service.hpp"
#include "runtime/runtime.hpp"

namespace troupe {

namespace {

constexpr int exit_bad_input = 2;
constexpr int exit_unreachable = 3;

/// One JSONL trace file shared by every swarm's runtime: each record is
/// written whole under a mutex, so records of different runtimes never
/// interleave mid-line (separate ofstreams on one file could).
class shared_trace_file {
public:
  explicit shared_trace_file(const std::string& path)
    : out_(path, std::ios::app | std::ios::binary) {
    if (!out_)
      throw std::invalid_argument(path + ": cannot open the trace file: "
                                  + std::strerror(errno));
  }

  void write(const json& rec) {
    // The tracer's own files hold finished spans and events; listeners also
    // see span starts, which are left out here the same way.
    if (rec.is_object() && rec.contains("type") && rec["type"] == "span_start")
      return;
    auto line = safe_dump(rec);
    std::lock_guard<std::mutex> guard{mtx_};
    out_ << line << '\n';
    out_.flush();
  }

private:
  std::mutex mtx_;
  std::ofstream out_;
};

/// Refuses a limit set both on the command line and in the auth file: which
/// one would win is a guess nobody should have to make.
template <class T, class U>
void one_source(const std::optional<T>& flag, const std::optional<U>& file,
                const char* flag_name, const char* key,
                const std::string& auth_path) {
  if (flag && file)
    throw std::invalid_argument(std::string{flag_name} + " and " + auth_path
                                + " (limits." + key
                                + ") both set this limit: keep one");
}

} // namespace

int run_serve(const serve_command& cmd, std::ostream& log, serve_hooks hooks) {
  http_api_options api_opts;
  run_service_options svc_opts;
  std::shared_ptr<shared_trace_file> trace;
  try {
    if (cmd.swarms.empty())
      throw std::invalid_argument("give at least one swarm file to serve");
    auto [host, port] = parse_host_port(cmd.listen);
    api_opts.host = host;
    api_opts.port = port;
    if (cmd.store.empty())
      throw std::invalid_argument("--store: the store file must be named");
    if (cmd.max_runs < 1)
      throw std::invalid_argument("--max-runs must be at least 1, got "
                                  + std::to_string(cmd.max_runs));
    if (cmd.run_timeout.count() < 1)
      throw std::invalid_argument("--run-timeout must be positive");
    if (cmd.http_threads < 1 || cmd.http_threads > 64)
      throw std::invalid_argument("--http-threads must be between 1 and 64, "
                                  "got "
                                  + std::to_string(cmd.http_threads));
    api_opts.auth_file = cmd.auth;
    if (!cmd.auth.empty()) {
      auto cfg = auth_config::load(cmd.auth);
      one_source(cmd.max_body, cfg.limits.max_body_bytes, "--max-body",
                 "max_body_bytes", cmd.auth);
      one_source(cmd.rate, cfg.limits.requests_per_second, "--rate",
                 "requests_per_second", cmd.auth);
      one_source(cmd.burst, cfg.limits.burst, "--burst", "burst", cmd.auth);
    }
    if (cmd.max_body)
      api_opts.max_body_bytes = *cmd.max_body;
    if (cmd.rate)
      api_opts.requests_per_second = *cmd.rate;
    if (cmd.burst)
      api_opts.burst = *cmd.burst;
    api_opts.threads = cmd.http_threads;
    if (!cmd.trace_path.empty())
      trace = std::make_shared<shared_trace_file>(cmd.trace_path);
  } catch (const std::exception& ex) {
    log << "error: " << ex.what() << std::endl;
    return exit_bad_input;
  }
  std::shared_ptr<otlp_exporter> otlp;
  if (!cmd.otlp_url.empty()) {
    try {
      otlp_options oo;
      oo.endpoint = cmd.otlp_url;
      otlp = std::make_shared<otlp_exporter>(oo);
    } catch (const std::exception& ex) {
      log << "error: --otlp: " << ex.what() << std::endl;
      return exit_bad_input;
    }
  }
  // The dashboard unless the program brings its own files.
  if (!hooks.assets)
    hooks.assets = [](const std::string& path) -> std::optional<asset> {
      auto f = dashboard_file(path);
      if (!f)
        return std::nullopt;
      return asset{f->content_type, f->body};
    };
  svc_opts.store.path = cmd.store;
  svc_opts.max_concurrent_runs = cmd.max_runs;
  svc_opts.run_timeout = cmd.run_timeout;
  // Unfinished runs resume once the server listens: a server that cannot
  // bind its port should not start (and then abandon) old runs.
  svc_opts.resume_on_start = false;
  // GET /metrics counts what every swarm's trace says and what the run
  // service reports, unless the program brings its own metrics.
  std::shared_ptr<metrics> counted;
  if (!hooks.metrics_text) {
    counted = std::make_shared<metrics>();
    svc_opts.on_status = [counted](const stored_run& run,
                                   const std::string& from) {
      counted->run_changed(run, from);
    };
  }
  svc_opts.configure = [trace, otlp, counted](runtime_config& cfg,
                                              const swarm_definition&) {
    if (trace)
      cfg.trace_listeners.push_back(
        [trace](const json& rec) { trace->write(rec); });
    if (otlp)
      cfg.trace_listeners.push_back(otlp->listener());
    if (counted)
      cfg.trace_listeners.push_back(counted->listener());
  };
  if (hooks.configure)
    hooks.configure(svc_opts);

  // SIGINT and SIGTERM are taken by sigwait below, in this thread only: every
  // thread started from here on inherits the blocked mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  std::unique_ptr<run_service> svc;
  try {
    svc = std::make_unique<run_service>(cmd.swarms, svc_opts);
  } catch (const std::exception& ex) {
    log << "error: " << ex.what() << std::endl;
    return exit_bad_input;
  }
  if (counted) {
    // The queue is sampled when scraped; the service outlives the server.
    auto* service = svc.get();
    hooks.metrics_text = [counted, service] {
      counted->set_queue(service->queued(), service->running());
      return counted->render();
    };
  }
  std::unique_ptr<http_api> api;
  uint16_t bound = 0;
  try {
    api = std::make_unique<http_api>(*svc, api_opts, hooks.metrics_text,
                                     hooks.assets);
    bound = api->start();
  } catch (const std::invalid_argument& ex) {
    log << "error: " << ex.what() << std::endl;
    svc->shutdown();
    return exit_bad_input;
  } catch (const std::exception& ex) {
    log << "error: " << ex.what() << std::endl;
    svc->shutdown();
    return exit_unreachable;
  }
  auto url_host = api_opts.host.find(':') != std::string::npos
                    ? "[" + api_opts.host + "]"
                    : api_opts.host;
  // Tests and scripts read the bound port from this line.
  log << "serve: listening on http://" << url_host << ":" << bound
      << std::endl;
  if (cmd.resume) {
    try {
      auto resumed = svc->resume_unfinished();
      if (!resumed.empty()) {
        log << "serve: resumed " << resumed.size() << " unfinished run"
            << (resumed.size() == 1 ? "" : "s") << ":";
        for (const auto& id : resumed)
          log << " " << id;
        log << std::endl;
      }
    } catch (const std::exception& ex) {
      // The server still serves what the store holds; the runs stay
      // unfinished for the next start.
      log << "error: resuming unfinished runs failed: " << ex.what()
          << std::endl;
    }
  }
  int sig = 0;
  sigwait(&stop_signals, &sig);
  log << "serve: stopping (" << (sig == SIGINT ? "SIGINT" : "SIGTERM")
      << "); runs still going resume at the next start" << std::endl;
  api->stop();
  svc->shutdown();
  // What the runs traced last goes out before the process does.
  if (otlp)
    otlp->stop();
  return 0;
}

} // namespace troupe

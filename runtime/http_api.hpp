#pragma once

// The HTTP API of `troupe serve` (docs/http-api.md): durable runs of a
// run_service offered over HTTP/1.1 on Boost.Beast, with bearer-token roles,
// body and rate limits, JSON error bodies and server-sent events.
//
//   troupe::run_service svc({"examples/support/support.swarm.json"},
//                           {{"runs.db"}});
//   troupe::http_api api{svc, {"127.0.0.1", 8080, "auth.json"}};
//   uint16_t port = api.start();          // serves until stop()
//
// Design:
// - The server owns its io_context and threads. One `session` per connection
//   (shared_from_this, on its own strand) reads a request header, decides
//   what it can from the header alone (route, method, rate limit, token and
//   role, Content-Type, Content-Length against the body limit), then reads
//   the body under Beast's body_limit, answers, and reads the next request
//   (keep-alive), with `expires_after` before every operation, like Beast's
//   example/http/server/async. An answer refused from the header alone
//   closes the connection, so an unread body is never taken for a request.
// - Handlers call run_service directly. Its methods block briefly on SQLite
//   (microseconds to milliseconds), which holds that I/O thread meanwhile:
//   accepted, because the alternative (a hop to another pool and back) costs
//   more than the disk read it avoids. With `threads` above 1 a handler
//   that waits holds only its own thread: while one waits to write the store
//   (another process holding the file's lock, up to the store's
//   busy_timeout), the routes that only read it (the store reads through a
//   connection of its own, which WAL lets go on), those that do not touch it
//   (/healthz, /metrics, the dashboard's files) and open event streams'
//   writes go on; other writes wait their turn. `troupe serve` runs 4.
// - An event stream subscribes to the run's events (run_service::subscribe).
//   The callback runs on the store's thread and only posts each event to the
//   session's strand, where frames queue and are written one at a time, so a
//   slow client never holds the store or another client. The queue is bounded:
//   past `sse_queue_limit` frames the stream ends after what is queued, and
//   the client resumes from its Last-Event-ID, losing nothing.
// - stop() closes the acceptor and every connection (event streams too, which
//   unsubscribe), lets the aborted operations finish and joins the threads.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace troupe {

class run_service;

/// How the HTTP API listens and what it allows.
struct http_api_options {
  /// An IP address, or "localhost".
  std::string host = "127.0.0.1";
  /// 0 = any free port (start() returns the one bound).
  uint16_t port = 8080;
  /// The tokens file (see auth_config); empty = every route open, which is
  /// allowed on a loopback host only.
  std::string auth_file;
  /// Largest request body; larger is 413. The auth file's "limits" override
  /// this and the two below.
  size_t max_body_bytes = 1 << 20;
  /// Token bucket per token name (per client address without a token).
  double requests_per_second = 50;
  double burst = 100;
  /// Threads running the server's io_context.
  size_t threads = 1;
  /// A connection silent this long (no request, or a client not reading a
  /// response) is closed.
  std::chrono::seconds idle_timeout{60};
  /// Connections open at once; more are answered 503 and closed.
  size_t max_connections = 1024;
  /// An event stream without an event this long gets a `: keep-alive`
  /// comment line.
  std::chrono::milliseconds keep_alive_interval{std::chrono::seconds{15}};
  /// Events queued for one stream's client before the stream is ended.
  size_t sse_queue_limit = 4096;
};

/// A file of the dashboard, served for GET / and GET /assets/...
struct asset {
  std::string content_type;
  std::string body;
};

/// One bearer token and what it may do.
struct auth_token {
  /// Who it is: rate limits are kept per name; decisions and cancels are
  /// recorded as made by it.
  std::string name;
  std::string token;
  /// Among "viewer", "operator", "approver".
  std::vector<std::string> roles;

  /// Whether it has `role` ("viewer" is implied by the others).
  bool has_role(const std::string& role) const;
};

/// Limits an auth file sets; unset ones leave the options as they are.
struct auth_limits {
  std::optional<size_t> max_body_bytes;
  std::optional<double> requests_per_second;
  std::optional<double> burst;
};

/// The auth file: {"tokens": [{"name", "token", "roles"}...], "limits":
/// {"max_body_bytes", "requests_per_second", "burst"}}.
struct auth_config {
  std::vector<auth_token> tokens;
  auth_limits limits;

  /// Reads and validates a file. Throws std::invalid_argument naming the
  /// file and the problem: unreadable, not JSON, an unknown key, a missing
  /// or empty name, a token shorter than 16 characters (or with spaces or
  /// control characters), a token or name used twice, a role not among
  /// viewer/operator/approver, a limit out of range. Token values are never
  /// put in messages.
  static auth_config load(const std::string& path);

  /// The same from text; `source` names it in messages.
  static auth_config parse(const std::string& text, const std::string& source);

  /// The token whose value is `bearer`, or null (compares in constant time).
  const auth_token* find(const std::string& bearer) const;
};

/// The HTTP API server.
class http_api {
public:
  /// Returns the Prometheus text for GET /metrics (404 when empty).
  using metrics_fn = std::function<std::string()>;
  /// Returns the dashboard file for a path ("/" or "/assets/..."), or
  /// nothing (404).
  using assets_fn =
    std::function<std::optional<asset>(const std::string& path)>;

  /// Validates the options and loads the auth file (throws
  /// std::invalid_argument naming what is wrong). Does not listen yet.
  http_api(run_service& svc, http_api_options opts, metrics_fn metrics_text = {},
           assets_fn assets = {});

  http_api(const http_api&) = delete;
  http_api& operator=(const http_api&) = delete;

  /// Calls stop().
  ~http_api();

  /// Binds, listens and starts the threads; returns the bound port. Throws
  /// std::invalid_argument for a host that is not an IP address or
  /// "localhost", or that is not loopback while no auth file is given;
  /// std::runtime_error naming host:port when it cannot bind; std::logic_error
  /// when started before.
  uint16_t start();

  /// Closes the acceptor and every connection (event streams included),
  /// then joins the threads. Idempotent; not from one of the server's own
  /// handlers.
  void stop();

  /// The options in force (the auth file's limits applied).
  const http_api_options& options() const noexcept;

  /// Connections open now.
  size_t connections() const;

  /// Waits until at most `at_most` connections are open (a closed one counts
  /// once the server has seen it close); false when `limit` passes first.
  bool wait_connections(size_t at_most, std::chrono::milliseconds limit) const;

  struct impl;

private:
  std::shared_ptr<impl> impl_;
};

} // namespace troupe

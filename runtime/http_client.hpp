#pragma once

// An asynchronous HTTP/1.1 client on Boost.Beast for the runtime's I/O threads.
//
// Every request completes exactly once, on an I/O thread, through a callback
// taking an http_response; failures are values in `http_response::error`
// (naming host:port and the step that failed), never exceptions. Actors wrap a
// request so that its completion reaches them as a message: no actor thread
// ever waits on a socket.
//
// Design:
// - One `exchange` (a shared_from_this session) per request, stepping through
//   on_resolve, on_connect, on_handshake, on_write, on_read_header and
//   on_read, with `expires_after` before every socket operation, like Beast's
//   example/http/client/async/http_client_async.cpp. Each exchange runs on the
//   strand of the connection it uses, so a socket is only touched by one
//   thread at a time.
// - Connections are pooled per (scheme, host, port) while both sides keep
//   them alive; at most `max_idle_per_host` idle ones are kept. A reused idle
//   connection that fails before any response byte arrives is the stale
//   keep-alive race (the server closed it while idle): the request is retried
//   once on a fresh connection.
// - stop() completes everything in flight with a "client stopped" error and
//   closes the pooled sockets; the state the sessions share outlives the
//   client, so a completion racing the destructor is safe.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "runtime/sse_parser.hpp"

namespace boost::asio {
class io_context;
} // namespace boost::asio

namespace troupe {

class io_pool;

/// Header fields as sent or received, in order; names compare case-insensitively.
using http_fields = std::vector<std::pair<std::string, std::string>>;

/// One HTTP request.
struct http_request {
  /// The method, e.g. "GET" or "POST".
  std::string method = "GET";
  /// `http://host[:port]/path?query` or `https://...`.
  std::string url;
  /// Extra header fields; Host, Content-Length and Connection are set by the
  /// client. These are never logged (they carry API keys).
  http_fields headers;
  /// The request body (empty for none).
  std::string body;
  /// Bound on resolving and connecting (also capped by total_timeout).
  std::chrono::milliseconds connect_timeout{std::chrono::seconds{10}};
  /// Bound on the whole exchange, from request() to the last body byte.
  std::chrono::milliseconds total_timeout{std::chrono::seconds{120}};
  /// Deliver a 2xx body as server-sent events through the event callback
  /// instead of collecting it in http_response::body.
  bool stream = false;
};

/// The outcome of one request.
struct http_response {
  /// The status code, 0 when no response header arrived.
  int status = 0;
  /// The response header fields.
  http_fields headers;
  /// The body (for a streamed 2xx response: empty, the events went out).
  std::string body;
  /// Empty on success; otherwise what failed, naming host:port.
  std::string error;
  /// Connection attempts made: 2 when a stale pooled connection was retried.
  int attempts = 0;
  /// The failure is not worth another attempt: the client was stopped, or
  /// the URL or the TLS settings are bad.
  bool permanent = false;

  /// True when the exchange completed (whatever the status).
  bool ok() const noexcept {
    return error.empty();
  }

  /// The first header field named `name` (case-insensitive), if any.
  std::optional<std::string> header(const std::string& name) const;
};

/// Settings shared by every request of one client.
struct http_client_options {
  /// Idle keep-alive connections kept per (scheme, host, port): as many as
  /// requests run at once to one host, or the excess ones reconnect.
  size_t max_idle_per_host = 32;
  /// A PEM file of extra trusted CAs, added to the system store.
  std::string ca_file;
  /// Verify the server's certificate chain and host name (HTTPS).
  bool verify_peer = true;
  /// Largest response body accepted, in bytes.
  size_t body_limit = 64 * 1024 * 1024;
};

namespace detail {
struct http_client_core;
} // namespace detail

/// An HTTP/1.1 client with per-host keep-alive pools, TLS, timeouts and
/// server-sent events, whose completions run on I/O threads.
class http_client {
public:
  /// Called once per request with its outcome.
  using completion = std::function<void(http_response)>;

  /// Called per server-sent event of a streamed request, before completion.
  using event_callback = std::function<void(sse_event)>;

  /// A client whose sockets run on `pool`'s threads.
  explicit http_client(io_pool& pool, http_client_options opts = {});

  /// A client whose sockets run on `ctx` (which someone else runs).
  explicit http_client(boost::asio::io_context& ctx,
                       http_client_options opts = {});

  http_client(const http_client&) = delete;
  http_client& operator=(const http_client&) = delete;

  /// Calls stop(). Destroy the client before the io_context it runs on
  /// (for the runtime's pool: before the runtime).
  ~http_client();

  /// Starts `req`; `done` is called exactly once on an I/O thread.
  void request(http_request req, completion done);

  /// Starts a streamed request: each server-sent event of a 2xx body goes
  /// to `on_event` (on an I/O thread, in order), then `done` is called.
  void request(http_request req, event_callback on_event, completion done);

  /// Completes every request in flight with a "client stopped" error, closes
  /// pooled connections and refuses new requests. Does not wait; safe from
  /// any thread, including an I/O thread.
  void stop();

  /// Idle pooled connections right now (for tests and metrics).
  size_t idle_connections() const;

private:
  std::shared_ptr<detail::http_client_core> core_;
};

} // namespace troupe

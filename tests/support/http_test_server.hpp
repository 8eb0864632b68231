#pragma once

// A scriptable HTTP/1.1 server on 127.0.0.1 (an ephemeral port) for tests: a
// handler maps each request to an action (a response, a stream of chunks, a
// delay, a reset, malformed bytes, silence). It runs on its own thread and
// io_context, and counts the connections it accepted and the requests it read.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace troupe::test {

/// A request as the server read it.
struct test_http_request {
  std::string method;
  std::string target;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  /// 1 for the first connection accepted, 2 for the next, ...
  size_t connection = 0;
  /// 1 for the first request on this connection, 2 for the next, ...
  size_t sequence = 0;

  /// The first header named `name` (case-insensitive), or "".
  std::string header(const std::string& name) const;
};

/// What the server does with one request.
struct test_http_action {
  enum class kind {
    respond,   ///< a complete response with Content-Length
    stream,    ///< a chunked response written one chunk at a time
    reset,     ///< close the connection without a response
    malformed, ///< write `body` verbatim, then close
    hang,      ///< never answer; the socket stays open until stop()
  };
  kind what = kind::respond;
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  /// stream: the chunks, each its own write.
  std::vector<std::string> chunks;
  /// stream: close the connection after the chunks, without the last chunk.
  bool cut = false;
  /// Answer with `Connection: close` and close after the response.
  bool close = false;
  /// Keep-alive headers, but close the socket silently after the response
  /// (the stale keep-alive connection case).
  bool close_silently = false;
  /// Wait this long (a timer) before acting.
  std::chrono::milliseconds delay{0};
  /// stream: wait this long (a timer) before each chunk after the first.
  std::chrono::milliseconds chunk_delay{0};

  /// A response with `status` and `body`.
  static test_http_action reply(int status, std::string body);
  /// An SSE stream (text/event-stream) of `chunks`.
  static test_http_action sse(std::vector<std::string> chunks, bool cut = false);
  /// Close without a response.
  static test_http_action reset_connection();
  /// Write `bytes` verbatim and close.
  static test_http_action raw(std::string bytes);
  /// Never answer.
  static test_http_action never();
};

/// Maps a request to what to do; called on the server's thread.
using test_http_handler =
  std::function<test_http_action(const test_http_request&)>;

/// The server; listens from construction to stop() or destruction.
class http_test_server {
public:
  explicit http_test_server(test_http_handler handler);
  ~http_test_server();

  http_test_server(const http_test_server&) = delete;
  http_test_server& operator=(const http_test_server&) = delete;

  /// The port it listens on.
  uint16_t port() const noexcept;

  /// `http://127.0.0.1:PORT` + `path`.
  std::string url(const std::string& path = "/") const;

  /// Connections accepted so far.
  size_t connections() const noexcept;

  /// Requests read so far.
  size_t requests() const noexcept;

  /// Closes the listener and every connection, and joins the thread.
  void stop();

  struct impl;

private:
  std::shared_ptr<impl> impl_;
};

} // namespace troupe::test

#pragma once

// A small blocking HTTP/1.1 client for tests of troupe's HTTP API: one
// request at a time on a fresh loopback connection, every step bounded by a
// deadline (its own io_context run for at most the time left), and a reader
// of server-sent event streams that hands over one frame at a time.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace troupe::test {

/// A response as read.
struct api_response {
  /// 0 when no response arrived (see error).
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  /// What failed (connect, write, read, timeout), empty when a response came.
  std::string error;

  /// The first header named `name` (case-insensitive), or "".
  std::string header(const std::string& name) const;

  /// The body parsed as JSON (a null on malformed JSON).
  nlohmann::json json() const;
};

/// One request to 127.0.0.1:port.
struct api_request {
  std::string method = "GET";
  std::string target = "/";
  std::vector<std::pair<std::string, std::string>> headers;
  /// Sent as is, with Content-Length.
  std::string body;
  /// Sets Authorization: Bearer TOKEN when not empty.
  std::string token;
  /// Sets Content-Type (when body is not empty): application/json unless
  /// given here or in `headers`.
  std::string content_type;
};

/// Sends `req` and reads the response within `limit`.
api_response api_call(uint16_t port, const api_request& req,
                      std::chrono::milliseconds limit = std::chrono::seconds{15});

/// GET /v1/runs/{run_id}/events with `token` (add Last-Event-ID to its
/// headers to resume).
api_request events_request(const std::string& run_id,
                           const std::string& token = "");

/// GET `target` with `token`.
api_response api_get(uint16_t port, const std::string& target,
                     const std::string& token = "");

/// POST `body` (JSON) to `target` with `token`.
api_response api_post(uint16_t port, const std::string& target,
                      const nlohmann::json& body, const std::string& token = "");

/// Sends raw bytes on a fresh connection and reads what comes back until the
/// server closes or `limit` passes (for malformed requests).
std::string api_raw(uint16_t port, const std::string& bytes,
                    std::chrono::milliseconds limit = std::chrono::seconds{10});

/// One block of an event stream: an event (id, event, data) or a comment.
struct sse_frame {
  std::string id;
  std::string event;
  std::string data;
  /// The comment's text (": keep-alive" -> "keep-alive") when it is one.
  std::string comment;

  bool is_comment() const {
    return !comment.empty() && data.empty() && event.empty();
  }
};

/// An open event stream (GET .../events).
class sse_stream {
public:
  /// Connects, sends the request and reads the response header; check
  /// status() (the body of a non-200 answer is in error_body()).
  sse_stream(uint16_t port, const api_request& req,
             std::chrono::milliseconds limit = std::chrono::seconds{15});
  ~sse_stream();

  sse_stream(const sse_stream&) = delete;
  sse_stream& operator=(const sse_stream&) = delete;

  int status() const;
  std::string header(const std::string& name) const;
  const std::string& error_body() const;

  /// The next frame, or nothing when the stream ended (ended() is then true)
  /// or `limit` passed.
  std::optional<sse_frame> next(std::chrono::milliseconds limit
                                = std::chrono::seconds{30});

  /// Events (comments skipped) until the stream ends or `limit` passes.
  std::vector<sse_frame> rest(std::chrono::milliseconds limit
                              = std::chrono::seconds{60});

  /// The server ended the stream (its last chunk arrived or it closed).
  bool ended() const;

  /// Closes the connection from this side.
  void close();

  struct impl;

private:
  std::unique_ptr<impl> impl_;
};

} // namespace troupe::test

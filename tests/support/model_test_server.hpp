#pragma once

// A loopback model provider for tests: an HTTP server on 127.0.0.1 that speaks
// OpenAI Chat Completions (any POST path ending in /chat/completions) and
// Anthropic Messages (any POST path ending in /messages), streamed or not,
// from replies a test scripts, and injects faults on demand.
//
// Design:
// - It is built on http_test_server: each request is turned into one
//   test_http_action (a response, an SSE stream, a reset, raw bytes, silence),
//   so the socket handling is the one the HTTP client tests already trust.
// - Replies and faults share one FIFO queue that the test fills from its own
//   thread while the handler drains it on the server thread (a mutex guards
//   it). When the queue holds no reply, an optional responder computes one
//   from the request; with neither, the request gets 500 "no scripted reply",
//   so a test that scripted too little fails loudly instead of hanging.
// - slow() and cut_stream() are modifiers, not answers: they attach to
//   whatever answers the same request (the next queued reply or fault, or the
//   responder's reply), so "the next request gets a reply, but slowly" is
//   push(slow(200ms)) then push(reply). Every other fault is an answer.
// - Requests rejected before the queue is consulted (a wrong API key, an
//   unknown path, a body that is not JSON) consume nothing from it.
// - Every request is recorded with its arrival times, so a test can check
//   that a client waited as long as a Retry-After told it to, and what the
//   server did with it. wait_for_requests() lets a test synchronise on
//   arrivals without sleeping.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "messages/json_value.hpp"
#include "support/http_test_server.hpp"

namespace troupe::test {

/// One tool call in a scripted reply.
struct model_reply_call {
  /// The call id; empty: the server makes one ("call_…" or "toolu_…").
  std::string id;
  /// The tool name.
  std::string name;
  /// The arguments, sent as their compact JSON text.
  json arguments = json::object();
  /// When set, sent verbatim instead of `arguments` (malformed arguments).
  /// Anthropic's non-streamed `input` must be an object: raw text that does
  /// not parse as one is sent there as a JSON string.
  std::optional<std::string> raw_arguments;

  /// A call of `name` with `arguments`.
  static model_reply_call make(std::string name, json arguments,
                               std::string id = {});
  /// A call of `name` whose arguments text is `raw` verbatim.
  static model_reply_call raw(std::string name, std::string raw,
                              std::string id = {});

  /// The arguments text as sent.
  std::string arguments_text() const;
};

/// A scripted assistant reply, rendered in the shape of the API asked.
struct model_reply {
  /// The assistant text; may be empty.
  std::string text;
  /// Tool calls, in order, after the text.
  std::vector<model_reply_call> tool_calls;
  /// In either vocabulary ("stop", "tool_calls", "length" or "end_turn",
  /// "tool_use", "max_tokens"); mapped to the API asked, other words pass
  /// through verbatim. Empty: "tool_calls" when there are calls, else "stop".
  std::string finish_reason;
  /// Usage reported.
  int64_t input_tokens = 10;
  /// Usage reported.
  int64_t output_tokens = 5;
  /// The model named in the reply; empty: the request's "model".
  std::string model;

  /// A reply with text only.
  static model_reply say(std::string text);
  /// A reply with one tool call (and optional text before it).
  static model_reply call(std::string name, json arguments,
                          std::string id = {}, std::string text = {});
};

/// A fault injected on one request; build with the factory functions.
struct model_fault {
  /// What the fault does.
  enum class kind {
    status,     ///< an error status with a provider-shaped error body
    slow,       ///< modifier: delay the answer to the same request
    cut_stream, ///< modifier: cut the reply of the same request mid-way
    malformed,  ///< 200 with a body that is not valid JSON / SSE JSON
    reset,      ///< close the connection without a response
    hang,       ///< never answer (until stop())
  };
  kind what = kind::status;
  /// status: the HTTP status code.
  int code = 500;
  /// status: the error message (empty: one per status).
  std::string message;
  /// status: extra response headers (Retry-After and the like).
  std::vector<std::pair<std::string, std::string>> headers;
  /// slow: how long to wait before answering.
  std::chrono::milliseconds delay{0};
  /// cut_stream: complete SSE events sent before the cut; the first half of
  /// the next event follows, then the connection closes (a non-streamed
  /// reply: 16-byte pieces of its chunked JSON body). Capped so that the end
  /// marker ([DONE], message_stop, the closing brace) is never sent whole.
  size_t after_chunks = 0;
  /// malformed: the body to send verbatim (a stream: as the whole event
  /// stream); empty: a truncated document.
  std::string body;

  /// 429 with `Retry-After: <seconds>` and a rate-limit error body.
  static model_fault rate_limited(std::chrono::seconds retry_after);
  /// 429 with `Retry-After: <HTTP-date>` (IMF-fixdate of `until`).
  static model_fault
  rate_limited_until(std::chrono::system_clock::time_point until);
  /// Any status (e.g. 500, 503, 529, 400) with a provider-shaped error body.
  static model_fault status(int code, std::string message = {});
  /// Delay the answer to the next request by `delay` (modifier).
  static model_fault slow(std::chrono::milliseconds delay);
  /// 200 whose body is not valid JSON (a stream: an event whose data is not).
  static model_fault malformed(std::string body = {});
  /// Cut the next reply after `after_chunks` events (modifier).
  static model_fault cut_stream(size_t after_chunks);
  /// Close the connection without a response.
  static model_fault reset();
  /// Never answer.
  static model_fault hang();

  /// True for slow and cut_stream, which attach to the next answer.
  bool is_modifier() const noexcept;
};

/// What the server did with one request.
enum class model_outcome {
  replied,   ///< a complete 2xx reply (JSON or SSE)
  error,     ///< an error status (fault, 401, 404, 400, no scripted reply)
  malformed, ///< 200 with malformed content
  cut,       ///< a reply cut mid-way
  reset,     ///< connection closed without a response
  hang,      ///< no answer
};

/// "replied", "error", "malformed", "cut", "reset" or "hang".
std::string to_string(model_outcome x);

/// One request as the server saw it, and what it did with it.
struct recorded_model_request {
  /// Arrival (the request fully read), on the steady clock.
  std::chrono::steady_clock::time_point arrived;
  /// Arrival on the system clock, in ms since the epoch.
  int64_t arrived_system_ms = 0;
  std::string method;
  /// The request target, query included.
  std::string path;
  std::vector<std::pair<std::string, std::string>> headers;
  /// The parsed body; null when the body is not JSON (see raw_body).
  json body;
  /// The body bytes as received.
  std::string raw_body;
  /// "openai", "anthropic", or "" for an unknown path.
  std::string api;
  /// The request asked for a stream ("stream": true).
  bool stream = false;
  /// 1 for the first connection the server accepted, 2 for the next, ...
  size_t connection = 0;
  /// 1 for the first request on its connection, 2 for the next, ...
  size_t sequence = 0;
  /// What the server did.
  model_outcome outcome = model_outcome::replied;
  /// The status sent; 0 for reset and hang.
  int status = 0;
  /// The delay added by a slow fault.
  std::chrono::milliseconds delay{0};
  /// A short human description, e.g. "429 rate limited", "cut after 3".
  std::string note;

  /// The first header named `name` (case-insensitive), or "".
  std::string header(const std::string& name) const;
};

/// Computes a reply from the parsed request body and the API asked
/// ("openai" or "anthropic"); runs on the server thread.
using model_responder =
  std::function<model_reply(const json& request_body, const std::string& api)>;

/// Settings of a model_test_server.
struct model_test_server_options {
  /// When set, requests must carry it (OpenAI: `Authorization: Bearer KEY`;
  /// Anthropic: `x-api-key: KEY` and an `anthropic-version` header), else 401.
  std::string api_key;
  /// The model named in replies when the request names none.
  std::string model = "test-model";
  /// Wait this long before each SSE event after the first.
  std::chrono::milliseconds chunk_delay{0};
};

/// A loopback OpenAI / Anthropic lookalike; listens from construction to
/// stop() or destruction.
class model_test_server {
public:
  explicit model_test_server(model_test_server_options opts = {});
  ~model_test_server();

  model_test_server(const model_test_server&) = delete;
  model_test_server& operator=(const model_test_server&) = delete;

  /// `http://127.0.0.1:PORT/v1`, the base URL a provider client is given.
  std::string base_url() const;

  /// `http://127.0.0.1:PORT` + `path`.
  std::string url(const std::string& path) const;

  /// The port it listens on.
  uint16_t port() const noexcept;

  /// Queues a reply for a future request.
  void push(model_reply reply);

  /// Queues a fault for a future request (a modifier: for the same request
  /// as the next queued answer).
  void push(model_fault fault);

  /// Replies computed when the queue holds no reply; replaces any earlier.
  void respond_with(model_responder responder);

  /// Entries still queued (replies and faults).
  size_t queued() const;

  /// A copy of every request received so far, in arrival order.
  std::vector<recorded_model_request> requests() const;

  /// Requests received so far.
  size_t request_count() const;

  /// Connections accepted so far.
  size_t connections() const noexcept;

  /// Waits until at least `n` requests have arrived or `timeout` passed;
  /// true when they have.
  bool wait_for_requests(size_t n, std::chrono::milliseconds timeout) const;

  /// Closes the listener and every connection (ending hangs), and joins the
  /// server thread.
  void stop();

  struct state;

private:
  std::shared_ptr<state> state_;
  // Declared last: destroyed (stopped) first, while state_ still lives.
  http_test_server server_;
};

} // namespace troupe::test

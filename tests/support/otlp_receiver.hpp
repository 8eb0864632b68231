#pragma once

// A small OTLP/HTTP trace receiver for tests, on http_test_server: it records
// every request, answers each with the next scripted action (then with a
// fallback, 200 "{}" unless told otherwise), and lets a test wait for the
// n-th request on a condition variable.

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/http_test_server.hpp"

namespace troupe::test {

/// An OTLP collector stand-in.
class otlp_receiver {
public:
  otlp_receiver();

  otlp_receiver(const otlp_receiver&) = delete;
  otlp_receiver& operator=(const otlp_receiver&) = delete;

  /// The traces endpoint, http://127.0.0.1:PORT/v1/traces.
  std::string endpoint() const;

  /// The next requests are answered with `actions`, in order.
  void script(std::vector<test_http_action> actions);

  /// What requests past the script get.
  void answer_rest(test_http_action action);

  /// Every request so far.
  std::vector<test_http_request> requests() const;

  /// The bodies of the requests so far, parsed (a body that is not JSON
  /// becomes a string holding its text).
  std::vector<nlohmann::json> bodies() const;

  /// Every span of every request so far, in order (events included).
  std::vector<nlohmann::json> spans() const;

  /// Waits until at least `n` requests arrived; false on timeout.
  bool wait_requests(size_t n, std::chrono::milliseconds timeout) const;

  /// The server underneath (connection counts, port).
  http_test_server& server() noexcept {
    return server_;
  }

private:
  test_http_action on_request(const test_http_request& req);

  mutable std::mutex mtx_;
  mutable std::condition_variable arrived_;
  std::deque<test_http_action> script_;
  test_http_action rest_ = test_http_action::reply(200, "{}");
  std::vector<test_http_request> requests_;
  // Last: it calls on_request until it is stopped.
  http_test_server server_;
};

/// The attribute `key` of an OTLP span or event, as its AnyValue; null when
/// there is none.
nlohmann::json otlp_attribute(const nlohmann::json& item, const std::string& key);

} // namespace troupe::test

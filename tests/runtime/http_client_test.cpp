#include "runtime/http_client.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <catch2/catch.hpp>

#include "runtime/io_pool.hpp"
#include "support/http_test_server.hpp"
#include "support/temp_dir.hpp"
#include "support/tls_once_server.hpp"

using namespace std::chrono_literals;
using troupe::http_client;
using troupe::http_request;
using troupe::http_response;
using troupe::io_pool;
using troupe::sse_event;
using troupe::test::http_test_server;
using troupe::test::test_http_action;
using troupe::test::test_http_request;
using troupe::test::tls_once_server;

namespace {

constexpr auto wait_limit = 10s;

/// A request's outcome, to wait on with a finite limit.
struct pending {
  std::shared_ptr<std::promise<http_response>> promise
    = std::make_shared<std::promise<http_response>>();
  std::future<http_response> future = promise->get_future();

  http_client::completion callback() const {
    return [p = promise](http_response r) { p->set_value(std::move(r)); };
  }

  http_response get() {
    REQUIRE(future.wait_for(wait_limit) == std::future_status::ready);
    return future.get();
  }
};

http_response fetch(http_client& client, http_request req) {
  pending p;
  client.request(std::move(req), p.callback());
  return p.get();
}

http_request get(const std::string& url) {
  http_request req;
  req.url = url;
  req.total_timeout = 5s;
  return req;
}

/// Events of a streamed request, collected on the I/O thread.
struct event_log {
  std::mutex mtx;
  std::vector<sse_event> events;

  http_client::event_callback callback() {
    return [this](sse_event ev) {
      std::lock_guard<std::mutex> guard{mtx};
      events.push_back(std::move(ev));
    };
  }
};

/// A port on 127.0.0.1 with nothing listening.
uint16_t closed_port() {
  boost::asio::io_context ctx;
  boost::asio::ip::tcp::acceptor acc{
    ctx, {boost::asio::ip::make_address("127.0.0.1"), 0}};
  auto port = acc.local_endpoint().port();
  acc.close();
  return port;
}

} // namespace

SCENARIO("http client: GET and POST round trips", "[http]") {
  http_test_server server{[](const test_http_request& r) {
    if (r.target == "/status/404")
      return test_http_action::reply(404, "no such thing");
    if (r.target == "/status/500")
      return test_http_action::reply(500, "broken");
    auto a = test_http_action::reply(200, r.method + " " + r.target + " "
                                            + r.body);
    a.headers.emplace_back("X-Echo", r.header("X-Test"));
    a.headers.emplace_back("Content-Type", "text/plain");
    return a;
  }};
  io_pool pool{2};
  http_client client{pool};

  WHEN("a GET with a query and a header is sent") {
    auto req = get(server.url("/hello?x=1"));
    req.headers.emplace_back("X-Test", "abc");
    auto res = fetch(client, req);
    THEN("status, headers and body come back") {
      REQUIRE(res.ok());
      CHECK(res.status == 200);
      CHECK(res.body == "GET /hello?x=1 ");
      CHECK(res.header("x-echo") == std::optional<std::string>{"abc"});
      CHECK(res.header("content-type")
            == std::optional<std::string>{"text/plain"});
      CHECK(res.attempts == 1);
    }
  }
  WHEN("a POST with a body is sent") {
    auto req = get(server.url("/echo"));
    req.method = "POST";
    req.body = R"({"a":1})";
    auto res = fetch(client, req);
    THEN("the server saw the body") {
      REQUIRE(res.ok());
      CHECK(res.body == R"(POST /echo {"a":1})");
    }
  }
  WHEN("the server answers 404 and 500") {
    auto r404 = fetch(client, get(server.url("/status/404")));
    auto r500 = fetch(client, get(server.url("/status/500")));
    THEN("the status codes pass through as successes of the exchange") {
      REQUIRE(r404.ok());
      CHECK(r404.status == 404);
      CHECK(r404.body == "no such thing");
      REQUIRE(r500.ok());
      CHECK(r500.status == 500);
    }
  }
  WHEN("the URL is not http(s)") {
    auto res = fetch(client, get("ftp://example.com/"));
    THEN("the error says so") {
      CHECK_FALSE(res.ok());
      CHECK_THAT(res.error, Catch::Contains("unsupported URL"));
    }
  }
}

SCENARIO("http client: keep-alive connections are reused", "[http]") {
  http_test_server server{
    [](const test_http_request&) { return test_http_action::reply(200, "ok"); }};
  io_pool pool{2};
  http_client client{pool};
  for (int i = 0; i < 5; ++i) {
    auto res = fetch(client, get(server.url("/n")));
    REQUIRE(res.ok());
    CHECK(res.attempts == 1);
  }
  CHECK(server.connections() == 1);
  CHECK(server.requests() == 5);
  CHECK(client.idle_connections() == 1);
}

SCENARIO("http client: Connection: close is honoured", "[http]") {
  http_test_server server{[](const test_http_request&) {
    auto a = test_http_action::reply(200, "bye");
    a.close = true;
    return a;
  }};
  io_pool pool{2};
  http_client client{pool};
  for (int i = 0; i < 4; ++i) {
    auto res = fetch(client, get(server.url("/")));
    REQUIRE(res.ok());
    CHECK(res.body == "bye");
    CHECK(res.attempts == 1);
  }
  CHECK(server.connections() == 4);
  CHECK(client.idle_connections() == 0);
}

SCENARIO("http client: a stale pooled connection is retried once",
         "[http]") {
  GIVEN("a server that silently closes each connection after responding") {
    http_test_server server{[](const test_http_request& r) {
      auto a = test_http_action::reply(200, std::to_string(r.connection));
      a.close_silently = true;
      return a;
    }};
    io_pool pool{2};
    http_client client{pool};
    auto first = fetch(client, get(server.url("/")));
    REQUIRE(first.ok());
    CHECK(first.attempts == 1);
    CHECK(client.idle_connections() == 1);
    WHEN("the next request reuses the closed connection") {
      auto second = fetch(client, get(server.url("/")));
      THEN("it is retried on a new connection and succeeds") {
        REQUIRE(second.ok());
        CHECK(second.attempts == 2);
        CHECK(second.body == "2");
        CHECK(server.connections() == 2);
      }
    }
  }
  GIVEN("a server that resets a fresh connection without answering") {
    http_test_server server{
      [](const test_http_request&) { return test_http_action::reset_connection(); }};
    io_pool pool{2};
    http_client client{pool};
    auto res = fetch(client, get(server.url("/")));
    THEN("there is no retry, and the error names the peer") {
      CHECK_FALSE(res.ok());
      CHECK(res.attempts == 1);
      CHECK_THAT(res.error, Catch::Contains("read 127.0.0.1:"
                                            + std::to_string(server.port())));
      CHECK(server.connections() == 1);
    }
  }
}

SCENARIO("http client: connection failures and timeouts are clear errors",
         "[http]") {
  io_pool pool{2};
  http_client client{pool};
  WHEN("nothing listens on the port") {
    auto port = closed_port();
    auto res = fetch(client, get("http://127.0.0.1:" + std::to_string(port) + "/"));
    THEN("the error names host:port and the connect step") {
      CHECK_FALSE(res.ok());
      CHECK(res.status == 0);
      CHECK_THAT(res.error, Catch::Contains("connect 127.0.0.1:"
                                            + std::to_string(port) + " failed"));
    }
  }
  WHEN("the server never answers") {
    http_test_server server{
      [](const test_http_request&) { return test_http_action::never(); }};
    auto req = get(server.url("/slow"));
    req.total_timeout = 300ms;
    auto res = fetch(client, req);
    THEN("the total timeout ends the request with a timeout error") {
      CHECK_FALSE(res.ok());
      CHECK_THAT(res.error,
                 Catch::Contains("read 127.0.0.1:" + std::to_string(server.port())
                                 + " timed out (total timeout 300 ms)"));
    }
  }
  WHEN("the server answers garbage") {
    http_test_server server{[](const test_http_request&) {
      return test_http_action::raw("HTTP/1.1 abc nonsense\r\n\r\n");
    }};
    auto res = fetch(client, get(server.url("/")));
    THEN("the read fails with an error, not a crash") {
      CHECK_FALSE(res.ok());
      CHECK_THAT(res.error, Catch::Contains("read 127.0.0.1:"));
    }
  }
}

SCENARIO("http client: server-sent events", "[http]") {
  const std::string text = "event: start\ndata: {\"n\":1}\n\n"
                           ": keep-alive comment\r\n\r\n"
                           "id: 7\r\ndata: line one\r\ndata: line two\r\n\r\n"
                           "data: [DONE]\n\n";
  auto split = [](const std::string& s, size_t n) {
    std::vector<std::string> parts;
    for (size_t i = 0; i < s.size(); i += n)
      parts.push_back(s.substr(i, n));
    return parts;
  };
  io_pool pool{2};
  http_client client{pool};
  for (size_t step : {1u, 3u, 7u, 1000u}) {
    DYNAMIC_SECTION("chunks of " << step << " bytes") {
      http_test_server server{[&](const test_http_request&) {
        auto a = test_http_action::sse(split(text, step));
        a.chunk_delay = step < 3 ? 0ms : 1ms;
        return a;
      }};
      auto req = get(server.url("/v1/stream"));
      req.method = "POST";
      req.stream = true;
      event_log log;
      pending p;
      client.request(req, log.callback(), p.callback());
      auto res = p.get();
      REQUIRE(res.ok());
      CHECK(res.status == 200);
      CHECK(res.body.empty());
      std::lock_guard<std::mutex> guard{log.mtx};
      REQUIRE(log.events.size() == 3);
      CHECK(log.events[0].event == "start");
      CHECK(log.events[0].data == "{\"n\":1}");
      CHECK(log.events[1].data == "line one\nline two");
      CHECK(log.events[1].id == "7");
      CHECK(log.events[2].data == "[DONE]");
      CHECK(log.events[2].id == "7");
      CHECK(client.idle_connections() == 1); // back in the pool
    }
  }
  SECTION("a stream cut mid-way") {
    http_test_server server{[&](const test_http_request&) {
      auto a = test_http_action::sse(
        {"data: one\n\n", "data: two\n\nda", "ta: three (never ends)\n"}, true);
      a.chunk_delay = 1ms;
      return a;
    }};
    auto req = get(server.url("/stream"));
    req.stream = true;
    event_log log;
    pending p;
    client.request(req, log.callback(), p.callback());
    auto res = p.get();
    CHECK_FALSE(res.ok());
    CHECK_THAT(res.error, Catch::Contains("read (event stream) 127.0.0.1:"));
    std::lock_guard<std::mutex> guard{log.mtx};
    REQUIRE(log.events.size() == 2);
    CHECK(log.events[0].data == "one");
    CHECK(log.events[1].data == "two");
  }
  SECTION("an error status on a streamed request collects the body") {
    http_test_server server{[&](const test_http_request&) {
      return test_http_action::reply(429, R"({"error":"slow down"})");
    }};
    auto req = get(server.url("/stream"));
    req.stream = true;
    event_log log;
    pending p;
    client.request(req, log.callback(), p.callback());
    auto res = p.get();
    REQUIRE(res.ok());
    CHECK(res.status == 429);
    CHECK(res.body == R"({"error":"slow down"})");
    CHECK(log.events.empty());
  }
}

SCENARIO("http client: 50 parallel requests each complete once", "[http]") {
  http_test_server server{[](const test_http_request& r) {
    return test_http_action::reply(200, r.target);
  }};
  constexpr size_t n = 50;
  std::array<std::atomic<int>, n> calls{};
  std::vector<pending> results(n);
  {
    io_pool pool{2};
    http_client client{pool};
    for (size_t i = 0; i < n; ++i) {
      auto p = results[i].promise;
      client.request(get(server.url("/" + std::to_string(i))),
                     [&calls, i, p](http_response r) {
                       ++calls[i];
                       p->set_value(std::move(r));
                     });
    }
    for (size_t i = 0; i < n; ++i) {
      auto res = results[i].get();
      REQUIRE(res.ok());
      CHECK(res.body == "/" + std::to_string(i));
    }
    // The pool keeps no more than its cap of the 50 connections.
    CHECK(client.idle_connections() <= troupe::http_client_options{}.max_idle_per_host);
  }
  for (auto& c : calls)
    CHECK(c.load() == 1);
}

SCENARIO("http client: stop() completes requests in flight", "[http]") {
  constexpr size_t n = 10;
  auto all_arrived = std::make_shared<std::promise<void>>();
  auto arrived = all_arrived->get_future();
  http_test_server server{[all_arrived, count = size_t{0}](
                            const test_http_request&) mutable {
    if (++count == n)
      all_arrived->set_value();
    return test_http_action::never();
  }};
  std::array<std::atomic<int>, n> calls{};
  std::vector<pending> results(n);
  {
    io_pool pool{2};
    http_client client{pool};
    for (size_t i = 0; i < n; ++i) {
      auto p = results[i].promise;
      client.request(get(server.url("/hang")), [&calls, i, p](http_response r) {
        ++calls[i];
        p->set_value(std::move(r));
      });
    }
    REQUIRE(arrived.wait_for(wait_limit) == std::future_status::ready);
    client.stop();
    for (auto& r : results) {
      auto res = r.get();
      CHECK_FALSE(res.ok());
      CHECK_THAT(res.error, Catch::Contains("client stopped"));
    }
    auto late = fetch(client, get(server.url("/late")));
    CHECK_THAT(late.error, Catch::Contains("client stopped"));
  }
  for (auto& c : calls)
    CHECK(c.load() == 1);
}

SCENARIO("http client: HTTPS with a custom CA and host name verification",
         "[http][tls]") {
  troupe::test::temp_dir dir;
  auto made = troupe::test::make_localhost_certificate(dir.path().string());
  if (!made.error.empty()) {
    WARN("TLS test skipped: " << made.error);
    return;
  }
  const auto& cert = made.cert;
  const auto& key = made.key;
  io_pool pool{2};
  troupe::http_client_options trusting;
  trusting.ca_file = cert;
  // GET /secure from `server` as `host`, with a client set up by `opts`.
  auto get_secure = [&pool](const tls_once_server& server,
                            const std::string& host,
                            const troupe::http_client_options& opts) {
    http_client client{pool, opts};
    return fetch(client, get("https://" + host + ":"
                             + std::to_string(server.port()) + "/secure"));
  };
  WHEN("the client trusts the certificate's CA") {
    tls_once_server server{cert, key, "secure"};
    auto served = server.exchange();
    auto res = get_secure(server, "localhost", trusting);
    THEN("the exchange succeeds over TLS") {
      REQUIRE(res.error == "");
      CHECK(res.status == 200);
      CHECK(res.body == "secure");
      REQUIRE(served.wait_for(wait_limit) == std::future_status::ready);
      auto ex = served.get();
      CHECK(ex.outcome == "served");
      CHECK(ex.host == "localhost:" + std::to_string(server.port()));
    }
  }
  WHEN("the client does not trust it") {
    tls_once_server server{cert, key, "secure"};
    auto served = server.exchange();
    auto res = get_secure(server, "localhost", {});
    THEN("the handshake fails with a clear error") {
      CHECK_FALSE(res.ok());
      CHECK_THAT(res.error, Catch::Contains("TLS handshake localhost:"
                                            + std::to_string(server.port())
                                            + " failed"));
      REQUIRE(served.wait_for(wait_limit) == std::future_status::ready);
    }
  }
  WHEN("the certificate is for another host name") {
    tls_once_server server{cert, key, "secure"};
    auto served = server.exchange();
    auto res = get_secure(server, "127.0.0.1", trusting);
    THEN("host name verification rejects it") {
      CHECK_FALSE(res.ok());
      CHECK_THAT(res.error, Catch::Contains("TLS handshake 127.0.0.1:"));
      REQUIRE(served.wait_for(wait_limit) == std::future_status::ready);
    }
  }
}

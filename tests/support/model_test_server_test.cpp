#include "support/model_test_server.hpp"

#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>

#include "runtime/http_client.hpp"

using namespace std::chrono_literals;
using troupe::http_client;
using troupe::http_fields;
using troupe::http_request;
using troupe::http_response;
using troupe::json;
using troupe::sse_event;
using troupe::test::model_fault;
using troupe::test::model_outcome;
using troupe::test::model_reply;
using troupe::test::model_reply_call;
using troupe::test::model_test_server;
using troupe::test::model_test_server_options;

namespace {

constexpr auto wait_limit = 10s;

/// What one exchange produced: the response and, for a stream, its events.
struct exchange {
  http_response response;
  std::vector<sse_event> events;

  /// The response body parsed (fails the test when it is not JSON).
  json body() const {
    INFO("body: " << response.body);
    REQUIRE(json::accept(response.body));
    return json::parse(response.body);
  }

  /// The data of every event parsed, except a final "[DONE]".
  std::vector<json> chunks() const {
    std::vector<json> out;
    for (const auto& ev : events) {
      if (ev.data == "[DONE]")
        continue;
      INFO("event data: " << ev.data);
      REQUIRE(json::accept(ev.data));
      out.push_back(json::parse(ev.data));
    }
    return out;
  }
};

/// A troupe::http_client on an io_context run by a thread of the test.
class loopback_client {
public:
  loopback_client() : thread_([this] { ctx_.run(); }) {
    client_.emplace(ctx_);
  }

  ~loopback_client() {
    client_->stop();
    work_.reset();
    ctx_.stop();
    thread_.join();
    client_.reset();
  }

  loopback_client(const loopback_client&) = delete;
  loopback_client& operator=(const loopback_client&) = delete;

  /// Sends `req` and waits (with a limit) for its completion.
  exchange send(http_request req) {
    auto done = std::make_shared<std::promise<http_response>>();
    auto future = done->get_future();
    auto log = std::make_shared<event_log>();
    auto complete = [done](http_response r) { done->set_value(std::move(r)); };
    if (req.stream)
      client_->request(std::move(req),
                       [log](sse_event ev) {
                         std::lock_guard<std::mutex> guard{log->mtx};
                         log->events.push_back(std::move(ev));
                       },
                       complete);
    else
      client_->request(std::move(req), complete);
    REQUIRE(future.wait_for(wait_limit) == std::future_status::ready);
    exchange out;
    out.response = future.get();
    std::lock_guard<std::mutex> guard{log->mtx};
    out.events = log->events;
    return out;
  }

  /// POSTs `body` as JSON to `url` (streamed when body says "stream": true).
  exchange post(const std::string& url, const json& body,
                http_fields headers = {}) {
    http_request req;
    req.method = "POST";
    req.url = url;
    req.headers = std::move(headers);
    req.headers.emplace_back("Content-Type", "application/json");
    req.body = body.dump();
    req.total_timeout = 5s;
    req.stream = body.value("stream", false);
    return send(std::move(req));
  }

private:
  struct event_log {
    std::mutex mtx;
    std::vector<sse_event> events;
  };

  boost::asio::io_context ctx_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type>
    work_ = boost::asio::make_work_guard(ctx_);
  std::thread thread_;
  std::optional<http_client> client_;
};

json openai_request(bool stream = false) {
  json req = {{"model", "gpt-test"},
              {"messages", json::array({{{"role", "user"},
                                         {"content", "hello"}}})}};
  if (stream)
    req["stream"] = true;
  return req;
}

json anthropic_request(bool stream = false) {
  json req = {{"model", "claude-test"},
              {"max_tokens", 256},
              {"messages", json::array({{{"role", "user"},
                                         {"content", "hello"}}})}};
  if (stream)
    req["stream"] = true;
  return req;
}

const http_fields anthropic_headers = {{"x-api-key", "none"},
                                       {"anthropic-version", "2023-06-01"}};

const json weather_args = {{"city", "Paris"}, {"days", 3}, {"units", "metric"}};

model_reply text_and_call() {
  model_reply r;
  r.text = "Let me look that up for you.";
  r.tool_calls.push_back(
    model_reply_call::make("get_weather", weather_args, "call_1"));
  return r;
}

} // namespace

SCENARIO("model test server: OpenAI chat completions", "[model-server]") {
  model_test_server server;
  loopback_client client;
  auto url = server.base_url() + "/chat/completions";

  WHEN("a non-streamed request gets a reply with a tool call") {
    server.push(text_and_call());
    auto ex = client.post(url, openai_request());
    THEN("the body has the chat.completion shape") {
      REQUIRE(ex.response.ok());
      CHECK(ex.response.status == 200);
      CHECK(ex.response.header("content-type")
            == std::optional<std::string>{"application/json"});
      auto body = ex.body();
      CHECK(body["object"] == "chat.completion");
      CHECK(body["id"].is_string());
      CHECK(body["created"].is_number_integer());
      CHECK(body["model"] == "gpt-test");
      REQUIRE(body["choices"].size() == 1);
      const auto& choice = body["choices"][0];
      CHECK(choice["index"] == 0);
      CHECK(choice["finish_reason"] == "tool_calls");
      const auto& msg = choice["message"];
      CHECK(msg["role"] == "assistant");
      CHECK(msg["content"] == "Let me look that up for you.");
      REQUIRE(msg["tool_calls"].size() == 1);
      const auto& call = msg["tool_calls"][0];
      CHECK(call["id"] == "call_1");
      CHECK(call["type"] == "function");
      CHECK(call["function"]["name"] == "get_weather");
      REQUIRE(call["function"]["arguments"].is_string());
      CHECK(json::parse(call["function"]["arguments"].get<std::string>())
            == weather_args);
      CHECK(body["usage"]
            == json{{"prompt_tokens", 10},
                    {"completion_tokens", 5},
                    {"total_tokens", 15}});
      CHECK(server.queued() == 0);
    }
  }
  WHEN("a reply has text only, a custom finish reason and usage") {
    auto reply = model_reply::say("Done.");
    reply.finish_reason = "max_tokens";
    reply.input_tokens = 100;
    reply.output_tokens = 42;
    server.push(reply);
    auto body = client.post(url, openai_request()).body();
    THEN("the reason is in OpenAI's vocabulary and there are no tool calls") {
      const auto& choice = body["choices"][0];
      CHECK(choice["finish_reason"] == "length");
      CHECK(choice["message"]["content"] == "Done.");
      CHECK_FALSE(choice["message"].contains("tool_calls"));
      CHECK(body["usage"]["total_tokens"] == 142);
    }
  }
  WHEN("a streamed request asks for usage") {
    auto reply = text_and_call();
    reply.text = "The quick brown fox jumps over the lazy dog.";
    server.push(reply);
    auto req = openai_request(true);
    req["stream_options"] = {{"include_usage", true}};
    auto ex = client.post(url, req);
    THEN("the chunks reassemble to the reply, and [DONE] ends the stream") {
      REQUIRE(ex.response.ok());
      CHECK(ex.response.status == 200);
      REQUIRE(ex.events.size() > 4);
      CHECK(ex.events.back().data == "[DONE]");
      auto chunks = ex.chunks();
      REQUIRE(chunks.size() == ex.events.size() - 1);
      for (const auto& c : chunks) {
        CHECK(c["object"] == "chat.completion.chunk");
        CHECK(c["id"] == chunks.front()["id"]);
        CHECK(c.contains("usage"));
      }
      CHECK(chunks.front()["choices"][0]["delta"]
            == json{{"role", "assistant"}});

      std::string text;
      std::string arguments;
      size_t text_deltas = 0;
      size_t argument_deltas = 0;
      std::string finish;
      for (const auto& c : chunks) {
        if (c["choices"].empty())
          continue;
        const auto& choice = c["choices"][0];
        const auto& delta = choice["delta"];
        if (delta.contains("content")) {
          text += delta["content"].get<std::string>();
          ++text_deltas;
        }
        if (delta.contains("tool_calls")) {
          const auto& call = delta["tool_calls"][0];
          CHECK(call["index"] == 0);
          if (call.contains("id")) {
            CHECK(call["id"] == "call_1");
            CHECK(call["type"] == "function");
            CHECK(call["function"]["name"] == "get_weather");
            CHECK(call["function"]["arguments"] == "");
          } else {
            auto piece = call["function"]["arguments"].get<std::string>();
            CHECK(piece.size() >= 1);
            CHECK(piece.size() <= 5);
            arguments += piece;
            ++argument_deltas;
          }
        }
        if (!choice["finish_reason"].is_null())
          finish = choice["finish_reason"];
      }
      CHECK(text == reply.text);
      CHECK(text_deltas > 1);
      CHECK(argument_deltas > 1);
      CHECK(arguments == weather_args.dump());
      CHECK(json::parse(arguments) == weather_args);
      CHECK(finish == "tool_calls");

      const auto& last = chunks.back();
      CHECK(last["choices"].empty());
      CHECK(last["usage"]
            == json{{"prompt_tokens", 10},
                    {"completion_tokens", 5},
                    {"total_tokens", 15}});
    }
  }
  WHEN("a streamed request does not ask for usage") {
    server.push(model_reply::say("Hi there, how can I help?"));
    auto ex = client.post(url, openai_request(true));
    THEN("no chunk carries usage, and the finish chunk comes before [DONE]") {
      REQUIRE(ex.response.ok());
      auto chunks = ex.chunks();
      REQUIRE_FALSE(chunks.empty());
      for (const auto& c : chunks)
        CHECK_FALSE(c.contains("usage"));
      CHECK(chunks.back()["choices"][0]["finish_reason"] == "stop");
      CHECK(ex.events.back().data == "[DONE]");
    }
  }
}

SCENARIO("model test server: Anthropic messages", "[model-server]") {
  model_test_server server;
  loopback_client client;
  auto url = server.base_url() + "/messages";

  WHEN("a non-streamed request gets a reply with a tool call") {
    server.push(text_and_call());
    auto ex = client.post(url, anthropic_request(), anthropic_headers);
    THEN("the body has the message shape") {
      REQUIRE(ex.response.ok());
      CHECK(ex.response.status == 200);
      auto body = ex.body();
      CHECK(body["type"] == "message");
      CHECK(body["role"] == "assistant");
      CHECK(body["model"] == "claude-test");
      CHECK(body["stop_reason"] == "tool_use");
      CHECK(body["usage"] == json{{"input_tokens", 10}, {"output_tokens", 5}});
      REQUIRE(body["content"].size() == 2);
      CHECK(body["content"][0]
            == json{{"type", "text"}, {"text", "Let me look that up for you."}});
      const auto& use = body["content"][1];
      CHECK(use["type"] == "tool_use");
      CHECK(use["id"] == "call_1");
      CHECK(use["name"] == "get_weather");
      CHECK(use["input"] == weather_args);
    }
  }
  WHEN("replies end for other reasons") {
    auto capped = model_reply::say("partial");
    capped.finish_reason = "length";
    server.push(capped);
    server.push(model_reply::say("complete"));
    auto first = client.post(url, anthropic_request(), anthropic_headers).body();
    auto second = client.post(url, anthropic_request(), anthropic_headers).body();
    THEN("the stop reasons are in Anthropic's vocabulary") {
      CHECK(first["stop_reason"] == "max_tokens");
      CHECK(second["stop_reason"] == "end_turn");
      CHECK(second["content"]
            == json::array({{{"type", "text"}, {"text", "complete"}}}));
    }
  }
  WHEN("a streamed request gets a reply with text and a tool call") {
    auto reply = text_and_call();
    reply.output_tokens = 17;
    server.push(reply);
    auto ex = client.post(url, anthropic_request(true), anthropic_headers);
    THEN("the events follow the documented sequence and reassemble") {
      REQUIRE(ex.response.ok());
      CHECK(ex.response.status == 200);
      REQUIRE(ex.events.size() > 6);
      CHECK(ex.events.front().event == "message_start");
      CHECK(ex.events.back().event == "message_stop");
      CHECK(ex.events[ex.events.size() - 2].event == "message_delta");
      auto data = ex.chunks();
      REQUIRE(data.size() == ex.events.size());
      for (size_t i = 0; i < data.size(); ++i)
        CHECK(data[i]["type"] == ex.events[i].event);

      const auto& start = data.front()["message"];
      CHECK(start["role"] == "assistant");
      CHECK(start["content"] == json::array());
      CHECK(start["usage"]["input_tokens"] == 10);

      std::vector<json> starts;
      std::vector<size_t> stops;
      std::string text;
      std::string partial_json;
      size_t json_deltas = 0;
      for (const auto& d : data) {
        if (d["type"] == "content_block_start")
          starts.push_back(d);
        if (d["type"] == "content_block_stop")
          stops.push_back(d["index"].get<size_t>());
        if (d["type"] == "content_block_delta") {
          const auto& delta = d["delta"];
          if (delta["type"] == "text_delta") {
            CHECK(d["index"] == 0);
            text += delta["text"].get<std::string>();
          } else {
            CHECK(delta["type"] == "input_json_delta");
            CHECK(d["index"] == 1);
            partial_json += delta["partial_json"].get<std::string>();
            ++json_deltas;
          }
        }
      }
      REQUIRE(starts.size() == 2);
      CHECK(starts[0]["index"] == 0);
      CHECK(starts[0]["content_block"] == json{{"type", "text"}, {"text", ""}});
      CHECK(starts[1]["index"] == 1);
      CHECK(starts[1]["content_block"]["type"] == "tool_use");
      CHECK(starts[1]["content_block"]["id"] == "call_1");
      CHECK(starts[1]["content_block"]["name"] == "get_weather");
      CHECK(stops == std::vector<size_t>{0, 1});
      CHECK(text == reply.text);
      CHECK(json_deltas > 1);
      CHECK(partial_json == weather_args.dump());
      CHECK(json::parse(partial_json) == weather_args);

      const auto& delta = data[data.size() - 2];
      CHECK(delta["delta"]["stop_reason"] == "tool_use");
      CHECK(delta["usage"]["output_tokens"] == 17);
    }
  }
}

SCENARIO("model test server: error statuses in each provider's shape",
         "[model-server]") {
  model_test_server server;
  loopback_client client;
  auto openai = server.base_url() + "/chat/completions";
  auto anthropic = server.base_url() + "/messages";

  WHEN("a rate limit with Retry-After in seconds is scripted for each API") {
    server.push(model_fault::rate_limited(7s));
    server.push(model_fault::rate_limited(2s));
    auto o = client.post(openai, openai_request());
    auto a = client.post(anthropic, anthropic_request(), anthropic_headers);
    THEN("each gets 429, the header and its error shape") {
      REQUIRE(o.response.ok());
      CHECK(o.response.status == 429);
      CHECK(o.response.header("retry-after") == std::optional<std::string>{"7"});
      auto ob = o.body();
      CHECK(ob["error"]["code"] == "rate_limit_exceeded");
      CHECK(ob["error"]["message"].is_string());
      CHECK(ob["error"].contains("type"));
      REQUIRE(a.response.ok());
      CHECK(a.response.status == 429);
      CHECK(a.response.header("retry-after") == std::optional<std::string>{"2"});
      auto ab = a.body();
      CHECK(ab["type"] == "error");
      CHECK(ab["error"]["type"] == "rate_limit_error");
      CHECK(ab["error"]["message"].is_string());
    }
  }
  WHEN("a rate limit with Retry-After as an HTTP date is scripted") {
    // RFC 9110's example date, 784111777 s after the epoch.
    server.push(model_fault::rate_limited_until(
      std::chrono::system_clock::from_time_t(784111777)));
    auto ex = client.post(openai, openai_request());
    THEN("the header is an IMF-fixdate") {
      CHECK(ex.response.status == 429);
      CHECK(ex.response.header("retry-after")
            == std::optional<std::string>{"Sun, 06 Nov 1994 08:49:37 GMT"});
    }
  }
  WHEN("server errors are scripted") {
    server.push(model_fault::status(503));
    server.push(model_fault::status(529, "Overloaded"));
    server.push(model_fault::status(500, "boom"));
    auto o503 = client.post(openai, openai_request());
    auto a529 = client.post(anthropic, anthropic_request(), anthropic_headers);
    auto o500 = client.post(openai, openai_request(true));
    THEN("the statuses and bodies follow, streamed requests included") {
      CHECK(o503.response.status == 503);
      CHECK(o503.body()["error"]["type"] == "server_error");
      CHECK_FALSE(o503.response.header("retry-after").has_value());
      CHECK(a529.response.status == 529);
      CHECK(a529.body()["error"]
            == json{{"type", "overloaded_error"}, {"message", "Overloaded"}});
      REQUIRE(o500.response.ok());
      CHECK(o500.response.status == 500);
      CHECK(o500.events.empty());
      CHECK(o500.body()["error"]["message"] == "boom");
    }
  }
  WHEN("nothing is scripted and there is no responder") {
    auto ex = client.post(openai, openai_request());
    THEN("the answer is 500 saying so") {
      CHECK(ex.response.status == 500);
      CHECK_THAT(ex.body()["error"]["message"].get<std::string>(),
                 Catch::Contains("no scripted reply"));
    }
  }
  WHEN("the path or method is unknown") {
    auto wrong_path = client.post(server.url("/v1/embeddings"), openai_request());
    http_request get;
    get.url = openai;
    get.total_timeout = 5s;
    auto wrong_method = client.send(get);
    THEN("the answer is 404 with a JSON error") {
      CHECK(wrong_path.response.status == 404);
      CHECK(wrong_path.body()["error"]["message"].is_string());
      CHECK(wrong_method.response.status == 404);
      CHECK(wrong_method.body().contains("error"));
      CHECK(server.request_count() == 2);
    }
  }
}

SCENARIO("model test server: broken answers", "[model-server]") {
  model_test_server server;
  loopback_client client;
  auto openai = server.base_url() + "/chat/completions";
  auto anthropic = server.base_url() + "/messages";

  WHEN("a malformed body is scripted") {
    server.push(model_fault::malformed());
    auto ex = client.post(openai, openai_request());
    THEN("the status is 200 and the body is not JSON") {
      REQUIRE(ex.response.ok());
      CHECK(ex.response.status == 200);
      CHECK_FALSE(ex.response.body.empty());
      CHECK_FALSE(json::accept(ex.response.body));
    }
  }
  WHEN("a malformed stream is scripted") {
    server.push(model_fault::malformed());
    auto ex = client.post(anthropic, anthropic_request(true), anthropic_headers);
    THEN("an event carries data that is not JSON") {
      REQUIRE(ex.response.ok());
      REQUIRE_FALSE(ex.events.empty());
      CHECK_FALSE(json::accept(ex.events.front().data));
    }
  }
  WHEN("an OpenAI stream is cut after 3 events") {
    server.push(model_fault::cut_stream(3));
    server.push(text_and_call());
    auto ex = client.post(openai, openai_request(true));
    THEN("the client sees 3 events, no [DONE], and a read error") {
      CHECK_FALSE(ex.response.ok());
      CHECK_THAT(ex.response.error, Catch::Contains("read (event stream)"));
      REQUIRE(ex.events.size() == 3);
      for (const auto& ev : ex.events)
        CHECK(ev.data != "[DONE]");
      CHECK(ex.chunks().size() == 3);
      REQUIRE(server.request_count() == 1);
      CHECK(server.requests()[0].outcome == model_outcome::cut);
    }
  }
  WHEN("an Anthropic stream is cut after more events than it has") {
    server.push(model_fault::cut_stream(1000));
    server.push(model_reply::say("short"));
    auto ex = client.post(anthropic, anthropic_request(true), anthropic_headers);
    THEN("everything but message_stop arrives") {
      CHECK_FALSE(ex.response.ok());
      REQUIRE_FALSE(ex.events.empty());
      CHECK(ex.events.front().event == "message_start");
      CHECK(ex.events.back().event == "message_delta");
      for (const auto& ev : ex.events)
        CHECK(ev.event != "message_stop");
    }
  }
  WHEN("a non-streamed reply is cut") {
    server.push(model_fault::cut_stream(2));
    server.push(text_and_call());
    auto ex = client.post(openai, openai_request());
    THEN("the client gets an error, not a body") {
      CHECK_FALSE(ex.response.ok());
      CHECK(ex.response.body.empty());
    }
  }
  WHEN("a reset is scripted") {
    server.push(model_fault::reset());
    auto ex = client.post(openai, openai_request());
    THEN("the client gets an error without a status") {
      CHECK_FALSE(ex.response.ok());
      CHECK(ex.response.status == 0);
      CHECK_THAT(ex.response.error,
                 Catch::Contains("127.0.0.1:" + std::to_string(server.port())));
      REQUIRE(server.request_count() == 1);
      CHECK(server.requests()[0].outcome == model_outcome::reset);
      CHECK(server.requests()[0].status == 0);
    }
  }
  WHEN("a hang is scripted") {
    server.push(model_fault::hang());
    http_request req;
    req.method = "POST";
    req.url = openai;
    req.body = openai_request().dump();
    req.total_timeout = 300ms;
    auto ex = client.send(req);
    THEN("the request arrived and the client timed out") {
      CHECK(server.wait_for_requests(1, 5s));
      CHECK_FALSE(ex.response.ok());
      CHECK_THAT(ex.response.error, Catch::Contains("timed out"));
      CHECK(server.requests()[0].outcome == model_outcome::hang);
    }
  }
  WHEN("a slow reply is scripted") {
    server.push(model_fault::slow(200ms));
    server.push(model_reply::say("eventually"));
    auto before = std::chrono::steady_clock::now();
    auto ex = client.post(openai, openai_request());
    auto elapsed = std::chrono::steady_clock::now() - before;
    THEN("the reply is normal but comes no sooner than the delay") {
      REQUIRE(ex.response.ok());
      CHECK(ex.body()["choices"][0]["message"]["content"] == "eventually");
      CHECK(elapsed >= 200ms);
      CHECK(server.requests()[0].delay == 200ms);
      CHECK(server.queued() == 0);
    }
  }
  WHEN("a slow fault precedes a stream and a responder makes the reply") {
    server.push(model_fault::slow(100ms));
    server.respond_with([](const json&, const std::string&) {
      return model_reply::say("generated");
    });
    auto before = std::chrono::steady_clock::now();
    auto ex = client.post(anthropic, anthropic_request(true), anthropic_headers);
    auto elapsed = std::chrono::steady_clock::now() - before;
    THEN("the generated stream is delayed") {
      REQUIRE(ex.response.ok());
      CHECK(ex.events.back().event == "message_stop");
      CHECK(elapsed >= 100ms);
    }
  }
}

SCENARIO("model test server: responder and queue", "[model-server]") {
  // Declared before the server, whose thread calls the responder.
  std::mutex mtx;
  std::vector<std::string> apis;
  model_test_server server;
  loopback_client client;
  server.respond_with([&](const json& body, const std::string& api) {
    std::lock_guard<std::mutex> guard{mtx};
    apis.push_back(api);
    return model_reply::say("echo: "
                            + body["messages"].back()["content"].get<std::string>());
  });
  server.push(model_reply::say("scripted"));
  auto first = client.post(server.base_url() + "/chat/completions",
                           openai_request());
  auto second = client.post(server.base_url() + "/chat/completions",
                            openai_request());
  auto third = client.post(server.base_url() + "/messages", anthropic_request(),
                           anthropic_headers);
  THEN("the queue goes first, then the responder sees each request") {
    CHECK(first.body()["choices"][0]["message"]["content"] == "scripted");
    CHECK(second.body()["choices"][0]["message"]["content"] == "echo: hello");
    CHECK(third.body()["content"][0]["text"] == "echo: hello");
    std::lock_guard<std::mutex> guard{mtx};
    CHECK(apis == std::vector<std::string>{"openai", "anthropic"});
  }
}

SCENARIO("model test server: API keys", "[model-server]") {
  model_test_server_options opts;
  opts.api_key = "sk-test";
  model_test_server server{opts};
  loopback_client client;
  auto openai = server.base_url() + "/chat/completions";
  auto anthropic = server.base_url() + "/messages";
  server.push(model_reply::say("first"));
  server.push(model_reply::say("second"));

  WHEN("requests carry a wrong key, no key or no anthropic-version") {
    auto wrong = client.post(openai, openai_request(),
                             {{"Authorization", "Bearer sk-wrong"}});
    auto missing = client.post(openai, openai_request());
    auto no_version = client.post(anthropic, anthropic_request(),
                                  {{"x-api-key", "sk-test"}});
    THEN("each gets 401 in its provider's shape and consumes no reply") {
      CHECK(wrong.response.status == 401);
      CHECK(wrong.body()["error"]["code"] == "invalid_api_key");
      CHECK(missing.response.status == 401);
      CHECK(no_version.response.status == 401);
      CHECK(no_version.body()["error"]["type"] == "authentication_error");
      CHECK(server.queued() == 2);
    }
  }
  WHEN("requests carry the right key") {
    auto o = client.post(openai, openai_request(),
                         {{"Authorization", "Bearer sk-test"}});
    auto a = client.post(anthropic, anthropic_request(),
                         {{"x-api-key", "sk-test"},
                          {"anthropic-version", "2023-06-01"}});
    THEN("they get the scripted replies") {
      CHECK(o.response.status == 200);
      CHECK(o.body()["choices"][0]["message"]["content"] == "first");
      CHECK(a.response.status == 200);
      CHECK(a.body()["content"][0]["text"] == "second");
    }
  }
}

SCENARIO("model test server: requests are recorded", "[model-server]") {
  model_test_server server;
  loopback_client client;
  server.push(model_fault::rate_limited(1s));
  server.push(model_reply::say("ok"));
  auto url = server.base_url() + "/chat/completions";
  auto before = std::chrono::steady_clock::now();
  auto before_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count();
  auto limited = client.post(url, openai_request(), {{"X-Trace", "one"}});
  auto between = std::chrono::steady_clock::now();
  auto ok = client.post(url, openai_request(true));
  auto after = std::chrono::steady_clock::now();
  auto after_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  http_request junk;
  junk.method = "POST";
  junk.url = server.base_url() + "/messages";
  junk.body = "not json";
  junk.total_timeout = 5s;
  auto bad = client.send(junk);

  THEN("each request is in the log with what the server did") {
    REQUIRE(limited.response.status == 429);
    REQUIRE(ok.response.ok());
    CHECK(bad.response.status == 400);
    REQUIRE(server.request_count() == 3);
    auto log = server.requests();
    REQUIRE(log.size() == 3);

    CHECK(log[0].method == "POST");
    CHECK(log[0].path == "/v1/chat/completions");
    CHECK(log[0].api == "openai");
    CHECK(log[0].header("x-trace") == "one");
    CHECK(log[0].body == openai_request());
    CHECK_FALSE(log[0].stream);
    CHECK(log[0].outcome == model_outcome::error);
    CHECK(log[0].status == 429);

    CHECK(log[1].body == openai_request(true));
    CHECK(log[1].stream);
    CHECK(log[1].outcome == model_outcome::replied);
    CHECK(log[1].status == 200);

    CHECK(log[2].api == "anthropic");
    CHECK(log[2].body.is_null());
    CHECK(log[2].raw_body == "not json");
    CHECK(log[2].status == 400);

    CHECK(log[0].arrived >= before);
    CHECK(log[0].arrived <= between);
    CHECK(log[1].arrived >= between);
    CHECK(log[1].arrived <= after);
    CHECK(log[0].arrived_system_ms >= before_ms);
    CHECK(log[1].arrived_system_ms <= after_ms);
    CHECK(log[0].arrived_system_ms <= log[1].arrived_system_ms);

    // One keep-alive connection carried all three.
    CHECK(server.connections() == 1);
    CHECK(log[0].connection == 1);
    CHECK(log[2].connection == 1);
    CHECK(log[0].sequence == 1);
    CHECK(log[2].sequence == 3);
  }
}

// Agents thinking with HTTP models: the whole agent loop over real HTTP on
// loopback against the model test server (both APIs, streamed or not), the
// gateway's retries, fallback and cache, cost, configuration, and keys kept
// out of traces and logs.

#include <chrono>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "actors/http_model.hpp"
#include "runtime/builtin_tools.hpp"
#include "runtime/model_config.hpp"
#include "runtime/runtime.hpp"
#include "runtime/swarm.hpp"
#include "support/model_test_server.hpp"
#include "support/temp_dir.hpp"

using namespace std::chrono_literals;
using troupe::json;
using troupe::model_settings;
using troupe::run_status;
using troupe::runtime;
using troupe::runtime_config;
using troupe::test::model_fault;
using troupe::test::model_reply;
using troupe::test::model_test_server;

namespace {

constexpr const char* secret = "sk-test-SECRET-4f1c9a";

/// Every trace record of a runtime, kept for the test to read.
struct trace_log {
  std::mutex mtx;
  std::vector<json> records;

  troupe::trace_listener listener() {
    return [this](const json& rec) {
      std::lock_guard<std::mutex> guard{mtx};
      records.push_back(rec);
    };
  }

  std::vector<json> named(const std::string& name) {
    std::lock_guard<std::mutex> guard{mtx};
    std::vector<json> out;
    for (const auto& r : records)
      if (r.value("name", "") == name)
        out.push_back(r);
    return out;
  }

  std::string all_text() {
    std::lock_guard<std::mutex> guard{mtx};
    std::string out;
    for (const auto& r : records)
      out += r.dump() + "\n";
    return out;
  }
};

/// A runtime whose model `name` is an endpoint of `server`.
struct gateway_fixture {
  std::shared_ptr<trace_log> trace = std::make_shared<trace_log>();
  std::unique_ptr<runtime> rt;

  gateway_fixture(const std::map<std::string, model_settings>& models,
                  std::function<void(runtime_config&)> more = {}) {
    runtime_config cfg;
    cfg.load_middleman = false;
    cfg.models = models;
    cfg.trace_listeners.push_back(trace->listener());
    if (more)
      more(cfg);
    rt = std::make_unique<runtime>(cfg);
    rt->tools().add(troupe::calculator_tool());
  }

  troupe::runnable_actor agent(const std::string& model,
                               std::vector<std::string> tools = {},
                               std::chrono::milliseconds model_timeout = 20s) {
    troupe::agent_spec spec;
    spec.name = "helper";
    spec.system_prompt = "You help.";
    spec.model = model;
    spec.tools = std::move(tools);
    spec.max_steps = 4;
    spec.model_timeout = model_timeout;
    return rt->spawn_agent(spec);
  }

  troupe::run_result run(const std::string& model, const std::string& goal,
                         std::vector<std::string> tools = {},
                         std::chrono::milliseconds model_timeout = 20s) {
    troupe::run_options opts;
    opts.timeout = 30s;
    auto result = rt->run(agent(model, std::move(tools), model_timeout), goal,
                          opts);
    rt->flush_trace();
    return result;
  }
};

model_settings endpoint(const model_test_server& server, bool stream = false) {
  model_settings s;
  s.base_url = server.base_url();
  s.stream = stream;
  s.retry.base = 10ms;
  s.retry.cap = 50ms;
  return s;
}

/// The tool messages of a recorded OpenAI request body.
std::vector<json> tool_messages(const json& body) {
  std::vector<json> out;
  for (const auto& m : body.at("messages"))
    if (m.value("role", "") == "tool")
      out.push_back(m);
  return out;
}

} // namespace

TEST_CASE("an agent runs a tool-calling conversation over OpenAI chat "
          "completions",
          "[http-model]") {
  model_test_server server;
  server.push(model_reply::call("calculator", {{"expression", "15 * 240 / 100"}},
                                "call_1"));
  server.push(model_reply::say("15% of 240 is 36."));
  gateway_fixture f{{{"openai:test-model", endpoint(server)}}};
  auto result = f.run("openai:test-model", "How much is 15% of 240?",
                      {"calculator"});
  INFO(result.error);
  REQUIRE(result.status == run_status::complete);
  CHECK(result.answer == "15% of 240 is 36.");
  CHECK(result.usage.input_tokens == 20);
  CHECK(result.usage.output_tokens == 10);
  REQUIRE(result.steps.size() == 2);
  REQUIRE(result.steps[0].tool_results.size() == 1);
  CHECK(result.steps[0].tool_results[0].ok);
  CHECK(result.steps[0].tool_results[0].content.value.at("result") == 36);
  auto reqs = server.requests();
  REQUIRE(reqs.size() == 2);
  // What went over the wire: the model id, the tool as a function, and on the
  // second request the call and its result.
  CHECK(reqs[0].path == "/v1/chat/completions");
  CHECK(reqs[0].body.at("model") == "test-model");
  REQUIRE(reqs[0].body.at("tools").size() == 1);
  CHECK(reqs[0].body["tools"][0]["function"]["name"] == "calculator");
  CHECK(reqs[0].body["tools"][0]["type"] == "function");
  auto tools = tool_messages(reqs[1].body);
  REQUIRE(tools.size() == 1);
  CHECK(tools[0]["tool_call_id"] == "call_1");
  CHECK(tools[0]["content"].get<std::string>().find("36") != std::string::npos);
  // Both requests went over one kept-alive connection.
  CHECK(server.connections() == 1);
}

TEST_CASE("an agent runs a tool-calling conversation over Anthropic messages, "
          "streamed",
          "[http-model]") {
  model_test_server server;
  server.push(model_reply::call("calculator", {{"expression", "2 + 3"}},
                                "toolu_1", "Let me compute."));
  server.push(model_reply::say("It is 5."));
  gateway_fixture f{{{"anthropic:claude-test", endpoint(server, true)}}};
  auto result = f.run("anthropic:claude-test", "What is 2 + 3?",
                      {"calculator"});
  INFO(result.error);
  REQUIRE(result.status == run_status::complete);
  CHECK(result.answer == "It is 5.");
  REQUIRE(result.steps.size() == 2);
  CHECK(result.steps[0].reply.content == "Let me compute.");
  REQUIRE(result.steps[0].reply.tool_calls.size() == 1);
  CHECK(result.steps[0].reply.tool_calls[0].arguments.value
        == json{{"expression", "2 + 3"}});
  auto reqs = server.requests();
  REQUIRE(reqs.size() == 2);
  CHECK(reqs[0].api == "anthropic");
  CHECK(reqs[0].stream);
  CHECK(reqs[0].body.at("system") == "You help.");
  CHECK(reqs[0].body.at("max_tokens").is_number_integer());
  // The tool result went back as a tool_result block answering toolu_1.
  bool answered = false;
  for (const auto& m : reqs[1].body.at("messages"))
    if (m["content"].is_array())
      for (const auto& block : m["content"])
        if (block.value("type", "") == "tool_result"
            && block.value("tool_use_id", "") == "toolu_1")
          answered = true;
  CHECK(answered);
  // The streamed increments were traced as they came, and add up to the text.
  std::string text;
  std::string arguments;
  for (const auto& d : f.trace->named("model.delta")) {
    const auto& a = d.at("attributes");
    if (a.at("troupe.delta.kind") == "text")
      text += a.value("troupe.delta.text", "");
    if (a.at("troupe.delta.kind") == "tool_arguments")
      arguments += a.value("troupe.delta.text", "");
  }
  CHECK(text == "Let me compute.It is 5.");
  CHECK(json::parse(arguments) == json{{"expression", "2 + 3"}});
}

TEST_CASE("streamed OpenAI tool-call arguments split in fragments reach the "
          "tool whole",
          "[http-model]") {
  model_test_server server;
  server.push(model_reply::call("calculator",
                                {{"expression", "(1 + 2) * (3 + 4) * 1000"}}));
  server.push(model_reply::say("21000"));
  gateway_fixture f{{{"openai:test-model", endpoint(server, true)}}};
  auto result = f.run("openai:test-model", "compute", {"calculator"});
  INFO(result.error);
  REQUIRE(result.status == run_status::complete);
  REQUIRE(result.steps[0].tool_results.size() == 1);
  CHECK(result.steps[0].tool_results[0].content.value.at("result") == 21000);
  // More than one fragment carried the arguments.
  size_t fragments = 0;
  for (const auto& d : f.trace->named("model.delta"))
    if (d["attributes"]["troupe.delta.kind"] == "tool_arguments")
      ++fragments;
  CHECK(fragments > 1);
}

TEST_CASE("malformed tool-call arguments become an observation the model "
          "sees, not a crash",
          "[http-model]") {
  model_test_server server;
  model_reply broken;
  broken.tool_calls.push_back(
    troupe::test::model_reply_call::raw("calculator", "{\"expression\": "));
  server.push(broken);
  server.push(model_reply::say("Sorry, I will try again later."));
  gateway_fixture f{{{"openai:test-model", endpoint(server)}}};
  auto result = f.run("openai:test-model", "compute", {"calculator"});
  INFO(result.error);
  REQUIRE(result.status == run_status::complete);
  auto reqs = server.requests();
  REQUIRE(reqs.size() == 2);
  auto tools = tool_messages(reqs[1].body);
  REQUIRE(tools.size() == 1);
  auto content = tools[0]["content"].get<std::string>();
  CHECK(content.find("calculator") != std::string::npos);
  CHECK(content.find("not valid JSON") != std::string::npos);
}

TEST_CASE("a 429 is retried no sooner than its Retry-After says",
          "[http-model]") {
  model_test_server server;
  server.push(model_fault::rate_limited(1s));
  server.push(model_reply::say("done"));
  gateway_fixture f{{{"openai:test-model", endpoint(server)}}};
  auto result = f.run("openai:test-model", "hi");
  INFO(result.error);
  REQUIRE(result.status == run_status::complete);
  auto reqs = server.requests();
  REQUIRE(reqs.size() == 2);
  CHECK(reqs[0].status == 429);
  // The backoff alone (cap 50 ms) would have retried far sooner.
  CHECK(reqs[1].arrived - reqs[0].arrived >= 1000ms);
  auto retries = f.trace->named("model.retry");
  REQUIRE(retries.size() == 1);
  CHECK(retries[0]["attributes"]["http.response.status_code"] == 429);
  CHECK(retries[0]["attributes"]["troupe.retry_after_ms"] == 1000);
  CHECK(retries[0]["attributes"]["troupe.wait_ms"].get<int64_t>() >= 1000);
}

TEST_CASE("a Retry-After given as an HTTP date is honoured too",
          "[http-model]") {
  model_test_server server;
  server.push(model_fault::rate_limited_until(std::chrono::system_clock::now()
                                              + 2s));
  server.push(model_reply::say("done"));
  gateway_fixture f{{{"openai:test-model", endpoint(server)}}};
  auto result = f.run("openai:test-model", "hi");
  REQUIRE(result.status == run_status::complete);
  auto reqs = server.requests();
  REQUIRE(reqs.size() == 2);
  // The date has a one-second resolution: at least a second passed.
  CHECK(reqs[1].arrived - reqs[0].arrived >= 1000ms);
}

TEST_CASE("transient faults are retried, then the call succeeds",
          "[http-model]") {
  model_test_server server;
  auto settings = endpoint(server, true);
  SECTION("a reply slower than the request timeout") {
    settings.request_timeout = 300ms;
    server.push(model_fault::slow(2s));
    server.push(model_reply::say("too slow to count"));
  }
  SECTION("500 then 503") {
    server.push(model_fault::status(500));
    server.push(model_fault::status(503));
  }
  SECTION("a connection reset") {
    server.push(model_fault::reset());
  }
  SECTION("a stream cut mid-way") {
    // A modifier: it cuts the reply it is queued with.
    server.push(model_fault::cut_stream(2));
    server.push(model_reply::say("never seen whole"));
  }
  server.push(model_reply::say("finally"));
  gateway_fixture f{{{"openai:test-model", settings}}};
  auto result = f.run("openai:test-model", "hi");
  INFO(result.error);
  REQUIRE(result.status == run_status::complete);
  CHECK(result.answer == "finally");
  auto reqs = server.requests();
  CHECK(f.trace->named("model.retry").size() == reqs.size() - 1);
  CHECK(reqs.back().outcome == troupe::test::model_outcome::replied);
}

TEST_CASE("faults that another attempt cannot fix fail at once with a clear "
          "error",
          "[http-model]") {
  model_test_server server;
  std::string expect;
  SECTION("malformed JSON") {
    server.push(model_fault::malformed());
    expect = "openai";
  }
  SECTION("400 bad request") {
    server.push(model_fault::status(400, "messages: too long"));
    expect = "HTTP 400: invalid_request_error: messages: too long";
  }
  gateway_fixture f{{{"openai:test-model", endpoint(server)}}};
  auto result = f.run("openai:test-model", "hi");
  CHECK(result.status == run_status::failed);
  CHECK_THAT(result.error, Catch::Contains(expect));
  CHECK_THAT(result.error, Catch::Contains("openai:test-model"));
  CHECK(server.request_count() == 1);
}

TEST_CASE("retries stop at max_retries and the error says how many attempts "
          "were made",
          "[http-model]") {
  model_test_server server;
  for (int i = 0; i < 3; ++i)
    server.push(model_fault::status(502));
  auto s = endpoint(server);
  s.retry.max_retries = 2;
  gateway_fixture f{{{"openai:test-model", s}}};
  auto result = f.run("openai:test-model", "hi");
  CHECK(result.status == run_status::failed);
  CHECK_THAT(result.error, Catch::Contains("HTTP 502"));
  CHECK_THAT(result.error, Catch::Contains("after 3 attempts"));
  CHECK(server.request_count() == 3);
}

TEST_CASE("a slow endpoint past its request timeout fails over to the "
          "fallback model",
          "[http-model]") {
  model_test_server primary;
  model_test_server backup;
  primary.push(model_fault::hang());
  backup.push(model_reply::say("from the backup"));
  auto p = endpoint(primary);
  p.request_timeout = 300ms;
  p.retry.max_retries = 0;
  p.fallback = {"anthropic:backup"};
  gateway_fixture f{{{"openai:primary", p},
                     {"anthropic:backup", endpoint(backup)}},
                    [](runtime_config& cfg) {
                      cfg.prices.set("openai:primary", {1000, 1000});
                      cfg.prices.set("anthropic:backup", {1, 2});
                    }};
  auto result = f.run("openai:primary", "hi");
  INFO(result.error);
  REQUIRE(result.status == run_status::complete);
  CHECK(result.answer == "from the backup");
  REQUIRE(backup.request_count() == 1);
  CHECK(backup.requests()[0].api == "anthropic");
  // Priced at the backup's rate: 10 input tokens at $1/M, 5 output at $2/M.
  CHECK(result.cost_nusd == 10 * 1000 + 5 * 2000);
  // The model call's span says who answered and what it cost.
  {
    std::lock_guard<std::mutex> guard{f.trace->mtx};
    size_t priced = 0;
    for (const auto& r : f.trace->records)
      if (r.value("type", "") == "span"
          && r["attributes"].value("gen_ai.response.model", "")
               == "anthropic:backup") {
        CHECK(r["attributes"]["troupe.cost_nusd"] == 20000);
        ++priced;
      }
    CHECK(priced == 1);
  }
  auto fallbacks = f.trace->named("model.fallback");
  REQUIRE(fallbacks.size() == 1);
  CHECK(fallbacks[0]["attributes"]["troupe.model.failed"] == "openai:primary");
  CHECK(fallbacks[0]["attributes"]["troupe.model.next"] == "anthropic:backup");
}

TEST_CASE("a hanging endpoint leaves its fallback a share of the model "
          "call's time",
          "[http-model]") {
  model_test_server primary;
  model_test_server backup;
  primary.push(model_fault::hang());
  backup.push(model_reply::say("in time"));
  // The primary's own timeout (120 s) is far beyond the agent's 2 s: without
  // a share for the backup, the hang would use all of it.
  auto p = endpoint(primary);
  p.retry.max_retries = 0;
  p.fallback = {"openai:backup"};
  gateway_fixture f{{{"openai:primary", p}, {"openai:backup", endpoint(backup)}}};
  auto result = f.run("openai:primary", "hi", {}, 2s);
  INFO(result.error);
  REQUIRE(result.status == run_status::complete);
  CHECK(result.answer == "in time");
  CHECK(backup.request_count() == 1);
}

TEST_CASE("a Retry-After longer than max_retry_after fails the call at once",
          "[http-model]") {
  model_test_server server;
  server.push(model_fault::rate_limited(120s));
  server.push(model_reply::say("too late"));
  gateway_fixture f{{{"openai:test-model", endpoint(server)}}};
  auto result = f.run("openai:test-model", "hi");
  CHECK(result.status == run_status::failed);
  CHECK_THAT(result.error, Catch::Contains("Retry-After of 120000 ms exceeds "
                                           "max_retry_after of 60000 ms"));
  CHECK(server.request_count() == 1);
}

TEST_CASE("when every model of a fallback chain fails, the error names each",
          "[http-model]") {
  model_test_server primary;
  model_test_server backup;
  primary.push(model_fault::status(401, "bad key"));
  backup.push(model_fault::malformed());
  auto p = endpoint(primary);
  p.fallback = {"openai:backup"};
  gateway_fixture f{{{"openai:primary", p}, {"openai:backup", endpoint(backup)}}};
  auto result = f.run("openai:primary", "hi");
  CHECK(result.status == run_status::failed);
  CHECK_THAT(result.error, Catch::Contains("openai:primary: "));
  CHECK_THAT(result.error, Catch::Contains("HTTP 401: "));
  CHECK_THAT(result.error, Catch::Contains("bad key"));
  CHECK_THAT(result.error, Catch::Contains("the body is not JSON"));
  CHECK_THAT(result.error, Catch::Contains("openai:backup: "));
}

TEST_CASE("the response cache answers an identical request without the "
          "endpoint, and bills nothing for it",
          "[http-model]") {
  model_test_server server;
  server.push(model_reply::say("cached answer"));
  server.push(model_reply::say("a second, different answer"));
  auto s = endpoint(server);
  s.cache = true;
  gateway_fixture f{{{"openai:test-model", s}}, [](runtime_config& cfg) {
                      cfg.prices.set("openai:test-model", {1, 1});
                    }};
  auto first = f.run("openai:test-model", "same question");
  auto second = f.run("openai:test-model", "same question");
  REQUIRE(first.status == run_status::complete);
  REQUIRE(second.status == run_status::complete);
  CHECK(second.answer == "cached answer");
  CHECK(server.request_count() == 1);
  CHECK(first.cost_nusd == 15 * 1000);
  CHECK(second.cost_nusd == 0);
  CHECK(second.usage.input_tokens == 0);
  CHECK(f.trace->named("model.cache_hit").size() == 1);
  // Another question is not a hit.
  auto third = f.run("openai:test-model", "another question");
  CHECK(third.answer == "a second, different answer");
  CHECK(server.request_count() == 2);
}

TEST_CASE("the API key is sent to the endpoint and written nowhere else",
          "[http-model]") {
  troupe::test::model_test_server_options opts;
  opts.api_key = secret;
  model_test_server server{opts};
  model_test_server anthropic{opts};
  server.push(model_fault::status(500));
  server.push(model_reply::say("ok"));
  // A server (or proxy) that echoes the key it was sent.
  anthropic.push(model_fault::status(401, std::string{"invalid x-api-key: "}
                                            + secret));
  // Logs at trace level go to a stream the test reads.
  auto logged = std::make_shared<std::ostringstream>();
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(*logged);
  auto logger = std::make_shared<spdlog::logger>("capture", sink);
  logger->set_level(spdlog::level::trace);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(logger);
  troupe::test::temp_dir dir;
  auto trace_file = dir.file("trace.jsonl");
  {
    auto s = endpoint(server);
    s.api_key_env = "TROUPE_TEST_KEY_A";
    auto a = endpoint(anthropic);
    a.api_key_env = "TROUPE_TEST_KEY_A";
    ::setenv("TROUPE_TEST_KEY_A", secret, 1);
    gateway_fixture f{{{"openai:test-model", s}, {"anthropic:test-model", a}},
                      [&](runtime_config& cfg) {
                        cfg.trace_path = trace_file;
                      }};
    auto ok = f.run("openai:test-model", "hi");
    auto bad = f.run("anthropic:test-model", "hi");
    CHECK(ok.status == run_status::complete);
    CHECK(bad.status == run_status::failed);
    CHECK_THAT(bad.error, Catch::Contains("401"));
    CHECK_THAT(bad.error, Catch::Contains("invalid x-api-key: [redacted]"));
    CHECK(bad.error.find(secret) == std::string::npos);
    CHECK(f.trace->all_text().find(secret) == std::string::npos);
    f.rt->shutdown();
  }
  ::unsetenv("TROUPE_TEST_KEY_A");
  spdlog::set_default_logger(previous);
  // The key did reach the server, so the greps below could have found it.
  auto reqs = server.requests();
  REQUIRE(reqs.size() == 2);
  CHECK(reqs[1].header("authorization") == std::string{"Bearer "} + secret);
  CHECK(anthropic.requests().at(0).header("x-api-key") == secret);
  std::ifstream in{trace_file};
  std::stringstream file;
  file << in.rdbuf();
  CHECK(file.str().size() > 0);
  CHECK(file.str().find(secret) == std::string::npos);
  CHECK(logged->str().find("retrying") != std::string::npos);
  CHECK(logged->str().find(secret) == std::string::npos);
}

TEST_CASE("a tokens-per-minute limit holds calls back until the bucket "
          "refills",
          "[http-model]") {
  model_test_server server;
  server.respond_with([](const json&, const std::string&) {
    auto r = model_reply::say("ok");
    r.input_tokens = 50;
    r.output_tokens = 50;
    return r;
  });
  // 6000 tokens a minute = 100 a second; each call takes max_tokens 100 up
  // front, so the second call waits about a second for the bucket.
  gateway_fixture f{{{"openai:test-model", endpoint(server)}},
                    [](runtime_config& cfg) {
                      troupe::limiter_config limits;
                      limits.tokens_per_minute = 6000;
                      cfg.model_limits["openai:test-model"] = limits;
                    }};
  troupe::agent_spec spec;
  spec.name = "helper";
  spec.model = "openai:test-model";
  spec.model_params = json{{"max_tokens", 6000}};
  auto agent = f.rt->spawn_agent(spec);
  troupe::run_options opts;
  opts.timeout = 30s;
  auto first = f.rt->run(agent, "one", opts);
  auto second = f.rt->run(agent, "two", opts);
  f.rt->flush_trace();
  REQUIRE(first.status == run_status::complete);
  REQUIRE(second.status == run_status::complete);
  auto reqs = server.requests();
  REQUIRE(reqs.size() == 2);
  // The first took the whole minute's tokens (6000 reserved, 100 used): the
  // unused 5900 went back, and the second waited for the rest to refill.
  auto waits = f.trace->named("limiter.wait");
  REQUIRE(waits.size() == 1);
  CHECK(waits[0]["attributes"]["troupe.wait_ms"].get<int64_t>() >= 500);
  CHECK(reqs[1].arrived - reqs[0].arrived >= 500ms);
}

TEST_CASE("model names and settings resolve from the environment",
          "[http-model][config]") {
  std::map<std::string, std::string> env;
  auto reader = [&env](const std::string& name) {
    auto i = env.find(name);
    return i == env.end() ? std::string{} : i->second;
  };
  SECTION("the provider's own endpoint needs a key, and the error names the "
          "variable") {
    try {
      troupe::http_model_from("openai:gpt-4o-mini", {}, reader);
      FAIL("no error");
    } catch (const std::invalid_argument& ex) {
      CHECK_THAT(ex.what(), Catch::Contains("OPENAI_API_KEY is not set"));
    }
    env["ANTHROPIC_API_KEY"] = secret;
    auto cfg = troupe::http_model_from("anthropic:claude-x", {}, reader);
    CHECK(cfg.provider == troupe::model_provider::anthropic);
    CHECK(cfg.model_id == "claude-x");
    CHECK(cfg.api_key == secret);
    CHECK(troupe::endpoint_url(cfg) == "https://api.anthropic.com/v1/messages");
  }
  SECTION("a base URL from the environment needs no key") {
    env["OPENAI_BASE_URL"] = "http://127.0.0.1:8080/v1/";
    auto cfg = troupe::http_model_from("openai:llama", {}, reader);
    CHECK(cfg.api_key.empty());
    CHECK(troupe::endpoint_url(cfg)
          == "http://127.0.0.1:8080/v1/chat/completions");
  }
  SECTION("a bad base URL and a missing id are refused") {
    env["OPENAI_BASE_URL"] = "ftp://x";
    CHECK_THROWS_WITH(troupe::http_model_from("openai:m", {}, reader),
                      Catch::Contains("must start with http://"));
    CHECK_THROWS_WITH(troupe::http_model_from("openai:", {}, reader),
                      Catch::Contains("no model id"));
    CHECK_THROWS_WITH(troupe::http_model_from("gpt-4", {}, reader),
                      Catch::Contains("not an HTTP model"));
  }
  SECTION("TROUPE_MODEL") {
    CHECK(troupe::model_override_from_env(reader).empty());
    env["TROUPE_MODEL"] = "openai:gpt-4o-mini";
    CHECK(troupe::model_override_from_env(reader) == "openai:gpt-4o-mini");
    env["TROUPE_MODEL"] = "gpt-4o-mini";
    CHECK_THROWS_WITH(troupe::model_override_from_env(reader),
                      Catch::Contains("TROUPE_MODEL='gpt-4o-mini'"));
  }
}

TEST_CASE("Retry-After values parse as seconds or HTTP dates",
          "[http-model][config]") {
  using troupe::parse_retry_after;
  CHECK(parse_retry_after("2", 0) == 2000ms);
  CHECK(parse_retry_after(" 1.5 ", 0) == 1500ms);
  CHECK(parse_retry_after("0", 0) == 0ms);
  // Sun, 06 Nov 1994 08:49:37 GMT is 784111777 s after the epoch.
  CHECK(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111770000)
        == 7000ms);
  CHECK(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111790000)
        == 0ms);
  // The two obsolete forms a recipient must accept too (RFC 9110, 5.6.7).
  CHECK(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", 784111770000)
        == 7000ms);
  CHECK(parse_retry_after("Sun Nov  6 08:49:37 1994", 784111770000)
        == 7000ms);
  // Longer than a week counts as a week: beyond any max_retry_after.
  CHECK(parse_retry_after("99999999999", 0) == std::chrono::hours{7 * 24});
  CHECK_FALSE(parse_retry_after("soon", 0));
  CHECK_FALSE(parse_retry_after("-1", 0));
  CHECK_FALSE(parse_retry_after("", 0));
  CHECK_FALSE(parse_retry_after("Sun, 06 Nov 1994 08:49:37 PST", 0));
}

TEST_CASE("swarm files configure models: endpoints, retries, fallback, cache "
          "and token limits",
          "[http-model][config]") {
  auto doc = json::parse(R"({
    "model": "openai:main",
    "models": {
      "openai:main": {"base_url": "http://127.0.0.1:9/v1", "stream": true,
                      "retry": {"max_retries": 5, "base_ms": 100},
                      "fallback": ["anthropic:backup", "scripted:s.json"],
                      "cache": {"max_entries": 10, "ttl_ms": 1000}},
      "anthropic:backup": {"api_key_env": "MY_KEY"}
    },
    "model_limits": {"openai:main": {"requests_per_minute": 120,
                                     "tokens_per_minute": 90000,
                                     "max_concurrent": 4}},
    "agents": [{"name": "a"}]
  })");
  auto def = troupe::parse_swarm(doc, "t.json", "/base");
  const auto& m = def.models.at("openai:main");
  CHECK(m.stream);
  CHECK(m.retry.max_retries == 5);
  CHECK(m.retry.base == 100ms);
  CHECK(m.fallback
        == std::vector<std::string>{"anthropic:backup", "scripted:/base/s.json"});
  CHECK(m.cache);
  CHECK(m.cache_config.max_entries == 10);
  CHECK(def.models.at("anthropic:backup").api_key_env == "MY_KEY");
  const auto& l = def.model_limits.at("openai:main");
  CHECK(l.rate_per_sec == Approx(2.0));
  CHECK(l.tokens_per_minute == Approx(90000));
  CHECK(def.agents[0].model == "openai:main");

  auto refuse = [](const char* text, const char* why) {
    CHECK_THROWS_WITH(troupe::parse_swarm(json::parse(text), "t.json", ""),
                      Catch::Contains(why));
  };
  refuse(R"({"agents": [{"name": "a", "model": "gpt-4"}]})",
         "/agents/0/model: model 'gpt-4' must be scripted:FILE, openai:");
  refuse(R"({"models": {"openai:m": {"fallback": ["openai:m"]}},
             "agents": [{"name": "a", "model": "openai:m"}]})",
         "cannot fall back to itself");
  refuse(R"({"models": {"openai:m": {"stream": "yes"}},
             "agents": [{"name": "a", "model": "openai:m"}]})",
         "/models/openai:m/stream: must be true or false");
  refuse(R"({"models": {"scripted:x.json": {"base_url": "http://x"}},
             "agents": [{"name": "a", "model": "openai:m"}]})",
         "only HTTP models");
  refuse(R"({"models": {"openai:m": {"retry": {"base_ms": 10, "cap_ms": 5}}},
             "agents": [{"name": "a", "model": "openai:m"}]})",
         "must not exceed cap_ms");
  refuse(R"({"models": {"openai:m": {"api_key_env": "sk-live-123"}},
             "agents": [{"name": "a", "model": "openai:m"}]})",
         "/models/openai:m/api_key_env: must name an environment variable");
  refuse(R"({"models": {"openai:m": {"base_url": "https://u:p@h.example/v1"}},
             "agents": [{"name": "a", "model": "openai:m"}]})",
         "must not carry user info");
  // Two spellings of one script's path are one model.
  CHECK_THROWS_WITH(
    troupe::parse_swarm(json::parse(R"({"models": {"scripted:a.json": {},
                                                   "scripted:./a.json": {}},
                                        "agents": [{"name": "a"}]})"),
                        "t.json", "/base"),
    Catch::Contains("names model 'scripted:/base/a.json' a second time"));
  refuse(R"({"model_limits": {"openai:m": {"rate_per_sec": 1,
                                           "requests_per_minute": 60}},
             "agents": [{"name": "a", "model": "openai:m"}]})",
         "not both");
}

TEST_CASE("TROUPE_MODEL's override moves every agent to the HTTP model",
          "[http-model][config]") {
  model_test_server server;
  server.push(model_reply::say("from HTTP"));
  gateway_fixture f{{{"openai:test-model", endpoint(server)}},
                    [](runtime_config& cfg) {
                      cfg.model_override = "openai:test-model";
                    }};
  // The agent names a script that does not even exist.
  auto result = f.run("scripted:/nonexistent.json", "hi");
  INFO(result.error);
  CHECK(result.status == run_status::complete);
  CHECK(result.answer == "from HTTP");
}

TEST_CASE("shutting down with a model call in flight answers its run and "
          "stops cleanly",
          "[http-model]") {
  model_test_server server;
  server.push(model_fault::hang());
  gateway_fixture f{{{"openai:test-model", endpoint(server, true)}}};
  troupe::run_options opts;
  opts.timeout = 60s;
  auto pending = f.rt->submit(f.agent("openai:test-model"), "hi", opts);
  // The request is on the wire (and will never be answered) before the
  // runtime goes.
  REQUIRE(server.wait_for_requests(1, 10s));
  f.rt->shutdown();
  REQUIRE(pending.wait_for(10s) == std::future_status::ready);
  auto result = pending.get();
  CHECK(result.status != run_status::complete);
  // Nothing was sent again.
  CHECK(server.request_count() == 1);
}

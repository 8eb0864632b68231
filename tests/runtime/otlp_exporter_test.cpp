#include "runtime/otlp_exporter.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <future>
#include <map>
#include <set>

#include "runtime/builtin_tools.hpp"
#include "runtime/runtime.hpp"
#include "support/otlp_receiver.hpp"
#include "support/runtime_fixture.hpp"
#include "support/temp_dir.hpp"
#include "support/test_models.hpp"
#include "support/tls_once_server.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

constexpr auto wait_limit = 10s;

const std::string trace_a(32, 'a');

/// The n-th test span id: 16 hex digits, never all zeros.
std::string sid(int n) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016x", n + 1);
  return buf;
}

json span_rec(const std::string& id, const std::string& parent = "",
              const std::string& name = "step 1", json attrs = json::object(),
              const std::string& status = "ok") {
  return json{{"type", "span"},
              {"trace_id", trace_a},
              {"span_id", id},
              {"parent_span_id", parent},
              {"name", name},
              {"start_ns", 1000},
              {"end_ns", 2000},
              {"duration_ms", 0.001},
              {"status", status},
              {"status_message", status == "ok" ? "" : "it broke"},
              {"attributes", std::move(attrs)}};
}

json event_rec(const std::string& span, const std::string& name,
               int64_t time_ns) {
  return json{{"type", "event"},
              {"trace_id", trace_a},
              {"span_id", span},
              {"name", name},
              {"time_ns", time_ns},
              {"attributes", {{"troupe.step", 1}}}};
}

/// Options for a test: the receiver's endpoint, fast retries, and no batch
/// sent by the clock (only by size, flush() or stop()).
otlp_options test_options(const otlp_receiver& rx) {
  otlp_options o;
  o.endpoint = rx.endpoint();
  o.service_name = "troupe-test";
  o.flush_interval = std::chrono::hours{1};
  o.initial_backoff = 1ms;
  o.max_backoff = 5ms;
  o.timeout = wait_limit;
  return o;
}

/// Every outcome the stats count, summed: equals `enqueued` once the
/// exporter is idle (nothing queued, in flight or waiting for a span).
uint64_t settled(const otlp_stats& s) {
  return s.exported_spans + s.exported_events + s.rejected_spans
         + s.dropped_after_retries + s.dropped_rejected + s.dropped_invalid
         + s.dropped_at_stop;
}

/// A port nobody listens on: a server's, after it stopped.
uint16_t closed_port() {
  http_test_server server{[](const test_http_request&) {
    return test_http_action::reply(200, "");
  }};
  auto port = server.port();
  server.stop();
  return port;
}

/// The spans of `spans` by id.
std::map<std::string, json> by_id(const std::vector<json>& spans) {
  std::map<std::string, json> out;
  for (const auto& s : spans)
    out[s.at("spanId").get<std::string>()] = s;
  return out;
}

bool is_hex(const std::string& s, size_t digits) {
  return s.size() == digits
         && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

} // namespace

SCENARIO("otlp exporter: bad options are refused, naming the option",
         "[otlp]") {
  otlp_options good;
  good.endpoint = "http://127.0.0.1:4318/v1/traces";
  auto refused = [&](auto change, const std::string& needle) {
    auto o = good;
    change(o);
    INFO("expecting: " << needle);
    CHECK_THROWS_AS(otlp_exporter{o}, std::invalid_argument);
    CHECK_THROWS_WITH(otlp_exporter{o}, Catch::Contains(needle));
  };
  refused([](auto& o) { o.endpoint = ""; }, "otlp_options.endpoint is empty");
  refused([](auto& o) { o.endpoint = "ftp://h/v1/traces"; },
          "endpoint 'ftp://h/v1/traces': not an http:// or https:// URL");
  refused([](auto& o) { o.endpoint = "127.0.0.1:4318"; },
          "not an http:// or https:// URL");
  refused([](auto& o) { o.endpoint = "http:///v1/traces"; }, "endpoint");
  refused([](auto& o) { o.endpoint = "http://h:99999/v1/traces"; },
          "endpoint 'http://h:99999/v1/traces'");
  refused([](auto& o) { o.endpoint = "http://h:0/v1/traces"; }, "port 0");
  refused([](auto& o) { o.endpoint = "http://u:p@h/v1/traces"; }, "user info");
  refused([](auto& o) { o.endpoint = "http://h/v1 traces"; }, "spaces");
  refused([](auto& o) { o.max_queue = 0; }, "otlp_options.max_queue is 0");
  refused([](auto& o) { o.max_batch = 0; }, "otlp_options.max_batch is 0");
  refused([](auto& o) { o.max_attempts = 0; }, "otlp_options.max_attempts");
  refused([](auto& o) { o.flush_interval = 0ms; },
          "otlp_options.flush_interval");
  refused([](auto& o) { o.timeout = 0ms; }, "otlp_options.timeout");
  refused([](auto& o) { o.initial_backoff = -1ms; },
          "otlp_options.initial_backoff");
  refused([](auto& o) { o.max_backoff = 1ms; }, "otlp_options.max_backoff");
  refused([](auto& o) { o.service_name = ""; }, "otlp_options.service_name");
  refused([](auto& o) { o.headers["X-Key"] = "a\r\nInjected: 1"; },
          "otlp_options.headers: the value of 'X-Key'");
  refused([](auto& o) { o.headers["Bad Name"] = "v"; },
          "otlp_options.headers: bad header name 'Bad Name'");
  refused([](auto& o) { o.ca_file = "/nonexistent/ca.pem"; },
          "otlp_options.ca_file '/nonexistent/ca.pem'");
  // The scheme's default port, IPv6 literals and HTTPS are fine.
  for (auto url : {"http://collector/v1/traces", "HTTPS://collector/v1/traces",
                   "http://[::1]:4318/v1/traces"}) {
    auto o = good;
    o.endpoint = url;
    CHECK_NOTHROW(otlp_exporter{o});
  }
}

SCENARIO("otlp exporter: a real run arrives as OTLP/HTTP JSON", "[otlp]") {
  otlp_receiver rx;
  temp_dir dir;
  auto jsonl = dir.file("trace.jsonl");
  auto o = test_options(rx);
  // Small batches: spans and their events meet across batches, as they do
  // in a long run.
  o.max_batch = 3;
  otlp_exporter exporter{o};
  {
    auto cfg = test_runtime_config();
    cfg.trace_path = jsonl;
    cfg.trace_listeners.push_back(exporter.listener());
    runtime rt{cfg};
    rt.tools().add(calculator_tool());
    tool_definition broken;
    broken.name = "broken";
    broken.description = "Always fails";
    broken.fn = [](const json&, const tool_context&) -> json {
      throw std::runtime_error("the broken tool broke");
    };
    rt.tools().add(broken);
    auto log = std::make_shared<model_log>();
    rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                   if (step_of(req) == 1)
                     return call_tools(
                       {proposed("calculator", {{"expression", "6*7"}}, "c1"),
                        proposed("broken", json::object(), "c2")},
                       {12, 7});
                   return answer("42", {30, 4});
                 }));
    agent_spec spec;
    spec.name = "solver";
    spec.model = "m";
    spec.tools = {"calculator", "broken"};
    auto r = rt.run(rt.spawn_agent(spec), "What is 6*7?");
    REQUIRE(r.status == run_status::complete);
    rt.shutdown();
  }
  // Everything the tracer saw is in the file; the exporter got the same.
  exporter.stop(wait_limit);
  auto stats = exporter.stats();
  CHECK(stats.dropped_queue_full + stats.dropped_after_retries
          + stats.dropped_rejected + stats.dropped_invalid
          + stats.dropped_at_stop
        == 0);
  CHECK(settled(stats) == stats.enqueued);
  CHECK(stats.batches_sent == rx.requests().size());

  auto requests = rx.requests();
  REQUIRE_FALSE(requests.empty());
  for (const auto& req : requests) {
    CHECK(req.method == "POST");
    CHECK(req.target == "/v1/traces");
    CHECK(req.header("Content-Type") == "application/json");
  }
  for (const auto& body : rx.bodies()) {
    REQUIRE(body.is_object());
    const auto& rs = body.at("resourceSpans").at(0);
    CHECK(otlp_attribute(rs.at("resource"), "service.name")
          == json{{"stringValue", "troupe-test"}});
    CHECK(rs.at("scopeSpans").at(0).at("scope").at("name") == "troupe");
  }

  auto spans = by_id(rx.spans());
  std::vector<json> records;
  {
    std::ifstream in{jsonl};
    for (std::string line; std::getline(in, line);)
      records.push_back(json::parse(line));
  }
  size_t span_records = 0, event_records = 0;
  for (const auto& rec : records) {
    if (rec["type"] == "span" && rec["status"] == "unfinished") {
      FAIL_CHECK("a span did not end: " << rec.dump());
    } else if (rec["type"] == "span") {
      ++span_records;
      INFO(rec.dump());
      auto id = rec["span_id"].get<std::string>();
      REQUIRE(spans.count(id) == 1);
      const auto& s = spans[id];
      CHECK(s["name"] == rec["name"]);
      CHECK(s["traceId"] == rec["trace_id"]);
      CHECK(s.value("parentSpanId", "") == rec["parent_span_id"]);
      CHECK(s["startTimeUnixNano"] == std::to_string(rec["start_ns"].get<int64_t>()));
      CHECK(s["endTimeUnixNano"] == std::to_string(rec["end_ns"].get<int64_t>()));
      CHECK(s["status"]["code"] == (rec["status"] == "ok" ? 1 : 2));
    } else if (rec["type"] == "event") {
      ++event_records;
      INFO(rec.dump());
      // On its span, or on a carrier whose parent is its span.
      auto owner = rec["span_id"].get<std::string>();
      auto time = std::to_string(rec["time_ns"].get<int64_t>());
      bool found = false;
      for (const auto& [id, s] : spans) {
        bool mine = id == owner
                    || (s["name"] == "troupe.events"
                        && s.value("parentSpanId", "") == owner);
        if (mine)
          for (const auto& ev : s.value("events", json::array()))
            found = found
                    || (ev["name"] == rec["name"] && ev["timeUnixNano"] == time);
      }
      CHECK(found);
    }
  }
  CHECK(stats.exported_spans == span_records);
  CHECK(stats.exported_events == event_records);

  // The shape a trace viewer needs.
  auto named = [&](const std::string& name) {
    std::vector<json> out;
    for (const auto& [id, s] : spans)
      if (s["name"] == name)
        out.push_back(s);
    return out;
  };
  auto agent = named("invoke_agent solver");
  auto chats = named("chat m");
  auto calc = named("execute_tool calculator");
  auto broke = named("execute_tool broken");
  REQUIRE(agent.size() == 1);
  REQUIRE(chats.size() == 2);
  REQUIRE(calc.size() == 1);
  REQUIRE(broke.size() == 1);
  const auto trace = agent[0]["traceId"].get<std::string>();
  for (const auto& [id, s] : spans) {
    CHECK(is_hex(s["traceId"], 32));
    CHECK(is_hex(s["spanId"], 16));
    if (s.contains("parentSpanId")) {
      CHECK(is_hex(s["parentSpanId"], 16));
      CHECK(spans.count(s["parentSpanId"]) == 1); // no dangling parent
    }
    CHECK(s["traceId"] == trace);
  }
  CHECK(agent[0]["kind"] == 1);
  CHECK(agent[0]["status"] == json{{"code", 1}});
  CHECK_FALSE(agent[0].contains("parentSpanId"));
  CHECK(otlp_attribute(agent[0], "gen_ai.agent.name")
        == json{{"stringValue", "solver"}});
  CHECK(otlp_attribute(agent[0], "gen_ai.usage.input_tokens")
        == json{{"intValue", "42"}});
  bool transitions = false;
  for (const auto& ev : agent[0].value("events", json::array()))
    transitions = transitions || ev["name"] == "agent.transition";
  CHECK(transitions);
  for (const auto& c : chats) {
    CHECK(c["kind"] == 3);
    CHECK(otlp_attribute(c, "gen_ai.operation.name")
          == json{{"stringValue", "chat"}});
    // chat's parent is a step, whose parent is the agent.
    const auto& step = spans[c["parentSpanId"]];
    CHECK_THAT(step["name"].get<std::string>(), Catch::StartsWith("step "));
    CHECK(step["parentSpanId"] == agent[0]["spanId"]);
  }
  std::set<json> chat_inputs;
  for (const auto& c : chats)
    chat_inputs.insert(otlp_attribute(c, "gen_ai.usage.input_tokens"));
  CHECK(chat_inputs
        == std::set<json>{json{{"intValue", "12"}}, json{{"intValue", "30"}}});
  CHECK(calc[0]["kind"] == 3);
  CHECK(calc[0]["status"]["code"] == 1);
  CHECK(otlp_attribute(calc[0], "gen_ai.tool.name")
        == json{{"stringValue", "calculator"}});
  CHECK(otlp_attribute(calc[0], "troupe.tool.ok") == json{{"boolValue", true}});
  CHECK(spans[calc[0]["parentSpanId"]]["name"] == "step 1");
  CHECK(broke[0]["kind"] == 3);
  CHECK(broke[0]["status"]["code"] == 2);
  CHECK_THAT(broke[0]["status"]["message"].get<std::string>(),
             Catch::Contains("the broken tool broke"));
  CHECK(otlp_attribute(broke[0], "troupe.tool.ok")
        == json{{"boolValue", false}});
}

SCENARIO("otlp exporter: N records go out in ceil(N / max_batch) requests "
         "on one kept-alive connection",
         "[otlp]") {
  for (auto [n, batch] : {std::pair<int, size_t>{10, 4}, {8, 4}, {1, 4},
                          {7, 1}, {5, 256}}) {
    otlp_receiver rx;
    auto o = test_options(rx);
    o.max_batch = batch;
    otlp_exporter exporter{o};
    auto listener = exporter.listener();
    for (int i = 0; i < n; ++i)
      listener(span_rec(sid(i)));
    REQUIRE(exporter.flush(wait_limit));
    INFO(n << " records, max_batch " << batch);
    auto requests = rx.requests();
    CHECK(requests.size() == (n + batch - 1) / batch);
    std::set<std::string> ids;
    for (const auto& body : rx.bodies()) {
      auto count = body["resourceSpans"][0]["scopeSpans"][0]["spans"].size();
      CHECK(count >= 1);
      CHECK(count <= batch);
    }
    for (const auto& s : rx.spans())
      ids.insert(s["spanId"].get<std::string>());
    CHECK(ids.size() == static_cast<size_t>(n));
    for (const auto& req : requests)
      CHECK(req.connection == 1);
    auto st = exporter.stats();
    CHECK(st.enqueued == static_cast<uint64_t>(n));
    CHECK(st.exported_spans == static_cast<uint64_t>(n));
    CHECK(st.batches_sent == requests.size());
    CHECK(st.retries == 0);
  }
}

SCENARIO("otlp exporter: a batch is sent when the oldest record has waited "
         "flush_interval",
         "[otlp]") {
  otlp_receiver rx;
  auto o = test_options(rx);
  o.flush_interval = 20ms;
  otlp_exporter exporter{o};
  exporter.listener()(span_rec(sid(1)));
  // No flush(): only the interval can send it.
  REQUIRE(rx.wait_requests(1, wait_limit));
  REQUIRE(rx.spans().size() == 1);
  CHECK(rx.spans()[0]["spanId"] == sid(1));
}

SCENARIO("otlp exporter: a kept-alive connection the collector closed is "
         "re-opened",
         "[otlp]") {
  otlp_receiver rx;
  auto first = test_http_action::reply(200, "{}");
  first.close_silently = true;
  rx.script({first});
  otlp_exporter exporter{test_options(rx)};
  auto listener = exporter.listener();
  listener(span_rec(sid(1)));
  REQUIRE(exporter.flush(wait_limit));
  listener(span_rec(sid(2)));
  REQUIRE(exporter.flush(wait_limit));
  auto st = exporter.stats();
  CHECK(st.exported_spans == 2);
  CHECK(st.batches_sent == 2);
  CHECK(rx.spans().size() == 2);
  CHECK(rx.server().connections() == 2);
}

SCENARIO("otlp exporter: retries and drops", "[otlp]") {
  otlp_receiver rx;
  auto o = test_options(rx);
  GIVEN("a collector that answers 503, then 429 with Retry-After, then 200") {
    auto busy = test_http_action::reply(429, "slow down");
    busy.headers.emplace_back("Retry-After", "0");
    rx.script({test_http_action::reply(503, "unavailable"), busy});
    otlp_exporter exporter{o};
    auto listener = exporter.listener();
    for (int i = 0; i < 3; ++i)
      listener(span_rec(sid(i)));
    REQUIRE(exporter.flush(wait_limit));
    THEN("the batch is delivered once, after two counted retries") {
      auto requests = rx.requests();
      REQUIRE(requests.size() == 3);
      CHECK(requests[0].body == requests[2].body);
      CHECK(requests[1].body == requests[2].body);
      auto st = exporter.stats();
      CHECK(st.retries == 2);
      CHECK(st.batches_sent == 1);
      CHECK(st.exported_spans == 3);
      CHECK(settled(st) == st.enqueued);
      CHECK_THAT(st.last_error, Catch::Contains("429"));
    }
  }
  GIVEN("a collector that answers 400") {
    rx.script({test_http_action::reply(400, "bad span: no name")});
    otlp_exporter exporter{o};
    auto listener = exporter.listener();
    listener(span_rec(sid(1)));
    listener(span_rec(sid(2)));
    REQUIRE(exporter.flush(wait_limit));
    THEN("the batch is dropped and counted, not retried") {
      CHECK(rx.requests().size() == 1);
      auto st = exporter.stats();
      CHECK(st.dropped_rejected == 2);
      CHECK(st.retries == 0);
      CHECK(st.exported_spans == 0);
      CHECK_THAT(st.last_error, Catch::Contains("HTTP 400")
                                  && Catch::Contains("bad span: no name"));
    }
    AND_THEN("the next batch is sent as usual") {
      listener(span_rec(sid(3)));
      REQUIRE(exporter.flush(wait_limit));
      CHECK(rx.requests().size() == 2);
      CHECK(exporter.stats().exported_spans == 1);
    }
  }
  GIVEN("a collector that accepts only part of a batch") {
    rx.script({test_http_action::reply(
      200, R"({"partialSuccess":{"rejectedSpans":"2","errorMessage":"bad attrs"}})")});
    otlp_exporter exporter{o};
    auto listener = exporter.listener();
    for (int i = 0; i < 5; ++i)
      listener(span_rec(sid(i)));
    REQUIRE(exporter.flush(wait_limit));
    THEN("the rejected spans are counted apart") {
      auto st = exporter.stats();
      CHECK(st.rejected_spans == 2);
      CHECK(st.exported_spans == 3);
      CHECK(st.retries == 0);
      CHECK_THAT(st.last_error, Catch::Contains("bad attrs"));
    }
  }
  GIVEN("no collector at all") {
    o.endpoint = "http://127.0.0.1:" + std::to_string(closed_port())
                 + "/v1/traces";
    o.max_attempts = 3;
    otlp_exporter exporter{o};
    auto listener = exporter.listener();
    for (int i = 0; i < 4; ++i)
      listener(span_rec(sid(i)));
    REQUIRE(exporter.flush(wait_limit));
    THEN("the batch is dropped after max_attempts, counted") {
      auto st = exporter.stats();
      CHECK(st.dropped_after_retries == 4);
      CHECK(st.retries == 2);
      CHECK(st.batches_sent == 0);
      CHECK_THAT(st.last_error, Catch::Contains("connect 127.0.0.1:"));
      exporter.stop();
      CHECK(settled(exporter.stats()) == 4);
    }
  }
}

SCENARIO("otlp exporter: stop() gives up at its bound", "[otlp]") {
  otlp_receiver rx;
  auto o = test_options(rx);
  o.timeout = std::chrono::hours{1};
  GIVEN("a collector that asks to come back in an hour") {
    auto later = test_http_action::reply(503, "later");
    later.headers.emplace_back("Retry-After", "3600");
    rx.answer_rest(later);
    o.max_backoff = std::chrono::hours{1};
    otlp_exporter exporter{o};
    auto listener = exporter.listener();
    for (int i = 0; i < 3; ++i)
      listener(span_rec(sid(i)));
    CHECK_FALSE(exporter.flush(0ms)); // starts the batch, does not wait
    REQUIRE(rx.wait_requests(1, wait_limit));
    exporter.stop(50ms);
    THEN("the Retry-After was honoured and the batch counted as given up") {
      CHECK(rx.requests().size() == 1);
      auto st = exporter.stats();
      CHECK(st.dropped_at_stop == 3);
      CHECK(st.retries == 0); // the retry it waited for never started
      CHECK(settled(st) == st.enqueued);
    }
  }
  GIVEN("a collector that never answers") {
    rx.answer_rest(test_http_action::never());
    o.max_batch = 2;
    o.max_queue = 8;
    otlp_exporter exporter{o};
    auto listener = exporter.listener();
    listener(span_rec(sid(100)));
    CHECK_FALSE(exporter.flush(0ms));
    REQUIRE(rx.wait_requests(1, wait_limit));
    WHEN("more than max_queue records arrive while the sender is stuck") {
      const uint64_t extra = 5;
      for (int i = 0; i < 8 + static_cast<int>(extra); ++i)
        listener(span_rec(sid(i)));
      THEN("exactly the excess is dropped and counted") {
        auto st = exporter.stats();
        CHECK(st.dropped_queue_full == extra);
        CHECK(st.enqueued == 9);
        CHECK_FALSE(exporter.flush(0ms));
        exporter.stop(50ms);
        st = exporter.stats();
        CHECK(st.dropped_at_stop == 9); // one in flight, eight queued
        CHECK(st.exported_spans == 0);
        CHECK(settled(st) == st.enqueued);
        CHECK(rx.requests().size() == 1);
        AND_THEN("records after stop are counted too, and stop is idempotent") {
          listener(span_rec(sid(50)));
          CHECK(exporter.stats().dropped_at_stop == 10);
          exporter.stop();
          CHECK(exporter.flush(0ms));
        }
      }
    }
  }
}

SCENARIO("otlp exporter: events travel with their spans", "[otlp]") {
  otlp_receiver rx;
  auto o = test_options(rx);
  otlp_exporter exporter{o};
  auto listener = exporter.listener();
  const auto a = sid(1), b = sid(2);
  WHEN("an event comes in a batch before its span") {
    listener(event_rec(a, "first", 1100));
    REQUIRE(exporter.flush(wait_limit));
    THEN("it waits, and nothing is sent") {
      CHECK(rx.requests().empty());
      CHECK(exporter.stats().held_events == 1);
    }
    AND_WHEN("the span comes, with another event after it") {
      listener(span_rec(a));
      listener(event_rec(a, "second", 1200));
      REQUIRE(exporter.flush(wait_limit));
      THEN("both go out on the span, in order") {
        auto spans = rx.spans();
        REQUIRE(spans.size() == 1);
        CHECK(spans[0]["spanId"] == a);
        REQUIRE(spans[0]["events"].size() == 2);
        CHECK(spans[0]["events"][0]
              == json{{"timeUnixNano", "1100"},
                      {"name", "first"},
                      {"attributes",
                       {{{"key", "troupe.step"},
                         {"value", {{"intValue", "1"}}}}}}});
        CHECK(spans[0]["events"][1]["name"] == "second");
        CHECK(exporter.stats().held_events == 0);
      }
      AND_WHEN("an event comes after its span was sent") {
        listener(event_rec(a, "late", 2500));
        REQUIRE(exporter.flush(wait_limit));
        THEN("it goes out at once on a carrier span under its span") {
          auto spans = rx.spans();
          REQUIRE(spans.size() == 2);
          const auto& carrier = spans[1];
          CHECK(carrier["name"] == "troupe.events");
          CHECK(carrier["parentSpanId"] == a);
          CHECK(carrier["traceId"] == trace_a);
          CHECK(carrier["spanId"] != a);
          CHECK(carrier["startTimeUnixNano"] == "2500");
          CHECK(carrier["endTimeUnixNano"] == "2500");
          CHECK(otlp_attribute(carrier, "troupe.events.span_id")
                == json{{"stringValue", a}});
          REQUIRE(carrier["events"].size() == 1);
          CHECK(carrier["events"][0]["name"] == "late");
          auto st = exporter.stats();
          CHECK(st.exported_spans == 1); // carriers are not records
          CHECK(st.exported_events == 3);
        }
      }
    }
  }
  WHEN("an event's span never comes") {
    listener(event_rec(b, "orphan", 1300));
    listener(event_rec(b, "orphan 2", 1400));
    REQUIRE(exporter.flush(wait_limit));
    CHECK(rx.requests().empty());
    exporter.stop(wait_limit);
    THEN("stop() sends its events on a carrier") {
      auto spans = rx.spans();
      REQUIRE(spans.size() == 1);
      CHECK(spans[0]["parentSpanId"] == b);
      CHECK(spans[0]["startTimeUnixNano"] == "1300");
      CHECK(spans[0]["endTimeUnixNano"] == "1400");
      CHECK(spans[0]["events"].size() == 2);
      auto st = exporter.stats();
      CHECK(st.exported_events == 2);
      CHECK(st.held_events == 0);
      CHECK(settled(st) == st.enqueued);
    }
  }
}

SCENARIO("otlp exporter: at most max_queue events wait for their spans",
         "[otlp]") {
  otlp_receiver rx;
  auto o = test_options(rx);
  o.max_queue = 2;
  otlp_exporter exporter{o};
  auto listener = exporter.listener();
  listener(event_rec(sid(1), "x", 10));
  listener(event_rec(sid(2), "y", 20));
  REQUIRE(exporter.flush(wait_limit));
  listener(event_rec(sid(3), "z", 30));
  REQUIRE(exporter.flush(wait_limit));
  // The oldest waiting event made room for the newest.
  auto spans = rx.spans();
  REQUIRE(spans.size() == 1);
  CHECK(spans[0]["parentSpanId"] == sid(1));
  CHECK(spans[0]["events"][0]["name"] == "x");
  CHECK(exporter.stats().held_events == 2);
}

SCENARIO("otlp exporter: malformed records are dropped, the rest of their "
         "batch is sent",
         "[otlp]") {
  otlp_receiver rx;
  otlp_exporter exporter{test_options(rx)};
  auto listener = exporter.listener();
  auto short_id = span_rec("abc");
  auto bad_time = span_rec(sid(2));
  bad_time["end_ns"] = "soon";
  auto zero_trace = span_rec(sid(3));
  zero_trace["trace_id"] = std::string(32, '0');
  auto bad_attrs = span_rec(sid(4));
  bad_attrs["attributes"] = "none";
  listener(short_id);
  listener(bad_time);
  listener(zero_trace);
  listener(bad_attrs);
  listener(span_rec(sid(5)));
  // Not ours: ignored, not counted.
  listener(json{{"type", "span_start"}, {"span_id", sid(6)}});
  listener(json::array({1, 2}));
  listener(json{{"type", 7}});
  REQUIRE(exporter.flush(wait_limit));
  auto st = exporter.stats();
  CHECK(st.enqueued == 5);
  CHECK(st.dropped_invalid == 4);
  CHECK(st.exported_spans == 1);
  CHECK_THAT(st.last_error, Catch::Contains("malformed trace record"));
  auto spans = rx.spans();
  REQUIRE(spans.size() == 1);
  CHECK(spans[0]["spanId"] == sid(5));
}

SCENARIO("otlp exporter: the listener outlives the exporter", "[otlp]") {
  trace_listener listener;
  {
    otlp_receiver rx;
    otlp_exporter exporter{test_options(rx)};
    listener = exporter.listener();
  }
  // The exporter is gone: the record is dropped, nothing crashes.
  listener(span_rec(sid(1)));
  SUCCEED();
}

SCENARIO("otlp encoding: attribute types, kinds, statuses and ids",
         "[otlp]") {
  json attrs{{"s", "text"},
             {"i", -5},
             {"u", 18446744073709551615ULL},
             {"d", 0.5},
             {"nan", std::nan("")},
             {"b", true},
             {"a", {1, "x", nullptr}},
             {"o", {{"k", 2}}},
             {"n", nullptr}};
  auto rec = span_rec("ABCDEF0123456789", "", "chat gpt", attrs, "error");
  rec["trace_id"] = std::string(32, 'F');
  rec["status_message"] = "";
  auto req = detail::otlp_encode(
    {rec, span_rec(sid(2), "abcdef0123456789", "invoke_agent x"),
     span_rec(sid(3), "0000000000000000", "execute_tool t",
              {{"gen_ai.operation.name", "execute_tool"}}, "unset")},
    "svc");
  const auto& spans = req["resourceSpans"][0]["scopeSpans"][0]["spans"];
  REQUIRE(spans.size() == 3);
  const auto& chat = spans[0];
  CHECK(chat["traceId"] == std::string(32, 'f'));
  CHECK(chat["spanId"] == "abcdef0123456789");
  CHECK_FALSE(chat.contains("parentSpanId"));
  CHECK(chat["kind"] == 3); // by its name when no operation is given
  CHECK(chat["status"] == json{{"code", 2}, {"message", "error"}});
  CHECK(otlp_attribute(chat, "s") == json{{"stringValue", "text"}});
  CHECK(otlp_attribute(chat, "i") == json{{"intValue", "-5"}});
  CHECK(otlp_attribute(chat, "u")
        == json{{"stringValue", "18446744073709551615"}});
  CHECK(otlp_attribute(chat, "d") == json{{"doubleValue", 0.5}});
  CHECK(otlp_attribute(chat, "nan") == json{{"doubleValue", "NaN"}});
  CHECK(otlp_attribute(chat, "b") == json{{"boolValue", true}});
  CHECK(otlp_attribute(chat, "a")
        == json{{"arrayValue",
                 {{"values",
                   {{{"intValue", "1"}}, {{"stringValue", "x"}}, json::object()}}}}});
  CHECK(otlp_attribute(chat, "o")
        == json{{"kvlistValue",
                 {{"values", {{{"key", "k"}, {"value", {{"intValue", "2"}}}}}}}}});
  CHECK(otlp_attribute(chat, "n").is_null());
  CHECK(chat["attributes"].size() == 8);
  CHECK(spans[1]["kind"] == 1);
  CHECK(spans[1]["parentSpanId"] == "abcdef0123456789");
  CHECK(spans[1]["status"] == json{{"code", 1}});
  CHECK(spans[2]["kind"] == 3);
  CHECK_FALSE(spans[2].contains("parentSpanId")); // all zeros: no parent
  CHECK(spans[2]["status"] == json{{"code", 0}});
  CHECK(otlp_attribute(req["resourceSpans"][0]["resource"], "service.name")
        == json{{"stringValue", "svc"}});
  CHECK_THROWS_WITH(detail::otlp_encode({span_rec("xyz")}),
                    Catch::Contains("span_id 'xyz' is not 16 hex digits"));
  auto no_name = span_rec(sid(1));
  no_name.erase("name");
  CHECK_THROWS_WITH(detail::otlp_encode({no_name}),
                    Catch::Contains("missing name"));
}

SCENARIO("otlp exporter: HTTPS with a custom CA", "[otlp][tls]") {
  temp_dir dir;
  auto made = make_localhost_certificate(dir.path().string());
  if (!made.error.empty()) {
    WARN("TLS test skipped: " << made.error);
    return;
  }
  const auto& cert = made.cert;
  tls_once_server rx{cert, made.key};
  auto body = rx.exchange();
  otlp_options o;
  o.endpoint = "https://localhost:" + std::to_string(rx.port()) + "/v1/traces";
  o.flush_interval = std::chrono::hours{1};
  o.max_attempts = 1;
  o.timeout = wait_limit;
  WHEN("the exporter trusts the collector's CA") {
    o.ca_file = cert;
    otlp_exporter exporter{o};
    exporter.listener()(span_rec(sid(1)));
    REQUIRE(exporter.flush(wait_limit));
    THEN("the spans arrive over TLS") {
      REQUIRE(body.wait_for(wait_limit) == std::future_status::ready);
      auto doc = json::parse(body.get().body, nullptr, false);
      REQUIRE(doc.is_object());
      CHECK(doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"]
            == sid(1));
      CHECK(exporter.stats().exported_spans == 1);
    }
  }
  WHEN("it does not") {
    otlp_exporter exporter{o};
    exporter.listener()(span_rec(sid(1)));
    REQUIRE(exporter.flush(wait_limit));
    THEN("the handshake fails and the batch is dropped, named") {
      auto st = exporter.stats();
      CHECK(st.dropped_after_retries == 1);
      CHECK_THAT(st.last_error, Catch::Contains("TLS handshake localhost:"));
      REQUIRE(body.wait_for(wait_limit) == std::future_status::ready);
      CHECK_THAT(body.get().outcome, Catch::StartsWith("handshake: "));
    }
  }
}

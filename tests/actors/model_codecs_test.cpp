#include "actors/model_codecs.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "messages/errors.hpp"
#include "runtime/sse_parser.hpp"

using namespace troupe;

namespace {

chat_message msg(chat_role role, std::string content) {
  chat_message m;
  m.role = role;
  m.content = std::move(content);
  return m;
}

model_tool_call call_of(std::string id, std::string name, json arguments,
                        std::string raw = {}) {
  model_tool_call c;
  c.id = std::move(id);
  c.name = std::move(name);
  c.arguments = std::move(arguments);
  c.raw_arguments = std::move(raw);
  return c;
}

chat_message assistant_calling(std::string text,
                               std::vector<model_tool_call> calls) {
  auto m = msg(chat_role::assistant, std::move(text));
  m.tool_calls = std::move(calls);
  return m;
}

chat_message tool_result(std::string call_id, std::string content) {
  auto m = msg(chat_role::tool, std::move(content));
  m.tool_call_id = std::move(call_id);
  m.name = "weather";
  return m;
}

tool_spec weather_tool() {
  tool_spec t;
  t.name = "weather";
  t.description = "Current weather in a city.";
  t.parameters = json::parse(
    R"({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]})");
  return t;
}

chat_request request(std::vector<chat_message> messages, json params = {}) {
  chat_request req;
  req.model = "test:model";
  req.messages = std::move(messages);
  req.params = std::move(params);
  return req;
}

model_wire_options wire(bool stream = false) {
  model_wire_options opts;
  opts.model_id = "m-1";
  opts.stream = stream;
  return opts;
}

sse_event data_event(std::string data) {
  sse_event ev;
  ev.data = std::move(data);
  return ev;
}

sse_event named_event(std::string name, std::string data) {
  sse_event ev;
  ev.event = std::move(name);
  ev.data = std::move(data);
  return ev;
}

std::string error_of(const caf::error& err) {
  return error_text(err);
}

template <class T>
std::string error_of(const caf::expected<T>& x) {
  return x ? std::string{"no error"} : error_text(x.error());
}

/// Feeds every event, requiring each to be accepted; returns the deltas.
std::vector<model_delta> feed_all(model_stream_decoder& dec,
                                  const std::vector<sse_event>& events) {
  std::vector<model_delta> out;
  for (const auto& ev : events) {
    auto err = dec.feed(ev, out);
    INFO("event " << ev.event << " " << ev.data);
    REQUIRE(!err);
  }
  return out;
}

/// Runs `text` through a real SSE parser, `step` bytes at a time.
std::vector<sse_event> parse_sse(const std::string& text, size_t step) {
  sse_parser p;
  std::vector<sse_event> out;
  for (size_t i = 0; i < text.size(); i += step)
    p.feed(std::string_view{text}.substr(i, step),
           [&out](sse_event ev) { out.push_back(std::move(ev)); });
  p.finish();
  return out;
}

/// An OpenAI chunk whose first choice carries `delta`.
std::string openai_chunk(const json& delta, const json& finish = nullptr) {
  json chunk{{"id", "chatcmpl-1"},
             {"object", "chat.completion.chunk"},
             {"choices",
              json::array({{{"index", 0},
                            {"delta", delta},
                            {"finish_reason", finish}}})}};
  return chunk.dump();
}

/// An OpenAI tool-call fragment.
json openai_fragment(int index, const std::string& args,
                     const std::string& id = {},
                     const std::string& name = {}) {
  json fn{{"arguments", args}};
  if (!name.empty())
    fn["name"] = name;
  json entry{{"index", index}, {"function", fn}};
  if (!id.empty()) {
    entry["id"] = id;
    entry["type"] = "function";
  }
  return entry;
}

std::string concat_arguments(const std::vector<model_delta>& deltas,
                             int32_t index) {
  std::string out;
  for (const auto& d : deltas)
    if (d.what == model_delta::kind::tool_arguments && d.index == index)
      out += d.text;
  return out;
}

std::string concat_text(const std::vector<model_delta>& deltas) {
  std::string out;
  for (const auto& d : deltas)
    if (d.what == model_delta::kind::text)
      out += d.text;
  return out;
}

const char* anthropic_tool_stream =
  "event: message_start\n"
  "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\","
  "\"type\":\"message\",\"role\":\"assistant\",\"content\":[],"
  "\"model\":\"claude\",\"stop_reason\":null,"
  "\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,"
  "\"output_tokens\":1}}}\n\n"
  "event: content_block_start\n"
  "data: {\"type\":\"content_block_start\",\"index\":0,"
  "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
  "event: ping\n"
  "data: {\"type\": \"ping\"}\n\n"
  "event: content_block_delta\n"
  "data: {\"type\":\"content_block_delta\",\"index\":0,"
  "\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me \"}}\n\n"
  "event: content_block_delta\n"
  "data: {\"type\":\"content_block_delta\",\"index\":0,"
  "\"delta\":{\"type\":\"text_delta\",\"text\":\"check.\"}}\n\n"
  "event: content_block_stop\n"
  "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
  "event: content_block_start\n"
  "data: {\"type\":\"content_block_start\",\"index\":1,"
  "\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\","
  "\"name\":\"weather\",\"input\":{}}}\n\n"
  "event: content_block_delta\n"
  "data: {\"type\":\"content_block_delta\",\"index\":1,"
  "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n"
  "event: content_block_delta\n"
  "data: {\"type\":\"content_block_delta\",\"index\":1,"
  "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\"\"}}\n\n"
  "event: content_block_delta\n"
  "data: {\"type\":\"content_block_delta\",\"index\":1,"
  "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\": \\\"Paris\\\"}\"}}\n\n"
  "event: content_block_stop\n"
  "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n"
  "event: message_delta\n"
  "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\","
  "\"stop_sequence\":null},\"usage\":{\"output_tokens\":42}}\n\n"
  "event: message_stop\n"
  "data: {\"type\":\"message_stop\"}\n\n";

std::vector<sse_event> anthropic_events() {
  return parse_sse(anthropic_tool_stream, 1 << 20);
}

} // namespace

// --- names and provider errors ----------------------------------------------

TEST_CASE("model codecs: names of providers and delta kinds", "[codec]") {
  CHECK(std::string{to_string(model_provider::openai)} == "openai");
  CHECK(std::string{to_string(model_provider::anthropic)} == "anthropic");
  CHECK(std::string{to_string(model_delta::kind::text)} == "text");
  CHECK(std::string{to_string(model_delta::kind::tool_call)} == "tool_call");
  CHECK(std::string{to_string(model_delta::kind::tool_arguments)}
        == "tool_arguments");
}

TEST_CASE("model codecs: provider_error_text finds the message",
          "[codec]") {
  CHECK(provider_error_text(
          R"({"error":{"message":"Rate limit reached","type":"requests"}})")
        == "requests: Rate limit reached");
  CHECK(provider_error_text(
          R"({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}})")
        == "overloaded_error: Overloaded");
  CHECK(provider_error_text(R"({"error":{"message":"no type"}})") == "no type");
  CHECK(provider_error_text(R"({"error":"model not found"})")
        == "model not found");
  CHECK(provider_error_text(
          R"({"object":"error","message":"bad request","code":400})")
        == "bad request");
  CHECK(provider_error_text("Bad Gateway") == "Bad Gateway");
  CHECK(provider_error_text("") == "(empty body)");
  std::string long_body(1000, 'x');
  auto cut = provider_error_text(long_body);
  CHECK(cut.size() == 303);
  CHECK(cut.substr(300) == "...");
  // A cut inside a multi-byte character backs up to its start.
  std::string accents;
  while (accents.size() < 400)
    accents += "\xC3\xA9";
  accents = "x" + accents;
  auto cut2 = provider_error_text(accents);
  CHECK(cut2.size() == 302);
}

// --- OpenAI: encoding -------------------------------------------------------

TEST_CASE("openai codec: encodes messages, tools, params and streaming",
          "[codec]") {
  auto req = request({msg(chat_role::system, "Be brief."),
                      msg(chat_role::user, "Weather in Paris?")},
                     json{{"temperature", 0.2},
                          {"tool_choice", "auto"},
                          {"model", "evil"},
                          {"messages", json::array()},
                          {"stream", true}});
  req.tools.push_back(weather_tool());
  auto body = openai::encode_request(req, wire());
  CHECK(body["model"] == "m-1");
  CHECK(body["temperature"] == 0.2);
  CHECK(body["tool_choice"] == "auto");
  CHECK(body["stream"] == false);
  CHECK_FALSE(body.contains("stream_options"));
  REQUIRE(body["messages"].size() == 2);
  CHECK(body["messages"][0] == json{{"role", "system"}, {"content", "Be brief."}});
  CHECK(body["messages"][1]
        == json{{"role", "user"}, {"content", "Weather in Paris?"}});
  REQUIRE(body["tools"].size() == 1);
  CHECK(body["tools"][0]["type"] == "function");
  CHECK(body["tools"][0]["function"]["name"] == "weather");
  CHECK(body["tools"][0]["function"]["description"]
        == "Current weather in a city.");
  CHECK(body["tools"][0]["function"]["parameters"]["required"][0] == "city");

  auto streamed = openai::encode_request(req, wire(true));
  CHECK(streamed["stream"] == true);
  CHECK(streamed["stream_options"] == json{{"include_usage", true}});
  CHECK(streamed["messages"].size() == 2);
}

TEST_CASE("openai codec: no tools key without tools, null params accepted",
          "[codec]") {
  auto body = openai::encode_request(request({msg(chat_role::user, "hi")}),
                                     wire());
  CHECK_FALSE(body.contains("tools"));
  CHECK(body["messages"].size() == 1);
  tool_spec bare;
  bare.name = "now";
  auto req = request({msg(chat_role::user, "hi")}, json::array({1, 2}));
  req.tools.push_back(bare);
  body = openai::encode_request(req, wire());
  CHECK(body["tools"][0]["function"]["parameters"]["type"] == "object");
  CHECK_FALSE(body["tools"][0]["function"].contains("description"));
}

TEST_CASE("openai codec: assistant tool calls and tool results", "[codec]") {
  auto parsed = call_of("call_a", "weather", json{{"city", "Paris"}},
                        R"({"city": "Paris"})");
  auto broken = call_of("call_b", "weather", json{}, "{city: Paris");
  auto empty = call_of("call_c", "now", json::object());
  auto none = call_of("call_d", "now", json{});
  auto req = request(
    {msg(chat_role::user, "go"),
     assistant_calling("", {parsed, broken, empty, none}),
     tool_result("call_a", "sunny"),
     assistant_calling("Checking.", {parsed})});
  auto body = openai::encode_request(req, wire());
  const auto& m = body["messages"];
  REQUIRE(m.size() == 4);
  CHECK(m[1]["role"] == "assistant");
  CHECK(m[1]["content"].is_null());
  REQUIRE(m[1]["tool_calls"].size() == 4);
  const auto& c0 = m[1]["tool_calls"][0];
  CHECK(c0["id"] == "call_a");
  CHECK(c0["type"] == "function");
  CHECK(c0["function"]["name"] == "weather");
  CHECK(json::parse(c0["function"]["arguments"].get<std::string>())
        == json{{"city", "Paris"}});
  CHECK(m[1]["tool_calls"][1]["function"]["arguments"] == "{city: Paris");
  CHECK(m[1]["tool_calls"][2]["function"]["arguments"] == "{}");
  CHECK(m[1]["tool_calls"][3]["function"]["arguments"] == "{}");
  CHECK(m[2] == json{{"role", "tool"},
                     {"tool_call_id", "call_a"},
                     {"content", "sunny"}});
  CHECK(m[3]["content"] == "Checking.");
}

// --- OpenAI: decoding -------------------------------------------------------

TEST_CASE("openai codec: decodes a text reply with usage", "[codec]") {
  auto resp = openai::decode_response(R"({
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-x",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello!"}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
  })",
                                      "openai:gpt-x");
  REQUIRE(resp);
  CHECK(resp->message.role == chat_role::assistant);
  CHECK(resp->message.content == "Hello!");
  CHECK(resp->message.tool_calls.empty());
  CHECK(resp->finish_reason == "stop");
  CHECK(resp->usage.input_tokens == 12);
  CHECK(resp->usage.output_tokens == 3);
  CHECK(resp->model == "openai:gpt-x");
}

TEST_CASE("openai codec: decodes tool calls, good and malformed", "[codec]") {
  auto resp = openai::decode_response(R"({
    "choices": [{"finish_reason": "tool_calls", "message": {
      "role": "assistant", "content": null, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}},
        {"id": "c2", "type": "function",
         "function": {"name": "now", "arguments": ""}},
        {"id": "c3", "type": "function",
         "function": {"name": "search", "arguments": "{\"q\": \"x\""}},
        {"id": "c4", "type": "function",
         "function": {"name": "lookup", "arguments": "[1, 2]"}},
        {"type": "function",
         "function": {"name": "ollama_style", "arguments": {"a": 1}}}
      ]}}]})",
                                      "openai:m");
  REQUIRE(resp);
  CHECK(resp->message.content.empty());
  CHECK(resp->finish_reason == "tool_calls");
  CHECK(resp->usage.input_tokens == 0);
  const auto& calls = resp->message.tool_calls;
  REQUIRE(calls.size() == 5);
  CHECK(calls[0].id == "c1");
  CHECK(calls[0].name == "weather");
  CHECK(calls[0].arguments.value == json{{"city", "Paris"}});
  CHECK(calls[0].raw_arguments == R"({"city": "Paris"})");
  CHECK(calls[0].parse_error.empty());
  CHECK(calls[1].arguments.value == json::object());
  CHECK(calls[1].parse_error.empty());
  CHECK(calls[2].arguments.value.is_null());
  CHECK(calls[2].raw_arguments == R"({"q": "x")");
  CHECK_THAT(calls[2].parse_error, Catch::Contains("parse error"));
  // Valid JSON but not an object: kept as parsed, for the agent to refuse.
  CHECK(calls[3].arguments.value.is_array());
  CHECK(calls[3].parse_error.empty());
  CHECK(calls[4].id == "call_4");
  CHECK(calls[4].arguments.value == json{{"a", 1}});
}

TEST_CASE("openai codec: a decoded tool call encodes back to the same "
          "arguments",
          "[codec]") {
  auto resp = openai::decode_response(R"({"choices": [{"message": {
    "content": "On it.", "tool_calls": [{"id": "c1", "type": "function",
      "function": {"name": "weather",
                   "arguments": "{\"city\": \"Paris\", \"days\": [1, 2]}"}},
      {"id": "c2", "type": "function",
       "function": {"name": "weather", "arguments": "{oops"}}]}}]})",
                                      "m");
  REQUIRE(resp);
  auto body = openai::encode_request(
    request({msg(chat_role::user, "go"), resp->message}), wire());
  const auto& calls = body["messages"][1]["tool_calls"];
  CHECK(body["messages"][1]["content"] == "On it.");
  CHECK(json::parse(calls[0]["function"]["arguments"].get<std::string>())
        == json::parse(R"({"city": "Paris", "days": [1, 2]})"));
  CHECK(calls[1]["function"]["arguments"] == "{oops");
}

TEST_CASE("openai codec: bodies that are not a reply are errors", "[codec]") {
  auto fails_with = [](std::string_view body, const std::string& what) {
    auto resp = openai::decode_response(body, "m");
    INFO(body);
    REQUIRE_FALSE(resp);
    CHECK(resp.error().category() == error_category);
    CHECK(resp.error().code() == static_cast<uint8_t>(errc::model_failed));
    CHECK_THAT(error_of(resp), Catch::Contains("openai")
                                 && Catch::Contains(what));
  };
  fails_with("<html>Bad Gateway</html>", "not JSON");
  fails_with("", "not JSON");
  fails_with("[1, 2]", "array, not an object");
  fails_with(R"({"id": "x"})", "/choices is missing");
  fails_with(R"({"choices": {}})", "/choices is an object, not an array");
  fails_with(R"({"choices": []})", "/choices is empty");
  fails_with(R"({"choices": [7]})", "/choices/0 is a number");
  fails_with(R"({"choices": [{"index": 0}]})", "/choices/0/message is missing");
  fails_with(R"({"choices": [{"message": {"content": 5}}]})",
             "/choices/0/message/content is a number");
  fails_with(R"({"choices": [{"message": {"tool_calls": {}}}]})",
             "tool_calls is an object, not an array");
  fails_with(R"({"choices": [{"message": {"tool_calls": [{"id": "c"}]}}]})",
             "/choices/0/message/tool_calls/0/function is missing");
  fails_with(
    R"({"choices": [{"message": {"tool_calls": [{"function": {"arguments": "{}"}}]}}]})",
    "/function/name is missing");
  fails_with(
    R"({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})",
    "Incorrect API key provided");
}

TEST_CASE("openai codec: content given as text parts is joined", "[codec]") {
  auto resp = openai::decode_response(
    R"({"choices": [{"message": {"content": [{"type": "text", "text": "a"},
        {"type": "text", "text": "b"}]}}]})",
    "m");
  REQUIRE(resp);
  CHECK(resp->message.content == "ab");
}

// --- OpenAI: streaming ------------------------------------------------------

TEST_CASE("openai codec: a streamed text reply with usage last", "[codec]") {
  auto dec = openai::make_stream_decoder("openai:m");
  auto deltas = feed_all(
    *dec, {data_event(openai_chunk({{"role", "assistant"}, {"content", ""}})),
           data_event(openai_chunk({{"content", "Hel"}})),
           data_event(openai_chunk({{"content", "lo"}})),
           data_event(openai_chunk(json::object(), "stop")),
           data_event(R"({"choices": [], "usage": {"prompt_tokens": 9,
                          "completion_tokens": 2}})"),
           data_event(R"({"choices": []})")});
  CHECK_FALSE(dec->complete());
  REQUIRE(deltas.size() == 2);
  CHECK(deltas[0].what == model_delta::kind::text);
  CHECK(deltas[0].text == "Hel");
  CHECK(deltas[1].text == "lo");
  std::vector<model_delta> more;
  REQUIRE(!dec->feed(data_event("[DONE]"), more));
  CHECK(more.empty());
  CHECK(dec->complete());
  auto resp = dec->finish();
  REQUIRE(resp);
  CHECK(resp->message.content == "Hello");
  CHECK(resp->finish_reason == "stop");
  CHECK(resp->usage.input_tokens == 9);
  CHECK(resp->usage.output_tokens == 2);
  CHECK(resp->model == "openai:m");
}

TEST_CASE("openai codec: tool-call arguments one character at a time, two "
          "calls interleaved",
          "[codec]") {
  const std::string first = R"({"city": "Paris"})";
  const std::string second = R"({"city": "Oslo", "days": 3})";
  std::vector<sse_event> events;
  events.push_back(data_event(openai_chunk(
    {{"tool_calls", json::array({openai_fragment(0, "", "call_p", "weather")})}})));
  events.push_back(data_event(openai_chunk(
    {{"tool_calls", json::array({openai_fragment(1, "", "call_o", "weather")})}})));
  for (size_t i = 0; i < std::max(first.size(), second.size()); ++i) {
    if (i < first.size())
      events.push_back(data_event(openai_chunk(
        {{"tool_calls",
          json::array({openai_fragment(0, first.substr(i, 1))})}})));
    if (i < second.size())
      events.push_back(data_event(openai_chunk(
        {{"tool_calls",
          json::array({openai_fragment(1, second.substr(i, 1))})}})));
  }
  events.push_back(data_event(openai_chunk(json::object(), "tool_calls")));
  events.push_back(data_event(
    R"({"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":20}})"));
  events.push_back(data_event("[DONE]"));
  auto dec = openai::make_stream_decoder("m");
  auto deltas = feed_all(*dec, events);
  REQUIRE(deltas.size() >= 2);
  CHECK(deltas[0].what == model_delta::kind::tool_call);
  CHECK(deltas[0].index == 0);
  CHECK(deltas[0].id == "call_p");
  CHECK(deltas[0].name == "weather");
  CHECK(deltas[1].what == model_delta::kind::tool_call);
  CHECK(deltas[1].index == 1);
  CHECK(deltas[1].id == "call_o");
  CHECK(std::count_if(deltas.begin(), deltas.end(), [](const model_delta& d) {
          return d.what == model_delta::kind::tool_call;
        })
        == 2);
  CHECK(concat_arguments(deltas, 0) == first);
  CHECK(concat_arguments(deltas, 1) == second);
  CHECK(dec->complete());
  auto resp = dec->finish();
  REQUIRE(resp);
  const auto& calls = resp->message.tool_calls;
  REQUIRE(calls.size() == 2);
  CHECK(calls[0].id == "call_p");
  CHECK(calls[0].arguments.value == json{{"city", "Paris"}});
  CHECK(calls[0].raw_arguments == first);
  CHECK(calls[1].id == "call_o");
  CHECK(calls[1].arguments.value == json{{"city", "Oslo"}, {"days", 3}});
  CHECK(resp->finish_reason == "tool_calls");
  CHECK(resp->usage.input_tokens == 30);
  CHECK(resp->usage.output_tokens == 20);
}

TEST_CASE("openai codec: streamed arguments that do not parse", "[codec]") {
  auto dec = openai::make_stream_decoder("m");
  feed_all(*dec,
           {data_event(openai_chunk({{"tool_calls",
                                      json::array({openai_fragment(
                                        0, "{\"q\": ", "c1", "search")})}})),
            data_event(openai_chunk(
              {{"tool_calls", json::array({openai_fragment(1, "", "c2", "now")})}},
              "tool_calls")),
            data_event("[DONE]")});
  auto resp = dec->finish();
  REQUIRE(resp);
  REQUIRE(resp->message.tool_calls.size() == 2);
  const auto& bad = resp->message.tool_calls[0];
  CHECK(bad.arguments.value.is_null());
  CHECK(bad.raw_arguments == "{\"q\": ");
  CHECK_THAT(bad.parse_error, Catch::Contains("parse error"));
  const auto& empty = resp->message.tool_calls[1];
  CHECK(empty.arguments.value == json::object());
  CHECK(empty.parse_error.empty());
}

TEST_CASE("openai codec: a cut stream, an error chunk and garbage", "[codec]") {
  SECTION("cut before [DONE] and before any finish_reason") {
    auto dec = openai::make_stream_decoder("m");
    feed_all(*dec,
             {data_event(openai_chunk({{"content", "Hello"}})),
              data_event(openai_chunk({{"tool_calls",
                                        json::array({openai_fragment(
                                          0, "{", "c1", "weather")})}}))});
    CHECK_FALSE(dec->complete());
    auto resp = dec->finish();
    REQUIRE_FALSE(resp);
    CHECK(error_of(resp)
          == "model_failed: openai stream ended before [DONE] after 2 events "
             "(5 chars of text, 1 tool calls)");
  }
  SECTION("a finish_reason without [DONE] is accepted") {
    auto dec = openai::make_stream_decoder("m");
    feed_all(*dec, {data_event(openai_chunk({{"content", "Hi"}}, "stop"))});
    CHECK_FALSE(dec->complete());
    auto resp = dec->finish();
    REQUIRE(resp);
    CHECK(resp->message.content == "Hi");
    CHECK(resp->usage.input_tokens == 0);
  }
  SECTION("an error chunk") {
    auto dec = openai::make_stream_decoder("m");
    std::vector<model_delta> out;
    auto err = dec->feed(
      data_event(R"({"error": {"message": "The server is overloaded"}})"), out);
    REQUIRE(err);
    CHECK_THAT(error_of(err), Catch::Contains("openai stream event 1")
                                && Catch::Contains("The server is overloaded"));
    CHECK_FALSE(dec->finish());
  }
  SECTION("a chunk that is not JSON") {
    auto dec = openai::make_stream_decoder("m");
    std::vector<model_delta> out;
    auto err = dec->feed(data_event("{\"choices\": [{"), out);
    REQUIRE(err);
    CHECK_THAT(error_of(err), Catch::Contains("not JSON"));
  }
  SECTION("choices of the wrong type") {
    auto dec = openai::make_stream_decoder("m");
    std::vector<model_delta> out;
    auto err = dec->feed(data_event(R"({"choices": "x"})"), out);
    REQUIRE(err);
    CHECK_THAT(error_of(err), Catch::Contains("/choices is a string"));
  }
}

TEST_CASE("openai codec: a stream read through the SSE parser", "[codec]") {
  const std::string text =
    ": keep-alive\n\n"
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
    "\"content\":\"\"},\"finish_reason\":null}]}\n\n"
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Bon\"},"
    "\"finish_reason\":null}]}\r\n\r\n"
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"jour\"},"
    "\"finish_reason\":\"stop\"}]}\n\n"
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,"
    "\"completion_tokens\":2}}\n\n"
    "data: [DONE]\n\n";
  for (size_t step : {size_t{1}, size_t{7}, text.size()}) {
    INFO("step " << step);
    auto dec = openai::make_stream_decoder("m");
    auto deltas = feed_all(*dec, parse_sse(text, step));
    CHECK(concat_text(deltas) == "Bonjour");
    CHECK(dec->complete());
    auto resp = dec->finish();
    REQUIRE(resp);
    CHECK(resp->message.content == "Bonjour");
    CHECK(resp->usage.output_tokens == 2);
  }
}

// --- Anthropic: encoding ----------------------------------------------------

TEST_CASE("anthropic codec: encodes system, tools, max_tokens and params",
          "[codec]") {
  auto req = request({msg(chat_role::system, "Be brief."),
                      msg(chat_role::user, "Weather?"),
                      msg(chat_role::system, "Answer in French.")},
                     json{{"temperature", 0.5},
                          {"model", "evil"},
                          {"stream", true},
                          {"messages", "evil"}});
  req.tools.push_back(weather_tool());
  auto body = anthropic::encode_request(req, wire());
  CHECK(body["model"] == "m-1");
  CHECK(body["max_tokens"] == 1024);
  CHECK(body["temperature"] == 0.5);
  CHECK(body["stream"] == false);
  CHECK(body["system"] == "Be brief.\n\nAnswer in French.");
  REQUIRE(body["messages"].size() == 1);
  CHECK(body["messages"][0] == json{{"role", "user"}, {"content", "Weather?"}});
  REQUIRE(body["tools"].size() == 1);
  CHECK(body["tools"][0]["name"] == "weather");
  CHECK(body["tools"][0]["description"] == "Current weather in a city.");
  CHECK(body["tools"][0]["input_schema"]["properties"].contains("city"));

  auto plain = anthropic::encode_request(
    request({msg(chat_role::user, "hi")}, json{{"max_tokens", 50}}),
    wire(true));
  CHECK_FALSE(plain.contains("system"));
  CHECK_FALSE(plain.contains("tools"));
  CHECK(plain["max_tokens"] == 50);
  CHECK(plain["stream"] == true);
}

TEST_CASE("anthropic codec: OpenAI parameters are translated or left out",
          "[codec]") {
  auto body = anthropic::encode_request(
    request({msg(chat_role::user, "hi")},
            json{{"max_completion_tokens", 77},
                 {"stop", "END"},
                 {"parallel_tool_calls", false},
                 {"n", 2},
                 {"seed", 7},
                 {"response_format", {{"type", "json_object"}}},
                 {"top_k", 5}}),
    wire());
  CHECK(body["max_tokens"] == 77);
  CHECK(body["stop_sequences"] == json::array({"END"}));
  CHECK(body["tool_choice"]
        == json{{"type", "auto"}, {"disable_parallel_tool_use", true}});
  CHECK(body["top_k"] == 5);
  CHECK_FALSE(body.contains("n"));
  CHECK_FALSE(body.contains("seed"));
  CHECK_FALSE(body.contains("response_format"));
  CHECK_FALSE(body.contains("stop"));
  CHECK_FALSE(body.contains("max_completion_tokens"));
}

TEST_CASE("anthropic codec: empty text turns are left out and the turns "
          "around them merge",
          "[codec]") {
  // An empty reply (cut at max_tokens), then the runtime's nudge.
  auto body = anthropic::encode_request(
    request({msg(chat_role::user, "Weather?"), msg(chat_role::assistant, ""),
             msg(chat_role::user, "Please answer.")},
            json::object()),
    wire());
  REQUIRE(body["messages"].size() == 1);
  CHECK(body["messages"][0]["role"] == "user");
  auto blocks = body["messages"][0]["content"];
  REQUIRE(blocks.size() == 2);
  CHECK(blocks[0]["text"] == "Weather?");
  CHECK(blocks[1]["text"] == "Please answer.");
}

TEST_CASE("anthropic codec: tool_choice is translated from OpenAI's form",
          "[codec]") {
  auto choice_for = [](json choice) {
    auto body = anthropic::encode_request(
      request({msg(chat_role::user, "hi")},
              json{{"tool_choice", std::move(choice)}}),
      wire());
    return body["tool_choice"];
  };
  CHECK(choice_for("auto") == json{{"type", "auto"}});
  CHECK(choice_for("required") == json{{"type", "any"}});
  CHECK(choice_for("none") == json{{"type", "none"}});
  CHECK(choice_for(json{{"type", "function"},
                        {"function", {{"name", "weather"}}}})
        == json{{"type", "tool"}, {"name", "weather"}});
  CHECK(choice_for(json{{"type", "tool"}, {"name", "weather"}})
        == json{{"type", "tool"}, {"name", "weather"}});
  CHECK(choice_for(json{{"type", "any"}, {"disable_parallel_tool_use", true}})
        == json{{"type", "any"}, {"disable_parallel_tool_use", true}});
}

TEST_CASE("anthropic codec: tool calls become tool_use blocks and results "
          "merge into one user turn",
          "[codec]") {
  auto req = request(
    {msg(chat_role::user, "Weather in Paris and Oslo?"),
     assistant_calling("Checking both.",
                       {call_of("t1", "weather", json{{"city", "Paris"}}),
                        call_of("t2", "weather", json{}, "{broken")}),
     tool_result("t1", "sunny"), tool_result("t2", "error: bad arguments"),
     msg(chat_role::user, "And tomorrow?"),
     assistant_calling("", {call_of("t3", "now", json::object())})});
  auto body = anthropic::encode_request(req, wire());
  const auto& m = body["messages"];
  REQUIRE(m.size() == 4);
  CHECK(m[0]["role"] == "user");
  CHECK(m[1]["role"] == "assistant");
  REQUIRE(m[1]["content"].size() == 3);
  CHECK(m[1]["content"][0] == json{{"type", "text"}, {"text", "Checking both."}});
  CHECK(m[1]["content"][1] == json{{"type", "tool_use"},
                                   {"id", "t1"},
                                   {"name", "weather"},
                                   {"input", {{"city", "Paris"}}}});
  CHECK(m[1]["content"][2]["input"] == json::object());
  CHECK(m[2]["role"] == "user");
  REQUIRE(m[2]["content"].size() == 3);
  CHECK(m[2]["content"][0] == json{{"type", "tool_result"},
                                   {"tool_use_id", "t1"},
                                   {"content", "sunny"}});
  CHECK(m[2]["content"][1]["tool_use_id"] == "t2");
  CHECK(m[2]["content"][2] == json{{"type", "text"}, {"text", "And tomorrow?"}});
  REQUIRE(m[3]["content"].size() == 1);
  CHECK(m[3]["content"][0]["type"] == "tool_use");
}

// --- Anthropic: decoding ----------------------------------------------------

TEST_CASE("anthropic codec: decodes text, tool_use and usage", "[codec]") {
  auto resp = anthropic::decode_response(R"({
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
    "content": [
      {"type": "thinking", "thinking": "hmm", "signature": "s"},
      {"type": "text", "text": "Let me "},
      {"type": "text", "text": "check."},
      {"type": "tool_use", "id": "toolu_1", "name": "weather",
       "input": {"city": "Paris"}},
      {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
      {"type": "tool_use", "id": "toolu_3", "name": "odd", "input": "text"}
    ],
    "stop_reason": "tool_use", "stop_sequence": null,
    "usage": {"input_tokens": 100, "cache_creation_input_tokens": 20,
              "cache_read_input_tokens": 30, "output_tokens": 40}})",
                                         "anthropic:claude");
  REQUIRE(resp);
  CHECK(resp->message.content == "Let me check.");
  CHECK(resp->finish_reason == "tool_calls");
  CHECK(resp->usage.input_tokens == 150);
  CHECK(resp->usage.output_tokens == 40);
  CHECK(resp->model == "anthropic:claude");
  const auto& calls = resp->message.tool_calls;
  REQUIRE(calls.size() == 3);
  CHECK(calls[0].id == "toolu_1");
  CHECK(calls[0].name == "weather");
  CHECK(calls[0].arguments.value == json{{"city", "Paris"}});
  CHECK(json::parse(calls[0].raw_arguments) == json{{"city", "Paris"}});
  CHECK(calls[1].arguments.value == json::object());
  CHECK(calls[1].parse_error.empty());
  CHECK_FALSE(calls[2].arguments.value.is_object());
  CHECK(calls[2].parse_error.empty());
}

TEST_CASE("anthropic codec: stop_reason maps to finish_reason", "[codec]") {
  auto reason_for = [](const std::string& stop) {
    auto resp = anthropic::decode_response(
      json{{"content", json::array()}, {"stop_reason", stop}}.dump(), "m");
    REQUIRE(resp);
    return resp->finish_reason;
  };
  CHECK(reason_for("end_turn") == "stop");
  CHECK(reason_for("stop_sequence") == "stop");
  CHECK(reason_for("tool_use") == "tool_calls");
  CHECK(reason_for("max_tokens") == "length");
  CHECK(reason_for("refusal") == "refusal");
}

TEST_CASE("anthropic codec: bodies that are not a reply are errors",
          "[codec]") {
  auto fails_with = [](std::string_view body, const std::string& what) {
    auto resp = anthropic::decode_response(body, "m");
    INFO(body);
    REQUIRE_FALSE(resp);
    CHECK(resp.error().code() == static_cast<uint8_t>(errc::model_failed));
    CHECK_THAT(error_of(resp), Catch::Contains("anthropic")
                                 && Catch::Contains(what));
  };
  fails_with(
    R"({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})",
    "overloaded_error: Overloaded");
  fails_with("upstream connect error", "not JSON");
  fails_with("\"text\"", "a string, not an object");
  fails_with(R"({"type": "message"})", "/content is missing");
  fails_with(R"({"content": "hi"})", "/content is a string, not an array");
  fails_with(R"({"content": [{"type": "text"}]})", "/content/0/text is missing");
  fails_with(R"({"content": [{"type": "tool_use", "id": "t", "input": {}}]})",
             "/content/0/name is missing");
}

// --- Anthropic: streaming ---------------------------------------------------

TEST_CASE("anthropic codec: a streamed reply with text and a tool call",
          "[codec]") {
  for (size_t step : {size_t{1}, size_t{13}, size_t{1} << 20}) {
    INFO("step " << step);
    auto dec = anthropic::make_stream_decoder("anthropic:claude");
    auto events = parse_sse(anthropic_tool_stream, step);
    REQUIRE(events.size() == 13);
    auto deltas = feed_all(*dec, events);
    CHECK(dec->complete());
    REQUIRE(deltas.size() == 5);
    CHECK(deltas[0].what == model_delta::kind::text);
    CHECK(deltas[0].text == "Let me ");
    CHECK(deltas[2].what == model_delta::kind::tool_call);
    CHECK(deltas[2].index == 0);
    CHECK(deltas[2].id == "toolu_1");
    CHECK(deltas[2].name == "weather");
    CHECK(concat_arguments(deltas, 0) == R"({"city": "Paris"})");
    auto resp = dec->finish();
    REQUIRE(resp);
    CHECK(resp->message.content == "Let me check.");
    REQUIRE(resp->message.tool_calls.size() == 1);
    CHECK(resp->message.tool_calls[0].arguments.value
          == json{{"city", "Paris"}});
    CHECK(resp->finish_reason == "tool_calls");
    CHECK(resp->usage.input_tokens == 30);
    CHECK(resp->usage.output_tokens == 42);
    CHECK(resp->model == "anthropic:claude");
  }
}

TEST_CASE("anthropic codec: tool arguments one character at a time; tool "
          "indexes count tool_use blocks only",
          "[codec]") {
  const std::string args = R"({"city": "Paris"})";
  auto block_start = [](int index, const json& block) {
    return named_event("content_block_start",
                       json{{"type", "content_block_start"},
                            {"index", index},
                            {"content_block", block}}
                         .dump());
  };
  auto json_delta = [](int index, const std::string& part) {
    return named_event(
      "content_block_delta",
      json{{"type", "content_block_delta"},
           {"index", index},
           {"delta", {{"type", "input_json_delta"}, {"partial_json", part}}}}
        .dump());
  };
  auto block_stop = [](int index) {
    return named_event("content_block_stop",
                       json{{"type", "content_block_stop"}, {"index", index}}
                         .dump());
  };
  std::vector<sse_event> events;
  events.push_back(named_event(
    "message_start",
    R"({"type":"message_start","message":{"usage":{"input_tokens":7,"output_tokens":1}}})"));
  events.push_back(block_start(0, {{"type", "text"}, {"text", "Hi. "}}));
  events.push_back(block_stop(0));
  events.push_back(block_start(1, {{"type", "tool_use"},
                                   {"id", "t1"},
                                   {"name", "weather"},
                                   {"input", json::object()}}));
  for (char c : args)
    events.push_back(json_delta(1, std::string(1, c)));
  events.push_back(block_stop(1));
  events.push_back(block_start(2, {{"type", "tool_use"},
                                   {"id", "t2"},
                                   {"name", "now"},
                                   {"input", json::object()}}));
  events.push_back(block_stop(2));
  events.push_back(block_start(3, {{"type", "tool_use"},
                                   {"id", "t3"},
                                   {"name", "search"},
                                   {"input", json::object()}}));
  events.push_back(json_delta(3, "{\"q\": tru"));
  events.push_back(block_stop(3));
  // Blocks that are not part of the reply's message are skipped.
  events.push_back(block_start(4, {{"type", "server_tool_use"},
                                   {"id", "srv_1"},
                                   {"name", "web_search"},
                                   {"input", json::object()}}));
  events.push_back(json_delta(4, "{\"query\": \"x\"}"));
  events.push_back(block_stop(4));
  events.push_back(block_start(5, {{"type", "thinking"}, {"thinking", ""}}));
  events.push_back(named_event(
    "content_block_delta",
    R"({"index":5,"delta":{"type":"thinking_delta","thinking":"hmm"}})"));
  events.push_back(block_stop(5));
  events.push_back(named_event("something_new", "{}"));
  events.push_back(named_event(
    "message_delta",
    R"({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":12}})"));
  events.push_back(named_event("message_stop", R"({"type":"message_stop"})"));
  auto dec = anthropic::make_stream_decoder("m");
  auto deltas = feed_all(*dec, events);
  CHECK(concat_text(deltas) == "Hi. ");
  CHECK(concat_arguments(deltas, 0) == args);
  std::vector<int32_t> starts;
  for (const auto& d : deltas)
    if (d.what == model_delta::kind::tool_call)
      starts.push_back(d.index);
  CHECK(starts == std::vector<int32_t>{0, 1, 2});
  auto resp = dec->finish();
  REQUIRE(resp);
  const auto& calls = resp->message.tool_calls;
  REQUIRE(calls.size() == 3);
  CHECK(calls[0].arguments.value == json{{"city", "Paris"}});
  CHECK(calls[0].raw_arguments == args);
  CHECK(calls[1].arguments.value == json::object());
  CHECK(calls[1].parse_error.empty());
  CHECK(calls[2].arguments.value.is_null());
  CHECK(calls[2].raw_arguments == "{\"q\": tru");
  CHECK_THAT(calls[2].parse_error, Catch::Contains("parse error"));
  CHECK(resp->finish_reason == "stop");
  CHECK(resp->usage.input_tokens == 7);
  CHECK(resp->usage.output_tokens == 12);
}

TEST_CASE("anthropic codec: a cut stream and an error event", "[codec]") {
  SECTION("cut before message_stop") {
    auto events = anthropic_events();
    events.resize(events.size() - 2); // no message_delta, no message_stop
    auto dec = anthropic::make_stream_decoder("m");
    feed_all(*dec, events);
    CHECK_FALSE(dec->complete());
    auto resp = dec->finish();
    REQUIRE_FALSE(resp);
    CHECK(error_of(resp)
          == "model_failed: anthropic stream ended before message_stop after "
             "11 events (the last content_block_stop, 13 chars of text, 1 "
             "tool calls)");
  }
  SECTION("nothing arrived") {
    auto dec = anthropic::make_stream_decoder("m");
    CHECK_THAT(error_of(dec->finish()),
               Catch::Contains("after 0 events (no message_start"));
  }
  SECTION("an error event") {
    auto dec = anthropic::make_stream_decoder("m");
    std::vector<model_delta> out;
    REQUIRE(!dec->feed(anthropic_events()[0], out));
    auto err = dec->feed(
      named_event("error", R"({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}})"),
      out);
    REQUIRE(err);
    CHECK_THAT(error_of(err), Catch::Contains("anthropic stream event 2")
                                && Catch::Contains("Overloaded"));
    CHECK_FALSE(dec->finish());
  }
  SECTION("a delta for a block that never started") {
    auto dec = anthropic::make_stream_decoder("m");
    std::vector<model_delta> out;
    auto err = dec->feed(
      named_event("content_block_delta",
                  R"({"index":4,"delta":{"type":"text_delta","text":"x"}})"),
      out);
    REQUIRE(err);
    CHECK_THAT(error_of(err), Catch::Contains("block 4 never started"));
  }
  SECTION("input_json_delta for a text block") {
    auto dec = anthropic::make_stream_decoder("m");
    auto events = anthropic_events();
    std::vector<model_delta> out;
    REQUIRE(!dec->feed(events[1], out)); // text block 0 starts
    auto err = dec->feed(
      named_event("content_block_delta",
                  R"({"index":0,"delta":{"type":"input_json_delta","partial_json":"{"}})"),
      out);
    REQUIRE(err);
    CHECK_THAT(error_of(err), Catch::Contains("input_json_delta for a text block"));
  }
  SECTION("data that is not JSON") {
    auto dec = anthropic::make_stream_decoder("m");
    std::vector<model_delta> out;
    auto err = dec->feed(named_event("content_block_start", "{oops"), out);
    REQUIRE(err);
    CHECK_THAT(error_of(err),
               Catch::Contains("(content_block_start)")
                 && Catch::Contains("not JSON"));
  }
}

// --- robustness -------------------------------------------------------------

namespace {

/// A random mutation of `text`: truncated, bytes flipped, deleted or
/// duplicated.
std::string mutate(const std::string& text, std::mt19937& rng) {
  std::string out = text;
  auto pick = [&rng](size_t n) {
    return n == 0 ? size_t{0}
                  : std::uniform_int_distribution<size_t>{0, n - 1}(rng);
  };
  switch (pick(5)) {
    case 0:
      out.resize(pick(out.size() + 1));
      break;
    case 1:
      for (int i = 0; i < 3 && !out.empty(); ++i)
        out[pick(out.size())] = static_cast<char>(pick(256));
      break;
    case 2:
      if (!out.empty())
        out.erase(pick(out.size()), 1 + pick(8));
      break;
    case 3: {
      const char* tokens[] = {"null", "[]", "{}", "\"x\"", "-1", "1e999",
                              "\"\\ud800\"", "\xff"};
      auto at = pick(out.size() + 1);
      out.insert(at, tokens[pick(8)]);
      break;
    }
    default:
      if (!out.empty()) {
        auto at = pick(out.size());
        out.insert(at, out.substr(at, 1 + pick(16)));
      }
      break;
  }
  return out;
}

} // namespace

TEST_CASE("model codecs: mutated bodies and events never throw", "[codec]") {
  std::mt19937 rng{20240611};
  const std::vector<std::string> openai_bodies = {
    R"({"choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":"Hi","tool_calls":[{"id":"c1","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Paris\"}"}}]}}],"usage":{"prompt_tokens":3,"completion_tokens":4}})",
    R"({"error":{"message":"bad","type":"invalid_request_error"}})"};
  const std::vector<std::string> anthropic_bodies = {
    R"({"type":"message","content":[{"type":"text","text":"Hi"},{"type":"tool_use","id":"t","name":"w","input":{"a":[1,2]}}],"stop_reason":"tool_use","usage":{"input_tokens":3,"output_tokens":4}})",
    R"({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}})"};
  std::vector<std::string> openai_chunks = {
    openai_chunk({{"content", "Hi"}}),
    openai_chunk({{"tool_calls",
                   json::array({openai_fragment(0, "{\"c", "c1", "w")})}}),
    openai_chunk({{"tool_calls", json::array({openai_fragment(0, "\":1}")})}},
                 "tool_calls"),
    R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}})",
    "[DONE]"};
  auto anthropic_stream = anthropic_events();
  size_t accepted = 0;
  for (int round = 0; round < 300; ++round) {
    for (const auto& body : openai_bodies) {
      auto text = mutate(body, rng);
      CHECK_NOTHROW(openai::decode_response(text, "m"));
      CHECK_NOTHROW(provider_error_text(text));
    }
    for (const auto& body : anthropic_bodies) {
      auto text = mutate(body, rng);
      CHECK_NOTHROW(anthropic::decode_response(text, "m"));
      CHECK_NOTHROW(provider_error_text(text));
    }
    auto oa = openai::make_stream_decoder("m");
    std::vector<model_delta> out;
    for (const auto& chunk : openai_chunks) {
      auto text = rng() % 3 == 0 ? mutate(chunk, rng) : chunk;
      CHECK_NOTHROW(oa->feed(data_event(text), out));
    }
    CHECK_NOTHROW(oa->finish());
    auto an = anthropic::make_stream_decoder("m");
    for (const auto& ev : anthropic_stream) {
      auto copy = ev;
      if (rng() % 4 == 0)
        copy.data = mutate(copy.data, rng);
      if (rng() % 20 == 0)
        copy.event = mutate(copy.event, rng);
      CHECK_NOTHROW(an->feed(copy, out));
    }
    auto resp = an->finish();
    if (resp)
      ++accepted;
  }
  // Some mutations are harmless (the ping, a text change): not every stream
  // fails.
  CHECK(accepted > 0);
}

#include "actors/scripted_model.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>

#include "messages/errors.hpp"
#include "messages/type_ids.hpp"
#include "runtime/clock.hpp"
#include "support/system_fixture.hpp"
#include "support/temp_dir.hpp"

using namespace troupe;
using troupe::test::temp_dir;

namespace {

using troupe::test::system_fixture;

chat_message msg(chat_role role, std::string content) {
  chat_message m;
  m.role = role;
  m.content = std::move(content);
  return m;
}

chat_message user(std::string content) {
  return msg(chat_role::user, std::move(content));
}

chat_message assistant(std::string content) {
  return msg(chat_role::assistant, std::move(content));
}

chat_message tool(std::string content) {
  auto m = msg(chat_role::tool, std::move(content));
  m.tool_call_id = "call_1_0";
  m.name = "calculator";
  return m;
}

chat_request request(std::string agent, std::vector<chat_message> messages) {
  chat_request req;
  req.agent = std::move(agent);
  req.messages = std::move(messages);
  return req;
}

std::shared_ptr<const model_script> script(
  const char* text, const std::string& origin = "test.json") {
  return model_script::parse(json::parse(text), origin);
}

/// Asks `model` once and waits (finitely) for the answer.
caf::expected<chat_response> ask(
  caf::actor_system& sys, const model_actor& model, const chat_request& req) {
  caf::scoped_actor self{sys};
  caf::expected<chat_response> result{make_error(errc::timeout, "no answer")};
  self->request(model, std::chrono::seconds(5), req)
    .receive([&result](chat_response& resp) { result = std::move(resp); },
      [&result](caf::error& err) { result = std::move(err); });
  return result;
}

/// Asks a fresh actor serving `text` and requires a reply.
chat_response reply_of(
  caf::actor_system& sys, const char* text, const chat_request& req) {
  auto model = spawn_scripted_model(sys, script(text));
  auto result = ask(sys, model, req);
  INFO((result ? std::string{"ok"} : error_text(result.error())));
  REQUIRE(result);
  return std::move(*result);
}

/// The text of the error a fresh actor serving `text` answers `req` with.
std::string error_of(caf::actor_system& sys, const char* text,
  const chat_request& req, errc expected_code) {
  auto model = spawn_scripted_model(sys, script(text));
  auto result = ask(sys, model, req);
  REQUIRE_FALSE(result);
  CHECK(result.error().category() == error_category);
  CHECK(result.error().code() == static_cast<uint8_t>(expected_code));
  return error_text(result.error());
}

constexpr const char* selection_script = R"js({
  "rules": [
    {"name": "first", "agent": "support", "contains": "refund",
     "reply": {"content": "refund for {{agent}}"}},
    {"agent": "support", "regex": "order #(\\d+) from (\\w+)",
     "reply": {"content": "order {{1}} of {{2}}",
               "tool_calls": [{"name": "lookup",
                               "arguments": {"order": "{{1}}",
                                             "who": ["{{2}}", 7],
                                             "nested": {"missing": "<{{3}}>"}}}]}},
    {"agent": "support", "role": "tool", "reply": {"content": "tool said {{last}}"}},
    {"agent": "support", "role": "system", "reply": {"content": "system last"}},
    {"agent": "writer", "step": 2, "reply": {"content": "writer step two"}},
    {"agent": "writer", "step": {"min": 3, "max": 4},
     "reply": {"content": "writer step {{step}} in 3..4"}},
    {"agent": "writer", "step": {"min": 5}, "reply": {"content": "writer late"}},
    {"agent": "*", "reply": {"content": "anyone: goal={{goal}} last={{last}}"}}
  ]
})js";

} // namespace

TEST_CASE_METHOD(
  system_fixture, "scripted model selects rules by agent", "[scripted]") {
  auto resp = reply_of(
    sys, selection_script, request("support", {user("I want a refund")}));
  CHECK(resp.message.content == "refund for support");
  CHECK(resp.message.role == chat_role::assistant);
  CHECK(resp.model == "scripted:test.json");
  resp = reply_of(sys, selection_script, request("other", {user("a refund")}));
  CHECK(resp.message.content == "anyone: goal=a refund last=a refund");
}

TEST_CASE_METHOD(
  system_fixture, "scripted model selects rules by contains", "[scripted]") {
  auto resp = reply_of(
    sys, selection_script, request("support", {user("no money back please")}));
  CHECK(resp.message.content
        == "anyone: goal=no money back please "
           "last=no money back please");
  resp = reply_of(
    sys, selection_script, request("support", {user("xx refund yy")}));
  CHECK(resp.message.content == "refund for support");
}

TEST_CASE_METHOD(system_fixture,
  "scripted model fills regex groups into content and arguments",
  "[scripted]") {
  auto resp = reply_of(sys, selection_script,
    request("support", {user("where is order #4711 from Ann?")}));
  CHECK(resp.message.content == "order 4711 of Ann");
  REQUIRE(resp.message.tool_calls.size() == 1);
  auto& call = resp.message.tool_calls[0];
  CHECK(call.name == "lookup");
  CHECK(call.id == "call_1_0");
  CHECK(call.parse_error.empty());
  CHECK(call.arguments.value
        == json::parse(R"js({"order": "4711", "who": ["Ann", 7],
                           "nested": {"missing": "<>"}})js"));
  CHECK(json::parse(call.raw_arguments) == call.arguments.value);
  CHECK(resp.finish_reason == "tool_calls");
}

TEST_CASE_METHOD(
  system_fixture, "scripted model selects rules by role", "[scripted]") {
  auto resp = reply_of(sys, selection_script,
    request("support", {user("add"), assistant(""), tool("4")}));
  CHECK(resp.message.content == "tool said 4");
  resp = reply_of(sys, selection_script,
    request("support", {msg(chat_role::system, "be nice")}));
  CHECK(resp.message.content == "system last");
}

TEST_CASE_METHOD(
  system_fixture, "scripted model selects rules by step", "[scripted]") {
  std::vector<chat_message> conv{user("write")};
  std::vector<std::string> expected{
    "anyone: goal=write last=write", // step 1: no writer rule
    "writer step two",
    "writer step 3 in 3..4",
    "writer step 4 in 3..4",
    "writer late",
    "writer late",
  };
  for (size_t i = 0; i < expected.size(); ++i) {
    INFO("step " << i + 1);
    auto resp = reply_of(sys, selection_script, request("writer", conv));
    CHECK(resp.message.content == expected[i]);
    conv.push_back(assistant(resp.message.content));
    conv.push_back(user("more"));
  }
}

TEST_CASE_METHOD(system_fixture, "scripted model takes the first matching rule",
  "[scripted]") {
  constexpr const char* text = R"js({"rules": [
    {"name": "a", "contains": "x", "reply": {"content": "first"}},
    {"name": "b", "contains": "x", "reply": {"content": "second"}},
    {"name": "c", "reply": {"content": "fallback"}}
  ]})js";
  CHECK(reply_of(sys, text, request("any", {user("x")})).message.content
        == "first");
  CHECK(reply_of(sys, text, request("any", {user("y")})).message.content
        == "fallback");
  auto chosen = script(text)->select(request("any", {user("x")}));
  REQUIRE(chosen);
  CHECK(chosen->rule == "a");
}

TEST_CASE_METHOD(
  system_fixture, "scripted model expands templates", "[scripted]") {
  constexpr const char* text = R"js({"rules": [
    {"reply": {"content": "goal={{goal}} last={{last}} agent={{agent}} step={{step}} group={{1}} {{ literal }} {{"}}
  ]})js";
  auto resp = reply_of(sys, text,
    request("planner",
      {msg(chat_role::system, "sys"), user("the goal"), assistant("a1"),
        user("second"), assistant("a2"), tool("the result")}));
  CHECK(resp.message.content
        == "goal=the goal last=the result agent=planner step=3 group= "
           "{{ literal }} {{");
  CHECK(resp.finish_reason == "stop");
  CHECK(resp.message.tool_calls.empty());
}

TEST_CASE_METHOD(
  system_fixture, "scripted model parses arguments_raw", "[scripted]") {
  constexpr const char* text = R"js({"rules": [
    {"contains": "good", "reply": {"tool_calls": [
      {"name": "calc", "arguments_raw": "{\"expression\": \"{{1}}2+2\"}"},
      {"name": "noargs", "arguments_raw": "  "}]}},
    {"contains": "bad", "reply": {"tool_calls": [
      {"name": "calc", "arguments_raw": "{not json"},
      {"name": "calc", "arguments_raw": "[1, 2]"}]}}
  ]})js";
  auto good = reply_of(
    sys, text, request("a", {user("good"), assistant("x"), user("good")}));
  REQUIRE(good.message.tool_calls.size() == 2);
  CHECK(good.message.tool_calls[0].id == "call_2_0");
  CHECK(good.message.tool_calls[0].parse_error.empty());
  CHECK(
    good.message.tool_calls[0].arguments.value == json{{"expression", "2+2"}});
  CHECK(
    good.message.tool_calls[0].raw_arguments == R"js({"expression": "2+2"})js");
  CHECK(good.message.tool_calls[1].id == "call_2_1");
  CHECK(good.message.tool_calls[1].arguments.value == json::object());
  auto bad = reply_of(sys, text, request("a", {user("bad")}));
  REQUIRE(bad.message.tool_calls.size() == 2);
  auto& broken = bad.message.tool_calls[0];
  CHECK(broken.raw_arguments == "{not json");
  CHECK_THAT(broken.parse_error, Catch::Contains("parse error"));
  CHECK(broken.arguments.value.is_null());
  // JSON that is not an object is kept as parsed, for the agent to refuse.
  auto& array = bad.message.tool_calls[1];
  CHECK(array.raw_arguments == "[1, 2]");
  CHECK(array.parse_error.empty());
  CHECK(array.arguments.value == json::array({1, 2}));
  CHECK(bad.finish_reason == "tool_calls");
}

TEST_CASE_METHOD(
  system_fixture, "scripted model estimates usage by default", "[scripted]") {
  constexpr const char* text = R"js({"rules": [
    {"contains": "calc", "reply": {"tool_calls": [
      {"name": "calculator", "arguments": {"e": "1"}}]}},
    {"reply": {"content": "12345"}}
  ]})js";
  // 9 + 4 = 13 characters in -> 4 tokens; 5 out -> 2 tokens.
  auto resp
    = reply_of(sys, text, request("a", {user("123456789"), user("abcd")}));
  CHECK(resp.usage.input_tokens == 4);
  CHECK(resp.usage.output_tokens == 2);
  // At least one token each way, even for empty text.
  constexpr const char* empty
    = R"js({"rules": [{"reply": {"content": ""}}]})js";
  resp = reply_of(sys, empty, request("a", {user("")}));
  CHECK(resp.usage.input_tokens == 1);
  CHECK(resp.usage.output_tokens == 1);
  // Tool calls count their name and argument text: "calculator" + {"e":"1"}.
  resp = reply_of(sys, text, request("a", {user("calc")}));
  CHECK(resp.usage.output_tokens == (10 + 9 + 3) / 4);
}

TEST_CASE_METHOD(
  system_fixture, "scripted model uses explicit usage", "[scripted]") {
  constexpr const char* text = R"js({"rules": [
    {"contains": "both", "reply": {"content": "hello",
      "usage": {"input_tokens": 120, "output_tokens": 20}}},
    {"contains": "zero", "reply": {"content": "hello",
      "usage": {"input_tokens": 0, "output_tokens": 0}}},
    {"reply": {"content": "hello", "usage": {"input_tokens": 50}}}
  ]})js";
  auto resp = reply_of(sys, text, request("a", {user("both")}));
  CHECK(resp.usage.input_tokens == 120);
  CHECK(resp.usage.output_tokens == 20);
  resp = reply_of(sys, text, request("a", {user("zero")}));
  CHECK(resp.usage.input_tokens == 0);
  CHECK(resp.usage.output_tokens == 0);
  resp = reply_of(sys, text, request("a", {user("partial")}));
  CHECK(resp.usage.input_tokens == 50);
  CHECK(resp.usage.output_tokens == 2); // estimated from "hello"
}

TEST_CASE_METHOD(
  system_fixture, "scripted model finish_reason defaults", "[scripted]") {
  constexpr const char* text = R"js({"rules": [
    {"contains": "tools", "reply": {"content": "calling",
      "tool_calls": [{"name": "t"}]}},
    {"contains": "cut", "reply": {"content": "trunc", "finish_reason": "length"}},
    {"reply": {"content": "done"}}
  ]})js";
  auto resp = reply_of(sys, text, request("a", {user("tools")}));
  CHECK(resp.finish_reason == "tool_calls");
  REQUIRE(resp.message.tool_calls.size() == 1);
  CHECK(resp.message.tool_calls[0].arguments.value == json::object());
  CHECK(resp.message.content == "calling");
  CHECK(
    reply_of(sys, text, request("a", {user("cut")})).finish_reason == "length");
  CHECK(reply_of(sys, text, request("a", {user("x")})).finish_reason == "stop");
}

TEST_CASE_METHOD(system_fixture,
  "scripted model answers an unmatched request with an error", "[scripted]") {
  constexpr const char* text = R"js({"rules": [
    {"agent": "support", "reply": {"content": "hi"}}
  ]})js";
  auto long_text = std::string(150, 'a') + "\n" + std::string(150, 'b');
  auto what = error_of(sys, text,
    request("billing", {user("x"), assistant("y"), user(long_text)}),
    errc::no_matching_rule);
  CHECK_THAT(what, Catch::StartsWith("no_matching_rule: test.json: "));
  CHECK_THAT(what, Catch::Contains("agent \"billing\""));
  CHECK_THAT(what, Catch::Contains("step 2"));
  // The excerpt: on one line, cut to at most 200 characters.
  auto excerpt = std::string(150, 'a') + " " + std::string(46, 'b') + "...";
  CHECK_THAT(what, Catch::Contains("\"" + excerpt + "\""));
  CHECK_THAT(what, !Catch::Contains(std::string(47, 'b')));
  // A short message is quoted whole.
  what = error_of(
    sys, text, request("billing", {user("short one")}), errc::no_matching_rule);
  CHECK_THAT(what, Catch::Contains("\"short one\""));
  CHECK_THAT(what, Catch::Contains("step 1"));
}

TEST_CASE_METHOD(system_fixture,
  "scripted model answers an empty conversation with an error", "[scripted]") {
  constexpr const char* text
    = R"js({"rules": [{"reply": {"content": "hi"}}]})js";
  auto what = error_of(sys, text, request("lonely", {}), errc::invalid_input);
  CHECK_THAT(what, Catch::Contains("test.json"));
  CHECK_THAT(what, Catch::Contains("\"lonely\""));
  CHECK_THAT(what, Catch::Contains("without messages"));
  // The actor is still alive and serving.
  auto model = spawn_scripted_model(sys, script(text));
  CHECK_FALSE(ask(sys, model, request("lonely", {})));
  CHECK(ask(sys, model, request("lonely", {user("hello")})));
}

TEST_CASE_METHOD(system_fixture,
  "scripted model survives a huge message under a regex rule", "[scripted]") {
  constexpr const char* text = R"js({"rules": [
    {"regex": "^(.*)$", "reply": {"content": "{{1}}"}}
  ]})js";
  auto huge = std::string(500000, 'x');
  auto resp = reply_of(sys, text, request("a", {user(huge)}));
  CHECK(resp.message.content.size() == huge.size());
}

TEST_CASE_METHOD(
  system_fixture, "scripted model delays replies by latency_ms", "[scripted]") {
  using clock = std::chrono::steady_clock;
  constexpr const char* text = R"js({"rules": [
    {"contains": "slow", "reply": {"content": "slow", "latency_ms": 300}},
    {"reply": {"content": "fast"}}
  ]})js";
  auto model = spawn_scripted_model(sys, script(text));
  caf::scoped_actor slow_client{sys};
  caf::scoped_actor fast_client{sys};
  auto slow_start = clock::now();
  auto slow = slow_client->request(
    model, std::chrono::seconds(5), request("a", {user("slow")}));
  // While the slow reply is held back, the actor keeps serving.
  auto fast_start = clock::now();
  auto fast_elapsed = clock::duration::max();
  std::string fast_content;
  fast_client
    ->request(model, std::chrono::seconds(5), request("a", {user("quick")}))
    .receive(
      [&fast_elapsed, &fast_content, fast_start](chat_response& resp) {
        fast_elapsed = clock::now() - fast_start;
        fast_content = resp.message.content;
      },
      [](caf::error& err) { FAIL(error_text(err)); });
  auto slow_elapsed = clock::duration::zero();
  std::string slow_content;
  slow.receive(
    [&slow_elapsed, &slow_content, slow_start](chat_response& resp) {
      slow_elapsed = clock::now() - slow_start;
      slow_content = resp.message.content;
    },
    [](caf::error& err) { FAIL(error_text(err)); });
  CHECK(fast_content == "fast");
  CHECK(slow_content == "slow");
  CHECK(slow_elapsed >= std::chrono::milliseconds(300));
  CHECK(fast_elapsed < std::chrono::milliseconds(300));
}

TEST_CASE_METHOD(system_fixture,
  "scripted model answers concurrent requests from many clients",
  "[scripted]") {
  constexpr const char* text = R"js({"rules": [
    {"contains": "wait", "regex": "client (\\d+) req (\\d+)",
     "reply": {"content": "late {{1}}/{{2}}", "latency_ms": 20}},
    {"regex": "client (\\d+) req (\\d+)", "reply": {"content": "now {{1}}/{{2}}"}}
  ]})js";
  auto model = spawn_scripted_model(sys, script(text));
  constexpr int clients = 8;
  constexpr int per_client = 20;
  std::vector<std::vector<std::string>> answers(clients);
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([this, c, &model, &answers] {
      caf::scoped_actor self{sys};
      // Send everything first, then collect: the requests overlap.
      std::vector<decltype(self->request(
        model, std::chrono::seconds(5), chat_request{}))>
        handles;
      for (int i = 0; i < per_client; ++i) {
        auto text = "client " + std::to_string(c) + " req " + std::to_string(i)
                    + (i % 2 == 0 ? " wait" : "");
        handles.push_back(self->request(model, std::chrono::seconds(5),
          request("agent" + std::to_string(c), {user(text)})));
      }
      for (auto& handle : handles)
        handle.receive(
          [&answers, c](chat_response& resp) {
            answers[c].push_back(resp.message.content);
          },
          [&answers, c](caf::error& err) {
            answers[c].push_back("error: " + error_text(err));
          });
    });
  }
  for (auto& t : threads)
    t.join();
  for (int c = 0; c < clients; ++c) {
    REQUIRE(answers[c].size() == static_cast<size_t>(per_client));
    for (int i = 0; i < per_client; ++i) {
      auto expected = std::string{i % 2 == 0 ? "late " : "now "}
                      + std::to_string(c) + "/" + std::to_string(i);
      CHECK(answers[c][i] == expected);
    }
  }
}

TEST_CASE_METHOD(system_fixture,
  "scripted model reply() works without an actor", "[scripted]") {
  auto s = script(
    R"js({"rules": [{"reply": {"content": "x", "latency_ms": 50}}]})js",
    "direct");
  CHECK(s->origin() == "direct");
  CHECK(s->size() == 1);
  auto resp = s->reply(request("a", {user("q")}));
  REQUIRE(resp);
  CHECK(resp->model == "scripted:direct");
  auto chosen = s->select(request("a", {user("q")}));
  REQUIRE(chosen);
  CHECK(chosen->latency == std::chrono::milliseconds(50));
  CHECK(chosen->rule == "/rules/0");
  CHECK_THROWS_AS(spawn_scripted_model(sys, nullptr), std::invalid_argument);
}

// -- loading ------------------------------------------------------------------

namespace {

/// The message load() throws for `text` written to `name`.
std::string load_error(
  const temp_dir& dir, const std::string& name, const std::string& text) {
  auto file = dir.write(name, text);
  try {
    model_script::load(file);
  } catch (const script_error& e) {
    std::string what = e.what();
    CHECK_THAT(what, Catch::StartsWith(file + ": "));
    return what;
  }
  FAIL("loading " << name << " did not throw");
  return {};
}

} // namespace

TEST_CASE("scripted model loads a script file with comments", "[scripted]") {
  temp_dir dir;
  auto file = dir.write("ok.json", R"js({
    // a comment, as in the docs
    "description": "demo",
    "rules": [ /* one rule */ {"reply": {"content": "hi"}} ]
  })js");
  auto s = model_script::load(file);
  CHECK(s->origin() == file);
  auto resp = s->reply(request("a", {user("q")}));
  REQUIRE(resp);
  CHECK(resp->model == "scripted:" + file);
}

TEST_CASE("scripted model rejects bad scripts with file and JSON pointer",
  "[scripted]") {
  temp_dir dir;
  struct bad_case {
    const char* file;
    const char* text;
    const char* pointer_and_reason;
  };
  std::vector<bad_case> cases{
    {"unknown_rule_key.json",
      R"js({"rules": [{"agnet": "x", "reply": {"content": "a"}}]})js",
      ": /rules/0/agnet: unknown key \"agnet\""},
    {"unknown_reply_key.json",
      R"js({"rules": [{"reply": {"content": "a", "latency": 5}}]})js",
      ": /rules/0/reply/latency: unknown key"},
    {"unknown_top_key.json", R"js({"rulez": [], "rules": []})js",
      ": /rulez: unknown key"},
    {"wrong_type.json",
      R"js({"rules": [{"reply": {"content": "a"}}, {"contains": 5, "reply": {"content": "b"}}]})js",
      ": /rules/1/contains: must be a string, not number"},
    {"empty_rules.json", R"js({"rules": []})js",
      ": /rules: must hold at least one rule"},
    {"no_rules.json", R"js({"description": "x"})js",
      ": a script needs a \"rules\""},
    {"not_object.json", R"js([1, 2])js", ": a script must be a JSON object"},
    {"no_reply.json", R"js({"rules": [{"agent": "a"}]})js",
      ": /rules/0: a rule needs a \"reply\""},
    {"empty_reply.json",
      R"js({"rules": [{"reply": {"finish_reason": "stop"}}]})js",
      ": /rules/0/reply: needs content or tool_calls"},
    {"bad_role.json",
      R"js({"rules": [{"role": "robot", "reply": {"content": "a"}}]})js",
      ": /rules/0/role: unknown role \"robot\""},
    {"step_range.json",
      R"js({"rules": [{"step": {"min": 4, "max": 2}, "reply": {"content": "a"}}]})js",
      ": /rules/0/step: min (4) is greater than max (2)"},
    {"step_zero.json",
      R"js({"rules": [{"step": 0, "reply": {"content": "a"}}]})js",
      ": /rules/0/step: must be at least 1"},
    {"step_key.json",
      R"js({"rules": [{"step": {"minimum": 1}, "reply": {"content": "a"}}]})js",
      ": /rules/0/step/minimum: unknown key"},
    {"negative_usage.json",
      R"js({"rules": [{"reply": {"content": "a", "usage": {"input_tokens": -1}}}]})js",
      ": /rules/0/reply/usage/input_tokens: must not be negative"},
    {"fraction_usage.json",
      R"js({"rules": [{"reply": {"content": "a", "usage": {"output_tokens": 1.5}}}]})js",
      ": /rules/0/reply/usage/output_tokens: must be an integer"},
    {"negative_latency.json",
      R"js({"rules": [{"reply": {"content": "a", "latency_ms": -5}}]})js",
      ": /rules/0/reply/latency_ms: must not be negative"},
    {"tool_without_name.json",
      R"js({"rules": [{"reply": {"tool_calls": [{"arguments": {}}]}}]})js",
      ": /rules/0/reply/tool_calls/0: a tool call needs a \"name\""},
    {"arguments_not_object.json",
      R"js({"rules": [{"reply": {"tool_calls": [{"name": "t", "arguments": "x=1"}]}}]})js",
      ": /rules/0/reply/tool_calls/0/arguments: must be an object, not string"},
    {"both_arguments.json",
      R"js({"rules": [{"reply": {"tool_calls": [{"name": "t", "arguments": {}, "arguments_raw": "{}"}]}}]})js",
      ": /rules/0/reply/tool_calls/0: give either \"arguments\" or "
      "\"arguments_raw\", not both"},
    {"bad_regex.json",
      R"js({"rules": [{"reply": {"content": "a"}}, {"regex": "order #(\\d+", "reply": {"content": "a"}}]})js",
      ": /rules/1/regex: invalid regular expression"},
    {"backref_regex.json",
      R"js({"rules": [{"regex": "(a)\\1", "reply": {"content": "a"}}]})js",
      ": /rules/0/regex: backreferences"},
    {"unknown_template.json",
      R"js({"rules": [{"reply": {"tool_calls": [{"name": "t", "arguments": {"q": ["{{Goal}}"]}}]}}]})js",
      ": /rules/0/reply/tool_calls/0/arguments/q/0: unknown template {{Goal}}"},
    {"rule_not_object.json", R"js({"rules": ["reply"]})js",
      ": /rules/0: must be an object, not string"},
    {"empty_agent.json",
      R"js({"rules": [{"agent": "", "reply": {"content": "a"}}]})js",
      ": /rules/0/agent: must not be empty"},
    {"escaped_key.json",
      R"js({"rules": [{"reply": {"content": "a", "a/b~c": 1}}]})js",
      ": /rules/0/reply/a~1b~0c: unknown key"},
  };
  for (auto& c : cases) {
    INFO(c.file);
    auto what = load_error(dir, c.file, c.text);
    auto file = dir.file(c.file);
    CHECK_THAT(what, Catch::StartsWith(file + c.pointer_and_reason));
  }
}

TEST_CASE("scripted model rejects a file that is not JSON", "[scripted]") {
  temp_dir dir;
  auto what = load_error(dir, "prose.json", "{\n  \"rules\": [\n    oops\n]}");
  CHECK_THAT(what, Catch::Contains("not valid JSON"));
  CHECK_THAT(what, Catch::Contains("line 3"));
  CHECK_THAT(what, Catch::Contains("byte"));
  what = load_error(dir, "empty.json", "");
  CHECK_THAT(what, Catch::Contains("not valid JSON"));
}

TEST_CASE("scripted model rejects a missing file", "[scripted]") {
  temp_dir dir;
  auto file = dir.file("missing.json");
  try {
    model_script::load(file);
    FAIL("loading a missing file did not throw");
  } catch (const script_error& e) {
    CHECK_THAT(e.what(), Catch::StartsWith(file + ": cannot open"));
  }
}

TEST_CASE("scripted model throws script_error, an invalid_argument",
          "[scripted]") {
  CHECK_THROWS_AS(script(R"js({"rules": 3})js"), std::invalid_argument);
  CHECK_THROWS_WITH(script(R"js({"rules": 3})js", "inline"),
    "inline: /rules: must be an array, not number");
}

TEST_CASE_METHOD(system_fixture,
                 "scripted model quotes the latest result of a named tool",
                 "[scripted]") {
  constexpr const char* text = R"js({"rules": [
    {"role": "tool", "reply": {
      "content": "sum={{tool:calculator:/result}} expr={{tool:calculator:/expression}} all={{tool:calculator}} none=[{{tool:clock:/utc}}] missing=[{{tool:calculator:/nope}}]",
      "tool_calls": [{"name": "echo", "arguments": {"text": "{{tool:calculator:/result}}"}}]}}
  ]})js";
  auto old_result = tool(R"({"expression": "1+1", "result": 2})");
  auto new_result = tool(R"({"expression": "40+2", "result": 42})");
  auto r = reply_of(sys, text,
                    request("a", {user("go"), assistant("x"), old_result,
                                  assistant("y"), new_result}));
  CHECK(r.message.content
        == R"(sum=42 expr=40+2 all={"expression": "40+2", "result": 42} none=[] missing=[])");
  REQUIRE(r.message.tool_calls.size() == 1);
  CHECK(r.message.tool_calls[0].arguments.value == json{{"text", "42"}});
}

TEST_CASE("scripted model rejects malformed tool templates at load",
          "[scripted]") {
  for (auto bad : {"{{tool:}}", "{{tool:calc:no-slash}}", "{{tool:calc:/a~2}}",
                   "{{tool:ca lc}}"}) {
    auto doc = json{{"rules", {{{"reply", {{"content", bad}}}}}}};
    CHECK_THROWS_WITH(model_script::parse(doc, "t.json"),
                      Catch::Contains("t.json") && Catch::Contains("/rules/0/reply/content")
                        && Catch::Contains("unknown template"));
  }
}

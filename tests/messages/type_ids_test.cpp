#include "messages/type_ids.hpp"

#include <catch2/catch.hpp>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/binary_deserializer.hpp>
#include <caf/binary_serializer.hpp>
#include <caf/message.hpp>
#include "support/system_fixture.hpp"

using namespace troupe;

namespace {

using troupe::test::system_fixture;

thread_local caf::actor_system* current_system = nullptr;

caf::actor_system& test_system() {
  REQUIRE(current_system != nullptr);
  return *current_system;
}

struct fixture : system_fixture {
  fixture() {
    current_system = &sys;
  }
  ~fixture() {
    current_system = nullptr;
  }
};

template <class T>
T binary_round_trip(const T& in) {
  caf::binary_serializer::container_type buf;
  caf::binary_serializer sink{test_system(), buf};
  auto copy = in;
  REQUIRE(!sink(copy));
  T out;
  caf::binary_deserializer source{test_system(), buf};
  REQUIRE(!source(out));
  return out;
}

/// Also sends the value through a caf::message, as a remote peer would receive it.
template <class T>
T message_round_trip(const T& in) {
  auto msg = caf::make_message(in);
  caf::binary_serializer::container_type buf;
  caf::binary_serializer sink{test_system(), buf};
  REQUIRE(!sink(msg));
  caf::message out_msg;
  caf::binary_deserializer source{test_system(), buf};
  REQUIRE(!source(out_msg));
  REQUIRE(out_msg.match_elements<T>());
  return out_msg.get_as<T>(0);
}

template <class T>
T json_round_trip(const T& in) {
  json j = in;
  auto text = j.dump();
  return json::parse(text).get<T>();
}

template <class T>
void check_round_trips(const T& value) {
  CHECK(binary_round_trip(value) == value);
  CHECK(message_round_trip(value) == value);
  CHECK(json_round_trip(value) == value);
  // A default value must differ from the sample, or the checks above prove nothing.
  CHECK_FALSE(T{} == value);
}

run_ref sample_ref() {
  return {"run-1", "0123456789abcdef0123456789abcdef", "0123456789abcdef",
          "alice"};
}

json sample_json() {
  return json{{"city", "Zürich"},
              {"n", 42},
              {"pi", 3.14159},
              {"list", {1, "two", nullptr, false}},
              {"nested", {{"deep", {{"x", -1}}}}}};
}

model_tool_call sample_tool_call() {
  return {"call-1", "calculator", json{{"expression", "2+2"}}, "{\"expression\":\"2+2\"}",
          ""};
}

chat_message sample_message() {
  chat_message m;
  m.role = chat_role::assistant;
  m.content = "line one\nline \"two\"";
  m.tool_calls = {sample_tool_call(),
                  {"call-2", "clock", json::object(), "{bad", "unexpected end"}};
  return m;
}

tool_result sample_tool_result() {
  tool_result r{"call-1", "calculator", false, json{{"partial", 1}},
                tool_error{tool_error_kind::transient, "upstream 503"}, 3,
                {}, false, {}};
  r.attempt_log.push_back({1, 10, 20, 0, tool_error_kind::transient});
  r.attempt_log.push_back({2, 70, 90, 50, tool_error_kind::none});
  r.replayed = true;
  r.notes = {"approved by bob"};
  return r;
}

step_record sample_step() {
  step_record s;
  s.index = 2;
  s.reply = sample_message();
  s.usage = {120, 30};
  s.tool_results = {sample_tool_result()};
  s.observations = {"unknown tool 'x'"};
  s.started_ns = 1000;
  s.ended_ns = 2000;
  return s;
}

budget_limits sample_limits() {
  return {10, 5000, 2000, 1.25, 1760000000000};
}

} // namespace

TEST_CASE_METHOD(fixture, "json_value survives binary and JSON round trips", "[messages]") {
  check_round_trips(json_value{sample_json()});
  check_round_trips(json_value{json("a string")});
  check_round_trips(json_value{json::array({1, 2, 3})});
}

TEST_CASE_METHOD(fixture, "json_value rejects a payload that is not JSON", "[messages]") {
  // Serialize a plain string where a json_value's text is expected.
  caf::binary_serializer::container_type buf;
  caf::binary_serializer sink{test_system(), buf};
  std::string bogus = "{not json";
  REQUIRE(!sink(bogus));
  json_value out;
  caf::binary_deserializer source{test_system(), buf};
  auto err = source(out);
  REQUIRE(err);
  CHECK_THAT(test_system().render(err), Catch::Contains("not valid JSON"));
}

TEST_CASE_METHOD(fixture, "common messages round trip", "[messages]") {
  check_round_trips(sample_ref());
  check_round_trips(token_usage{7, 9});
}

TEST_CASE_METHOD(fixture, "model protocol messages round trip", "[messages]") {
  check_round_trips(sample_tool_call());
  check_round_trips(sample_message());
  check_round_trips(tool_spec{"calculator", "Evaluates arithmetic",
                              json{{"type", "object"}}});
  chat_request req;
  req.ref = sample_ref();
  req.agent = "support";
  req.model = "scripted:x.json";
  req.messages = {{chat_role::system, "be nice", {}, "", ""}, sample_message(),
                  {chat_role::tool, "4", {}, "call-1", "calculator"}};
  req.tools = {{"clock", "time", json{{"type", "object"}}}};
  req.params = json{{"temperature", 0.5}};
  req.deadline_ms = 1764590400000;
  check_round_trips(req);
  check_round_trips(chat_response{sample_message(), {10, 20}, "tool_calls",
                                  "scripted"});
}

TEST_CASE_METHOD(fixture, "tool protocol messages round trip", "[messages]") {
  check_round_trips(tool_error{tool_error_kind::circuit_open, "open"});
  check_round_trips(tool_call{sample_ref(), "support", 3, "call-9", "kv_lookup",
                              json{{"key", "refund_policy"}}, "idem-abc",
                              1760000000123});
  check_round_trips(sample_tool_result());
}

TEST_CASE_METHOD(fixture, "run protocol messages round trip", "[messages]") {
  check_round_trips(run_task{sample_ref(), "answer the customer",
                             sample_limits(), 5, json{{"ticket", 17}},
                             {{"run-1/team", sample_limits()}}});
  check_round_trips(sample_step());
  run_result r;
  r.run_id = "run-1";
  r.agent = "support";
  r.status = run_status::max_steps;
  r.answer = "partial";
  r.steps = {sample_step(), sample_step()};
  r.usage = {300, 40};
  r.error = "step limit 2 reached";
  r.started_ns = 5;
  r.ended_ns = 6;
  check_round_trips(r);
}

TEST_CASE_METHOD(fixture, "trace protocol messages round trip", "[messages]") {
  check_round_trips(span_start{"t", "s", "p", "invoke_agent support", 17,
                               json{{"gen_ai.agent.name", "support"}}});
  check_round_trips(span_end{"t", "s", 18, "error", "boom", json{{"k", 1}}});
  check_round_trips(trace_event{"t", "s", "state", 19,
                                json{{"from", "IDLE"}, {"to", "PLANNING"}}});
}

TEST_CASE_METHOD(fixture, "budget protocol messages round trip", "[messages]") {
  check_round_trips(sample_limits());
  std::vector<budget_scope> path{{"team-1", sample_limits()},
                                  {"run-1/a#1", sample_limits()}};
  check_round_trips(budget_reserve{sample_ref(), path, "res-1",
                                   "openai:gpt-4o-mini",
                                   budget_amount{1, {100, 50}, 10000000}});
  check_round_trips(budget_verdict{"res-1", false, "max_output_tokens",
                                   {"80% of steps"}});
  check_round_trips(budget_charge{"run-1/a#1", "res-1", "openai:gpt-4o-mini",
                                  budget_amount{1, {90, 45}, 9000000},
                                  "run-1/a/digest"});
  check_round_trips(budget_recount{sample_ref(), path, "run-1/a/digest",
                                   budget_amount{2, {190, 85}, 19000000}});
  check_round_trips(budget_release{"run-1/a#1", "res-1"});
  check_round_trips(budget_close{"run-1/a#1"});
  check_round_trips(budget_snapshot{"global", true, sample_limits(),
                                    budget_amount{3, {1, 2}, 3},
                                    budget_amount{1, {4, 5}, 6}, 7, 8});
}

TEST_CASE_METHOD(fixture, "approval protocol messages round trip", "[messages]") {
  check_round_trips(approval_request{"apr-1", sample_ref(), "ops", "delete_user",
                                     json{{"id", 7}}, "rule 'destructive'",
                                     json::array({"step 1"}), 1760000000000,
                                     60000});
  check_round_trips(approval_decision{"apr-1", approval_verdict::approve, "bob",
                                      "ok by me", 1760000000500});
}

TEST_CASE_METHOD(fixture, "enums travel as names in JSON", "[messages]") {
  CHECK(json(run_status::max_steps) == "max_steps");
  CHECK(json(chat_role::tool) == "tool");
  CHECK(json(tool_error_kind::invalid_arguments) == "invalid_arguments");
  CHECK(json(approval_verdict::expired) == "expired");
  CHECK(std::string(to_string(run_status::halted)) == "halted");
}

TEST_CASE("unknown enum names in JSON are refused, not guessed", "[messages]") {
  CHECK_THROWS_WITH(json("denied").get<approval_verdict>(),
                    Catch::Contains("approval_verdict")
                      && Catch::Contains("\"denied\"")
                      && Catch::Contains("approve, deny, expired"));
  CHECK_THROWS_WITH(json("error").get<run_status>(), Catch::Contains("run_status"));
  CHECK_THROWS_WITH(json(3).get<chat_role>(), Catch::Contains("chat_role"));
  auto doc = json(approval_decision{"a", approval_verdict::approve, "x", "", 1});
  doc["verdict"] = "APPROVE";
  CHECK_THROWS(doc.get<approval_decision>());
}

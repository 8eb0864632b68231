#include "actors/agent.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <caf/scoped_actor.hpp>

#include "actors/scripted_model.hpp"
#include "runtime/blocking_pool.hpp"
#include "runtime/clock.hpp"
#include "runtime/runtime.hpp"
#include "support/runtime_fixture.hpp"
#include "support/test_models.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

runtime_config quiet_config() {
  auto cfg = test_runtime_config();
  cfg.blocking_threads = 4;
  return cfg;
}

/// An "echo" tool: {"text": string} -> the text; counts its calls.
tool_definition echo_tool(std::shared_ptr<std::atomic<int>> calls) {
  tool_definition def;
  def.name = "echo";
  def.description = "Repeats the text";
  def.parameters = json{{"type", "object"},
                        {"properties", {{"text", {{"type", "string"}}}}},
                        {"required", {"text"}},
                        {"additionalProperties", false}};
  def.fn = [calls](const json& args, const tool_context&) {
    ++*calls;
    return args.at("text");
  };
  return def;
}

agent_spec spec_for(std::string model, std::vector<std::string> tools,
                    int32_t max_steps = 5, int32_t max_parallel = 4) {
  agent_spec spec;
  spec.name = "tester";
  spec.system_prompt = "You test things.";
  spec.model = std::move(model);
  spec.tools = std::move(tools);
  spec.max_steps = max_steps;
  spec.max_parallel_tools = max_parallel;
  spec.model_timeout = 10s;
  return spec;
}

/// Waits, with a bound, until a predicate over shared counters holds.
struct gate {
  std::mutex mtx;
  std::condition_variable cv;
  int running = 0;
  int max_running = 0;
  bool open = false;
};

} // namespace

SCENARIO("an agent answers in one step", "[agent]") {
  runtime rt{quiet_config()};
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto&) {
                 return answer("42", {100, 7});
               }));
  auto agent = rt.spawn_agent(spec_for("m", {}));
  WHEN("it runs a goal") {
    auto r = rt.run(agent, "What is the answer?");
    THEN("the run completes with the model's text after one model call") {
      CHECK(r.status == run_status::complete);
      CHECK(r.answer == "42");
      CHECK(r.error.empty());
      REQUIRE(r.steps.size() == 1);
      CHECK(r.steps[0].index == 1);
      CHECK(r.usage.input_tokens == 100);
      CHECK(r.usage.output_tokens == 7);
      auto reqs = log->snapshot();
      REQUIRE(reqs.size() == 1);
      REQUIRE(reqs[0].messages.size() == 2);
      CHECK(reqs[0].messages[0].role == chat_role::system);
      CHECK(reqs[0].messages[0].content == "You test things.");
      CHECK(reqs[0].messages[1].role == chat_role::user);
      CHECK(reqs[0].messages[1].content == "What is the answer?");
      CHECK(reqs[0].agent == "tester");
      CHECK(reqs[0].ref.run_id == r.run_id);
    }
  }
}

SCENARIO("an agent stops at max_steps with what it did", "[agent]") {
  runtime rt{quiet_config()};
  auto calls = std::make_shared<std::atomic<int>>(0);
  rt.tools().add(echo_tool(calls));
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                 auto step = step_of(req);
                 auto r = call_tools({proposed("echo", {{"text", "again"}})});
                 r.message.content = "thinking " + std::to_string(step);
                 return r;
               }));
  auto agent = rt.spawn_agent(spec_for("m", {"echo"}, 3));
  auto r = rt.run(agent, "loop forever");
  CHECK(r.status == run_status::max_steps);
  CHECK_THAT(r.error, Catch::Contains("step limit (3)"));
  REQUIRE(r.steps.size() == 3);
  for (auto& s : r.steps) {
    REQUIRE(s.tool_results.size() == 1);
    CHECK(s.tool_results[0].ok);
  }
  CHECK(*calls == 3);
  CHECK(log->snapshot().size() == 3);
  // What was done so far: the last thing the model said.
  CHECK(r.answer == "thinking 3");
  AND_THEN("a run's own max_steps lowers the agent's") {
    run_options opts;
    opts.max_steps = 2;
    auto r2 = rt.run(agent, "loop", opts);
    CHECK(r2.status == run_status::max_steps);
    CHECK(r2.steps.size() == 2);
  }
}

SCENARIO("a throwing tool becomes an observation, not the end", "[agent]") {
  runtime rt{quiet_config()};
  tool_definition boom;
  boom.name = "boom";
  boom.description = "Always fails";
  boom.fn = [](const json&, const tool_context&) -> json {
    throw std::runtime_error("disk on fire");
  };
  rt.tools().add(boom);
  tool_definition flaky;
  flaky.name = "flaky";
  flaky.description = "Fails transiently";
  flaky.fn = [](const json&, const tool_context&) -> json {
    throw tool_failure(tool_error_kind::transient, "upstream 503");
  };
  rt.tools().add(flaky);
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                 if (step_of(req) == 1)
                   return call_tools({proposed("boom", json::object()),
                                      proposed("flaky", json::object())});
                 return answer("recovered");
               }));
  auto agent = rt.spawn_agent(spec_for("m", {"boom", "flaky"}));
  auto r = rt.run(agent, "try it");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.answer == "recovered");
  REQUIRE(r.steps.size() == 2);
  auto& results = r.steps[0].tool_results;
  REQUIRE(results.size() == 2);
  CHECK_FALSE(results[0].ok);
  CHECK(results[0].error.kind == tool_error_kind::permanent);
  CHECK_THAT(results[0].error.message, Catch::Contains("disk on fire"));
  CHECK(results[1].error.kind == tool_error_kind::transient);
  // The model saw both errors as tool messages answering its calls.
  auto reqs = log->snapshot();
  REQUIRE(reqs.size() == 2);
  auto& msgs = reqs[1].messages;
  REQUIRE(msgs.size() == 5); // system, user, assistant, tool, tool
  CHECK(msgs[3].role == chat_role::tool);
  CHECK(msgs[3].name == "boom");
  CHECK(msgs[3].tool_call_id == msgs[2].tool_calls[0].id);
  CHECK_THAT(msgs[3].content, Catch::Contains("error (permanent)")
                                && Catch::Contains("disk on fire"));
  CHECK_THAT(msgs[4].content, Catch::Contains("error (transient): upstream 503"));
}

SCENARIO("unknown tools, bad arguments and unparseable arguments become "
         "observations",
         "[agent]") {
  runtime rt{quiet_config()};
  auto calls = std::make_shared<std::atomic<int>>(0);
  rt.tools().add(echo_tool(calls));
  auto other_calls = std::make_shared<std::atomic<int>>(0);
  auto secret = echo_tool(other_calls);
  secret.name = "secret"; // registered, but not this agent's tool
  rt.tools().add(secret);
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                 if (step_of(req) > 1)
                   return answer("done");
                 model_tool_call broken;
                 broken.name = "echo";
                 broken.raw_arguments = "{\"text\": ";
                 broken.parse_error = "unexpected end of input";
                 return call_tools({proposed("nope", json::object()),
                                    proposed("echo", {{"text", 5}}), broken,
                                    proposed("echo", json::array()),
                                    proposed("secret", {{"text", "x"}}),
                                    proposed("echo", {{"text", "fine"}})});
               }));
  auto agent = rt.spawn_agent(spec_for("m", {"echo"}));
  auto r = rt.run(agent, "mess around");
  REQUIRE(r.status == run_status::complete);
  REQUIRE(r.steps.size() == 2);
  auto& res = r.steps[0].tool_results;
  REQUIRE(res.size() == 6);
  CHECK(res[0].error.kind == tool_error_kind::unknown_tool);
  CHECK_THAT(res[0].error.message,
             Catch::Contains("unknown tool 'nope'") && Catch::Contains("echo"));
  CHECK(res[1].error.kind == tool_error_kind::invalid_arguments);
  CHECK_THAT(res[1].error.message, Catch::Contains("/text")
                                     && Catch::Contains("type"));
  CHECK(res[2].error.kind == tool_error_kind::invalid_arguments);
  CHECK_THAT(res[2].error.message, Catch::Contains("not valid JSON"));
  CHECK(res[3].error.kind == tool_error_kind::invalid_arguments);
  CHECK_THAT(res[3].error.message, Catch::Contains("must be a JSON object"));
  CHECK(res[4].error.kind == tool_error_kind::unknown_tool);
  CHECK(res[5].ok);
  CHECK(res[5].content.value == "fine");
  // Only the valid call ran; the secret tool never did.
  CHECK(*calls == 1);
  CHECK(*other_calls == 0);
  // Rejections made before anything ran are recorded as observations.
  CHECK(r.steps[0].observations.size() == 4);
  // The model sees one tool message per call, in order.
  auto reqs = log->snapshot();
  REQUIRE(reqs.size() == 2);
  size_t tool_msgs = 0;
  for (auto& m : reqs[1].messages)
    if (m.role == chat_role::tool)
      ++tool_msgs;
  CHECK(tool_msgs == 6);
}

SCENARIO("an empty model reply becomes an observation", "[agent]") {
  runtime rt{quiet_config()};
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                 if (step_of(req) == 1)
                   return answer("");
                 return answer("second try");
               }));
  auto agent = rt.spawn_agent(spec_for("m", {}));
  auto r = rt.run(agent, "say something");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.answer == "second try");
  REQUIRE(r.steps.size() == 2);
  REQUIRE(r.steps[0].observations.size() == 1);
  CHECK_THAT(r.steps[0].observations[0],
             Catch::Contains("neither content nor tool calls"));
  auto reqs = log->snapshot();
  REQUIRE(reqs.size() == 2);
  CHECK(reqs[1].messages.back().role == chat_role::user);
  CHECK_THAT(reqs[1].messages.back().content, Catch::StartsWith("[runtime]"));
}

SCENARIO("a failing model ends the run as failed with the reason", "[agent]") {
  runtime rt{quiet_config()};
  auto script = model_script::parse(
    json{{"rules",
          {{{"contains", "hello"}, {"reply", {{"content", "hi"}}}}}}},
    "inline.json");
  rt.add_model("scripted-inline", spawn_scripted_model(rt.system(), script));
  auto agent = rt.spawn_agent(spec_for("scripted-inline", {}));
  auto ok = rt.run(agent, "hello there");
  CHECK(ok.status == run_status::complete);
  auto r = rt.run(agent, "something else");
  CHECK(r.status == run_status::failed);
  CHECK_THAT(r.error, Catch::Contains("failed at step 1")
                        && Catch::Contains("inline.json"));
  REQUIRE(r.steps.size() == 1);
}

SCENARIO("several tool calls in one reply run in parallel", "[agent]") {
  runtime rt{quiet_config()};
  auto g = std::make_shared<gate>();
  const int expected = 3;
  tool_definition meet;
  meet.name = "meet";
  meet.description = "Waits until the other calls arrive";
  meet.timeout = 5s;
  meet.fn = [g, expected](const json&, const tool_context&) -> json {
    std::unique_lock<std::mutex> lock{g->mtx};
    ++g->running;
    g->max_running = std::max(g->max_running, g->running);
    g->cv.notify_all();
    // Returns at once when all calls are running together; a sequential
    // runtime would leave each call waiting alone until this bound.
    bool met = g->cv.wait_for(lock, 4s, [&] { return g->max_running >= expected; });
    --g->running;
    return json{{"met", met}};
  };
  rt.tools().add(meet);
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                 if (step_of(req) > 1)
                   return answer("all met");
                 // Distinct arguments: identical calls in one reply would be
                 // one call (the same idempotency key).
                 return call_tools({proposed("meet", {{"who", "a"}}),
                                    proposed("meet", {{"who", "b"}}),
                                    proposed("meet", {{"who", "c"}})});
               }));
  auto agent = rt.spawn_agent(spec_for("m", {"meet"}, 5, expected));
  auto r = rt.run(agent, "meet up");
  REQUIRE(r.status == run_status::complete);
  REQUIRE(r.steps[0].tool_results.size() == 3);
  for (auto& res : r.steps[0].tool_results) {
    REQUIRE(res.ok);
    CHECK(res.content.value.at("met") == true);
  }
  CHECK(g->max_running == expected);
}

SCENARIO("the per-agent limit bounds concurrent tool calls", "[agent]") {
  runtime rt{quiet_config()};
  auto g = std::make_shared<gate>();
  tool_definition pair;
  pair.name = "pair";
  pair.description = "Waits for a partner";
  pair.timeout = 5s;
  pair.fn = [g](const json&, const tool_context&) -> json {
    std::unique_lock<std::mutex> lock{g->mtx};
    ++g->running;
    g->max_running = std::max(g->max_running, g->running);
    g->cv.notify_all();
    // Each call waits until it has had company (two running at once).
    bool paired = g->cv.wait_for(lock, 4s, [&] { return g->running >= 2 || g->open; });
    if (g->running >= 2)
      g->open = true; // the last partner of the run leaves without waiting
    --g->running;
    return json{{"paired", paired}};
  };
  rt.tools().add(pair);
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                 if (step_of(req) > 1)
                   return answer("done");
                 std::vector<model_tool_call> calls;
                 for (int i = 0; i < 6; ++i)
                   calls.push_back(proposed("pair", {{"i", i}}));
                 return call_tools(calls);
               }));
  auto agent = rt.spawn_agent(spec_for("m", {"pair"}, 5, 2));
  auto r = rt.run(agent, "pair up");
  REQUIRE(r.status == run_status::complete);
  REQUIRE(r.steps[0].tool_results.size() == 6);
  for (auto& res : r.steps[0].tool_results)
    CHECK(res.ok);
  // Four threads were free, but never more than two calls ran at once.
  CHECK(g->max_running == 2);
}

SCENARIO("a tool past its timeout becomes a timeout observation", "[agent]") {
  runtime rt{quiet_config()};
  auto g = std::make_shared<gate>();
  tool_definition stuck;
  stuck.name = "stuck";
  stuck.description = "Hangs until released";
  stuck.timeout = 200ms;
  stuck.fn = [g](const json&, const tool_context&) -> json {
    std::unique_lock<std::mutex> lock{g->mtx};
    g->cv.wait_for(lock, 30s, [&] { return g->open; });
    return "late";
  };
  rt.tools().add(stuck);
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                 if (step_of(req) > 1)
                   return answer("gave up waiting");
                 return call_tools({proposed("stuck", json::object())});
               }));
  auto agent = rt.spawn_agent(spec_for("m", {"stuck"}));
  auto r = rt.run(agent, "wait");
  {
    std::lock_guard<std::mutex> guard{g->mtx};
    g->open = true;
  }
  g->cv.notify_all();
  REQUIRE(r.status == run_status::complete);
  auto& res = r.steps[0].tool_results.at(0);
  CHECK(res.error.kind == tool_error_kind::timeout);
  CHECK_THAT(res.error.message, Catch::Contains("timed out after"));
}

SCENARIO("runs sent to a busy agent wait their turn", "[agent]") {
  runtime rt{quiet_config()};
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                 return answer("re: " + req.messages.back().content);
               }));
  auto agent = rt.spawn_agent(spec_for("m", {}));
  std::vector<std::future<run_result>> futures;
  for (int i = 0; i < 20; ++i)
    futures.push_back(rt.submit(agent, "goal " + std::to_string(i)));
  std::set<std::string> ids;
  for (int i = 0; i < 20; ++i) {
    auto r = futures[static_cast<size_t>(i)].get();
    CHECK(r.status == run_status::complete);
    CHECK(r.answer == "re: goal " + std::to_string(i));
    ids.insert(r.run_id);
  }
  CHECK(ids.size() == 20);
}

SCENARIO("a run past its deadline is halted", "[agent]") {
  runtime rt{quiet_config()};
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log,
                                          [](auto&) { return answer("x"); }));
  auto agent = rt.spawn_agent(spec_for("m", {}));
  run_options opts;
  opts.budget.deadline_ms = now_ms() - 1;
  auto r = rt.run(agent, "too late", opts);
  CHECK(r.status == run_status::halted);
  CHECK_THAT(r.error, Catch::Contains("deadline"));
  CHECK(log->snapshot().empty());
}

SCENARIO("bad agent specs are refused with the field named", "[agent]") {
  runtime rt{quiet_config()};
  auto spec = spec_for("scripted:/nonexistent/script.json", {});
  CHECK_THROWS_WITH(rt.spawn_agent(spec),
                    Catch::Contains("tester")
                      && Catch::Contains("/nonexistent/script.json"));
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log,
                                          [](auto&) { return answer("x"); }));
  spec = spec_for("m", {"no_such_tool"});
  CHECK_THROWS_WITH(rt.spawn_agent(spec), Catch::Contains("unknown tool 'no_such_tool'"));
  spec = spec_for("m", {}, 0);
  CHECK_THROWS_WITH(rt.spawn_agent(spec), Catch::Contains("max_steps"));
  spec = spec_for("m", {}, 3, 0);
  CHECK_THROWS_WITH(rt.spawn_agent(spec), Catch::Contains("max_parallel_tools"));
}

SCENARIO("a tool result that is not valid UTF-8 does not bring the agent down",
         "[agent]") {
  runtime_config cfg = quiet_config();
  cfg.trace_listeners.push_back([](const json&) {}); // tracing on
  runtime rt{cfg};
  tool_definition latin1;
  latin1.name = "latin1";
  latin1.description = "Returns Latin-1 bytes";
  latin1.fn = [](const json&, const tool_context&) -> json {
    return json{{"text", std::string{"caf\xe9 cr\xe8me"}}};
  };
  rt.tools().add(latin1);
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                 if (step_of(req) == 1)
                   return call_tools({proposed("latin1", json::object())});
                 return answer("read it");
               }));
  agent_spec spec = spec_for("m", {"latin1"});
  auto agent = rt.spawn_agent(spec);
  auto r = rt.run(agent, "read", {});
  REQUIRE(r.status == run_status::complete);
  // The model saw the bytes as replacement characters.
  auto reqs = log->snapshot();
  REQUIRE(reqs.size() == 2);
  CHECK_THAT(reqs[1].messages.back().content, Catch::Contains("caf\xef\xbf\xbd"));
  // The agent is still alive for the next run.
  CHECK(rt.run(agent, "again").status == run_status::complete);
}

SCENARIO("token limits halt a run before more tools run", "[agent]") {
  runtime rt{quiet_config()};
  auto calls = std::make_shared<std::atomic<int>>(0);
  rt.tools().add(echo_tool(calls));
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto&) {
                 return call_tools({proposed("echo", {{"text", "x"}})}, {400, 50});
               }));
  auto agent = rt.spawn_agent(spec_for("m", {"echo"}, 10));
  run_options opts;
  opts.budget.max_input_tokens = 1000;
  auto r = rt.run(agent, "spend", opts);
  CHECK(r.status == run_status::halted);
  CHECK_THAT(r.error, Catch::Contains("input tokens 1200")
                        && Catch::Contains("limit of 1000"));
  CHECK(r.steps.size() == 3);
  CHECK(*calls == 2); // the third reply's tool call never ran
}

SCENARIO("the run's deadline bounds a model call", "[agent]") {
  runtime rt{quiet_config()};
  auto script = model_script::parse(
    json{{"rules", {{{"reply", {{"content", "late"}, {"latency_ms", 10000}}}}}}},
    "slow.json");
  rt.add_model("slow", spawn_scripted_model(rt.system(), script));
  auto spec = spec_for("slow", {});
  spec.model_timeout = 60s;
  auto agent = rt.spawn_agent(spec);
  run_options opts;
  opts.budget.deadline_ms = now_ms() + 300;
  auto started = std::chrono::steady_clock::now();
  auto r = rt.run(agent, "hurry", opts);
  CHECK(r.status == run_status::halted);
  CHECK_THAT(r.error, Catch::Contains("deadline passed during step 1"));
  CHECK(std::chrono::steady_clock::now() - started < 5s);
}

SCENARIO("stopping an agent answers its active and queued runs", "[agent]") {
  runtime rt{quiet_config()};
  auto script = model_script::parse(
    json{{"rules", {{{"reply", {{"content", "late"}, {"latency_ms", 10000}}}}}}},
    "slow.json");
  rt.add_model("slow", spawn_scripted_model(rt.system(), script));
  auto agent = rt.spawn_agent(spec_for("slow", {}));
  // One sender, so the agent gets both runs before the exit.
  caf::scoped_actor self{rt.system()};
  std::vector<run_result> results;
  self->send(agent, rt.make_task("first"));
  self->send(agent, rt.make_task("second"));
  self->send_exit(agent, caf::exit_reason::user_shutdown);
  // Both callers are answered at once, not after the model's 10 s latency.
  auto started = std::chrono::steady_clock::now();
  for (int i = 0; i < 2; ++i)
    self->receive([&](run_result& r) { results.push_back(r); },
                  caf::after(std::chrono::seconds{8}) >> [] {});
  CHECK(std::chrono::steady_clock::now() - started < 5s);
  REQUIRE(results.size() == 2);
  for (auto& r : results) {
    CHECK(r.status == run_status::cancelled);
    CHECK_THAT(r.error, Catch::Contains("agent 'tester' stopped"));
  }
  CHECK(rt.run(agent, "third").status == run_status::failed);
}

SCENARIO("a tool declared non-blocking runs in place on the adapter", "[agent]") {
  runtime_config cfg = quiet_config();
  cfg.blocking_threads = 1;
  runtime rt{cfg};
  auto pool_thread = std::make_shared<std::thread::id>();
  auto seen = std::make_shared<std::vector<std::thread::id>>();
  auto mtx = std::make_shared<std::mutex>();
  tool_definition where;
  where.name = "where";
  where.description = "Reports its thread";
  where.blocking = false;
  where.fn = [seen, mtx](const json&, const tool_context&) -> json {
    std::lock_guard<std::mutex> guard{*mtx};
    seen->push_back(std::this_thread::get_id());
    return "here";
  };
  rt.tools().add(where);
  // The pool's only thread, for comparison.
  std::promise<std::thread::id> pool_id;
  rt.blocking()->post([&pool_id] { pool_id.set_value(std::this_thread::get_id()); });
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                 if (step_of(req) == 1)
                   return call_tools({proposed("where", json::object())});
                 return answer("ok");
               }));
  auto r = rt.run(rt.spawn_agent(spec_for("m", {"where"})), "where?");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.steps[0].tool_results.at(0).ok);
  REQUIRE(seen->size() == 1);
  CHECK(seen->front() != pool_id.get_future().get());
}

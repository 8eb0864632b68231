#include "runtime/runtime.hpp"

#include <catch2/catch.hpp>

#include <dirent.h>

#include <atomic>
#include <condition_variable>
#include <optional>

#include "actors/scripted_model.hpp"
#include "runtime/blocking_pool.hpp"
#include "runtime/builtin_tools.hpp"
#include <caf/scoped_actor.hpp>
#include <future>

#include "support/test_models.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

/// Threads of this process right now.
size_t thread_count() {
  size_t n = 0;
  if (auto* dir = opendir("/proc/self/task")) {
    while (auto* entry = readdir(dir))
      if (entry->d_name[0] != '.')
        ++n;
    closedir(dir);
  }
  return n;
}

agent_spec echo_agent(std::string model) {
  agent_spec spec;
  spec.name = "echoer";
  spec.model = std::move(model);
  spec.tools = {"calculator"};
  return spec;
}

} // namespace

SCENARIO("a runtime stops every thread and actor it started", "[runtime]") {
  auto before = thread_count();
  for (bool middleman : {false, true}) {
    runtime_config cfg;
    cfg.load_middleman = middleman;
    cfg.blocking_threads = 3;
    cfg.io_threads = 2;
    runtime rt{cfg};
    CHECK(thread_count() > before);
    rt.tools().add(calculator_tool());
    auto log = std::make_shared<model_log>();
    rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                   if (step_of(req) == 1) {
                     model_tool_call c;
                     c.name = "calculator";
                     c.arguments = json{{"expression", "6*7"}};
                     return call_tools({c});
                   }
                   return answer(req.messages.back().content);
                 }));
    auto agent = rt.spawn_agent(echo_agent("m"));
    auto r = rt.run(agent, "compute");
    REQUIRE(r.status == run_status::complete);
    CHECK_THAT(r.answer, Catch::Contains("42"));
    // Leave a run in flight: shutdown must not wait for it.
    auto pending = rt.submit(agent, "compute again");
    rt.shutdown();
    rt.shutdown(); // idempotent
    CHECK(pending.wait_for(10s) == std::future_status::ready);
  }
  CHECK(thread_count() == before);
}

SCENARIO("runs can be awaited through a future or a callback", "[runtime]") {
  runtime_config cfg;
  cfg.load_middleman = false;
  runtime rt{cfg};
  rt.tools().add(calculator_tool());
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                 return answer("got: " + req.messages.back().content);
               }));
  auto agent = rt.spawn_agent(echo_agent("m"));
  auto f = rt.submit(agent, "via future");
  std::mutex mtx;
  std::condition_variable cv;
  std::optional<run_result> from_callback;
  auto task = rt.make_task("via callback");
  auto id = task.ref.run_id;
  rt.submit(agent, task, 10s, [&](run_result r) {
    std::lock_guard<std::mutex> guard{mtx};
    from_callback = std::move(r);
    cv.notify_all();
  });
  auto r = f.get();
  CHECK(r.answer == "got: via future");
  std::unique_lock<std::mutex> lock{mtx};
  REQUIRE(cv.wait_for(lock, 10s, [&] { return from_callback.has_value(); }));
  CHECK(from_callback->answer == "got: via callback");
  CHECK(from_callback->run_id == id);
}

SCENARIO("a run that outlives its timeout fails with a reason instead of "
         "hanging",
         "[runtime]") {
  runtime_config cfg;
  cfg.load_middleman = false;
  runtime rt{cfg};
  auto script = model_script::parse(
    json{{"rules", {{{"reply", {{"content", "slow"}, {"latency_ms", 5000}}}}}}},
    "slow.json");
  rt.add_model("slow", spawn_scripted_model(rt.system(), script));
  agent_spec spec;
  spec.name = "sloth";
  spec.model = "slow";
  auto agent = rt.spawn_agent(spec);
  run_options opts;
  opts.timeout = 100ms;
  auto started = std::chrono::steady_clock::now();
  auto r = rt.run(agent, "hurry", opts);
  auto waited = std::chrono::steady_clock::now() - started;
  // The caller's timeout is also the run's deadline (make_task), and the
  // caller waits a little longer, so the run's own answer arrives: halted at
  // its deadline, naming it.
  CHECK(r.status == run_status::halted);
  CHECK_THAT(r.error, Catch::Contains("deadline") && Catch::Contains("timeout"));
  CHECK(waited < 4s);
}

SCENARIO("the runtime names what is wrong with a model or tool", "[runtime]") {
  runtime_config cfg;
  cfg.load_middleman = false;
  runtime rt{cfg};
  CHECK_THROWS_WITH(rt.model("gpt-9"), Catch::Contains("unknown model 'gpt-9'"));
  CHECK_THROWS_WITH(rt.model("scripted:"), Catch::Contains("script file path"));
  CHECK_THROWS_WITH(rt.tool("nope"), Catch::Contains("unknown tool 'nope'"));
  CHECK_THROWS_WITH(rt.add_model("", model_actor{}), Catch::Contains("name"));
  auto r = rt.run(runnable_actor{}, "anything");
  CHECK(r.status == run_status::failed);
  CHECK_THAT(r.error, Catch::Contains("empty"));
  runtime_config bad;
  bad.load_middleman = false;
  bad.scheduler_policy = "fifo";
  CHECK_THROWS_WITH(runtime{bad}, Catch::Contains("scheduler_policy"));
}

SCENARIO("tools resolve by name, version and capability", "[runtime]") {
  runtime_config cfg;
  cfg.load_middleman = false;
  runtime rt{cfg};
  auto v1 = calculator_tool();
  auto v2 = calculator_tool();
  v2.version = "2.0.0";
  v2.description = "newer";
  rt.tools().add(v1);
  rt.tools().add(v2);
  CHECK(rt.tools().find("calculator")->definition.version == "2.0.0");
  auto by_cap = rt.tools().find_by_capability("math", "1.0.0");
  REQUIRE(by_cap.size() == 2);
  CHECK(by_cap[0]->definition.version == "1.0.0");
  // One adapter actor per tool version, reused.
  CHECK(rt.tool("calculator", "1.0.0") == rt.tool("calculator", "1.0.0"));
  CHECK(rt.tool("calculator", "1.0.0") != rt.tool("calculator"));
}

SCENARIO("shutdown does not wait forever for a stuck tool body", "[runtime]") {
  auto release = std::make_shared<std::pair<std::mutex, std::condition_variable>>();
  auto released = std::make_shared<bool>(false);
  auto finished = std::make_shared<std::atomic<bool>>(false);
  {
    runtime_config cfg;
    cfg.load_middleman = false;
    cfg.shutdown_grace = 200ms;
    runtime rt{cfg};
    tool_definition stuck;
    stuck.name = "stuck";
    stuck.description = "Blocks until released";
    stuck.timeout = 100ms;
    stuck.fn = [release, released, finished](const json&, const tool_context&) -> json {
      std::unique_lock<std::mutex> lock{release->first};
      release->second.wait_for(lock, 30s, [&] { return *released; });
      *finished = true;
      return "late";
    };
    rt.tools().add(stuck);
    auto log = std::make_shared<model_log>();
    rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                   if (step_of(req) == 1) {
                     model_tool_call c;
                     c.name = "stuck";
                     c.arguments = json::object();
                     return call_tools({c});
                   }
                   return answer("moved on");
                 }));
    agent_spec spec;
    spec.name = "waiter";
    spec.model = "m";
    spec.tools = {"stuck"};
    auto r = rt.run(rt.spawn_agent(spec), "wait");
    CHECK(r.status == run_status::complete);
    auto started = std::chrono::steady_clock::now();
    rt.shutdown();
    CHECK(std::chrono::steady_clock::now() - started < 5s);
    CHECK_FALSE(*finished);
  }
  // The detached body finishes after the runtime is gone; its result is dropped.
  {
    std::lock_guard<std::mutex> guard{release->first};
    *released = true;
  }
  release->second.notify_all();
}

SCENARIO("a call that timed out in the queue never runs", "[runtime]") {
  runtime_config cfg;
  cfg.load_middleman = false;
  cfg.blocking_threads = 1;
  runtime rt{cfg};
  auto gate_mtx = std::make_shared<std::mutex>();
  auto gate_cv = std::make_shared<std::condition_variable>();
  auto open = std::make_shared<bool>(false);
  auto quick_runs = std::make_shared<std::atomic<int>>(0);
  tool_definition hog;
  hog.name = "hog";
  hog.description = "Holds the only pool thread";
  hog.timeout = 5s;
  auto hog_started = std::make_shared<std::promise<void>>();
  auto hog_running = hog_started->get_future();
  hog.fn = [gate_mtx, gate_cv, open, hog_started](const json&,
                                                  const tool_context&) -> json {
    hog_started->set_value();
    std::unique_lock<std::mutex> lock{*gate_mtx};
    gate_cv->wait_for(lock, 10s, [&] { return *open; });
    return "done";
  };
  tool_definition quick;
  quick.name = "quick";
  quick.description = "Would have side effects";
  quick.timeout = 100ms;
  quick.fn = [quick_runs](const json&, const tool_context&) -> json {
    ++*quick_runs;
    return "ran";
  };
  rt.tools().add(hog);
  rt.tools().add(quick);
  caf::scoped_actor self{rt.system()};
  auto hog_actor = rt.tool("hog");
  auto quick_actor = rt.tool("quick");
  tool_call hog_call;
  hog_call.name = "hog";
  hog_call.call_id = "h";
  hog_call.args = json::object();
  self->send(hog_actor, hog_call);
  REQUIRE(hog_running.wait_for(10s) == std::future_status::ready);
  tool_call quick_call;
  quick_call.name = "quick";
  quick_call.call_id = "q";
  quick_call.args = json::object();
  tool_result quick_result;
  self->request(quick_actor, 5s, quick_call)
    .receive([&](tool_result& r) { quick_result = r; }, [](caf::error&) {});
  CHECK(quick_result.error.kind == tool_error_kind::timeout);
  // Free the pool; a marker job queued after the timed-out call runs only
  // once that call's turn has passed.
  auto marker = std::make_shared<std::promise<void>>();
  auto marker_done = marker->get_future();
  {
    std::lock_guard<std::mutex> guard{*gate_mtx};
    *open = true;
  }
  gate_cv->notify_all();
  REQUIRE(rt.blocking()->post([marker] { marker->set_value(); }));
  REQUIRE(marker_done.wait_for(10s) == std::future_status::ready);
  CHECK(*quick_runs == 0);
}

SCENARIO("a runtime that was shut down refuses work with a clear error",
         "[runtime]") {
  runtime_config cfg;
  cfg.load_middleman = false;
  runtime rt{cfg};
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log,
                                          [](auto&) { return answer("x"); }));
  agent_spec early;
  early.name = "early";
  early.model = "m";
  auto agent = rt.spawn_agent(early);
  rt.shutdown();
  auto r = rt.run(agent, "x");
  CHECK(r.status == run_status::failed);
  CHECK_THAT(r.error, Catch::Contains("shut down"));
  auto f = rt.submit(agent, "y");
  REQUIRE(f.wait_for(5s) == std::future_status::ready);
  CHECK_THAT(f.get().error, Catch::Contains("shut down"));
  agent_spec spec;
  spec.name = "late";
  spec.model = "m";
  CHECK_THROWS_WITH(rt.spawn_agent(spec), Catch::Contains("shut down"));
  CHECK_THROWS_WITH(rt.model("scripted:x.json"), Catch::Contains("shut down"));
}

SCENARIO("a run's principal and priority reach the calls it makes",
         "[runtime]") {
  runtime_config cfg;
  cfg.load_middleman = false;
  runtime rt{cfg};
  rt.tools().add(calculator_tool());
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto&) {
                 return answer("ok");
               }));
  auto agent = rt.spawn_agent(echo_agent("m"));
  run_options opts;
  opts.principal = "alice";
  opts.priority = 7;
  auto r = rt.run(agent, "hello", opts);
  REQUIRE(r.status == run_status::complete);
  auto reqs = log->snapshot();
  REQUIRE(reqs.size() == 1);
  CHECK(reqs[0].ref.principal == "alice");
  CHECK(reqs[0].ref.priority == 7);
  CHECK(reqs[0].ref.run_id == r.run_id);
}

#include "runtime/runtime.hpp"

#include <catch2/catch.hpp>

#include <dirent.h>

#include <atomic>
#include <condition_variable>
#include <optional>

#include "actors/scripted_model.hpp"
#include "runtime/builtin_tools.hpp"
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
  CHECK(r.status == run_status::failed);
  CHECK_THAT(r.error, Catch::Contains("got no result") && Catch::Contains("timeout"));
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

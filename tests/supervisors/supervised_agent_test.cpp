#include "supervisors/supervised_agent.hpp"

#include <catch2/catch.hpp>

#include <random>

#include "runtime/builtin_tools.hpp"
#include "runtime/runtime.hpp"
#include "support/runtime_fixture.hpp"
#include "support/test_models.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

/// Three steps: a calculator call, another, then an answer naming the agent.
chat_response three_steps(const chat_request& req) {
  auto step = step_of(req);
  if (step < 3) {
    model_tool_call c;
    c.name = "calculator";
    c.arguments = json{{"expression", std::to_string(step) + "+1"}};
    return call_tools({c});
  }
  return answer("done by " + req.agent);
}

struct fixture : runtime_fixture {
  fixture() {
    rt.tools().add(calculator_tool());
    rt.add_model("m", spawn_recording_model(rt.system(), log, three_steps));
  }

  agent_spec spec(const std::string& name, int32_t crash_at = 0,
                  int32_t crashes = -1) {
    agent_spec s;
    s.name = name;
    s.model = "m";
    s.tools = {"calculator"};
    s.faults.crash_at_step = crash_at;
    if (crashes >= 0)
      s.faults.crashes_left = std::make_shared<std::atomic<int32_t>>(crashes);
    return s;
  }
};

} // namespace

TEST_CASE_METHOD(fixture,
                 "a supervised agent that crashes mid-run is restarted and the "
                 "run retried to completion",
                 "[supervised]") {
  auto agent = rt.spawn_supervised_agent(spec("flaky", 2, 1));
  auto r = rt.run(agent, "work");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.answer == "done by flaky");
  CHECK(r.steps.size() == 3);
  // Step 1 ran in the crashed incarnation and again in the new one.
  size_t step_one = 0;
  for (auto& req : log->snapshot())
    step_one += step_of(req) == 1;
  CHECK(step_one == 2);
  // The agent keeps serving runs afterwards.
  CHECK(rt.run(agent, "more").status == run_status::complete);
}

TEST_CASE_METHOD(fixture,
                 "an agent that keeps crashing ends the run with an error "
                 "naming the crash",
                 "[supervised]") {
  supervision_options opts;
  opts.run_retries = 2;
  opts.max_restarts = 5;
  auto agent = rt.spawn_supervised_agent(spec("doomed", 2), opts);
  auto started = std::chrono::steady_clock::now();
  auto r = rt.run(agent, "work");
  CHECK(r.status == run_status::failed);
  CHECK_THAT(r.error, Catch::Contains("crashed at step 2")
                        && Catch::Contains("after 3 attempt(s)"));
  CHECK(std::chrono::steady_clock::now() - started < 10s);
}

TEST_CASE_METHOD(fixture,
                 "past the restart intensity the run fails instead of hanging",
                 "[supervised]") {
  supervision_options opts;
  opts.run_retries = 10;
  opts.max_restarts = 1;
  auto agent = rt.spawn_supervised_agent(spec("fragile", 1), opts);
  auto r = rt.run(agent, "work");
  CHECK(r.status == run_status::failed);
  CHECK_THAT(r.error, Catch::Contains("crash"));
}

TEST_CASE_METHOD(fixture, "an unsupervised agent's crash answers its callers",
                 "[supervised]") {
  auto agent = rt.spawn_agent(spec("alone", 2));
  auto first = rt.submit(agent, "one");
  auto second = rt.submit(agent, "two");
  REQUIRE(first.wait_for(10s) == std::future_status::ready);
  REQUIRE(second.wait_for(10s) == std::future_status::ready);
  auto a = first.get();
  CHECK(a.status == run_status::failed);
  CHECK_THAT(a.error, Catch::Contains("crashed")
                        && Catch::Contains("agent 'alone' crashed at step 2"));
  CHECK(second.get().status == run_status::failed);
}

TEST_CASE_METHOD(fixture,
                 "1000 agents, 10% crashing at random steps: every run ends, "
                 "crashed ones after a restart",
                 "[supervised][swarm]") {
  constexpr int agents = 1000;
  std::mt19937 gen{12345};
  std::uniform_int_distribution<int> step_dist{1, 3};
  std::vector<runnable_actor> fronts;
  std::vector<bool> crashing;
  for (int i = 0; i < agents; ++i) {
    bool crash = i % 10 == 3;
    auto name = "agent-" + std::to_string(i);
    fronts.push_back(rt.spawn_supervised_agent(
      crash ? spec(name, step_dist(gen), 1) : spec(name)));
    crashing.push_back(crash);
  }
  std::vector<std::future<run_result>> results;
  run_options opts;
  opts.timeout = 120s;
  for (auto& f : fronts)
    results.push_back(rt.submit(f, "go", opts));
  int completed = 0;
  for (int i = 0; i < agents; ++i) {
    auto& fut = results[static_cast<size_t>(i)];
    REQUIRE(fut.wait_for(120s) == std::future_status::ready);
    auto r = fut.get();
    if (r.status == run_status::complete) {
      ++completed;
      CHECK(r.answer == "done by agent-" + std::to_string(i));
    } else {
      // Only a crashing agent may end otherwise, and then explicitly.
      CHECK(crashing[static_cast<size_t>(i)]);
      CHECK_THAT(r.error, Catch::Contains("crash"));
    }
  }
  // Each crashing agent crashes once, so after its restart it completes too.
  CHECK(completed == agents);
}

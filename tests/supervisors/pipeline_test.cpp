#include "supervisors/pipeline.hpp"

#include <catch2/catch.hpp>

#include "runtime/runtime.hpp"
#include "support/runtime_fixture.hpp"
#include "support/test_models.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

/// Each agent wraps its goal in its own name: "b(a(x))".
chat_response wrap(const chat_request& req) {
  auto goal = req.messages.at(req.messages.size() - 1).content;
  // The goal line comes before any "Context:" block.
  auto cut = goal.find("\n\nContext:");
  if (cut != std::string::npos)
    goal.resize(cut);
  return answer(req.agent + "(" + goal + ")", {10, 5});
}

struct fixture : runtime_fixture {
  fixture() {
    rt.add_model("wrap", spawn_recording_model(rt.system(), log, wrap));
  }

  pipeline_stage stage(const std::string& name, agent_faults faults = {}) {
    agent_spec spec;
    spec.name = name;
    spec.model = "wrap";
    spec.faults = faults;
    return {name, rt.spawn_supervised_agent(spec)};
  }

  size_t requests_from(const std::string& agent) {
    size_t n = 0;
    for (auto& req : log->snapshot())
      n += req.agent == agent;
    return n;
  }
};

} // namespace

TEST_CASE_METHOD(fixture, "a pipeline feeds each stage's answer to the next",
                 "[pipeline]") {
  auto p = rt.adopt(spawn_pipeline(rt.system(), "chain",
                          {stage("a"), stage("b"), stage("c")}));
  auto r = rt.run(p, "x");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.answer == "c(b(a(x)))");
  CHECK(r.agent == "chain");
  CHECK(r.steps.size() == 3);
  CHECK(r.usage.input_tokens == 30);
  CHECK(r.usage.output_tokens == 15);
  // Later stages also see the pipeline's original goal.
  for (auto& req : log->snapshot())
    if (req.agent == "b") {
      auto& text = req.messages.back().content;
      CHECK_THAT(text, Catch::StartsWith("a(x)"));
      CHECK_THAT(text, Catch::Contains("\"pipeline_goal\": \"x\""));
    }
}

TEST_CASE_METHOD(fixture, "a failing stage ends the pipeline, naming the stage",
                 "[pipeline]") {
  agent_spec broken;
  broken.name = "b";
  // A model that errors: an agent whose model actor is gone.
  auto gone = spawn_recording_model(rt.system(), log, wrap);
  rt.add_model("gone", gone);
  caf::anon_send_exit(gone, caf::exit_reason::user_shutdown);
  broken.model = "gone";
  auto p = rt.adopt(spawn_pipeline(rt.system(), "chain",
                          {stage("a"), {"b", rt.spawn_agent(broken)}, stage("c")}));
  auto r = rt.run(p, "x");
  CHECK(r.status == run_status::failed);
  CHECK_THAT(r.error, Catch::Contains("stage 2 ('b') ended failed"));
  CHECK(r.steps.size() == 2); // a's step and b's failed step
  CHECK(requests_from("c") == 0);
  // b answered nothing: the answer is the work done so far, a's.
  CHECK(r.answer == "a(x)");
}

TEST_CASE_METHOD(fixture, "pipelines nest, and a crashed stage is retried",
                 "[pipeline]") {
  agent_faults once;
  once.crash_at_step = 1;
  once.crashes_left = std::make_shared<std::atomic<int32_t>>(1);
  auto inner = rt.adopt(spawn_pipeline(rt.system(), "inner",
                                       {stage("b", once), stage("c")}));
  auto outer = rt.adopt(spawn_pipeline(rt.system(), "outer",
                                       {stage("a"), {"inner", inner}, stage("d")}));
  auto r = rt.run(outer, "x");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.answer == "d(c(b(a(x))))");
  CHECK(r.steps.size() == 4);
}

TEST_CASE_METHOD(fixture, "bad pipelines are refused by name", "[pipeline]") {
  CHECK_THROWS_WITH(spawn_pipeline(rt.system(), "empty", {}),
                    Catch::Contains("'empty' has no stages"));
  CHECK_THROWS_WITH(spawn_pipeline(rt.system(), "p", {{"a", runnable_actor{}}}),
                    Catch::Contains("stage 1 ('a') has no runner"));
  CHECK_THROWS_WITH(rt.adopt(spawn_pipeline(rt.system(), "p",
                                            {stage("a"), stage("a")})),
                    Catch::Contains("'a' is used twice"));
}

#include "runtime/metrics.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/runtime.hpp"
#include "runtime/store.hpp"
#include "support/prometheus_text.hpp"
#include "support/runtime_fixture.hpp"
#include "support/temp_dir.hpp"
#include "support/test_models.hpp"

// The metrics are fed the trace of real runs (a real runtime, agents, tool
// adapters, guards, the budget and the approval gate, with models scripted in
// C++), and what render() prints is parsed back and checked against what the
// runs did. The exposition is linted by the real promtool.

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

/// The bound on every wait in this file.
constexpr auto wait_limit = std::chrono::seconds{20};

/// The values label `label` takes among the samples of `name`.
std::set<std::string> label_values(const std::vector<sample>& samples,
                                   const std::string& name,
                                   const std::string& label) {
  std::set<std::string> out;
  for (const auto& s : samples)
    if (s.name == name)
      if (auto i = s.labels.find(label); i != s.labels.end())
        out.insert(i->second);
  return out;
}

// -- real runs ----------------------------------------------------------------

/// Every trace record of a runtime, as a second listener sees them.
struct record_log {
  std::mutex mtx;
  std::vector<json> records;

  trace_listener listener() {
    return [this](const json& r) {
      std::lock_guard<std::mutex> guard{mtx};
      records.push_back(r);
    };
  }

  /// Finished spans whose name starts with `prefix`.
  size_t spans(const std::string& prefix) {
    std::lock_guard<std::mutex> guard{mtx};
    size_t n = 0;
    for (const auto& r : records)
      if (r.value("type", "") == "span"
          && r.value("name", "").rfind(prefix, 0) == 0)
        ++n;
    return n;
  }
};

agent_spec spec_for(std::string name, std::vector<std::string> tools) {
  agent_spec spec;
  spec.name = std::move(name);
  spec.system_prompt = "You are under test.";
  spec.model = "m";
  spec.tools = std::move(tools);
  spec.max_steps = 8;
  spec.model_timeout = 10s;
  return spec;
}

/// A tool that answers its arguments.
tool_definition echo(std::string name) {
  tool_definition def;
  def.name = std::move(name);
  def.description = "Answers its arguments";
  def.fn = [](const json& args, const tool_context&) -> json { return args; };
  return def;
}

/// A tool whose first `failures` calls fail transiently.
tool_definition failing(std::string name, int failures) {
  tool_definition def;
  def.name = std::move(name);
  def.description = "Fails at first";
  auto calls = std::make_shared<std::atomic<int>>(0);
  def.fn = [calls, failures](const json&, const tool_context&) -> json {
    if (calls->fetch_add(1) < failures)
      throw tool_failure(tool_error_kind::transient, "upstream 503");
    return "fine";
  };
  return def;
}

/// A runtime whose trace goes to `m` and `log`.
runtime_config traced_config(metrics& m, record_log& log) {
  auto cfg = test_runtime_config();
  cfg.trace_listeners.push_back(m.listener());
  cfg.trace_listeners.push_back(log.listener());
  return cfg;
}

/// The run behind the first scenario: a tool that fails once and one that
/// works, over three model calls.
run_result run_flaky_and_steady(metrics& m, record_log& log) {
  runtime rt{traced_config(m, log)};
  rt.tools().add(failing("flaky", 1));
  rt.tools().add(echo("steady"));
  auto models = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(
                      rt.system(), models, [](const chat_request& req) {
                        switch (step_of(req)) {
                          case 1:
                            return call_tools(
                              {proposed("flaky", {{"n", 1}}),
                               proposed("steady", {{"text", "hi"}})},
                              {100, 7});
                          case 2:
                            return call_tools({proposed("flaky", {{"n", 2}})},
                                              {120, 9});
                          default:
                            return answer("done", {150, 11});
                        }
                      }));
  auto agent = rt.spawn_agent(spec_for("worker", {"flaky", "steady"}));
  auto r = rt.run(agent, "use the tools");
  rt.flush_trace();
  return r;
}

/// The run behind the guardrail scenario: a breaker opens, a limiter holds a
/// call, a human approves a call, the budget warns and then refuses.
run_result run_guardrails(metrics& m, record_log& log) {
  auto cfg = traced_config(m, log);
  cfg.budget.global.max_steps = 2;
  policy_rule pay_rule;
  pay_rule.name = "pay-needs-a-human";
  pay_rule.tools = {"pay"};
  pay_rule.decision = policy_decision::require_approval;
  pay_rule.reason = "payments need a human";
  cfg.policy.rules.push_back(pay_rule);
  runtime rt{cfg};
  auto fragile = failing("fragile", 1000);
  fragile.guards.breaker.failure_threshold = 1;
  fragile.guards.breaker.cooldown = 10min;
  rt.tools().add(fragile);
  auto gate = echo("gate");
  gate.guards.limits.rate_per_sec = 20;
  gate.guards.limits.burst = 1;
  rt.tools().add(gate);
  rt.tools().add(echo("pay"));
  auto asked = std::make_shared<std::promise<approval_request>>();
  auto asked_future = asked->get_future();
  rt.on_approval_request([asked](approval_request req) {
    // On an actor thread: hand it over only.
    asked->set_value(std::move(req));
  });
  auto models = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(
                      rt.system(), models, [](const chat_request& req) {
                        if (step_of(req) == 1)
                          return call_tools({proposed("fragile", {{"n", 1}}),
                                             proposed("gate", {{"i", 1}}),
                                             proposed("gate", {{"i", 2}})});
                        return call_tools({proposed("fragile", {{"n", 2}}),
                                           proposed("pay", {{"amount", 5}})});
                      }));
  auto agent = rt.spawn_agent(spec_for("clerk", {"fragile", "gate", "pay"}));
  auto done = rt.submit(agent, "pay the bill");
  REQUIRE(asked_future.wait_for(wait_limit) == std::future_status::ready);
  rt.decide(asked_future.get().request_id, approval_verdict::approve, "alice",
            "ok");
  REQUIRE(done.wait_for(wait_limit) == std::future_status::ready);
  auto r = done.get();
  rt.flush_trace();
  return r;
}

} // namespace

// -- trace records ------------------------------------------------------------

SCENARIO("the trace of a real run is counted by model, tool and agent",
         "[metrics]") {
  metrics m;
  record_log log;
  auto r = run_flaky_and_steady(m, log);
  REQUIRE(r.status == run_status::complete);
  REQUIRE(r.steps.size() == 3);
  auto s = parse(m.render());

  THEN("every chat span is a model call, with its tokens and latency") {
    REQUIRE(log.spans("chat ") == 3);
    CHECK(value(s, "troupe_model_calls_total", {{"model", "m"}, {"outcome", "ok"}})
          == 3);
    CHECK(value(s, "troupe_model_calls_total",
                {{"model", "m"}, {"outcome", "error"}})
          == missing);
    CHECK(value(s, "troupe_model_call_duration_seconds_count", {{"model", "m"}})
          == 3);
    CHECK(bucket(s, "troupe_model_call_duration_seconds", {{"model", "m"}},
                 std::numeric_limits<double>::infinity())
          == 3);
    CHECK(value(s, "troupe_model_tokens_total", {{"model", "m"}, {"kind", "input"}})
          == 100 + 120 + 150);
    CHECK(value(s, "troupe_model_tokens_total", {{"model", "m"}, {"kind", "output"}})
          == 7 + 9 + 11);
    CHECK(r.usage.input_tokens == 370);
  }
  THEN("the failing tool shows one error and one success, the other one "
       "success") {
    REQUIRE(log.spans("execute_tool ") == 3);
    CHECK(value(s, "troupe_tool_calls_total",
                {{"tool", "flaky"}, {"outcome", "error"}})
          == 1);
    CHECK(value(s, "troupe_tool_calls_total", {{"tool", "flaky"}, {"outcome", "ok"}})
          == 1);
    CHECK(value(s, "troupe_tool_calls_total",
                {{"tool", "steady"}, {"outcome", "ok"}})
          == 1);
    CHECK(value(s, "troupe_tool_calls_total",
                {{"tool", "steady"}, {"outcome", "error"}})
          == missing);
    CHECK(value(s, "troupe_tool_call_errors_total",
                {{"tool", "flaky"}, {"type", "transient"}})
          == 1);
    CHECK(value(s, "troupe_tool_call_duration_seconds_count", {{"tool", "flaky"}})
          == 2);
    CHECK(value(s, "troupe_tool_call_duration_seconds_count",
                {{"tool", "steady"}})
          == 1);
    CHECK(bucket(s, "troupe_tool_call_duration_seconds", {{"tool", "flaky"}},
                 std::numeric_limits<double>::infinity())
          == 2);
  }
  THEN("the agent's steps and its run are counted") {
    CHECK(value(s, "troupe_agent_steps_total", {{"agent", "worker"}})
          == static_cast<double>(r.steps.size()));
    CHECK(value(s, "troupe_agent_runs_total",
                {{"agent", "worker"}, {"status", "complete"}})
          == 1);
    CHECK(value(s, "troupe_agent_run_duration_seconds_count",
                {{"agent", "worker"}})
          == 1);
  }
  THEN("no record was malformed") {
    CHECK(value(s, "troupe_trace_records_ignored_total") == 0);
  }
}

SCENARIO("breaker, limiter, approval and budget events of a real run are "
         "counted",
         "[metrics]") {
  metrics m;
  record_log log;
  auto r = run_guardrails(m, log);
  // Two steps, then the budget's step limit refuses the third model call.
  REQUIRE(r.status == run_status::halted);
  REQUIRE(r.steps.size() == 2);
  auto s = parse(m.render());

  THEN("the breaker of the failing tool shows open, entered once") {
    CHECK(value(s, "troupe_breaker_state", {{"tool", "fragile"}}) == 2);
    CHECK(value(s, "troupe_breaker_transitions_total",
                {{"tool", "fragile"}, {"to", "open"}})
          == 1);
    CHECK(value(s, "troupe_tool_call_errors_total",
                {{"tool", "fragile"}, {"type", "transient"}})
          == 1);
    CHECK(value(s, "troupe_tool_call_errors_total",
                {{"tool", "fragile"}, {"type", "circuit_open"}})
          == 1);
    CHECK(value(s, "troupe_tool_calls_total",
                {{"tool", "fragile"}, {"outcome", "error"}})
          == 2);
  }
  THEN("the second of two calls in one burst waited in the limiter") {
    CHECK(value(s, "troupe_limiter_queue_wait_seconds_count",
                {{"kind", "tool"}, {"target", "gate"}})
          == 1);
    CHECK(value(s, "troupe_tool_calls_total", {{"tool", "gate"}, {"outcome", "ok"}})
          == 2);
  }
  THEN("the approval was asked for, decided and timed") {
    CHECK(value(s, "troupe_policy_decisions_total",
                {{"decision", "require_approval"}})
          == 1);
    CHECK(value(s, "troupe_approval_requests_total") == 1);
    CHECK(value(s, "troupe_approval_decisions_total", {{"verdict", "approve"}})
          == 1);
    CHECK(value(s, "troupe_approval_wait_seconds_count") == 1);
    CHECK(value(s, "troupe_tool_calls_total", {{"tool", "pay"}, {"outcome", "ok"}})
          == 1);
  }
  THEN("the budget warned at its step limit's share and then refused by "
       "steps") {
    CHECK(value(s, "troupe_budget_warnings_total", {{"limit", "steps"}}) == 1);
    CHECK(value(s, "troupe_guardrail_warnings_total", {{"agent", "clerk"}})
          == 1);
    CHECK(value(s, "troupe_budget_denials_total", {{"limit", "steps"}}) == 1);
    CHECK(label_values(s, "troupe_budget_denials_total", "limit")
          == std::set<std::string>{"steps"});
    CHECK(value(s, "troupe_agent_runs_total",
                {{"agent", "clerk"}, {"status", "halted"}})
          == 1);
    CHECK(value(s, "troupe_model_calls_total", {{"model", "m"}, {"outcome", "ok"}})
          == 2);
  }
  THEN("no record was malformed") {
    CHECK(value(s, "troupe_trace_records_ignored_total") == 0);
  }
}

SCENARIO("a reply replayed from the journal is counted as replayed, its "
         "tokens and cost not again",
         "[metrics]") {
  metrics m;
  auto chat = [](const char* span, int64_t in, int64_t out) {
    return json{{"type", "span"},
                {"span_id", span},
                {"name", "chat m"},
                {"status", "ok"},
                {"duration_ms", 40},
                {"attributes",
                 {{"gen_ai.request.model", "m"},
                  {"gen_ai.usage.input_tokens", in},
                  {"gen_ai.usage.output_tokens", out},
                  {"troupe.cost_nusd", 5000}}}};
  };
  // What a resumed run traces: the journaled model names the chat span
  // before the agent ends it.
  m.observe(json{{"type", "event"},
                 {"span_id", "s1"},
                 {"name", "model.replayed"},
                 {"attributes",
                  {{"gen_ai.request.model", "m"},
                   {"troupe.journal.key", "model/r/a/1"}}}});
  m.observe(chat("s1", 100, 10));
  m.observe(chat("s2", 7, 3));
  // A replay without its span id cannot be matched: it is malformed.
  m.observe(json{{"type", "event"},
                 {"name", "model.replayed"},
                 {"attributes", {{"gen_ai.request.model", "m"}}}});
  auto s = parse(m.render());
  CHECK(value(s, "troupe_model_calls_total",
              {{"model", "m"}, {"outcome", "replayed"}})
        == 1);
  CHECK(value(s, "troupe_model_calls_total", {{"model", "m"}, {"outcome", "ok"}})
        == 1);
  CHECK(value(s, "troupe_model_tokens_total", {{"model", "m"}, {"kind", "input"}})
        == 7);
  CHECK(value(s, "troupe_model_tokens_total",
              {{"model", "m"}, {"kind", "output"}})
        == 3);
  CHECK(value(s, "troupe_model_cost_usd_total", {{"model", "m"}})
        == Approx(5e-6));
  CHECK(value(s, "troupe_model_call_duration_seconds_count", {{"model", "m"}})
        == 1);
  CHECK(value(s, "troupe_trace_records_ignored_total") == 1);
  THEN("the span is forgotten once ended: a later span of that id counts") {
    m.observe(chat("s1", 1, 1));
    auto again = parse(m.render());
    CHECK(value(again, "troupe_model_calls_total",
                {{"model", "m"}, {"outcome", "ok"}})
          == 2);
  }
}

SCENARIO("malformed trace records are counted as ignored and never throw",
         "[metrics]") {
  metrics m;
  auto listener = m.listener();
  std::vector<json> bad{
    json(42),
    json::array({1, 2}),
    json{{"type", 1}},
    json{{"type", "bogus"}},
    json{{"type", "span"}, {"status", "ok"}, {"duration_ms", 1}},
    json{{"type", "span"}, {"name", "chat m"}, {"status", "ok"},
         {"duration_ms", "slow"}, {"attributes", json::object()}},
    json{{"type", "span"}, {"name", "chat m"}, {"status", "ok"},
         {"duration_ms", -5}, {"attributes", json::object()}},
    json{{"type", "span"}, {"name", "chat m"}, {"status", "ok"},
         {"duration_ms", 3},
         {"attributes", {{"gen_ai.usage.input_tokens", -10}}}},
    json{{"type", "span"}, {"name", "chat m"}, {"status", "ok"},
         {"duration_ms", 3}, {"attributes", json::array()}},
    json{{"type", "span"}, {"name", "execute_tool t"}, {"status", "ok"},
         {"duration_ms", 3}, {"attributes", {{"troupe.tool.ok", "yes"}}}},
    json{{"type", "span"}, {"name", "execute_tool t"}, {"status", "ok"},
         {"duration_ms", 3}, {"attributes", {{"gen_ai.tool.name", 7}}}},
    json{{"type", "span"}, {"name", "step 1"}, {"status", "ok"},
         {"duration_ms", 3}, {"attributes", json::object()}},
    json{{"type", "event"}, {"name", "breaker.transition"},
         {"attributes",
          {{"gen_ai.tool.name", "t"}, {"troupe.breaker.to", "sideways"}}}},
    json{{"type", "event"}, {"name", "limiter.wait"},
         {"attributes", {{"gen_ai.tool.name", "t"}}}},
    json{{"type", "event"}, {"name", "budget.denied"},
         {"attributes", {{"troupe.budget.limit", nullptr}}}},
    json{{"type", "event"}, {"attributes", json::object()}},
  };
  // Well-formed records that no metric counts are not "ignored".
  std::vector<json> uncounted{
    json{{"type", "span_start"}, {"name", "chat m"}},
    json{{"type", "event"}, {"name", "agent.transition"},
         {"attributes", json::object()}},
    json{{"type", "span"}, {"name", "something else"}, {"status", "ok"},
         {"duration_ms", 1}, {"attributes", json::object()}},
  };
  for (const auto& record : bad)
    CHECK_NOTHROW(listener(record));
  for (const auto& record : uncounted)
    CHECK_NOTHROW(m.observe(record));
  auto s = parse(m.render());
  CHECK(value(s, "troupe_trace_records_ignored_total")
        == static_cast<double>(bad.size()));
  THEN("none of them left a series behind") {
    for (const auto& x : s) {
      INFO(x.name);
      for (const char* prefix :
           {"troupe_model", "troupe_tool", "troupe_agent", "troupe_breaker",
            "troupe_limiter", "troupe_budget"})
        CHECK(x.name.rfind(prefix, 0) != 0);
    }
  }
  THEN("the listener outlives the metrics object") {
    std::optional<metrics> owner{std::in_place};
    auto kept = owner->listener();
    owner.reset();
    CHECK_NOTHROW(kept(json(nullptr)));
    CHECK_NOTHROW(kept(json{{"type", "event"}, {"name", "tool.retry"},
                            {"attributes", {{"gen_ai.tool.name", "x"}}}}));
  }
}

SCENARIO("label values are bounded", "[metrics]") {
  auto retry = [](const std::string& tool) {
    return json{{"type", "event"}, {"name", "tool.retry"},
                {"attributes", {{"gen_ai.tool.name", tool}}}};
  };
  WHEN("more distinct values arrive than a label may take") {
    metrics m;
    for (int i = 0; i < 250; ++i)
      m.observe(retry("tool_" + std::to_string(i)));
    auto s = parse(m.render());
    THEN("the first 200 keep their names and the rest count as other") {
      auto names = label_values(s, "troupe_tool_retries_total", "tool");
      CHECK(names.size() == 201);
      CHECK(names.count("tool_0") == 1);
      CHECK(names.count("tool_199") == 1);
      CHECK(names.count("tool_200") == 0);
      CHECK(value(s, "troupe_tool_retries_total", {{"tool", "other"}}) == 50);
      CHECK(value(s, "troupe_tool_retries_total", {{"tool", "tool_0"}}) == 1);
    }
    AND_WHEN("a known value comes again") {
      m.observe(retry("tool_7"));
      THEN("it is still counted under its own name") {
        auto again = parse(m.render());
        CHECK(value(again, "troupe_tool_retries_total", {{"tool", "tool_7"}})
              == 2);
      }
    }
  }
  WHEN("the bound is configured smaller") {
    metrics m{metrics_options{3}};
    for (int i = 0; i < 5; ++i)
      for (const char* outcome : {"ok", "error"}) {
        json span{{"type", "span"},
                  {"name", "execute_tool t" + std::to_string(i)},
                  {"status", outcome},
                  {"duration_ms", 2},
                  {"attributes", {{"troupe.tool.ok", outcome == std::string{"ok"}},
                                  {"error.type", "transient"}}}};
        m.observe(span);
      }
    auto s = parse(m.render());
    THEN("each label is bounded on its own") {
      CHECK(label_values(s, "troupe_tool_calls_total", "tool")
            == std::set<std::string>{"t0", "t1", "t2", "other"});
      CHECK(label_values(s, "troupe_tool_calls_total", "outcome")
            == std::set<std::string>{"ok", "error"});
      CHECK(value(s, "troupe_tool_calls_total", {{"tool", "other"}, {"outcome", "ok"}})
            == 2);
      CHECK(value(s, "troupe_tool_call_duration_seconds_count", {{"tool", "other"}})
            == 4);
    }
  }
  WHEN("values are empty, too long, or not printable UTF-8") {
    metrics m;
    m.observe(retry(""));
    m.observe(retry(std::string(300, 'x')));
    m.observe(retry("line\nbreak"));
    m.observe(retry("bad \xff byte"));
    m.observe(retry("caf\xc3\xa9 \"quoted\" back\\slash"));
    auto s = parse(m.render());
    THEN("they count as unknown or other; printable ones are kept, escaped") {
      CHECK(label_values(s, "troupe_tool_retries_total", "tool")
            == std::set<std::string>{"unknown", "other",
                                     "caf\xc3\xa9 \"quoted\" back\\slash"});
      CHECK(value(s, "troupe_tool_retries_total", {{"tool", "other"}}) == 3);
    }
  }
  WHEN("the bound is zero") {
    THEN("the metrics refuse it") {
      CHECK_THROWS_AS(metrics{metrics_options{0}}, std::invalid_argument);
    }
  }
}

// -- the run service's figures ------------------------------------------------

SCENARIO("the run service's calls move the run gauges and counters",
         "[metrics]") {
  metrics m;
  GIVEN("a fresh registry") {
    auto s = parse(m.render());
    THEN("the live statuses and the queue show zero") {
      CHECK(value(s, "troupe_runs", {{"status", "queued"}}) == 0);
      CHECK(value(s, "troupe_runs", {{"status", "running"}}) == 0);
      CHECK(value(s, "troupe_run_queue_depth") == 0);
      CHECK(value(s, "troupe_runs_running") == 0);
    }
  }
  WHEN("runs are submitted, started and finished") {
    m.run_status_changed("research", "", "queued");
    m.run_status_changed("research", "", "queued");
    m.run_status_changed("support", "", "queued");
    m.run_status_changed("research", "queued", "running");
    auto mid = parse(m.render());
    m.run_status_changed("research", "running", "complete");
    m.run_status_changed("support", "queued", "cancelled");
    auto s = parse(m.render());
    THEN("the gauge follows each run's status") {
      CHECK(value(mid, "troupe_runs", {{"status", "queued"}}) == 2);
      CHECK(value(mid, "troupe_runs", {{"status", "running"}}) == 1);
      CHECK(value(s, "troupe_runs", {{"status", "queued"}}) == 1);
      CHECK(value(s, "troupe_runs", {{"status", "running"}}) == 0);
    }
    THEN("finished runs are counted by swarm and status, not in the gauge") {
      CHECK(value(s, "troupe_runs_finished_total",
                  {{"swarm", "research"}, {"status", "complete"}})
            == 1);
      CHECK(value(s, "troupe_runs_finished_total",
                  {{"swarm", "support"}, {"status", "cancelled"}})
            == 1);
      CHECK(value(mid, "troupe_runs_finished_total",
                  {{"swarm", "research"}, {"status", "complete"}})
            == missing);
      CHECK(value(s, "troupe_runs", {{"status", "complete"}}) == missing);
    }
    AND_WHEN("a run leaves a status it was never counted in") {
      m.run_status_changed("research", "running", "failed");
      THEN("the gauge stays at zero") {
        auto after = parse(m.render());
        CHECK(value(after, "troupe_runs", {{"status", "running"}}) == 0);
        CHECK(value(after, "troupe_runs_finished_total",
                    {{"swarm", "research"}, {"status", "failed"}})
              == 1);
      }
    }
  }
  WHEN("a run finishes with its figures") {
    m.run_finished("research", "complete", 4, 1200, 300, 0.25, 3.5);
    m.run_finished("research", "failed", 1, 100, 0, 0.5, 0.2);
    auto s = parse(m.render());
    THEN("steps, tokens, cost and duration are recorded") {
      CHECK(value(s, "troupe_run_steps_count", {{"swarm", "research"}}) == 2);
      CHECK(value(s, "troupe_run_steps_sum", {{"swarm", "research"}}) == 5);
      CHECK(bucket(s, "troupe_run_steps", {{"swarm", "research"}}, 3) == 1);
      CHECK(value(s, "troupe_tokens_total", {{"swarm", "research"}, {"kind", "input"}})
            == 1300);
      CHECK(value(s, "troupe_tokens_total",
                  {{"swarm", "research"}, {"kind", "output"}})
            == 300);
      CHECK(value(s, "troupe_cost_usd_total", {{"swarm", "research"}})
            == Approx(0.75));
      CHECK(value(s, "troupe_run_duration_seconds_count",
                  {{"swarm", "research"}, {"status", "complete"}})
            == 1);
      CHECK(value(s, "troupe_run_duration_seconds_sum",
                  {{"swarm", "research"}, {"status", "failed"}})
            == Approx(0.2));
    }
    AND_WHEN("figures are negative or not numbers") {
      m.run_finished("research", "halted", -1, -5, -5,
                     std::numeric_limits<double>::quiet_NaN(), -1);
      auto after = parse(m.render());
      THEN("they are left out") {
        CHECK(value(after, "troupe_run_steps_count", {{"swarm", "research"}})
              == 2);
        CHECK(value(after, "troupe_tokens_total",
                    {{"swarm", "research"}, {"kind", "input"}})
              == 1300);
        CHECK(value(after, "troupe_cost_usd_total", {{"swarm", "research"}})
              == Approx(0.75));
        CHECK(value(after, "troupe_run_duration_seconds_count",
                    {{"swarm", "research"}, {"status", "halted"}})
              == missing);
      }
    }
  }
  WHEN("the queue changes") {
    m.set_queue(3, 2);
    auto first = parse(m.render());
    m.set_queue(0, 1);
    m.observe_queue_wait(0.2);
    m.observe_queue_wait(1.5);
    m.observe_queue_wait(-1);
    auto s = parse(m.render());
    THEN("its gauges show the latest figures and the waits are observed") {
      CHECK(value(first, "troupe_run_queue_depth") == 3);
      CHECK(value(first, "troupe_runs_running") == 2);
      CHECK(value(s, "troupe_run_queue_depth") == 0);
      CHECK(value(s, "troupe_runs_running") == 1);
      CHECK(value(s, "troupe_run_queue_wait_seconds_count") == 2);
      CHECK(value(s, "troupe_run_queue_wait_seconds_sum") == Approx(1.7));
      CHECK(bucket(s, "troupe_run_queue_wait_seconds", {}, 0.25) == 1);
      CHECK(bucket(s, "troupe_run_queue_wait_seconds", {}, 2.5) == 2);
    }
  }
}

SCENARIO("runs reported by id: resumed runs count as new, finished ones "
         "leave the gauges",
         "[metrics]") {
  metrics m;
  // Two runs a restarted service resumes: the store had them "running",
  // and nothing in this process counted them before.
  m.run_status("r1", "desk", "running");
  m.run_status("r2", "desk", "running");
  // A new one, queued and then started.
  m.run_status("r3", "desk", "queued");
  auto s = parse(m.render());
  CHECK(value(s, "troupe_runs", {{"status", "running"}}) == 2);
  CHECK(value(s, "troupe_runs", {{"status", "queued"}}) == 1);
  m.run_status("r3", "desk", "running");
  m.run_status("r1", "desk", "complete");
  s = parse(m.render());
  CHECK(value(s, "troupe_runs", {{"status", "running"}}) == 2);
  CHECK(value(s, "troupe_runs", {{"status", "queued"}}) == 0);
  m.run_status("r2", "desk", "failed");
  m.run_status("r3", "desk", "complete");
  s = parse(m.render());
  CHECK(value(s, "troupe_runs", {{"status", "running"}}) == 0);
  CHECK(value(s, "troupe_runs_finished_total",
              {{"swarm", "desk"}, {"status", "complete"}})
        == 2);
  CHECK(value(s, "troupe_runs_finished_total",
              {{"swarm", "desk"}, {"status", "failed"}})
        == 1);
  THEN("a finished run is forgotten: reported again, it counts as new") {
    m.run_status("r1", "desk", "running");
    CHECK(value(parse(m.render()), "troupe_runs", {{"status", "running"}})
          == 1);
  }
}

SCENARIO("a run service's records feed the run metrics", "[metrics]") {
  metrics m;
  stored_run run;
  run.id = "r1";
  run.swarm = "desk";
  run.status = "queued";
  run.created_ms = 1000;
  m.run_changed(run, "");
  run.status = "running";
  run.attempts = 1;
  run.started_ms = 1500;
  m.run_changed(run, "queued");
  auto s = parse(m.render());
  CHECK(value(s, "troupe_runs", {{"status", "running"}}) == 1);
  CHECK(value(s, "troupe_run_queue_wait_seconds_sum") == Approx(0.5));
  run.status = "complete";
  run.ended_ms = 3500;
  run.steps = 3;
  run.input_tokens = 130;
  run.output_tokens = 26;
  run.cost_nusd = 2'000'000;
  m.run_changed(run, "running");
  s = parse(m.render());
  CHECK(value(s, "troupe_runs", {{"status", "running"}}) == 0);
  CHECK(value(s, "troupe_run_steps_sum", {{"swarm", "desk"}}) == 3);
  CHECK(value(s, "troupe_tokens_total", {{"swarm", "desk"}, {"kind", "input"}})
        == 130);
  CHECK(value(s, "troupe_cost_usd_total", {{"swarm", "desk"}})
        == Approx(0.002));
  CHECK(value(s, "troupe_run_duration_seconds_sum",
              {{"swarm", "desk"}, {"status", "complete"}})
        == Approx(2.0));
}

// -- the exposition passes promtool ------------------------------------------

SCENARIO("promtool accepts the exposition and finds nothing to lint",
         "[metrics]") {
  GIVEN("a lint check that can fail") {
    auto bad = promtool_check("# HELP bad_things Things.\n"
                                        "# TYPE bad_things counter\n"
                                        "bad_things 1\n");
    CHECK(bad.exit_code != 0);
    CHECK_THAT(bad.out + bad.err, Catch::Contains("_total"));
  }
  GIVEN("every metric fed: real runs, the run service and the remaining "
        "events") {
    metrics m;
    record_log log;
    REQUIRE(run_flaky_and_steady(m, log).status == run_status::complete);
    REQUIRE(run_guardrails(m, log).status == run_status::halted);
    m.run_status_changed("research", "", "queued");
    m.run_status_changed("research", "queued", "running");
    m.run_status_changed("research", "running", "complete");
    m.run_finished("research", "complete", 3, 370, 27, 0.001, 1.25);
    m.set_queue(1, 1);
    m.observe_queue_wait(0.5);
    auto event = [&m](const char* name, json attrs) {
      m.observe(json{{"type", "event"}, {"name", name}, {"attributes", attrs}});
    };
    event("model.retry", {{"gen_ai.request.model", "m"}});
    event("model.fallback", {{"troupe.model.failed", "m"}});
    event("model.cache_hit", {{"gen_ai.request.model", "m"}});
    event("tool.rejected", {{"error.type", "unknown_tool"}});
    // Printable, so kept: its quotes and backslash are escaped.
    event("tool.retry", {{"gen_ai.tool.name", "odd \"name\" \\ here"}});
    event("limiter.wait", {{"gen_ai.request.model", "m"}, {"troupe.wait_ms", 12}});
    m.observe(json(nullptr));
    auto text = m.render();
    CHECK_THAT(text, Catch::Contains(R"(tool="odd \"name\" \\ here")"));
    THEN("every family in it has samples, so promtool sees each one") {
      auto s = parse(text);
      std::istringstream in{text};
      std::string line;
      size_t families = 0;
      while (std::getline(in, line)) {
        if (line.rfind("# TYPE ", 0) != 0)
          continue;
        ++families;
        auto name = line.substr(7, line.find(' ', 7) - 7);
        bool found = false;
        for (const auto& x : s)
          if (x.name == name || x.name == name + "_count")
            found = true;
        INFO(name);
        CHECK(found);
      }
      CHECK(families >= 30);
    }
    THEN("promtool check metrics exits 0 and prints nothing") {
      auto lint = promtool_check(text);
      INFO(lint.out << lint.err);
      CHECK(lint.exit_code == 0);
      CHECK(lint.out.empty());
      CHECK(lint.err.empty());
    }
  }
}

TEST_CASE("a scripted model is labelled by its script's file name only",
          "[metrics]") {
  metrics m;
  auto chat = [&m](const std::string& model, const char* span) {
    m.observe(json{{"type", "span"},
                   {"span_id", span},
                   {"name", "chat " + model},
                   {"status", "ok"},
                   {"duration_ms", 10},
                   {"attributes",
                    {{"gen_ai.request.model", model},
                     {"gen_ai.usage.input_tokens", 1},
                     {"gen_ai.usage.output_tokens", 1}}}});
  };
  chat("scripted:/srv/a/support.json", "s1");
  chat("scripted:/home/b/support.json", "s2");
  chat("scripted:local.json", "s3");
  chat("openai:gpt-4o-mini", "s4");
  m.observe(json{{"type", "event"},
                 {"name", "model.retry"},
                 {"attributes",
                  {{"gen_ai.request.model", "scripted:/srv/a/support.json"}}}});
  auto text = m.render();
  CHECK(text.find("/srv/") == std::string::npos);
  CHECK(text.find("/home/") == std::string::npos);
  auto s = parse(text);
  CHECK(value(s, "troupe_model_calls_total",
              {{"model", "scripted:support.json"}, {"outcome", "ok"}})
        == 2);
  CHECK(value(s, "troupe_model_calls_total",
              {{"model", "scripted:local.json"}, {"outcome", "ok"}})
        == 1);
  CHECK(value(s, "troupe_model_calls_total",
              {{"model", "openai:gpt-4o-mini"}, {"outcome", "ok"}})
        == 1);
  CHECK(value(s, "troupe_model_retries_total",
              {{"model", "scripted:support.json"}})
        == 1);
}

#include "actors/agent.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <caf/scoped_actor.hpp>

#include "actors/events.hpp"
#include "actors/scripted_model.hpp"
#include "runtime/runtime.hpp"
#include "support/runtime_fixture.hpp"
#include "support/test_models.hpp"

// The guardrails end to end: real agents in a real runtime, a recording model
// whose replies come from C++, and tools whose bodies count what they do.
// Every wait is on a future, a run result or a value an actor thread hands
// over; nothing here sleeps to synchronise.

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

/// The bound on every wait in this file.
constexpr auto wait_limit = std::chrono::seconds{20};

runtime_config guarded_config() {
  auto cfg = test_runtime_config();
  cfg.blocking_threads = 4;
  return cfg;
}

agent_spec spec_for(std::string name, std::string model,
                    std::vector<std::string> tools, int32_t max_steps = 8) {
  agent_spec spec;
  spec.name = std::move(name);
  spec.system_prompt = "You are under test.";
  spec.model = std::move(model);
  spec.tools = std::move(tools);
  spec.max_steps = max_steps;
  spec.model_timeout = 10s;
  return spec;
}

/// A model reply function that answers step n with replies[n - 1] (the last
/// one for every later step).
std::function<chat_response(const chat_request&)>
by_step(std::vector<chat_response> replies) {
  return [replies](const chat_request& req) {
    auto n = static_cast<size_t>(step_of(req));
    return replies.at(std::min(n, replies.size()) - 1);
  };
}

/// A model that calls "noop" with new arguments ({"i": step}) at every step
/// before `answer_at`, then answers "done"; every reply reports `usage`.
std::function<chat_response(const chat_request&)>
noop_steps(int32_t answer_at, token_usage usage = {10, 5}) {
  return [answer_at, usage](const chat_request& req) {
    auto n = step_of(req);
    if (n >= answer_at)
      return answer("done", usage);
    return call_tools({proposed("noop", json{{"i", n}})}, usage);
  };
}

/// A reply with tool calls and a text (for stated confidence).
chat_response call_tools_saying(std::string text,
                                std::vector<model_tool_call> calls) {
  auto r = call_tools(std::move(calls));
  r.message.content = std::move(text);
  return r;
}

/// Values handed over from actor threads (callbacks, tool bodies) to the
/// test thread.
template <class T>
class handoff {
public:
  void put(T x) {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      items_.push_back(std::move(x));
    }
    cv_.notify_all();
  }

  /// Item `n` (0-based), waiting up to `timeout` for it to arrive.
  std::optional<T> await(size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock{mtx_};
    if (!cv_.wait_for(lock, timeout, [&] { return items_.size() > n; }))
      return std::nullopt;
    return items_[n];
  }

  std::vector<T> all() {
    std::lock_guard<std::mutex> guard{mtx_};
    return {items_.begin(), items_.end()};
  }

private:
  std::mutex mtx_;
  std::condition_variable cv_;
  std::deque<T> items_;
};

/// What a tool body saw: its calls, their arguments, and side effects per
/// idempotency key.
struct tool_probe {
  std::atomic<int> calls{0};
  std::mutex mtx;
  std::vector<json> args;
  std::map<std::string, int> effects;
  std::vector<std::chrono::steady_clock::time_point> times;

  /// Counts one call; returns its number (1, 2, ...).
  int record(const json& a, const tool_context& ctx) {
    std::lock_guard<std::mutex> guard{mtx};
    args.push_back(a);
    ++effects[ctx.idempotency_key];
    times.push_back(std::chrono::steady_clock::now());
    return ++calls;
  }

  std::vector<json> seen_args() {
    std::lock_guard<std::mutex> guard{mtx};
    return args;
  }

  std::map<std::string, int> seen_effects() {
    std::lock_guard<std::mutex> guard{mtx};
    return effects;
  }

  std::vector<std::chrono::steady_clock::time_point> seen_times() {
    std::lock_guard<std::mutex> guard{mtx};
    return times;
  }
};

/// A tool that records its calls and returns `result`.
tool_definition probed_tool(std::string name, std::shared_ptr<tool_probe> probe,
                            json result = "done") {
  tool_definition def;
  def.name = std::move(name);
  def.description = "A tool under test";
  def.parameters = json{{"type", "object"}};
  def.fn = [probe, result](const json& args, const tool_context& ctx) {
    probe->record(args, ctx);
    return result;
  };
  return def;
}

/// A tool that returns its "text" argument.
tool_definition echo_tool(std::shared_ptr<tool_probe> probe) {
  tool_definition def;
  def.name = "echo";
  def.description = "Repeats the text";
  def.parameters = json{{"type", "object"},
                        {"properties", {{"text", {{"type", "string"}}}}},
                        {"required", {"text"}}};
  def.fn = [probe](const json& args, const tool_context& ctx) {
    probe->record(args, ctx);
    return args.at("text");
  };
  return def;
}

/// Requests in a model log that belong to one run.
size_t requests_of(model_log& log, const std::string& run_id) {
  std::lock_guard<std::mutex> guard{log.mtx};
  return static_cast<size_t>(
    std::count_if(log.requests.begin(), log.requests.end(),
                  [&](const chat_request& r) { return r.ref.run_id == run_id; }));
}

size_t request_count(model_log& log) {
  std::lock_guard<std::mutex> guard{log.mtx};
  return log.requests.size();
}

template <class T>
T get_within(std::future<T>& f) {
  REQUIRE(f.wait_for(wait_limit) == std::future_status::ready);
  return f.get();
}

/// The usage every racing model call reports and reserves.
const token_usage race_usage{100, 20};

/// Its price on model "cheap" ($1 / $2 per million tokens): nano-dollars.
constexpr int64_t race_call_nusd = 100 * 1000 + 20 * 2 * 1000;

constexpr int race_agents = 1000;

/// What a race of `race_agents` agents on one runtime left behind.
struct race_outcome {
  std::vector<run_result> results;
  budget_snapshot global;
  size_t model_calls = 0;
};

/// Runs `race_agents` agents at once, each wanting three steps (a tool call,
/// another, then an answer), on a runtime set up by `cfg`.
race_outcome race(runtime_config cfg) {
  cfg.prices.set("cheap", model_price{1.0, 2.0});
  runtime rt{std::move(cfg)};
  auto noop = probed_tool("noop", std::make_shared<tool_probe>(), "ok");
  noop.blocking = false;
  rt.tools().add(noop);
  auto log = std::make_shared<model_log>();
  rt.add_model("cheap", spawn_recording_model(rt.system(), log,
                                              noop_steps(3, race_usage)));
  std::vector<runnable_actor> agents;
  agents.reserve(race_agents);
  for (int i = 0; i < race_agents; ++i) {
    auto spec = spec_for("racer-" + std::to_string(i), "cheap", {"noop"});
    spec.usage_estimate = race_usage; // the estimate is the real usage
    agents.push_back(rt.spawn_agent(spec));
  }
  std::vector<std::future<run_result>> futures;
  futures.reserve(agents.size());
  for (auto& a : agents)
    futures.push_back(rt.submit(a, "race"));
  race_outcome out;
  for (auto& f : futures)
    out.results.push_back(get_within(f));
  out.global = rt.budget_usage();
  out.model_calls = request_count(*log);
  return out;
}

/// Checks what a race left behind against a global limit of `limit` steps.
void check_race(const race_outcome& out, int64_t limit) {
  int64_t steps = 0;
  int64_t cost = 0;
  int complete = 0;
  int cut = 0;
  int refused = 0;
  std::vector<std::string> odd;
  for (const auto& r : out.results) {
    steps += static_cast<int64_t>(r.steps.size());
    cost += r.cost_nusd;
    if (r.cost_nusd != static_cast<int64_t>(r.steps.size()) * race_call_nusd)
      odd.push_back(r.run_id + ": cost " + std::to_string(r.cost_nusd));
    if (r.status == run_status::complete) {
      ++complete;
      if (r.steps.size() != 3)
        odd.push_back(r.run_id + ": complete after "
                      + std::to_string(r.steps.size()) + " steps");
      continue;
    }
    if (r.status != run_status::halted
        || r.error.find("budget 'global' exhausted") == std::string::npos) {
      odd.push_back(r.run_id + ": " + to_string(r.status) + ": " + r.error);
      continue;
    }
    if (r.steps.empty()) {
      ++refused;
      if (r.error.rfind("refused: ", 0) != 0)
        odd.push_back(r.run_id + ": refused as: " + r.error);
    } else {
      ++cut;
      if (r.error.find("budget exhausted after") == std::string::npos)
        odd.push_back(r.run_id + ": cut as: " + r.error);
    }
  }
  INFO("complete " << complete << ", cut " << cut << ", refused " << refused);
  INFO("first odd run: " << (odd.empty() ? std::string{"none"} : odd.front()));
  CHECK(odd.empty());
  CHECK(complete + cut + refused == race_agents);
  // Never more than the limit, and every granted reservation was used.
  CHECK(out.global.used.steps == limit);
  CHECK(steps == limit);
  CHECK(static_cast<int64_t>(out.model_calls) == limit);
  CHECK(out.global.used.cost_nusd == limit * race_call_nusd);
  CHECK(cost == limit * race_call_nusd);
  CHECK(out.global.used.tokens.input_tokens == limit * race_usage.input_tokens);
  CHECK(out.global.reserved.steps == 0);
  CHECK(out.global.granted == limit);
  // Fewer steps than agents: some runs never got one.
  CHECK(refused >= race_agents - limit);
  CHECK(refused > 0);
}

} // namespace

// -- budgets ------------------------------------------------------------------

SCENARIO("a thousand agents racing on one global budget never overshoot it",
         "[guardrails]") {
  // 1000 agents want 3 steps each; the budget allows 750 in all, so some runs
  // must be refused outright and the rest share exactly 750 steps.
  constexpr int64_t limit = 750;
  WHEN("the global step limit binds") {
    auto cfg = guarded_config();
    cfg.budget.global.max_steps = limit;
    auto out = race(std::move(cfg));
    THEN("exactly the limit is spent, counted alike by the budget and the "
         "runs") {
      check_race(out, limit);
    }
  }
  WHEN("the global money limit binds") {
    auto cfg = guarded_config();
    cfg.budget.global.max_cost_usd = nusd_to_usd(limit * race_call_nusd);
    REQUIRE(usd_to_nusd(cfg.budget.global.max_cost_usd)
            == limit * race_call_nusd);
    auto out = race(std::move(cfg));
    THEN("the money spent is exactly the limit, in whole calls") {
      check_race(out, limit);
      for (const auto& r : out.results)
        if (r.status == run_status::halted) {
          CHECK_THAT(r.error, Contains("cost"));
          break;
        }
    }
  }
}

SCENARIO("a team's budget caps its members together", "[guardrails]") {
  runtime rt{guarded_config()};
  auto probe = std::make_shared<tool_probe>();
  rt.tools().add(probed_tool("noop", probe, "ok"));
  auto log = std::make_shared<model_log>();
  // Each member wants three steps.
  rt.add_model("m", spawn_recording_model(rt.system(), log, noop_steps(3)));
  auto a = rt.spawn_agent(spec_for("member-a", "m", {"noop"}));
  auto b = rt.spawn_agent(spec_for("member-b", "m", {"noop"}));
  budget_limits team;
  team.max_steps = 3;
  auto in_team = [&](std::string goal) {
    auto task = rt.make_task(std::move(goal));
    task.budget_scopes = {budget_scope{"team-x", team}};
    return task;
  };
  WHEN("two members run at once in the team's account") {
    auto done = std::make_shared<handoff<run_result>>();
    auto collect = [done](run_result r) { done->put(std::move(r)); };
    rt.submit(a, in_team("a"), 10s, collect);
    rt.submit(b, in_team("b"), 10s, collect);
    REQUIRE(done->await(1, wait_limit));
    auto results = done->all();
    THEN("together they take exactly the team's three steps") {
      size_t steps = 0;
      int halted = 0;
      for (const auto& r : results) {
        steps += r.steps.size();
        if (r.status == run_status::halted) {
          ++halted;
          CHECK_THAT(r.error, Contains("budget 'team-x' exhausted"));
        } else {
          CHECK(r.status == run_status::complete);
        }
      }
      CHECK(steps == 3);
      CHECK(halted >= 1);
      CHECK(request_count(*log) == 3);
      auto t = rt.budget_usage("team-x");
      CHECK(t.exists);
      CHECK(t.limits.max_steps == 3);
      CHECK(t.used.steps == 3);
      CHECK(t.granted == 3);
      CHECK(t.denied >= 1);
      auto g = rt.budget_usage();
      CHECK(g.used.steps == 3);
      CHECK(g.granted == 3);
      CHECK(g.used.tokens.input_tokens == t.used.tokens.input_tokens);
      AND_THEN("a later member run in the team is refused before any call") {
        auto r = rt.run_task_blocking(a, in_team("c"), 10s);
        CHECK(r.status == run_status::halted);
        CHECK(r.steps.empty());
        CHECK_THAT(r.error, StartsWith("refused: budget 'team-x' exhausted"));
        CHECK(request_count(*log) == 3);
        AND_THEN("a run outside the team is not held by its limit") {
          auto free = rt.run(a, "outside");
          CHECK(free.status == run_status::complete);
          CHECK(free.steps.size() == 3);
          CHECK(rt.budget_usage().used.steps == 6);
          CHECK(rt.budget_usage("team-x").used.steps == 3);
        }
      }
    }
  }
}

SCENARIO("crossing 80% of a run's step limit warns in the result and as an "
         "event",
         "[guardrails]") {
  runtime rt{guarded_config()};
  auto probe = std::make_shared<tool_probe>();
  rt.tools().add(probed_tool("noop", probe, "ok"));
  auto log = std::make_shared<model_log>();
  // Four tool steps with new arguments each (no loop warning), then answer.
  rt.add_model("m", spawn_recording_model(rt.system(), log, noop_steps(5)));
  auto agent = rt.spawn_agent(spec_for("counter", "m", {"noop"}));
  auto events = std::make_shared<handoff<agent_event>>();
  rt.adopt(spawn_event_observer(rt.system(), agent,
                                mask_of(event_kind::warning),
                                [events](const agent_event& ev) {
                                  events->put(ev);
                                }));
  run_options opts;
  opts.budget.max_steps = 5;
  auto r = rt.run(agent, "count to five", opts);
  THEN("the run completes with one warning naming the share and figures") {
    CHECK(r.status == run_status::complete);
    CHECK(r.steps.size() == 5);
    REQUIRE(r.warnings.size() == 1);
    CHECK_THAT(r.warnings[0], Contains("budget '" + r.run_id + "/counter#")
                                && Contains(".1': 80%")
                                && Contains("80% of its step limit reached")
                                && Contains("(4 of 5 steps)"));
    AND_THEN("subscribers get it as a warning event of the run") {
      auto ev = events->await(0, wait_limit);
      REQUIRE(ev);
      CHECK(ev->kind == event_kind::warning);
      CHECK(ev->source == "counter");
      CHECK(ev->run_id == r.run_id);
      CHECK(ev->detail == r.warnings[0]);
    }
  }
}

SCENARIO("two agents of one name in one run keep separate budget accounts",
         "[guardrails][budget]") {
  runtime rt{guarded_config()};
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto&) {
                 return answer("mapped");
               }));
  // Two mappers spawned from one spec, as a map_reduce built in C++ may be.
  auto spec = spec_for("mapper", "m", {});
  auto first = rt.spawn_agent(spec);
  auto second = rt.spawn_agent(spec);
  run_options opts;
  opts.run_id = "run-shared";
  opts.budget.max_steps = 1; // one step is 100% of it: each run warns
  auto a = rt.run(first, "item 1", opts);
  auto b = rt.run(second, "item 2", opts);
  THEN("each warning names its own account, and every step is counted") {
    REQUIRE(a.status == run_status::complete);
    REQUIRE(b.status == run_status::complete);
    REQUIRE(a.warnings.size() == 1);
    REQUIRE(b.warnings.size() == 1);
    auto account_of = [](const std::string& warning) {
      auto from = warning.find('\'');
      auto to = warning.find('\'', from + 1);
      REQUIRE(from != std::string::npos);
      REQUIRE(to != std::string::npos);
      return warning.substr(from + 1, to - from - 1);
    };
    auto one = account_of(a.warnings[0]);
    auto two = account_of(b.warnings[0]);
    CHECK_THAT(one, StartsWith("run-shared/mapper#"));
    CHECK_THAT(two, StartsWith("run-shared/mapper#"));
    CHECK(one != two);
    CHECK(rt.budget_usage().used.steps == 2);
  }
}

SCENARIO("a model call is held to the output its reservation set aside",
         "[guardrails][budget]") {
  runtime rt{guarded_config()};
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto&) {
                 return answer("ok");
               }));
  WHEN("the agent names no max_tokens") {
    auto spec = spec_for("free", "m", {});
    spec.usage_estimate.output_tokens = 300;
    auto r = rt.run(rt.spawn_agent(spec), "hi");
    THEN("the request carries the reserved output as max_tokens") {
      REQUIRE(r.status == run_status::complete);
      auto reqs = log->snapshot();
      REQUIRE(reqs.size() == 1);
      CHECK(reqs[0].params.value.at("max_tokens") == 300);
      CHECK(reqs[0].deadline_ms > 0);
    }
  }
  WHEN("the agent sets max_tokens itself") {
    auto spec = spec_for("capped", "m", {});
    spec.model_params = json{{"max_tokens", 64}, {"temperature", 0}};
    auto r = rt.run(rt.spawn_agent(spec), "hi");
    THEN("its own value is sent, and reserved") {
      REQUIRE(r.status == run_status::complete);
      auto reqs = log->snapshot();
      REQUIRE(reqs.size() == 1);
      CHECK(reqs[0].params.value
            == json({{"max_tokens", 64}, {"temperature", 0}}));
    }
  }
}

SCENARIO("a model call the agent stopped waiting for is charged its estimate",
         "[guardrails][budget]") {
  runtime rt{guarded_config()};
  auto script = model_script::parse(
    json{{"rules", {{{"reply", {{"content", "late"}, {"latency_ms", 3000}}}}}}},
    "slow.json");
  rt.add_model("slow", spawn_scripted_model(rt.system(), script));
  auto spec = spec_for("waiter", "slow", {});
  spec.model_timeout = 50ms;
  spec.usage_estimate = {700, 90};
  auto r = rt.run(rt.spawn_agent(spec), "hurry");
  THEN("the run fails naming the charge, and the budget counts the call") {
    REQUIRE(r.status == run_status::failed);
    CHECK_THAT(r.error, Contains("reserved estimate is charged"));
    auto global = rt.budget_usage();
    CHECK(global.used.steps == 1);
    CHECK(global.used.tokens.input_tokens == 700);
    CHECK(global.used.tokens.output_tokens == 90);
    CHECK(global.reserved.steps == 0);
  }
}

SCENARIO("a run's cost is its usage at the price table's prices, and a run "
         "that cannot afford a call never makes it",
         "[guardrails]") {
  auto cfg = guarded_config();
  // $2.50 in, $10 out per million tokens: 1000 in + 200 out is $0.0045.
  cfg.prices.set("priced", model_price{2.5, 10.0});
  runtime rt{std::move(cfg)};
  constexpr int64_t per_call = 2'500'000 + 2'000'000;
  auto probe = std::make_shared<tool_probe>();
  rt.tools().add(probed_tool("noop", probe, "ok"));
  auto log = std::make_shared<model_log>();
  const token_usage usage{1000, 200};
  rt.add_model("priced", spawn_recording_model(rt.system(), log,
                                               noop_steps(3, usage)));
  auto spec = spec_for("spender", "priced", {"noop"});
  spec.usage_estimate = usage;
  auto agent = rt.spawn_agent(spec);
  WHEN("a run has no money limit") {
    auto r = rt.run(agent, "spend");
    THEN("every step and the run cost exactly usage times price") {
      REQUIRE(r.status == run_status::complete);
      REQUIRE(r.steps.size() == 3);
      for (const auto& s : r.steps)
        CHECK(s.cost_nusd == per_call);
      CHECK(r.cost_nusd == 3 * per_call);
      CHECK(r.usage.input_tokens == 3000);
      CHECK(r.usage.output_tokens == 600);
      CHECK(rt.budget_usage().used.cost_nusd == 3 * per_call);
    }
  }
  WHEN("a run may spend only $0.01 (two calls, not three)") {
    run_options opts;
    opts.budget.max_cost_usd = 0.01;
    auto r = rt.run(agent, "spend", opts);
    THEN("it is halted before the third call, which the model never gets") {
      CHECK(r.status == run_status::halted);
      CHECK(r.steps.size() == 2);
      CHECK_THAT(r.error, Contains("budget exhausted after 2 step(s)")
                            && Contains("cost"));
      CHECK(r.cost_nusd == 2 * per_call);
      CHECK(requests_of(*log, r.run_id) == 2);
      CHECK(probe->calls == 2);
      CHECK(rt.budget_usage().used.cost_nusd == 2 * per_call);
    }
  }
}

// -- idempotency under retries ------------------------------------------------

SCENARIO("a retried call whose first attempt outlives its timeout has its "
         "side effect once",
         "[guardrails]") {
  runtime rt{guarded_config()};
  auto probe = std::make_shared<tool_probe>();
  tool_definition pay;
  pay.name = "pay";
  pay.description = "Pays an order";
  pay.parameters = json{{"type", "object"},
                        {"properties", {{"order_id", {{"type", "string"}}}}},
                        {"required", {"order_id"}}};
  pay.fn = [probe](const json& args, const tool_context& ctx) {
    if (probe->record(args, ctx) == 1) {
      // The first execution runs on past its attempt's deadline (the body is
      // on the blocking pool, so it may sleep): the retry finds it in flight.
      std::this_thread::sleep_until(std::chrono::system_clock::time_point{
        std::chrono::milliseconds{ctx.deadline_ms + 60}});
    }
    return json{{"paid", args.at("order_id")}};
  };
  pay.guards.retry.max_retries = 2;
  pay.guards.retry.attempt_timeout = 100ms;
  pay.guards.retry.backoff = backoff_kind::constant;
  pay.guards.retry.base = 10ms;
  pay.guards.retry.cap = 50ms;
  rt.tools().add(pay);
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(
                      rt.system(), log,
                      by_step({call_tools({proposed("pay", {{"order_id", "A"}})}),
                               answer("paid")})));
  auto agent = rt.spawn_agent(spec_for("payer", "m", {"pay"}));
  auto r = rt.run(agent, "pay order A");
  THEN("the run completes, the call succeeded on a later attempt, and the "
       "body ran once") {
    REQUIRE(r.status == run_status::complete);
    REQUIRE(r.steps.size() == 2);
    REQUIRE(r.steps[0].tool_results.size() == 1);
    const auto& res = r.steps[0].tool_results[0];
    CHECK(res.ok);
    CHECK(res.content.value == json{{"paid", "A"}});
    CHECK(res.attempts >= 2);
    REQUIRE(res.attempt_log.size() == static_cast<size_t>(res.attempts));
    CHECK(res.attempt_log[0].outcome == tool_error_kind::timeout);
    CHECK(res.attempt_log[1].backoff_ms == 10);
    CHECK(res.attempt_log[1].started_ns
          >= res.attempt_log[0].ended_ns
               + res.attempt_log[1].backoff_ms * 1'000'000);
    CHECK(res.attempt_log.back().outcome == tool_error_kind::none);
    CHECK(probe->calls == 1);
    auto effects = probe->seen_effects();
    REQUIRE(effects.size() == 1);
    CHECK_FALSE(effects.begin()->first.empty());
    CHECK(effects.begin()->second == 1);
  }
}

SCENARIO("the same call proposed twice in one reply runs once",
         "[guardrails]") {
  runtime rt{guarded_config()};
  auto probe = std::make_shared<tool_probe>();
  auto pay = probed_tool("pay", probe, json{{"paid", "B"}});
  rt.tools().add(pay);
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(
                      rt.system(), log,
                      by_step({call_tools({proposed("pay", {{"order_id", "B"}},
                                                    "c1"),
                                           proposed("pay", {{"order_id", "B"}},
                                                    "c2")}),
                               answer("paid")})));
  auto agent = rt.spawn_agent(spec_for("payer", "m", {"pay"}));
  auto r = rt.run(agent, "pay order B");
  THEN("the body ran once and the second result is the first, replayed") {
    REQUIRE(r.status == run_status::complete);
    REQUIRE(r.steps.size() == 2);
    const auto& results = r.steps[0].tool_results;
    REQUIRE(results.size() == 2);
    CHECK(results[0].call_id == "c1");
    CHECK(results[1].call_id == "c2");
    CHECK(results[0].ok);
    CHECK(results[1].ok);
    CHECK_FALSE(results[0].replayed);
    CHECK(results[1].replayed);
    CHECK(results[1].content.value == results[0].content.value);
    CHECK(probe->calls == 1);
    // The model saw an answer to each of its calls.
    auto reqs = log->snapshot();
    REQUIRE(reqs.size() == 2);
    const auto& msgs = reqs[1].messages;
    REQUIRE(msgs.size() == 5); // system, user, assistant, tool, tool
    CHECK(msgs[3].tool_call_id == "c1");
    CHECK(msgs[4].tool_call_id == "c2");
    CHECK(msgs[4].content == msgs[3].content);
  }
}

SCENARIO("a globally scoped idempotency key replays a later run's call from "
         "the ledger",
         "[guardrails]") {
  runtime rt{guarded_config()};
  auto probe = std::make_shared<tool_probe>();
  tool_definition ship;
  ship.name = "ship";
  ship.description = "Ships an order";
  ship.parameters = json{{"type", "object"},
                         {"properties", {{"order_id", {{"type", "string"}}},
                                         {"note", {{"type", "string"}}}}},
                         {"required", {"order_id"}}};
  ship.fn = [probe](const json& args, const tool_context& ctx) {
    auto n = probe->record(args, ctx);
    return json{{"shipment", "S-" + std::to_string(n)}};
  };
  ship.idempotency.scope = idempotency_scope::global;
  ship.idempotency.fields = {"order_id"};
  rt.tools().add(ship);
  auto log = std::make_shared<model_log>();
  // The goal is the call's arguments.
  rt.add_model("m", spawn_recording_model(rt.system(), log,
                                          [](const chat_request& req) {
                                            if (step_of(req) >= 2)
                                              return answer("shipped");
                                            return call_tools({proposed(
                                              "ship",
                                              json::parse(
                                                req.messages[1].content))});
                                          }));
  auto agent = rt.spawn_agent(spec_for("shipper", "m", {"ship"}));
  auto result_of = [](const run_result& r) -> tool_result {
    REQUIRE(r.status == run_status::complete);
    REQUIRE(r.steps.size() == 2);
    REQUIRE(r.steps[0].tool_results.size() == 1);
    return r.steps[0].tool_results[0];
  };
  auto first = result_of(rt.run(agent, R"({"order_id":"C","note":"first"})"));
  auto again = result_of(rt.run(agent, R"({"order_id":"C","note":"again"})"));
  auto other = result_of(rt.run(agent, R"({"order_id":"D"})"));
  THEN("the second run's call with the same order is replayed, not run") {
    CHECK(first.ok);
    CHECK_FALSE(first.replayed);
    CHECK(first.content.value == json{{"shipment", "S-1"}});
    CHECK(again.ok);
    CHECK(again.replayed);
    CHECK(again.content.value == json{{"shipment", "S-1"}});
    AND_THEN("another order runs") {
      CHECK_FALSE(other.replayed);
      CHECK(other.content.value == json{{"shipment", "S-2"}});
      CHECK(probe->calls == 2);
      auto args = probe->seen_args();
      REQUIRE(args.size() == 2);
      CHECK(args[0].at("note") == "first");
      CHECK(args[1].at("order_id") == "D");
    }
  }
}

SCENARIO("a read-only tool reads again instead of replaying from the ledger",
         "[guardrails][idempotency]") {
  runtime rt{guarded_config()};
  auto probe = std::make_shared<tool_probe>();
  auto stock = probed_tool("stock", probe, json{{"left", 3}});
  stock.read_only = true;
  stock.idempotency.scope = idempotency_scope::global;
  rt.tools().add(stock);
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(
                      rt.system(), log,
                      by_step({call_tools({proposed("stock", {{"sku", "X"}})}),
                               answer("counted")})));
  auto agent = rt.spawn_agent(spec_for("clerk", "m", {"stock"}));
  auto first = rt.run(agent, "how many X?");
  auto again = rt.run(agent, "how many X now?");
  THEN("both runs called the tool, with the same key, and nothing replayed") {
    REQUIRE(first.status == run_status::complete);
    REQUIRE(again.status == run_status::complete);
    CHECK_FALSE(first.steps.at(0).tool_results.at(0).replayed);
    CHECK_FALSE(again.steps.at(0).tool_results.at(0).replayed);
    CHECK(probe->calls == 2);
    auto effects = probe->seen_effects();
    REQUIRE(effects.size() == 1);
    CHECK(effects.begin()->second == 2);
  }
}

SCENARIO("two tasks a team gives one member in one run keep their calls apart",
         "[guardrails][idempotency]") {
  runtime rt{guarded_config()};
  auto probe = std::make_shared<tool_probe>();
  rt.tools().add(probed_tool("pay", probe, json{{"paid", true}}));
  auto log = std::make_shared<model_log>();
  // Every task makes the same call at step 1, whatever its goal.
  rt.add_model("m", spawn_recording_model(
                      rt.system(), log,
                      by_step({call_tools({proposed("pay", {{"order_id", "E"}})}),
                               answer("paid")})));
  auto agent = rt.spawn_agent(spec_for("member", "m", {"pay"}));
  auto first_task = rt.make_task("subtask one");
  auto second_task = first_task; // the same run, as a team's member sees it
  second_task.goal = "subtask two";
  auto repeated_task = first_task; // the first task handed out again
  auto first = rt.run_task_blocking(agent, first_task, wait_limit);
  auto second = rt.run_task_blocking(agent, second_task, wait_limit);
  auto repeated = rt.run_task_blocking(agent, repeated_task, wait_limit);
  THEN("each task's call runs, and the repeated task's call is replayed") {
    REQUIRE(first.status == run_status::complete);
    REQUIRE(second.status == run_status::complete);
    REQUIRE(repeated.status == run_status::complete);
    REQUIRE(first.run_id == second.run_id);
    const auto& one = first.steps.at(0).tool_results.at(0);
    const auto& two = second.steps.at(0).tool_results.at(0);
    const auto& again = repeated.steps.at(0).tool_results.at(0);
    CHECK_FALSE(one.replayed);
    CHECK_FALSE(two.replayed);
    CHECK(again.replayed);
    CHECK(probe->calls == 2);
  }
}

// -- circuit breaker ----------------------------------------------------------

SCENARIO("a tool's breaker opens after failures across steps and the model is "
         "told",
         "[guardrails]") {
  runtime rt{guarded_config()};
  auto flaky_probe = std::make_shared<tool_probe>();
  tool_definition flaky;
  flaky.name = "flaky";
  flaky.description = "Fails transiently";
  flaky.fn = [flaky_probe](const json& args, const tool_context& ctx) -> json {
    flaky_probe->record(args, ctx);
    throw tool_failure(tool_error_kind::transient, "upstream 503");
  };
  flaky.guards.breaker.failure_threshold = 3;
  flaky.guards.breaker.cooldown = 60s;
  rt.tools().add(flaky);
  auto echo_probe = std::make_shared<tool_probe>();
  rt.tools().add(echo_tool(echo_probe));
  auto log = std::make_shared<model_log>();
  rt.add_model("m", spawn_recording_model(
                      rt.system(), log, [](const chat_request& req) {
                        auto n = step_of(req);
                        if (n <= 3)
                          return call_tools({proposed("flaky", {{"n", n}})});
                        if (n == 4)
                          return call_tools({proposed("flaky", {{"n", n}}),
                                             proposed("echo", {{"text", "hi"}})});
                        return answer("gave up on flaky");
                      }));
  auto agent = rt.spawn_agent(spec_for("caller", "m", {"flaky", "echo"}));
  auto r = rt.run(agent, "use flaky");
  THEN("the fourth call fails fast as circuit_open without reaching the "
       "tool") {
    REQUIRE(r.status == run_status::complete);
    REQUIRE(r.steps.size() == 5);
    for (int i = 0; i < 3; ++i) {
      REQUIRE(r.steps[i].tool_results.size() == 1);
      CHECK(r.steps[i].tool_results[0].error.kind
            == tool_error_kind::transient);
    }
    REQUIRE(r.steps[3].tool_results.size() == 2);
    CHECK(r.steps[3].tool_results[0].error.kind
          == tool_error_kind::circuit_open);
    CHECK(flaky_probe->calls == 3);
    AND_THEN("the other tool of the same step is unaffected") {
      CHECK(r.steps[3].tool_results[1].ok);
      CHECK(r.steps[3].tool_results[1].content.value == "hi");
      CHECK(echo_probe->calls == 1);
    }
    AND_THEN("the model's next request shows both observations") {
      auto reqs = log->snapshot();
      REQUIRE(reqs.size() == 5);
      CHECK_THAT(reqs[3].messages.back().content,
                 Contains("error (transient): upstream 503"));
      const auto& msgs = reqs[4].messages;
      REQUIRE(msgs.size() >= 2);
      const auto& flaky_msg = msgs[msgs.size() - 2];
      CHECK(flaky_msg.name == "flaky");
      CHECK_THAT(flaky_msg.content,
                 StartsWith("error (circuit_open): circuit open for tool "
                            "'flaky'"));
      CHECK(msgs.back().name == "echo");
      CHECK(msgs.back().content == "hi");
    }
    AND_THEN("the runtime reports the breaker open") {
      CHECK(rt.breaker_state("flaky") == "open");
      CHECK(rt.breaker_state("echo") == "none");
    }
  }
}

// -- policy and approvals -----------------------------------------------------

namespace {

arg_constraint at_most(double x) {
  arg_constraint c;
  c.max = x;
  return c;
}

policy_rule rule(std::string name, std::vector<std::string> tools,
                 policy_decision decision, std::string reason = "") {
  policy_rule r;
  r.name = std::move(name);
  r.tools = std::move(tools);
  r.decision = decision;
  r.reason = std::move(reason);
  return r;
}

troupe::policy test_policy() {
  troupe::policy p;
  auto no_mallory = rule("no-mallory", {"lookup"}, policy_decision::deny,
                         "mallory may not look things up");
  no_mallory.principals = {"mallory"};
  p.rules.push_back(no_mallory);
  p.rules.push_back(rule("reads", {"lookup"}, policy_decision::allow));
  p.rules.push_back(
    rule("no-delete", {"delete_all"}, policy_decision::deny, "destructive"));
  auto caps = rule("transfer-cap", {"transfer"},
                   policy_decision::allow_with_caps);
  caps.caps = {{"amount", at_most(100)}};
  p.rules.push_back(caps);
  p.rules.push_back(rule("refund-approval", {"refund"},
                         policy_decision::require_approval,
                         "refunds need a human"));
  auto no_wipe = rule("support-no-wipe", {"wipe"}, policy_decision::deny,
                      "support may not wipe");
  no_wipe.roles = {"support"};
  p.rules.push_back(no_wipe);
  return p;
}

/// A runtime with test_policy(), a probe per tool and a model "m" whose
/// replies come from `fn`.
struct policy_fixture {
  runtime rt{[] {
    auto cfg = guarded_config();
    cfg.policy = test_policy();
    return cfg;
  }()};
  std::map<std::string, std::shared_ptr<tool_probe>> probes;
  std::shared_ptr<model_log> log = std::make_shared<model_log>();
  std::shared_ptr<handoff<approval_request>> asked
    = std::make_shared<handoff<approval_request>>();

  policy_fixture() {
    for (auto name : {"lookup", "delete_all", "transfer", "refund", "wipe"}) {
      auto probe = std::make_shared<tool_probe>();
      probes[name] = probe;
      rt.tools().add(probed_tool(name, probe, json{{"tool", name}}));
    }
    // On an actor thread: only hand the request over.
    rt.on_approval_request(
      [asked = asked](approval_request req) { asked->put(std::move(req)); });
  }

  int calls(const std::string& tool) {
    return probes.at(tool)->calls;
  }

  void model(std::vector<chat_response> replies) {
    rt.add_model("m", spawn_recording_model(rt.system(), log,
                                            by_step(std::move(replies))));
  }

  runnable_actor agent(std::string role = "", agent_spec spec = {}) {
    if (spec.name.empty())
      spec = spec_for("clerk", "m",
                      {"lookup", "delete_all", "transfer", "refund", "wipe"});
    spec.role = std::move(role);
    return rt.spawn_agent(spec);
  }
};

/// The conversation for the approval cases: a lookup, then a refund.
std::vector<chat_response> lookup_then_refund() {
  return {call_tools({proposed("lookup", {{"order", 7}})}),
          call_tools({proposed("refund", {{"amount", 500}})}),
          answer("handled")};
}

} // namespace

SCENARIO_METHOD(policy_fixture,
                "the other calls of a reply wait with the one a human must "
                "approve",
                "[guardrails]") {
  model({call_tools({proposed("refund", {{"amount", 500}}),
                     proposed("lookup", {{"order", 7}})}),
         answer("handled")});
  auto future = rt.submit(agent(), "refund order 7 and look it up");
  auto req = asked->await(0, wait_limit);
  REQUIRE(req);
  // Nothing of the reply has run while the human decides.
  CHECK(calls("lookup") == 0);
  CHECK(calls("refund") == 0);
  WHEN("the human denies the refund") {
    rt.decide(req->request_id, approval_verdict::deny, "bob", "not today");
    auto r = get_within(future);
    THEN("the rest of the reply runs, and the refund does not") {
      REQUIRE(r.status == run_status::complete);
      CHECK(calls("lookup") == 1);
      CHECK(calls("refund") == 0);
      const auto& results = r.steps.at(0).tool_results;
      REQUIRE(results.size() == 2);
      CHECK(results[0].error.kind == tool_error_kind::denied);
      CHECK(results[1].ok);
    }
  }
}

SCENARIO_METHOD(policy_fixture,
                "policy decisions reach the model as observations",
                "[guardrails]") {
  WHEN("one reply proposes an allowed, a denied and a capped call") {
    model({call_tools({proposed("lookup", {{"order", 7}}),
                       proposed("delete_all", json::object()),
                       proposed("transfer", {{"amount", 900}, {"to", "x"}})}),
           answer("done")});
    auto r = rt.run(agent(), "tidy up");
    REQUIRE(r.status == run_status::complete);
    REQUIRE(r.steps.size() == 2);
    const auto& results = r.steps[0].tool_results;
    REQUIRE(results.size() == 3);
    THEN("the allowed call runs") {
      CHECK(results[0].ok);
      CHECK(calls("lookup") == 1);
    }
    THEN("the denied call does not run and the model is told the rule") {
      CHECK_FALSE(results[1].ok);
      CHECK(results[1].error.kind == tool_error_kind::denied);
      CHECK(results[1].error.message
            == "denied by rule 'no-delete': destructive");
      CHECK(calls("delete_all") == 0);
      CHECK(std::find(r.steps[0].observations.begin(),
                      r.steps[0].observations.end(),
                      results[1].error.message)
            != r.steps[0].observations.end());
      auto reqs = log->snapshot();
      REQUIRE(reqs.size() == 2);
      CHECK(reqs[1].messages[4].content
            == "error (denied): denied by rule 'no-delete': destructive");
    }
    THEN("the capped call runs with the capped argument and the model is "
         "told") {
      CHECK(results[2].ok);
      auto args = probes.at("transfer")->seen_args();
      REQUIRE(args.size() == 1);
      CHECK(args[0] == json{{"amount", 100}, {"to", "x"}});
      auto reqs = log->snapshot();
      REQUIRE(reqs.size() == 2);
      CHECK_THAT(reqs[1].messages[5].content,
                 Contains("[runtime] policy rule 'transfer-cap': argument "
                          "'amount' capped from 900 to 100"));
    }
  }
  WHEN("rules name a role") {
    model({call_tools({proposed("wipe", json::object())}), answer("done")});
    auto ops = rt.run(agent("ops"), "wipe");
    auto support = rt.run(agent("support"), "wipe");
    THEN("they apply only to agents with that role") {
      REQUIRE(ops.steps.size() == 2);
      REQUIRE(support.steps.size() == 2);
      CHECK(ops.steps[0].tool_results[0].ok);
      CHECK(support.steps[0].tool_results[0].error.kind
            == tool_error_kind::denied);
      CHECK_THAT(support.steps[0].tool_results[0].error.message,
                 Contains("'support-no-wipe'"));
      CHECK(calls("wipe") == 1);
    }
  }
  WHEN("rules name a principal") {
    model({call_tools({proposed("lookup", {{"order", 1}})}), answer("done")});
    auto a = agent();
    run_options as_mallory;
    as_mallory.principal = "mallory";
    auto mallory = rt.run(a, "look", as_mallory);
    run_options as_alice;
    as_alice.principal = "alice";
    auto alice = rt.run(a, "look", as_alice);
    THEN("they apply only to runs for that principal") {
      REQUIRE(mallory.steps.size() == 2);
      REQUIRE(alice.steps.size() == 2);
      CHECK(mallory.steps[0].tool_results[0].error.message
            == "denied by rule 'no-mallory': mallory may not look things up");
      CHECK(alice.steps[0].tool_results[0].ok);
      CHECK(calls("lookup") == 1);
    }
  }
}

SCENARIO_METHOD(policy_fixture,
                "a call that needs approval waits for a human's decision",
                "[guardrails]") {
  model(lookup_then_refund());
  auto a = agent();
  auto events = std::make_shared<handoff<agent_event>>();
  rt.adopt(spawn_event_observer(rt.system(), a,
                                mask_of(event_kind::awaiting_approval),
                                [events](const agent_event& ev) {
                                  events->put(ev);
                                }));
  auto future = rt.submit(a, "refund order 7");
  auto req = asked->await(0, wait_limit);
  REQUIRE(req);
  CHECK(req->action == "refund");
  CHECK(req->args.value == json{{"amount", 500}});
  CHECK(req->reason == "refunds need a human");
  CHECK(req->agent == "clerk");
  auto ev = events->await(0, wait_limit);
  REQUIRE(ev);
  CHECK(ev->kind == event_kind::awaiting_approval);
  CHECK_THAT(ev->detail, StartsWith(req->request_id + ": refund"));
  auto pending = rt.pending_approvals();
  REQUIRE(pending.size() == 1);
  CHECK(pending[0].request_id == req->request_id);
  CHECK(calls("refund") == 0);
  WHEN("the human approves") {
    rt.decide(req->request_id, approval_verdict::approve, "alice", "ok");
    auto r = get_within(future);
    THEN("the tool runs once and the run completes with its earlier steps") {
      REQUIRE(r.status == run_status::complete);
      CHECK(r.answer == "handled");
      CHECK(calls("refund") == 1);
      REQUIRE(r.steps.size() == 3);
      REQUIRE(r.steps[0].tool_results.size() == 1);
      CHECK(r.steps[0].tool_results[0].name == "lookup");
      CHECK(r.steps[0].tool_results[0].ok);
      REQUIRE(r.steps[1].tool_results.size() == 1);
      CHECK(r.steps[1].tool_results[0].ok);
      CHECK(r.steps[1].tool_results[0].content.value
            == json{{"tool", "refund"}});
      auto reqs = log->snapshot();
      REQUIRE(reqs.size() == 3);
      const auto& msgs = reqs[2].messages;
      REQUIRE(msgs.size() == 6);
      CHECK(msgs[0].role == chat_role::system);
      CHECK(msgs[1].content == "refund order 7");
      CHECK(msgs[2].tool_calls.at(0).name == "lookup");
      CHECK(msgs[3].content == R"({"tool":"lookup"})");
      CHECK(msgs[4].tool_calls.at(0).name == "refund");
      CHECK(msgs[5].content
            == "{\"tool\":\"refund\"}\n[runtime] approved by alice: ok");
      CHECK(rt.pending_approvals().empty());
    }
  }
  WHEN("the human denies with a note") {
    rt.decide(req->request_id, approval_verdict::deny, "bob",
              "over the limit");
    auto r = get_within(future);
    THEN("the tool does not run, the model reads the note and goes on") {
      REQUIRE(r.status == run_status::complete);
      CHECK(calls("refund") == 0);
      REQUIRE(r.steps.size() == 3);
      CHECK(r.steps[1].tool_results.at(0).error.kind
            == tool_error_kind::denied);
      auto reqs = log->snapshot();
      REQUIRE(reqs.size() == 3);
      CHECK(reqs[2].messages.back().content
            == "error (denied): a human (bob) denied 'refund': over the "
               "limit");
    }
  }
}

SCENARIO_METHOD(policy_fixture, "an approval nobody gives expires",
                "[guardrails]") {
  model(lookup_then_refund());
  auto spec = spec_for("clerk", "m", {"lookup", "refund"});
  spec.approval_ttl = 50ms;
  auto r = rt.run(agent("", spec), "refund order 7");
  auto req = asked->await(0, wait_limit);
  REQUIRE(req);
  THEN("the model is told it expired, the tool never ran, the run goes on") {
    CHECK(req->ttl_ms == 50);
    REQUIRE(r.status == run_status::complete);
    CHECK(calls("refund") == 0);
    REQUIRE(r.steps.size() == 3);
    CHECK(r.steps[1].tool_results.at(0).error.kind == tool_error_kind::denied);
    auto reqs = log->snapshot();
    REQUIRE(reqs.size() == 3);
    CHECK(reqs[2].messages.back().content
          == "error (denied): nobody approved 'refund' in time (approval "
             "request "
               + req->request_id + " expired: no decision within 50 ms)");
    CHECK(rt.pending_approvals().empty());
  }
}

// -- confidence routing -------------------------------------------------------

SCENARIO("a reply's stated confidence routes it", "[guardrails]") {
  runtime rt{guarded_config()};
  auto probe = std::make_shared<tool_probe>();
  rt.tools().add(probed_tool("act", probe, "acted"));
  auto asked = std::make_shared<handoff<approval_request>>();
  rt.on_approval_request(
    [asked](approval_request req) { asked->put(std::move(req)); });
  auto log = std::make_shared<model_log>();
  auto alt_log = std::make_shared<model_log>();
  rt.add_model("alt", spawn_recording_model(rt.system(), alt_log,
                                            [](const chat_request&) {
                                              return answer("alt answer");
                                            }));
  auto agent_saying = [&](const std::string& text,
                          const std::string& alternative = "") {
    rt.add_model("m", spawn_recording_model(
                        rt.system(), log,
                        by_step({call_tools_saying(
                                   text, {proposed("act", {{"x", 1}})}),
                                 answer("finished")})));
    auto spec = spec_for("unsure", "m", {"act"});
    spec.confidence.enabled = true;
    spec.confidence.alternative_model = alternative;
    return rt.spawn_agent(spec);
  };
  WHEN("it states 0.6") {
    auto r = rt.run(agent_saying(R"({"confidence": 0.6})"), "act");
    THEN("nothing runs and the model is asked to clarify") {
      REQUIRE(r.status == run_status::complete);
      CHECK(probe->calls == 0);
      REQUIRE(r.steps.size() == 2);
      CHECK(r.steps[0].tool_results.empty());
      auto reqs = log->snapshot();
      REQUIRE(reqs.size() == 2);
      CHECK(reqs[1].messages.back().role == chat_role::user);
      CHECK_THAT(reqs[1].messages.back().content,
                 StartsWith("[runtime] Your stated confidence 0.60 is below "
                            "0.80, so nothing was executed. Clarify"));
    }
  }
  WHEN("it states 0.9") {
    auto r = rt.run(agent_saying(R"({"confidence": 0.9})"), "act");
    THEN("the call runs") {
      REQUIRE(r.status == run_status::complete);
      CHECK(probe->calls == 1);
      REQUIRE(r.steps.size() == 2);
      CHECK(r.steps[0].tool_results.at(0).ok);
    }
  }
  WHEN("it states 0.35 and an alternative model is configured") {
    auto r = rt.run(agent_saying(R"({"confidence": 0.35})", "alt"), "act");
    THEN("the next request goes to the alternative model, without the unsure "
         "reply") {
      REQUIRE(r.status == run_status::complete);
      CHECK(r.answer == "alt answer");
      CHECK(probe->calls == 0);
      CHECK(log->snapshot().size() == 1);
      auto alt = alt_log->snapshot();
      REQUIRE(alt.size() == 1);
      CHECK(alt[0].model == "alt");
      REQUIRE(alt[0].messages.size() == 2);
      CHECK(alt[0].messages[1].role == chat_role::user);
      REQUIRE(r.steps.size() == 2);
      CHECK_THAT(r.steps[0].observations.at(0),
                 Contains("asking the alternative model 'alt'"));
    }
  }
  WHEN("it states 0.1") {
    auto future = rt.submit(agent_saying(R"({"confidence": 0.1})"), "act");
    auto req = asked->await(0, wait_limit);
    REQUIRE(req);
    CHECK(req->action == "carry out a low-confidence reply");
    CHECK(req->args.value.at("confidence") == 0.1);
    CHECK(req->args.value.at("tool_calls").at(0).at("tool") == "act");
    CHECK(probe->calls == 0);
    AND_WHEN("a human approves the escalation") {
      rt.decide(req->request_id, approval_verdict::approve, "carol");
      auto r = get_within(future);
      THEN("the call runs") {
        REQUIRE(r.status == run_status::complete);
        CHECK(probe->calls == 1);
        REQUIRE(r.steps.size() == 2);
        CHECK(r.steps[0].tool_results.at(0).ok);
      }
    }
  }
}

// -- loop detection -----------------------------------------------------------

SCENARIO("runs that go round in circles are warned about or halted",
         "[guardrails]") {
  runtime rt{guarded_config()};
  auto probe = std::make_shared<tool_probe>();
  rt.tools().add(echo_tool(probe));
  auto log = std::make_shared<model_log>();
  auto same = call_tools({proposed("echo", {{"text", "same"}})});
  auto other = call_tools({proposed("echo", {{"text", "other"}})});
  WHEN("the same call is made three times across steps") {
    rt.add_model("m", spawn_recording_model(
                        rt.system(), log,
                        by_step({same, same, same, answer("done")})));
    auto spec = spec_for("looper", "m", {"echo"});
    AND_WHEN("loops only warn") {
      auto r = rt.run(rt.spawn_agent(spec), "loop");
      THEN("the run completes with one loop warning") {
        CHECK(r.status == run_status::complete);
        CHECK(probe->calls == 3);
        REQUIRE(r.warnings.size() == 1);
        CHECK_THAT(r.warnings[0],
                   StartsWith("loop suspected: tool 'echo' called 3 times "
                              "with the same arguments"));
      }
    }
    AND_WHEN("loops halt") {
      spec.loops.halt = true;
      auto r = rt.run(rt.spawn_agent(spec), "loop");
      THEN("the run is halted naming the loop before the third call runs") {
        CHECK(r.status == run_status::halted);
        CHECK_THAT(r.error,
                   StartsWith("halted: loop suspected: tool 'echo' called 3 "
                              "times"));
        CHECK(r.steps.size() == 3);
        CHECK(probe->calls == 2);
        CHECK(request_count(*log) == 3);
      }
    }
  }
  WHEN("steps alternate between calls that tell nothing new") {
    rt.add_model("m", spawn_recording_model(
                        rt.system(), log,
                        by_step({same, other, same, other, same,
                                 answer("done")})));
    auto spec = spec_for("staller", "m", {"echo"});
    spec.loops.repeat_threshold = 0;
    spec.loops.stall_steps = 2;
    spec.loops.halt = true;
    auto r = rt.run(rt.spawn_agent(spec), "stall");
    THEN("the run is halted as a stall after two steps without progress") {
      CHECK(r.status == run_status::halted);
      CHECK_THAT(r.error, StartsWith("halted: no progress: 2 step(s) in a row"));
      CHECK(r.steps.size() == 4);
      CHECK(probe->calls == 4);
      REQUIRE(r.warnings.size() == 1);
      CHECK_THAT(r.warnings[0], StartsWith("no progress"));
    }
  }
}

// -- rate limiter -------------------------------------------------------------

SCENARIO("a tool's concurrency cap holds while a timed-out body still runs",
         "[guardrails]") {
  // The downstream system hangs: each body blocks until the test lets go.
  struct gate {
    std::mutex mtx;
    std::condition_variable cv;
    bool open = false;
    int running = 0;
    int peak = 0;
    int ran = 0;
  };
  auto g = std::make_shared<gate>();
  int peak = 0;
  int ran = 0;
  {
    runtime rt{guarded_config()}; // 4 blocking threads: room for 3 bodies
    tool_definition hang;
    hang.name = "hang";
    hang.description = "Calls a system that hangs";
    hang.parameters = json{{"type", "object"}};
    hang.timeout = 100ms;
    hang.guards.limits.max_concurrent = 1;
    hang.fn = [g](const json&, const tool_context&) {
      std::unique_lock<std::mutex> lock{g->mtx};
      ++g->ran;
      g->peak = std::max(g->peak, ++g->running);
      g->cv.wait_for(lock, std::chrono::seconds{20}, [&] { return g->open; });
      --g->running;
      return json{{"done", true}};
    };
    rt.tools().add(hang);
    std::vector<tool_error_kind> kinds;
    {
      auto front = rt.tool("hang");
      caf::scoped_actor self{rt.system()};
      for (int i = 1; i <= 3; ++i) {
        tool_call call;
        call.call_id = "c" + std::to_string(i);
        call.name = "hang";
        call.args = json::object();
        call.idempotency_key = "hang-" + std::to_string(i);
        self->send(front, std::move(call));
      }
      for (int i = 0; i < 3; ++i)
        self->receive([&](tool_result& r) { kinds.push_back(r.error.kind); },
                      caf::after(wait_limit) >> [] { FAIL("no tool result"); });
    }
    CHECK(kinds
          == std::vector<tool_error_kind>(3, tool_error_kind::timeout));
    {
      std::lock_guard<std::mutex> guard{g->mtx};
      g->open = true;
    }
    g->cv.notify_all();
    rt.shutdown(); // drains the blocking pool
    std::lock_guard<std::mutex> guard{g->mtx};
    peak = g->peak;
    ran = g->ran;
  }
  THEN("one body ran at a time, and the calls that timed out while waiting "
       "for the slot never ran") {
    CHECK(peak == 1);
    CHECK(ran == 1);
  }
}

SCENARIO("a tool's rate limiter spaces the parallel calls of one reply",
         "[guardrails]") {
  runtime rt{guarded_config()};
  auto probe = std::make_shared<tool_probe>();
  auto limited = probed_tool("limited", probe, "ok");
  limited.guards.limits.rate_per_sec = 20;
  limited.guards.limits.burst = 1;
  rt.tools().add(limited);
  auto log = std::make_shared<model_log>();
  std::vector<model_tool_call> calls;
  for (int i = 0; i < 5; ++i)
    calls.push_back(proposed("limited", {{"i", i}}));
  rt.add_model("m", spawn_recording_model(
                      rt.system(), log,
                      by_step({call_tools(calls), answer("done")})));
  auto spec = spec_for("burster", "m", {"limited"});
  spec.max_parallel_tools = 5;
  auto r = rt.run(rt.spawn_agent(spec), "go");
  THEN("all five run, one admission every 50 ms") {
    REQUIRE(r.status == run_status::complete);
    REQUIRE(r.steps.size() == 2);
    REQUIRE(r.steps[0].tool_results.size() == 5);
    for (const auto& res : r.steps[0].tool_results)
      CHECK(res.ok);
    auto times = probe->seen_times();
    REQUIRE(times.size() == 5);
    // The limiter's timer may fire late, never early: each admission is at
    // least one token's worth after the first, with a little slack for the
    // hop from limiter to body.
    for (size_t i = 1; i < times.size(); ++i) {
      auto since_first = times[i] - times[0];
      CHECK(since_first
            >= std::chrono::milliseconds{50 * static_cast<int64_t>(i) - 5});
      CHECK(times[i] - times[i - 1] >= 35ms);
    }
  }
}

#include "actors/tool_guards.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <unordered_map>

#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/tracer.hpp"
#include "messages/errors.hpp"
#include "runtime/clock.hpp"
#include "support/system_fixture.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

constexpr int64_t ms_ns = 1'000'000;

/// How late a timer or a hop between actors may be on a busy 2-core machine.
constexpr int64_t slack_ns = 150 * ms_ns;

// -- a scripted tool ----------------------------------------------------------

/// What a test tool saw, filled on its actor thread.
struct tool_log {
  std::mutex mtx;
  std::vector<tool_call> calls;
  std::vector<int64_t> received_ns;
  int running = 0;
  int max_running = 0;
  std::map<std::string, int> running_by_agent;
  std::map<std::string, int> max_by_agent;

  void enter(const tool_call& call) {
    std::lock_guard<std::mutex> guard{mtx};
    calls.push_back(call);
    received_ns.push_back(now_ns());
    max_running = std::max(max_running, ++running);
    auto& mine = running_by_agent[call.agent];
    ++mine;
    max_by_agent[call.agent] = std::max(max_by_agent[call.agent], mine);
  }

  void leave(const std::string& agent) {
    std::lock_guard<std::mutex> guard{mtx};
    --running;
    --running_by_agent[agent];
  }

  size_t count() {
    std::lock_guard<std::mutex> guard{mtx};
    return calls.size();
  }

  std::vector<tool_call> snapshot() {
    std::lock_guard<std::mutex> guard{mtx};
    return calls;
  }

  std::vector<int64_t> times() {
    std::lock_guard<std::mutex> guard{mtx};
    return received_ns;
  }

  std::vector<std::string> ids() {
    std::lock_guard<std::mutex> guard{mtx};
    std::vector<std::string> out;
    for (auto& c : calls)
      out.push_back(c.call_id);
    return out;
  }
};

/// The reply to the n-th call (1-based); nullopt = never answered.
using tool_script =
  std::function<std::optional<tool_result>(const tool_call&, int)>;

/// A held reply is due (internal to the test tool).
using t_answer_atom = caf::atom_constant<caf::atom("t_answer")>;

using test_tool_actor =
  tool_actor::extend<caf::reacts_to<t_answer_atom, uint64_t>>;

struct test_tool_state {
  static inline const char* name = "test.tool";
  std::shared_ptr<tool_log> log;
  tool_script script;
  std::chrono::milliseconds hold{0};
  struct held_reply {
    caf::typed_response_promise<tool_result> promise;
    tool_result result;
    std::string agent;
  };
  std::unordered_map<uint64_t, held_reply> held;
  std::vector<caf::typed_response_promise<tool_result>> unanswered;
  uint64_t next = 1;
  int n = 0;
};

test_tool_actor::behavior_type
test_tool(test_tool_actor::stateful_pointer<test_tool_state> self,
          std::shared_ptr<tool_log> log, tool_script script,
          std::chrono::milliseconds hold) {
  self->state.log = std::move(log);
  self->state.script = std::move(script);
  self->state.hold = hold;
  return {
    [self](tool_call& call) -> caf::result<tool_result> {
      auto& st = self->state;
      st.log->enter(call);
      auto reply = st.script(call, ++st.n);
      if (!reply) {
        auto promise = self->make_response_promise<tool_result>();
        st.unanswered.push_back(promise);
        return promise;
      }
      reply->call_id = call.call_id;
      reply->name = call.name;
      if (st.hold.count() == 0) {
        st.log->leave(call.agent);
        return std::move(*reply);
      }
      auto id = st.next++;
      auto promise = self->make_response_promise<tool_result>();
      st.held.emplace(id, test_tool_state::held_reply{promise,
                                                      std::move(*reply),
                                                      call.agent});
      self->delayed_send(self, st.hold, t_answer_atom::value, id);
      return promise;
    },
    [self](t_answer_atom, uint64_t id) {
      auto& st = self->state;
      auto i = st.held.find(id);
      if (i == st.held.end())
        return;
      st.log->leave(i->second.agent);
      i->second.promise.deliver(std::move(i->second.result));
      st.held.erase(i);
    },
  };
}

tool_result ok_result() {
  tool_result r;
  r.ok = true;
  r.content = json{{"answer", 42}};
  r.attempts = 1;
  return r;
}

tool_result failed(tool_error_kind kind, std::string message = "boom") {
  tool_result r;
  r.ok = false;
  r.error = {kind, std::move(message)};
  r.attempts = 1;
  return r;
}

tool_script always_ok() {
  return [](const tool_call&, int) { return ok_result(); };
}

tool_script always(tool_error_kind kind) {
  return [kind](const tool_call&, int) { return failed(kind); };
}

tool_script fail_first(int n, tool_error_kind kind) {
  return [n, kind](const tool_call&, int i) {
    return i <= n ? failed(kind) : ok_result();
  };
}

tool_script never_answer() {
  return [](const tool_call&, int) { return std::optional<tool_result>{}; };
}

tool_call make_call(std::string id, std::string agent = "a",
                    int32_t priority = 0) {
  tool_call c;
  c.ref.run_id = "run-1";
  c.ref.trace_id = "trace-1";
  c.ref.span_id = "span-" + id;
  c.ref.priority = priority;
  c.agent = std::move(agent);
  c.call_id = std::move(id);
  c.name = "flaky";
  c.args = json::object();
  c.idempotency_key = "key-" + c.call_id;
  return c;
}

// -- a scripted model ---------------------------------------------------------

/// What a test model saw.
struct model_seen {
  std::mutex mtx;
  std::vector<std::string> agents;
  std::vector<int64_t> received_ns;

  std::vector<int64_t> times() {
    std::lock_guard<std::mutex> guard{mtx};
    return received_ns;
  }
};

using t_reply_atom = caf::atom_constant<caf::atom("t_reply")>;

using test_model_actor =
  model_actor::extend<caf::reacts_to<t_reply_atom, uint64_t>>;

struct test_model_state {
  static inline const char* name = "test.model";
  std::shared_ptr<model_seen> seen;
  std::chrono::milliseconds hold{0};
  std::unordered_map<uint64_t, caf::typed_response_promise<chat_response>> held;
  uint64_t next = 1;
};

chat_response model_answer(const std::string& text) {
  chat_response r;
  r.message.role = chat_role::assistant;
  r.message.content = text;
  r.finish_reason = "stop";
  r.model = "test";
  return r;
}

test_model_actor::behavior_type
test_model(test_model_actor::stateful_pointer<test_model_state> self,
           std::shared_ptr<model_seen> seen, std::chrono::milliseconds hold) {
  self->state.seen = std::move(seen);
  self->state.hold = hold;
  return {
    [self](chat_request& req) -> caf::result<chat_response> {
      auto& st = self->state;
      {
        std::lock_guard<std::mutex> guard{st.seen->mtx};
        st.seen->agents.push_back(req.agent);
        st.seen->received_ns.push_back(now_ns());
      }
      if (st.hold.count() == 0)
        return model_answer("hi " + req.agent);
      auto id = st.next++;
      auto promise = self->make_response_promise<chat_response>();
      st.held.emplace(id, promise);
      self->delayed_send(self, st.hold, t_reply_atom::value, id);
      return promise;
    },
    [self](t_reply_atom, uint64_t id) {
      auto& st = self->state;
      auto i = st.held.find(id);
      if (i == st.held.end())
        return;
      i->second.deliver(model_answer("late"));
      st.held.erase(i);
    },
  };
}

chat_request make_request(std::string agent, int32_t priority = 0) {
  chat_request r;
  r.ref.trace_id = "trace-m";
  r.ref.span_id = "span-" + agent;
  r.ref.priority = priority;
  r.agent = std::move(agent);
  r.model = "m";
  return r;
}

// -- plumbing -----------------------------------------------------------------

/// Trace records a tracer listener saw.
struct trace_sink {
  std::mutex mtx;
  std::vector<json> records;

  std::vector<json> events(const std::string& name) {
    std::lock_guard<std::mutex> guard{mtx};
    std::vector<json> out;
    for (auto& r : records)
      if (r.at("type") == "event" && r.at("name") == name)
        out.push_back(r);
    return out;
  }
};

/// An actor system, a scoped actor, and the actors a case spawned, stopped
/// when the case ends (a guard waiting on a tool that never answers would
/// otherwise keep the system alive).
struct fixture : system_fixture {
  std::vector<caf::actor> spawned;
  caf::scoped_actor self{sys};

  ~fixture() {
    for (auto& a : spawned)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  }

  template <class Handle>
  Handle keep(Handle h) {
    spawned.push_back(caf::actor_cast<caf::actor>(h));
    return h;
  }

  tool_actor tool(std::shared_ptr<tool_log> log, tool_script script,
                  std::chrono::milliseconds hold = 0ms) {
    return keep(tool_actor{
      sys.spawn(test_tool, std::move(log), std::move(script), hold)});
  }

  model_actor model(std::shared_ptr<model_seen> seen,
                    std::chrono::milliseconds hold = 0ms) {
    return keep(model_actor{sys.spawn(test_model, std::move(seen), hold)});
  }

  tracer_actor tracer(std::shared_ptr<trace_sink> sink) {
    tracer_config cfg;
    cfg.listeners.push_back([sink](const json& rec) {
      std::lock_guard<std::mutex> guard{sink->mtx};
      sink->records.push_back(rec);
    });
    return keep(spawn_tracer(sys, cfg));
  }

  /// Waits until the tracer has handled everything sent to it before.
  void flush(const tracer_actor& t) {
    bool flushed = false;
    self->request(t, 5s, tr_flush_atom::value)
      .receive([&](bool ok) { flushed = ok; },
               [](caf::error& err) {
                 FAIL("flush failed: " << error_text(err));
               });
    REQUIRE(flushed);
  }

  template <class Handle>
  tool_result call(const Handle& h, tool_call c) {
    tool_result out;
    bool got = false;
    self->request(h, 10s, std::move(c))
      .receive(
        [&](tool_result& r) {
          out = std::move(r);
          got = true;
        },
        [](caf::error& err) { FAIL("tool call failed: " << error_text(err)); });
    REQUIRE(got);
    return out;
  }

  std::string state_of(const breaker_actor& b) {
    std::string out;
    self->request(b, 5s, br_state_atom::value)
      .receive([&](std::string& s) { out = std::move(s); },
               [](caf::error& err) { FAIL("no state: " << error_text(err)); });
    return out;
  }

  /// Collects `n` results of calls sent with self->send, by call id.
  std::map<std::string, tool_result> collect(size_t n) {
    std::map<std::string, tool_result> out;
    for (size_t i = 0; i < n; ++i)
      self->receive(
        [&](tool_result& r) { out.emplace(r.call_id, std::move(r)); },
        caf::after(std::chrono::seconds{10}) >>
          [&] { FAIL("only " << out.size() << " of " << n << " results"); });
    return out;
  }

  /// Lets `d` pass: for behaviour that is about time (a cool-down), waited
  /// for with a timer message, not a sleep.
  void let_pass(std::chrono::milliseconds d) {
    using t_tick_atom = caf::atom_constant<caf::atom("t_tick")>;
    self->delayed_send(self, d, t_tick_atom::value);
    self->receive([](t_tick_atom) {},
                  caf::after(d + std::chrono::seconds{10}) >>
                    [] { FAIL("the timer did not fire"); });
  }
};

retry_policy constant_retries(int32_t max_retries,
                              std::chrono::milliseconds base) {
  retry_policy p;
  p.max_retries = max_retries;
  p.backoff = backoff_kind::constant;
  p.base = base;
  p.cap = base * 10;
  return p;
}

} // namespace

// -- backoff_delay ------------------------------------------------------------

TEST_CASE("backoff_delay grows as its kind says and never passes the cap",
          "[guards]") {
  retry_policy p;
  p.base = 20ms;
  p.cap = 70ms;
  SECTION("constant waits base every time") {
    p.backoff = backoff_kind::constant;
    CHECK(backoff_delay(p, 2, 0.3) == 20ms);
    CHECK(backoff_delay(p, 3, 0.9) == 20ms);
    CHECK(backoff_delay(p, 50, 0.0) == 20ms);
    p.base = 100ms; // over the cap
    CHECK(backoff_delay(p, 2, 0.5) == 70ms);
  }
  SECTION("linear waits base times the retries so far") {
    p.backoff = backoff_kind::linear;
    CHECK(backoff_delay(p, 2, 0.5) == 20ms);
    CHECK(backoff_delay(p, 3, 0.5) == 40ms);
    CHECK(backoff_delay(p, 4, 0.5) == 60ms);
    CHECK(backoff_delay(p, 5, 0.5) == 70ms);
    CHECK(backoff_delay(p, std::numeric_limits<int32_t>::max(), 0.5) == 70ms);
  }
  SECTION("exponential with full jitter scales min(cap, base * 2^(n-1)) by "
          "the unit") {
    p.backoff = backoff_kind::exponential_jitter;
    p.base = 100ms;
    p.cap = 1000ms;
    CHECK(backoff_delay(p, 2, 0.0) == 0ms);
    CHECK(backoff_delay(p, 2, 0.5) == 50ms);
    CHECK(backoff_delay(p, 3, 0.5) == 100ms);
    CHECK(backoff_delay(p, 4, 0.5) == 200ms);
    CHECK(backoff_delay(p, 5, 0.5) == 400ms);
    CHECK(backoff_delay(p, 6, 0.5) == 500ms); // 1600 capped to 1000
    CHECK(backoff_delay(p, 2, 0.999) == 99ms); // floor
    CHECK(backoff_delay(p, 2, 1.0) == 100ms);  // the upper end is inclusive
    CHECK(backoff_delay(p, 64, 0.5) == 500ms);
    CHECK(backoff_delay(p, std::numeric_limits<int32_t>::max(), 0.25)
          == 250ms);
    p.base = std::chrono::milliseconds{std::numeric_limits<int64_t>::max() / 2};
    p.cap = std::chrono::milliseconds{std::numeric_limits<int64_t>::max()};
    CHECK(backoff_delay(p, 40, 1.0) == p.cap);
    CHECK(backoff_delay(p, 40, 0.5).count() > 0);
  }
  SECTION("jittered delays stay within [0, min(cap, base * 2^(n-1))]") {
    p.backoff = backoff_kind::exponential_jitter;
    p.base = 20ms;
    p.cap = 100ms;
    std::mt19937 gen{7};
    std::uniform_real_distribution<double> unit{0.0, 1.0};
    for (int32_t attempt = 2; attempt <= 10; ++attempt) {
      auto ceiling = std::min<int64_t>(100, 20LL << (attempt - 2));
      int64_t lo = ceiling, hi = 0;
      for (int i = 0; i < 500; ++i) {
        auto d = backoff_delay(p, attempt, unit(gen)).count();
        REQUIRE(d >= 0);
        REQUIRE(d <= ceiling);
        lo = std::min(lo, d);
        hi = std::max(hi, d);
      }
      // 500 draws spread over the whole range.
      CHECK(lo <= ceiling / 10);
      CHECK(hi >= ceiling * 9 / 10);
    }
  }
  SECTION("the first attempt never waits") {
    for (auto kind : {backoff_kind::constant, backoff_kind::linear,
                      backoff_kind::exponential_jitter}) {
      p.backoff = kind;
      CHECK(backoff_delay(p, 1, 0.5) == 0ms);
    }
  }
}

TEST_CASE("breaker states have stable names", "[guards]") {
  CHECK(std::string{to_string(breaker_state::closed)} == "closed");
  CHECK(std::string{to_string(breaker_state::open)} == "open");
  CHECK(std::string{to_string(breaker_state::half_open)} == "half_open");
}

TEST_CASE("validate names the tool and the bad field", "[guards]") {
  tool_guards g;
  CHECK_NOTHROW(validate(g, "search"));
  auto fails_with = [](const tool_guards& bad, const std::string& text) {
    CHECK_THROWS_AS(validate(bad, "search"), std::invalid_argument);
    CHECK_THROWS_WITH(validate(bad, "search"), Catch::Contains(text));
  };
  {
    auto bad = g;
    bad.retry.max_retries = -1;
    fails_with(bad, "tool 'search': retry.max_retries must be >= 0, got -1");
  }
  {
    auto bad = g;
    bad.retry.base = -5ms;
    fails_with(bad, "tool 'search': retry.base (ms) must be >= 0, got -5");
  }
  {
    auto bad = g;
    bad.retry.base = 500ms;
    bad.retry.cap = 100ms;
    fails_with(bad, "retry.base (500 ms) must not exceed retry.cap (100 ms)");
  }
  {
    auto bad = g;
    bad.retry.attempt_timeout = -1ms;
    fails_with(bad, "retry.attempt_timeout");
  }
  {
    auto bad = g;
    bad.breaker.failure_threshold = -2;
    fails_with(bad, "breaker.failure_threshold must be >= 0, got -2");
  }
  {
    auto bad = g;
    bad.breaker.failure_threshold = 3;
    bad.breaker.half_open_probes = 0;
    fails_with(bad, "breaker.half_open_probes must be >= 1, got 0");
  }
  {
    auto bad = g;
    bad.breaker.cooldown = -1ms;
    fails_with(bad, "breaker.cooldown");
  }
  {
    auto bad = g;
    bad.limits.rate_per_sec = -1;
    fails_with(bad, "limits.rate_per_sec must be >= 0, got -1");
  }
  {
    auto bad = g;
    bad.limits.rate_per_sec = 5;
    bad.limits.burst = 0;
    fails_with(bad, "limits.burst must be >= 1");
  }
  {
    auto bad = g;
    bad.limits.max_concurrent = -1;
    fails_with(bad, "limits.max_concurrent must be >= 0, got -1");
  }
  {
    auto bad = g;
    bad.limits.max_concurrent_per_agent = -3;
    fails_with(bad, "limits.max_concurrent_per_agent must be >= 0, got -3");
  }
  {
    auto bad = g;
    bad.limits.max_queue = -1;
    fails_with(bad, "limits.max_queue must be >= 0, got -1");
  }
  {
    auto bad = g;
    bad.limits.max_wait = -1ms;
    fails_with(bad, "limits.max_wait");
  }
  {
    // A disabled breaker needs no probes.
    auto fine = g;
    fine.breaker.failure_threshold = 0;
    fine.breaker.half_open_probes = 0;
    CHECK_NOTHROW(validate(fine, "search"));
  }
}

// -- retrier ------------------------------------------------------------------

SCENARIO_METHOD(fixture, "the retrier runs a failing call again with backoff",
                "[guards]") {
  GIVEN("a tool that fails twice with transient errors, then succeeds") {
    auto log = std::make_shared<tool_log>();
    auto sink = std::make_shared<trace_sink>();
    auto tr = tracer(sink);
    auto inner = tool(log, fail_first(2, tool_error_kind::transient));
    auto retrier = keep(
      spawn_retrier(sys, "flaky", constant_retries(3, 20ms), inner, tr));
    WHEN("a call goes through the retrier") {
      auto r = call(retrier, make_call("c1"));
      THEN("it succeeds on the third attempt, every attempt logged") {
        CHECK(r.ok);
        CHECK(r.call_id == "c1");
        CHECK(r.attempts == 3);
        REQUIRE(r.attempt_log.size() == 3);
        std::vector<tool_error_kind> outcomes;
        for (size_t i = 0; i < 3; ++i) {
          auto& a = r.attempt_log[i];
          CHECK(a.number == static_cast<int32_t>(i + 1));
          CHECK(a.ended_ns >= a.started_ns);
          CHECK(a.backoff_ms == (i == 0 ? 0 : 20));
          outcomes.push_back(a.outcome);
          if (i > 0) {
            auto gap = a.started_ns - r.attempt_log[i - 1].ended_ns;
            CHECK(gap >= a.backoff_ms * ms_ns);
            CHECK(gap <= a.backoff_ms * ms_ns + slack_ns);
          }
        }
        CHECK(outcomes
              == std::vector<tool_error_kind>{tool_error_kind::transient,
                                              tool_error_kind::transient,
                                              tool_error_kind::none});
      }
      THEN("the tool saw the same call, with the same idempotency key, each "
           "time") {
        auto calls = log->snapshot();
        REQUIRE(calls.size() == 3);
        for (auto& c : calls) {
          CHECK(c.call_id == "c1");
          CHECK(c.idempotency_key == "key-c1");
        }
      }
      THEN("each retry is traced in the call's span") {
        flush(tr);
        auto retries = sink->events("tool.retry");
        REQUIRE(retries.size() == 2);
        for (size_t i = 0; i < 2; ++i) {
          auto& ev = retries[i];
          CHECK(ev.at("trace_id") == "trace-1");
          CHECK(ev.at("span_id") == "span-c1");
          auto& attrs = ev.at("attributes");
          CHECK(attrs.at("gen_ai.tool.name") == "flaky");
          CHECK(attrs.at("troupe.attempt") == static_cast<int>(i + 2));
          CHECK(attrs.at("troupe.backoff_ms") == 20);
          CHECK(attrs.at("error.type") == "transient");
        }
      }
    }
  }
}

SCENARIO_METHOD(fixture, "the retrier gives up after max_retries",
                "[guards]") {
  GIVEN("a tool that always fails transiently and jittered backoff") {
    auto log = std::make_shared<tool_log>();
    retry_policy p;
    p.max_retries = 3;
    p.backoff = backoff_kind::exponential_jitter;
    p.base = 20ms;
    p.cap = 50ms;
    auto inner = tool(log, always(tool_error_kind::transient));
    auto retrier = keep(spawn_retrier(sys, "flaky", p, inner));
    WHEN("a call goes through") {
      auto r = call(retrier, make_call("c1"));
      THEN("it fails after 4 attempts, saying so, with waits inside the "
           "jitter bounds") {
        CHECK_FALSE(r.ok);
        CHECK(r.error.kind == tool_error_kind::transient);
        CHECK_THAT(r.error.message,
                   Catch::StartsWith("boom")
                     && Catch::EndsWith("(gave up after 4 attempts)"));
        CHECK(r.attempts == 4);
        CHECK(log->count() == 4);
        REQUIRE(r.attempt_log.size() == 4);
        for (size_t i = 1; i < 4; ++i) {
          auto& a = r.attempt_log[i];
          auto ceiling = std::min<int64_t>(50, 20LL << (i - 1));
          CHECK(a.backoff_ms >= 0);
          CHECK(a.backoff_ms <= ceiling);
          CHECK(a.outcome == tool_error_kind::transient);
          auto gap = a.started_ns - r.attempt_log[i - 1].ended_ns;
          CHECK(gap >= a.backoff_ms * ms_ns);
          CHECK(gap <= ceiling * ms_ns + slack_ns);
        }
      }
    }
  }
}

SCENARIO_METHOD(fixture, "the retrier leaves alone the kinds it is not told to "
                         "retry",
                "[guards]") {
  for (auto kind :
       {tool_error_kind::permanent, tool_error_kind::circuit_open,
        tool_error_kind::rate_limited, tool_error_kind::invalid_arguments,
        tool_error_kind::denied, tool_error_kind::unknown_tool}) {
    GIVEN("a tool that fails with " + json(kind).get<std::string>()) {
      auto log = std::make_shared<tool_log>();
      auto retrier = keep(spawn_retrier(sys, "flaky", constant_retries(3, 1ms),
                                        tool(log, always(kind))));
      auto r = call(retrier, make_call("c1"));
      THEN("it runs once and its result passes through") {
        CHECK(log->count() == 1);
        CHECK(r.attempts == 1);
        CHECK(r.attempt_log.size() == 1);
        CHECK(r.error.kind == kind);
        CHECK(r.error.message == "boom");
      }
    }
  }
  GIVEN("a policy that lists permanent") {
    auto log = std::make_shared<tool_log>();
    auto p = constant_retries(2, 1ms);
    p.retry_on = {tool_error_kind::permanent};
    auto retrier = keep(spawn_retrier(
      sys, "flaky", p, tool(log, fail_first(1, tool_error_kind::permanent))));
    auto r = call(retrier, make_call("c1"));
    THEN("a permanent failure is retried") {
      CHECK(r.ok);
      CHECK(r.attempts == 2);
      CHECK(log->count() == 2);
    }
  }
  GIVEN("a transient failure followed by a permanent one") {
    auto log = std::make_shared<tool_log>();
    auto retrier = keep(spawn_retrier(
      sys, "flaky", constant_retries(5, 1ms),
      tool(log, [](const tool_call&, int n) {
        return failed(n == 1 ? tool_error_kind::transient
                             : tool_error_kind::permanent);
      })));
    auto r = call(retrier, make_call("c1"));
    THEN("it stops at the permanent one") {
      CHECK(r.error.kind == tool_error_kind::permanent);
      CHECK(r.attempts == 2);
      CHECK(log->count() == 2);
      CHECK_THAT(r.error.message, Catch::EndsWith("(after 2 attempts)"));
    }
  }
}

SCENARIO_METHOD(fixture, "each attempt has its own timeout", "[guards]") {
  GIVEN("a tool that never answers and a 60 ms attempt timeout") {
    auto log = std::make_shared<tool_log>();
    auto p = constant_retries(1, 10ms);
    p.attempt_timeout = 60ms;
    auto retrier =
      keep(spawn_retrier(sys, "stuck", p, tool(log, never_answer())));
    auto r = call(retrier, make_call("c1"));
    THEN("both attempts time out and the call fails as a timeout") {
      CHECK_FALSE(r.ok);
      CHECK(r.error.kind == tool_error_kind::timeout);
      CHECK_THAT(r.error.message,
                 Catch::Contains("did not answer")
                   && Catch::EndsWith("(gave up after 2 attempts)"));
      CHECK(r.attempts == 2);
      REQUIRE(r.attempt_log.size() == 2);
      for (auto& a : r.attempt_log) {
        CHECK(a.outcome == tool_error_kind::timeout);
        CHECK(a.ended_ns - a.started_ns >= 60 * ms_ns);
        CHECK(a.ended_ns - a.started_ns <= 60 * ms_ns + slack_ns);
      }
    }
    THEN("each forwarded call carries the attempt's deadline") {
      auto calls = log->snapshot();
      auto times = log->times();
      REQUIRE(calls.size() == 2);
      for (size_t i = 0; i < 2; ++i) {
        CHECK(calls[i].deadline_ms > 0);
        CHECK(calls[i].deadline_ms <= times[i] / ms_ns + 60);
        CHECK(calls[i].deadline_ms >= times[i] / ms_ns + 60 - 150);
      }
    }
  }
  GIVEN("a call whose deadline comes before the next backoff ends") {
    auto log = std::make_shared<tool_log>();
    auto retrier = keep(spawn_retrier(
      sys, "flaky", constant_retries(3, 5000ms),
      tool(log, always(tool_error_kind::transient))));
    auto c = make_call("c1");
    c.deadline_ms = now_ms() + 2000;
    auto r = call(retrier, c);
    THEN("it gives up at once instead of waiting past the deadline") {
      CHECK(log->count() == 1);
      CHECK(r.attempts == 1);
      CHECK_THAT(r.error.message,
                 Catch::Contains("gave up after 1 attempt: a backoff of 5000 "
                                 "ms would pass the call's deadline"));
    }
  }
}

SCENARIO_METHOD(fixture, "many calls retry independently in one retrier",
                "[guards]") {
  auto log = std::make_shared<tool_log>();
  // Every call fails on its first attempt, keyed by call id.
  auto seen = std::make_shared<std::set<std::string>>();
  auto retrier = keep(spawn_retrier(
    sys, "flaky", constant_retries(2, 20ms),
    tool(log, [seen](const tool_call& c, int) {
      return seen->insert(c.call_id).second
               ? failed(tool_error_kind::transient)
               : ok_result();
    })));
  for (int i = 0; i < 5; ++i)
    self->send(retrier, make_call("c" + std::to_string(i)));
  auto results = collect(5);
  REQUIRE(results.size() == 5);
  for (auto& [id, r] : results) {
    CHECK(r.ok);
    CHECK(r.attempts == 2);
  }
  CHECK(log->count() == 10);
}

// -- breaker ------------------------------------------------------------------

SCENARIO_METHOD(fixture, "the breaker opens, fails fast, probes and closes",
                "[guards]") {
  GIVEN("a breaker with threshold 3 and a 250 ms cool-down before a tool "
        "that is down") {
    auto log = std::make_shared<tool_log>();
    auto healthy = std::make_shared<std::atomic<bool>>(false);
    auto sink = std::make_shared<trace_sink>();
    auto tr = tracer(sink);
    breaker_config cfg;
    cfg.failure_threshold = 3;
    cfg.cooldown = 250ms;
    auto inner = tool(log, [healthy](const tool_call&, int) {
      return healthy->load() ? ok_result() : failed(tool_error_kind::transient);
    });
    auto breaker = keep(spawn_breaker(sys, "flaky", cfg, inner, tr));
    CHECK(state_of(breaker) == "closed");
    WHEN("three calls fail in a row") {
      for (int i = 1; i <= 3; ++i) {
        auto r = call(breaker, make_call("f" + std::to_string(i)));
        CHECK(r.error.kind == tool_error_kind::transient);
      }
      THEN("the circuit is open and calls fail fast without reaching the "
           "tool") {
        CHECK(state_of(breaker) == "open");
        auto r = call(breaker, make_call("fast"));
        CHECK_FALSE(r.ok);
        CHECK(r.error.kind == tool_error_kind::circuit_open);
        CHECK(r.attempts == 0);
        CHECK(r.call_id == "fast");
        CHECK_THAT(r.error.message,
                   Catch::StartsWith("circuit open for tool 'flaky': 3 "
                                     "consecutive failures, retry after ~"));
        CHECK(log->count() == 3);
        AND_WHEN("the cool-down has passed and the tool has recovered") {
          let_pass(260ms);
          CHECK(state_of(breaker) == "half_open");
          healthy->store(true);
          auto probe = call(breaker, make_call("probe"));
          THEN("the probe reaches the tool and its success closes the "
               "circuit") {
            CHECK(probe.ok);
            CHECK(log->count() == 4);
            CHECK(state_of(breaker) == "closed");
            CHECK(call(breaker, make_call("after")).ok);
            CHECK(log->count() == 5);
          }
          THEN("every transition is traced in the span of its call") {
            flush(tr);
            auto evs = sink->events("breaker.transition");
            REQUIRE(evs.size() == 3);
            std::vector<std::string> seen;
            for (auto& ev : evs) {
              auto& a = ev.at("attributes");
              CHECK(a.at("gen_ai.tool.name") == "flaky");
              seen.push_back(a.at("troupe.breaker.from").get<std::string>()
                             + ">"
                             + a.at("troupe.breaker.to").get<std::string>());
            }
            CHECK(seen
                  == std::vector<std::string>{"closed>open", "open>half_open",
                                              "half_open>closed"});
            CHECK(evs[0].at("span_id") == "span-f3");
            CHECK(evs[0].at("trace_id") == "trace-1");
            CHECK(evs[0].at("attributes").at("troupe.breaker.failures") == 3);
            CHECK(evs[2].at("span_id") == "span-probe");
          }
        }
      }
    }
  }
}

SCENARIO_METHOD(fixture, "a failing probe re-opens the circuit", "[guards]") {
  auto log = std::make_shared<tool_log>();
  auto healthy = std::make_shared<std::atomic<bool>>(false);
  breaker_config cfg;
  cfg.failure_threshold = 2;
  cfg.cooldown = 150ms;
  auto inner = tool(log, [healthy](const tool_call&, int) {
    return healthy->load() ? ok_result() : failed(tool_error_kind::timeout);
  });
  auto breaker = keep(spawn_breaker(sys, "flaky", cfg, inner));
  call(breaker, make_call("f1"));
  call(breaker, make_call("f2"));
  REQUIRE(state_of(breaker) == "open");
  let_pass(160ms);
  auto probe = call(breaker, make_call("probe"));
  CHECK(probe.error.kind == tool_error_kind::timeout);
  CHECK(log->count() == 3);
  CHECK(state_of(breaker) == "open");
  // A fresh cool-down: the next call fails fast.
  auto fast = call(breaker, make_call("fast"));
  CHECK(fast.error.kind == tool_error_kind::circuit_open);
  CHECK_THAT(fast.error.message, Catch::Contains("3 consecutive failures"));
  CHECK(log->count() == 3);
  let_pass(160ms);
  healthy->store(true);
  CHECK(call(breaker, make_call("probe2")).ok);
  CHECK(state_of(breaker) == "closed");
}

SCENARIO_METHOD(fixture, "a half-open breaker lets only its probes through",
                "[guards]") {
  auto log = std::make_shared<tool_log>();
  auto healthy = std::make_shared<std::atomic<bool>>(false);
  breaker_config cfg;
  cfg.failure_threshold = 1;
  cfg.cooldown = 100ms;
  cfg.half_open_probes = 1;
  // Answers after 100 ms, so the probe is in flight while others arrive.
  auto inner = tool(
    log,
    [healthy](const tool_call&, int) {
      return healthy->load() ? ok_result() : failed(tool_error_kind::transient);
    },
    100ms);
  auto breaker = keep(spawn_breaker(sys, "flaky", cfg, inner));
  call(breaker, make_call("f1"));
  REQUIRE(state_of(breaker) == "open");
  let_pass(110ms);
  healthy->store(true);
  self->send(breaker, make_call("probe"));
  auto other = call(breaker, make_call("other"));
  CHECK(other.error.kind == tool_error_kind::circuit_open);
  CHECK_THAT(other.error.message,
             Catch::Contains("half-open") && Catch::Contains("1 probe call"));
  auto results = collect(1);
  REQUIRE(results.count("probe") == 1);
  CHECK(results.at("probe").ok);
  CHECK(log->count() == 2);
  CHECK(state_of(breaker) == "closed");
}

SCENARIO_METHOD(fixture,
                "answers that are not failures keep the circuit closed",
                "[guards]") {
  auto log = std::make_shared<tool_log>();
  breaker_config cfg;
  cfg.failure_threshold = 2;
  cfg.cooldown = 10s;
  // transient, permanent, transient, permanent, transient
  auto inner = tool(log, [](const tool_call&, int n) {
    return failed(n % 2 == 1 ? tool_error_kind::transient
                             : tool_error_kind::permanent);
  });
  auto breaker = keep(spawn_breaker(sys, "flaky", cfg, inner));
  for (int i = 0; i < 5; ++i)
    call(breaker, make_call("c" + std::to_string(i)));
  CHECK(state_of(breaker) == "closed");
  CHECK(log->count() == 5);
}

SCENARIO_METHOD(fixture,
                "calls whose body never ran neither trip nor close the circuit",
                "[guards]") {
  auto log = std::make_shared<tool_log>();
  auto healthy = std::make_shared<std::atomic<bool>>(false);
  breaker_config cfg;
  cfg.failure_threshold = 2;
  cfg.cooldown = 100ms;
  // Calls named "bad..." are refused by the schema check, "seen..." are
  // answered from the ledger; the others reach the (failing) body.
  auto inner = tool(log, [healthy](const tool_call& c, int) {
    if (c.call_id.rfind("bad", 0) == 0)
      return failed(tool_error_kind::invalid_arguments);
    if (c.call_id.rfind("seen", 0) == 0) {
      auto r = ok_result();
      r.replayed = true;
      return r;
    }
    return healthy->load() ? ok_result() : failed(tool_error_kind::transient);
  });
  auto breaker = keep(spawn_breaker(sys, "flaky", cfg, inner));
  WHEN("failures are interleaved with rejected and replayed calls") {
    call(breaker, make_call("f1"));
    call(breaker, make_call("bad1"));
    call(breaker, make_call("seen1"));
    REQUIRE(state_of(breaker) == "closed");
    call(breaker, make_call("f2"));
    THEN("the failures still count as consecutive") {
      CHECK(state_of(breaker) == "open");
    }
    AND_WHEN("a rejected call is the first through the half-open circuit") {
      let_pass(110ms);
      auto bad = call(breaker, make_call("bad2"));
      CHECK(bad.error.kind == tool_error_kind::invalid_arguments);
      THEN("it does not close the circuit, and the next call probes") {
        CHECK(state_of(breaker) == "half_open");
        healthy->store(true);
        auto probe = call(breaker, make_call("probe"));
        CHECK(probe.ok);
        CHECK(state_of(breaker) == "closed");
      }
    }
  }
}

SCENARIO_METHOD(fixture, "a retrier in front of a breaker does not retry an "
                         "open circuit",
                "[guards]") {
  auto log = std::make_shared<tool_log>();
  breaker_config cfg;
  cfg.failure_threshold = 2;
  cfg.cooldown = 10s;
  auto breaker = keep(spawn_breaker(
    sys, "flaky", cfg, tool(log, always(tool_error_kind::transient))));
  auto retrier =
    keep(spawn_retrier(sys, "flaky", constant_retries(5, 1ms), breaker));
  auto r = call(retrier, make_call("c1"));
  CHECK(r.error.kind == tool_error_kind::circuit_open);
  CHECK(r.attempts == 3);
  CHECK(log->count() == 2);
}

// -- limiter ------------------------------------------------------------------

SCENARIO_METHOD(fixture, "the limiter admits calls at its rate", "[guards]") {
  auto log = std::make_shared<tool_log>();
  limiter_config cfg;
  cfg.rate_per_sec = 50;
  cfg.burst = 1;
  auto limiter =
    keep(spawn_tool_limiter(sys, "api", cfg, tool(log, always_ok())));
  for (int i = 0; i < 11; ++i)
    self->send(limiter, make_call("c" + std::to_string(i)));
  auto results = collect(11);
  REQUIRE(results.size() == 11);
  for (auto& [id, r] : results)
    CHECK(r.ok);
  auto times = log->times();
  REQUIRE(times.size() == 11);
  // One token every 20 ms; the hop from limiter to tool may add a little
  // jitter either way.
  for (size_t i = 1; i < times.size(); ++i)
    CHECK(times[i] - times[i - 1] >= 18 * ms_ns);
  auto span = times.back() - times.front();
  CHECK(span >= 198 * ms_ns);
  CHECK(span <= 200 * ms_ns + slack_ns);
  // In arrival order.
  auto ids = log->ids();
  for (size_t i = 0; i < ids.size(); ++i)
    CHECK(ids[i] == "c" + std::to_string(i));
}

SCENARIO_METHOD(fixture, "the limiter caps the calls running at once",
                "[guards]") {
  auto log = std::make_shared<tool_log>();
  limiter_config cfg;
  cfg.max_concurrent = 2;
  auto limiter =
    keep(spawn_tool_limiter(sys, "api", cfg, tool(log, always_ok(), 30ms)));
  for (int i = 0; i < 8; ++i)
    self->send(limiter, make_call("c" + std::to_string(i)));
  auto results = collect(8);
  REQUIRE(results.size() == 8);
  for (auto& [id, r] : results)
    CHECK(r.ok);
  std::lock_guard<std::mutex> guard{log->mtx};
  CHECK(log->max_running == 2);
  CHECK(log->calls.size() == 8);
}

SCENARIO_METHOD(fixture, "waiting calls run by priority, then in arrival order",
                "[guards]") {
  auto log = std::make_shared<tool_log>();
  auto sink = std::make_shared<trace_sink>();
  auto tr = tracer(sink);
  limiter_config cfg;
  cfg.max_concurrent = 1;
  auto limiter =
    keep(spawn_tool_limiter(sys, "api", cfg, tool(log, always_ok(), 40ms), tr));
  self->send(limiter, make_call("first", "a", 0));
  self->send(limiter, make_call("low1", "a", 0));
  self->send(limiter, make_call("low2", "a", 0));
  self->send(limiter, make_call("high", "a", 5));
  self->send(limiter, make_call("mid", "a", 2));
  auto results = collect(5);
  REQUIRE(results.size() == 5);
  CHECK(log->ids()
        == std::vector<std::string>{"first", "high", "mid", "low1", "low2"});
  flush(tr);
  auto waits = sink->events("limiter.wait");
  REQUIRE(waits.size() == 4); // "first" ran at once
  std::vector<std::string> spans;
  int64_t last = -1;
  for (auto& ev : waits) {
    spans.push_back(ev.at("span_id").get<std::string>());
    auto& a = ev.at("attributes");
    CHECK(a.at("gen_ai.tool.name") == "api");
    auto waited = a.at("troupe.wait_ms").get<int64_t>();
    CHECK(waited > last); // each waited for one more call to finish
    last = waited;
  }
  CHECK(spans
        == std::vector<std::string>{"span-high", "span-mid", "span-low1",
                                    "span-low2"});
}

SCENARIO_METHOD(fixture, "an agent at its cap does not hold up other agents",
                "[guards]") {
  auto log = std::make_shared<tool_log>();
  limiter_config cfg;
  cfg.max_concurrent = 2;
  cfg.max_concurrent_per_agent = 1;
  auto limiter =
    keep(spawn_tool_limiter(sys, "api", cfg, tool(log, always_ok(), 60ms)));
  self->send(limiter, make_call("a1", "alice"));
  self->send(limiter, make_call("a2", "alice")); // waits: alice is at her cap
  self->send(limiter, make_call("b1", "bob"));   // runs past a2
  self->send(limiter, make_call("b2", "bob"));   // waits: two are running
  auto results = collect(4);
  REQUIRE(results.size() == 4);
  CHECK(log->ids() == std::vector<std::string>{"a1", "b1", "a2", "b2"});
  std::lock_guard<std::mutex> guard{log->mtx};
  CHECK(log->max_running == 2);
  CHECK(log->max_by_agent.at("alice") == 1);
  CHECK(log->max_by_agent.at("bob") == 1);
}

SCENARIO_METHOD(fixture, "a call that waits too long is refused as "
                         "rate_limited with the limit that held it",
                "[guards]") {
  auto log = std::make_shared<tool_log>();
  GIVEN("a concurrency cap of 1 taken by a call that never finishes") {
    limiter_config cfg;
    cfg.max_concurrent = 1;
    cfg.max_wait = 50ms;
    auto limiter =
      keep(spawn_tool_limiter(sys, "api", cfg, tool(log, never_answer())));
    self->send(limiter, make_call("stuck"));
    auto r = call(limiter, make_call("late"));
    CHECK_FALSE(r.ok);
    CHECK(r.error.kind == tool_error_kind::rate_limited);
    CHECK(r.attempts == 0);
    CHECK_THAT(r.error.message,
               Catch::StartsWith("tool 'api' waited ")
                 && Catch::Contains("ms in the limiter queue (1 of 1 running) "
                                    "past its max_wait of 50 ms"));
    CHECK(log->ids() == std::vector<std::string>{"stuck"});
  }
  GIVEN("a rate of 1 per second") {
    limiter_config cfg;
    cfg.rate_per_sec = 1;
    cfg.max_wait = 50ms;
    auto limiter =
      keep(spawn_tool_limiter(sys, "api", cfg, tool(log, always_ok())));
    CHECK(call(limiter, make_call("first")).ok);
    auto r = call(limiter, make_call("second"));
    CHECK(r.error.kind == tool_error_kind::rate_limited);
    CHECK_THAT(r.error.message,
               Catch::Contains("(rate 1/s) past its max_wait of 50 ms"));
    CHECK(log->count() == 1);
  }
  GIVEN("a call whose deadline comes before its max_wait") {
    limiter_config cfg;
    cfg.max_concurrent = 1;
    cfg.max_wait = 10s;
    auto limiter =
      keep(spawn_tool_limiter(sys, "api", cfg, tool(log, never_answer())));
    self->send(limiter, make_call("stuck"));
    auto c = make_call("late");
    c.deadline_ms = now_ms() + 50;
    auto r = call(limiter, c);
    CHECK(r.error.kind == tool_error_kind::rate_limited);
    CHECK_THAT(r.error.message, Catch::EndsWith("past its deadline"));
  }
}

SCENARIO_METHOD(fixture, "a full queue refuses at once", "[guards]") {
  auto log = std::make_shared<tool_log>();
  limiter_config cfg;
  cfg.max_concurrent = 1;
  cfg.max_queue = 1;
  cfg.max_wait = 100ms;
  auto limiter =
    keep(spawn_tool_limiter(sys, "api", cfg, tool(log, never_answer())));
  self->send(limiter, make_call("running"));
  self->send(limiter, make_call("waiting"));
  self->send(limiter, make_call("refused"));
  // The refusal comes first: the waiting call is answered after max_wait.
  auto first = collect(1);
  REQUIRE(first.count("refused") == 1);
  auto& r = first.at("refused");
  CHECK(r.error.kind == tool_error_kind::rate_limited);
  CHECK_THAT(r.error.message,
             Catch::Contains("tool 'api' refused by the limiter: its queue is "
                             "full (1 waiting; 1 of 1 running)"));
  auto second = collect(1);
  REQUIRE(second.count("waiting") == 1);
  CHECK_THAT(second.at("waiting").error.message,
             Catch::Contains("past its max_wait of 100 ms"));
  CHECK(log->ids() == std::vector<std::string>{"running"});
}

SCENARIO_METHOD(fixture, "the model limiter guards a model endpoint the same "
                         "way",
                "[guards]") {
  auto seen = std::make_shared<model_seen>();
  GIVEN("a rate of 50/s with a burst of 2") {
    limiter_config cfg;
    cfg.rate_per_sec = 50;
    cfg.burst = 2;
    auto limiter = keep(spawn_model_limiter(sys, "m", cfg, model(seen)));
    for (int i = 0; i < 4; ++i)
      self->send(limiter, make_request("agent" + std::to_string(i)));
    for (int i = 0; i < 4; ++i)
      self->receive([](chat_response& r) {
                      CHECK_THAT(r.message.content, Catch::StartsWith("hi "));
                    },
                    caf::after(std::chrono::seconds{10}) >>
                      [] { FAIL("no reply"); });
    auto times = seen->times();
    REQUIRE(times.size() == 4);
    // The burst goes at once; then one every 20 ms.
    CHECK(times[2] - times[0] >= 18 * ms_ns);
    CHECK(times[3] - times[2] >= 18 * ms_ns);
    CHECK(times[3] - times[0] <= 40 * ms_ns + slack_ns);
  }
  GIVEN("a concurrency cap of 1 and a short max_wait") {
    limiter_config cfg;
    cfg.max_concurrent = 1;
    cfg.max_wait = 30ms;
    auto limiter = keep(spawn_model_limiter(sys, "m", cfg, model(seen, 300ms)));
    self->send(limiter, make_request("slow"));
    caf::error refused;
    self->request(limiter, 10s, make_request("late"))
      .receive([](chat_response&) { FAIL("the second request ran"); },
               [&](caf::error& err) { refused = std::move(err); });
    REQUIRE(refused);
    CHECK(refused.category() == error_category);
    CHECK(refused.code() == static_cast<uint8_t>(errc::refused));
    CHECK_THAT(error_text(refused),
               Catch::Contains("model 'm' waited ")
                 && Catch::Contains("(1 of 1 running) past its max_wait of 30 "
                                    "ms"));
    self->receive([](chat_response& r) { CHECK(r.message.content == "late"); },
                  caf::after(std::chrono::seconds{10}) >>
                    [] { FAIL("the first request did not finish"); });
    std::lock_guard<std::mutex> guard{seen->mtx};
    CHECK(seen->agents == std::vector<std::string>{"slow"});
  }
  GIVEN("a concurrency cap of 1 and a request whose caller gives up soon") {
    limiter_config cfg;
    cfg.max_concurrent = 1;
    cfg.max_wait = 10s;
    auto limiter = keep(spawn_model_limiter(sys, "m", cfg, model(seen, 300ms)));
    self->send(limiter, make_request("slow"));
    auto hurried = make_request("hurried");
    hurried.deadline_ms = now_ms() + 40;
    caf::error refused;
    self->request(limiter, 10s, hurried)
      .receive([](chat_response&) { FAIL("the hurried request ran"); },
               [&](caf::error& err) { refused = std::move(err); });
    THEN("it is dropped at its deadline, never reaching the model") {
      REQUIRE(refused);
      CHECK(refused.code() == static_cast<uint8_t>(errc::refused));
      CHECK_THAT(error_text(refused), Catch::Contains("deadline"));
      self->receive([](chat_response&) {},
                    caf::after(std::chrono::seconds{10}) >>
                      [] { FAIL("the first request did not finish"); });
      std::lock_guard<std::mutex> guard{seen->mtx};
      CHECK(seen->agents == std::vector<std::string>{"slow"});
    }
  }
}

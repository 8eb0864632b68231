#include "actors/budget.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <sstream>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include "actors/tracer.hpp"
#include "messages/errors.hpp"
#include "messages/type_ids.hpp"
#include "runtime/clock.hpp"

using namespace troupe;
using namespace std::chrono_literals;
using Catch::Matchers::EndsWith;
using Catch::Matchers::StartsWith;

namespace {

/// Wakes a test up after a delay (a delayed message, not a sleep).
using bt_tick_atom = caf::atom_constant<caf::atom("bt_tick")>;

/// Ends the race watcher.
using bt_stop_atom = caf::atom_constant<caf::atom("bt_stop")>;

constexpr int64_t nusd_per_usd = 1'000'000'000;

/// An actor system with several scheduler threads, so that concurrently
/// spawned clients really race, and a blocking actor to talk to the budget.
struct budget_fixture {
  static caf::actor_system_config& configured(caf::actor_system_config& cfg) {
    register_messages(cfg);
    cfg.set("scheduler.max-threads", 8);
    return cfg;
  }

  caf::actor_system_config cfg;
  caf::actor_system sys{configured(cfg)};
  caf::scoped_actor self{sys};

  budget_verdict reserve(const budget_actor& budget,
                         const budget_reserve& req) {
    budget_verdict out;
    self->request(budget, 10s, req)
      .receive([&out](budget_verdict& v) { out = std::move(v); },
               [](caf::error& err) { FAIL(error_text(err)); });
    return out;
  }

  budget_snapshot query(const budget_actor& budget, const std::string& name) {
    budget_snapshot out;
    self->request(budget, 10s, bg_query_atom::value, name)
      .receive([&out](budget_snapshot& s) { out = std::move(s); },
               [](caf::error& err) { FAIL(error_text(err)); });
    return out;
  }

  /// Waits `d` for a message the test sends itself.
  void pause(std::chrono::milliseconds d) {
    self->delayed_send(caf::actor_cast<caf::actor>(self), d,
                       bt_tick_atom::value);
    self->receive([](bt_tick_atom) {},
                  caf::after(10s) >> [] { FAIL("the tick never came"); });
  }
};

budget_amount amount(int64_t steps, int64_t input = 0, int64_t output = 0,
                     int64_t cost_nusd = 0) {
  budget_amount x;
  x.steps = steps;
  x.tokens.input_tokens = input;
  x.tokens.output_tokens = output;
  x.cost_nusd = cost_nusd;
  return x;
}

budget_scope scope(std::string account, budget_limits limits = {}) {
  return {std::move(account), limits};
}

budget_limits step_limit(int64_t n) {
  budget_limits x;
  x.max_steps = n;
  return x;
}

budget_reserve reservation(std::vector<budget_scope> path, std::string id,
                           budget_amount estimate) {
  budget_reserve r;
  r.path = std::move(path);
  r.reservation_id = std::move(id);
  r.model = "test-model";
  r.estimate = estimate;
  return r;
}

budget_charge charge(std::string account, std::string id, budget_amount usage,
                     std::string key = {}) {
  return {std::move(account), std::move(id), "test-model", usage,
          std::move(key)};
}

budget_recount recount(std::vector<budget_scope> path, std::string key,
                       budget_amount total) {
  budget_recount r;
  r.path = std::move(path);
  r.key = std::move(key);
  r.total = total;
  return r;
}

budget_config config(budget_limits global, double warn_share = 0.8) {
  budget_config cfg;
  cfg.global = global;
  cfg.warn_share = warn_share;
  return cfg;
}

} // namespace

// --- prices and text --------------------------------------------------------

TEST_CASE("price_table computes costs in exact nano-dollars", "[budget]") {
  price_table prices;
  prices.set("gpt-4o-mini", {0.15, 0.6});
  prices.set("openai:gpt-4o", {2.5, 10});
  prices.set("gpt-4o", {99, 99});
  SECTION("USD per million tokens is x1000 nano-dollars per token") {
    CHECK(prices.cost_nusd("gpt-4o-mini", {1000, 500}) == 150'000 + 300'000);
    CHECK(prices.cost_nusd("gpt-4o-mini", {1'000'000, 0})
          == 150'000'000); // $0.15
    CHECK(prices.cost_nusd("openai:gpt-4o", {1'000'000, 1'000'000})
          == 12'500'000'000);                              // $12.50
    CHECK(prices.cost_nusd("gpt-4o-mini", {1, 1}) == 750); // 150 + 600
    CHECK(prices.cost_nusd("gpt-4o-mini", {}) == 0);
  }
  SECTION("a name matches exactly, else by its part after the provider") {
    REQUIRE(prices.find("openai:gpt-4o-mini") != nullptr);
    CHECK(prices.find("openai:gpt-4o-mini")->input_usd_per_mtok == 0.15);
    CHECK(prices.find("openai:gpt-4o")->input_usd_per_mtok == 2.5);
    CHECK(prices.find("azure:gpt-4o")->input_usd_per_mtok == 99);
    CHECK(prices.find("claude") == nullptr);
    CHECK(prices.find("openai:claude") == nullptr);
    CHECK(prices.cost_nusd("claude", {1000, 1000}) == 0);
  }
  SECTION("bad prices are refused") {
    CHECK_THROWS_AS(prices.set("", {1, 1}), std::invalid_argument);
    CHECK_THROWS_WITH(prices.set("m", {-1, 1}),
                      Catch::Contains("input_usd_per_mtok"));
    CHECK_THROWS_WITH(prices.set("m", {1, std::nan("")}),
                      Catch::Contains("output_usd_per_mtok"));
    CHECK(prices.find("m") == nullptr);
  }
}

TEST_CASE("describe names every part of an amount", "[budget]") {
  CHECK(describe(amount(2, 300, 40, 120'000))
        == "2 steps, 300 input + 40 output tokens, $0.000120");
  CHECK(describe(amount(1, 0, 0, 1'500'000'000))
        == "1 step, 0 input + 0 output tokens, $1.500000");
  CHECK(describe(amount(0, 1, 2, 123'456'789))
        == "0 steps, 1 input + 2 output tokens, $0.123456789");
}

TEST_CASE_METHOD(budget_fixture, "spawn_budget validates its config",
                 "[budget]") {
  auto bad_share = [this](double share) {
    return spawn_budget(sys, config({}, share));
  };
  CHECK_THROWS_WITH(bad_share(0), Catch::Contains("warn_share"));
  CHECK_THROWS_WITH(bad_share(1.5), Catch::Contains("warn_share"));
  CHECK_THROWS_WITH(bad_share(std::nan("")), Catch::Contains("warn_share"));
  CHECK_NOTHROW(bad_share(1));
  budget_limits negative;
  negative.max_cost_usd = -1;
  CHECK_THROWS_WITH(spawn_budget(sys, config(negative)),
                    Catch::Contains("global.max_cost_usd"));
  negative = {};
  negative.max_output_tokens = -5;
  CHECK_THROWS_WITH(spawn_budget(sys, config(negative)),
                    Catch::Contains("global.max_output_tokens"));
  budget_config zero_ttl;
  zero_ttl.idle_ttl = 0ms;
  CHECK_THROWS_WITH(spawn_budget(sys, zero_ttl), Catch::Contains("idle_ttl"));
}

// --- nesting ----------------------------------------------------------------

SCENARIO_METHOD(budget_fixture, "a charge counts against every ancestor",
                "[budget]") {
  GIVEN("a run account inside a team account inside global") {
    auto budget = spawn_budget(sys);
    std::vector<budget_scope> path{scope("team-a", step_limit(10)),
                                   scope("run-1", step_limit(5))};
    WHEN("the run reserves") {
      auto v = reserve(budget,
                       reservation(path, "r1", amount(1, 100, 10, 500)));
      REQUIRE(v.granted);
      CHECK(v.reservation_id == "r1");
      CHECK(v.reason.empty());
      THEN("the estimate is reserved on the run and every ancestor") {
        for (auto name : {"run-1", "team-a", "global"}) {
          auto s = query(budget, name);
          INFO(name);
          CHECK(s.exists);
          CHECK(s.reserved == amount(1, 100, 10, 500));
          CHECK(s.used == budget_amount{});
          CHECK(s.granted == 1);
        }
        CHECK(query(budget, "run-1").limits.max_steps == 5);
        CHECK(query(budget, "team-a").limits.max_steps == 10);
      }
      AND_WHEN("the run charges what it really used") {
        self->send(budget, charge("run-1", "r1", amount(1, 120, 7, 610)));
        THEN("the usage replaces the estimate everywhere") {
          for (auto name : {"run-1", "team-a", "global"}) {
            auto s = query(budget, name);
            INFO(name);
            CHECK(s.used == amount(1, 120, 7, 610));
            CHECK(s.reserved == budget_amount{});
          }
        }
      }
      AND_WHEN("a charge with a negative usage arrives") {
        self->send(budget, charge("run-1", "r1", amount(-1, 0, 0, -5)));
        THEN("the reservation is settled but the usage ignored") {
          auto s = query(budget, "global");
          CHECK(s.used == budget_amount{});
          CHECK(s.reserved == budget_amount{});
        }
      }
    }
    WHEN("an unknown account is asked for") {
      auto s = query(budget, "nobody");
      THEN("it does not exist") {
        CHECK_FALSE(s.exists);
        CHECK(s.account == "nobody");
      }
    }
  }
}

SCENARIO_METHOD(budget_fixture, "a team's limit caps its runs together",
                "[budget]") {
  GIVEN("a team limited to 3 steps and two unlimited runs in it") {
    auto budget = spawn_budget(sys);
    auto path = [](const char* run) {
      return std::vector<budget_scope>{scope("team-a", step_limit(3)),
                                       scope(run)};
    };
    REQUIRE(
      reserve(budget, reservation(path("run-1"), "a", amount(2))).granted);
    self->send(budget, charge("run-1", "a", amount(2)));
    REQUIRE(
      reserve(budget, reservation(path("run-2"), "b", amount(1))).granted);
    WHEN("the second run asks for one more step") {
      // The path's limits for an existing account are ignored: it keeps its
      // own.
      std::vector<budget_scope> generous{scope("team-a", step_limit(100)),
                                         scope("run-2")};
      auto v = reserve(budget, reservation(generous, "c", amount(1)));
      THEN("the team refuses, naming itself and the figures") {
        CHECK_FALSE(v.granted);
        CHECK(v.reason
              == "budget 'team-a' exhausted: 1 more step would exceed its "
                 "limit of 3 steps (2 used, 1 reserved)");
        CHECK(query(budget, "team-a").limits.max_steps == 3);
        CHECK(query(budget, "team-a").denied == 1);
        CHECK(query(budget, "global").denied == 1);
        CHECK(query(budget, "run-2").denied == 1);
        CHECK(query(budget, "run-1").denied == 0);
        CHECK(query(budget, "global").granted == 2);
      }
    }
  }
}

// --- refusals ---------------------------------------------------------------

SCENARIO_METHOD(budget_fixture, "every kind of limit refuses with its figures",
                "[budget]") {
  GIVEN("a run at its step limit") {
    auto budget = spawn_budget(sys);
    std::vector<budget_scope> path{scope("run-1/support#1", step_limit(5))};
    REQUIRE(reserve(budget, reservation(path, "r", amount(5))).granted);
    self->send(budget, charge("run-1/support#1", "r", amount(5)));
    THEN("one more step is refused") {
      auto v = reserve(budget, reservation(path, "r2", amount(1)));
      CHECK_FALSE(v.granted);
      CHECK(v.reason
            == "budget 'run-1/support#1' exhausted: 1 more step would exceed "
               "its limit of 5 steps (5 used)");
    }
    THEN("a reservation without steps still fits") {
      CHECK(reserve(budget, reservation(path, "r3", amount(0, 10))).granted);
    }
  }
  GIVEN("a team with token limits") {
    auto budget = spawn_budget(sys);
    budget_limits limits;
    limits.max_input_tokens = 1000;
    limits.max_output_tokens = 100;
    std::vector<budget_scope> path{scope("team-t", limits), scope("run-t")};
    REQUIRE(
      reserve(budget, reservation(path, "a", amount(1, 900, 60))).granted);
    THEN("input tokens beyond the limit are refused, counting reservations") {
      auto v = reserve(budget, reservation(path, "b", amount(1, 200, 1)));
      CHECK_FALSE(v.granted);
      CHECK(v.reason
            == "budget 'team-t' exhausted: 200 more input tokens would exceed "
               "its limit of 1000 input tokens (0 used, 900 reserved)");
    }
    THEN("output tokens beyond the limit are refused") {
      auto v = reserve(budget, reservation(path, "b", amount(1, 100, 41)));
      CHECK_FALSE(v.granted);
      CHECK(v.reason
            == "budget 'team-t' exhausted: 41 more output tokens would exceed "
               "its limit of 100 output tokens (0 used, 60 reserved)");
    }
    THEN("exactly the rest fits") {
      CHECK(
        reserve(budget, reservation(path, "b", amount(1, 100, 40))).granted);
    }
  }
  GIVEN("a global cost limit of $1 with $0.995 used") {
    budget_limits limits;
    limits.max_cost_usd = 1.0;
    auto budget = spawn_budget(sys, config(limits));
    std::vector<budget_scope> path{scope("run-c")};
    REQUIRE(
      reserve(budget, reservation(path, "a", amount(1, 0, 0, 1))).granted);
    self->send(budget, charge("run-c", "a", amount(1, 0, 0, 995'000'000)));
    THEN("a cent more is refused by global") {
      auto v = reserve(budget,
                       reservation(path, "b", amount(1, 0, 0, 10'000'000)));
      CHECK_FALSE(v.granted);
      CHECK(v.reason
            == "budget 'global' exhausted: cost $0.0100 more would exceed its "
               "limit of $1.0000 ($0.9950 used, $0.0000 reserved)");
    }
    THEN("the last half cent fits exactly") {
      CHECK(reserve(budget, reservation(path, "b", amount(1, 0, 0, 5'000'000)))
              .granted);
    }
  }
  GIVEN("an account whose usage ran past its limit") {
    auto budget = spawn_budget(sys);
    std::vector<budget_scope> path{scope("run-o", step_limit(2))};
    REQUIRE(reserve(budget, reservation(path, "a", amount(1))).granted);
    self->send(budget, charge("run-o", "a", amount(3)));
    THEN("even an estimate without steps is refused") {
      auto v = reserve(budget, reservation(path, "b", amount(0)));
      CHECK_FALSE(v.granted);
      CHECK(v.reason
            == "budget 'run-o' exhausted: its limit of 2 steps is already "
               "exceeded (3 used)");
    }
  }
  GIVEN("a team whose deadline passed 1200 ms ago") {
    auto budget = spawn_budget(sys);
    budget_limits limits;
    limits.deadline_ms = now_ms() - 1200;
    std::vector<budget_scope> path{scope("team-x", limits), scope("run-x")};
    auto v = reserve(budget, reservation(path, "a", amount(1)));
    THEN("everything below it is refused") {
      CHECK_FALSE(v.granted);
      CHECK_THAT(v.reason, StartsWith("budget 'team-x' deadline passed 1")
                             && EndsWith(" ms ago"));
      auto ms = std::stoll(v.reason.substr(v.reason.find("passed ") + 7));
      CHECK(ms >= 1200);
      CHECK(ms < 60'000);
    }
  }
  GIVEN("malformed requests") {
    auto budget = spawn_budget(sys);
    THEN("a negative estimate is refused") {
      auto v = reserve(budget, reservation({scope("r")}, "a", amount(-1)));
      CHECK_FALSE(v.granted);
      CHECK_THAT(v.reason, Catch::Contains("negative estimate"));
    }
    THEN("an empty account name is refused") {
      auto v = reserve(budget,
                       reservation({scope("t"), scope("")}, "a", amount(1)));
      CHECK_FALSE(v.granted);
      CHECK(v.reason == "budget path entry 1 has no account name");
      CHECK_FALSE(query(budget, "t").exists);
    }
    THEN("negative limits are refused") {
      auto v = reserve(budget, reservation({scope("t", step_limit(-1))}, "a",
                                           amount(1)));
      CHECK_FALSE(v.granted);
      CHECK(v.reason == "budget 't' has a negative max_steps");
    }
  }
}

// --- warnings ---------------------------------------------------------------

SCENARIO_METHOD(budget_fixture, "an account warns once per limit at its share",
                "[budget]") {
  GIVEN("a global cost limit of $1, warning at 80%, and a run limit of 5 "
        "steps") {
    budget_limits limits;
    limits.max_cost_usd = 1.0;
    auto budget = spawn_budget(sys, config(limits, 0.8));
    std::vector<budget_scope> path{scope("run-w", step_limit(5))};
    WHEN("reservations approach the limits") {
      auto a = reserve(budget,
                       reservation(path, "a", amount(1, 0, 0, 500'000'000)));
      auto b = reserve(budget,
                       reservation(path, "b", amount(1, 0, 0, 300'000'000)));
      self->send(budget, charge("run-w", "a", amount(1, 0, 0, 500'000'000)));
      self->send(budget, charge("run-w", "b", amount(1, 0, 0, 300'000'000)));
      auto c = reserve(budget,
                       reservation(path, "c", amount(1, 0, 0, 100'000'000)));
      auto d = reserve(budget, reservation(path, "d", amount(1)));
      auto e = reserve(budget, reservation(path, "e", amount(1)));
      THEN("each warning comes once, from the reservation that crossed it") {
        REQUIRE(a.granted);
        REQUIRE(b.granted);
        REQUIRE(c.granted);
        REQUIRE(d.granted);
        REQUIRE(e.granted);
        CHECK(a.warnings.empty());
        CHECK(b.warnings
              == std::vector<std::string>{
                "budget 'global': 80% of its cost limit reached ($0.8000 of "
                "$1.0000)"});
        CHECK(c.warnings.empty());
        CHECK(d.warnings
              == std::vector<std::string>{"budget 'run-w': 80% of its step "
                                          "limit reached (4 of 5 steps)"});
        CHECK(e.warnings.empty());
      }
    }
  }
}

// --- traces -----------------------------------------------------------------

SCENARIO_METHOD(budget_fixture,
                "refusals and warnings are traced with the limit that made "
                "them",
                "[budget]") {
  GIVEN("a budget tracing to a real tracer, a global cost limit of $1 "
        "warning at 80%") {
    struct record_log {
      std::mutex mtx;
      std::vector<json> events;
    };
    auto log = std::make_shared<record_log>();
    tracer_config tc;
    tc.listeners.push_back([log](const json& r) {
      if (r.value("type", "") != "event")
        return;
      std::lock_guard<std::mutex> guard{log->mtx};
      log->events.push_back(r);
    });
    auto tracer = spawn_tracer(sys, tc);
    budget_limits limits;
    limits.max_cost_usd = 1.0;
    auto budget = spawn_budget(sys, config(limits, 0.8), tracer);
    auto traced = [](budget_reserve r) {
      r.ref.trace_id = "t1";
      r.ref.span_id = "s1";
      return r;
    };
    WHEN("one reservation crosses the warning share, then others are "
         "refused by cost, a deadline and a malformed estimate") {
      std::vector<budget_scope> path{scope("run-t")};
      auto a = reserve(budget, traced(reservation(path, "a",
                                                  amount(1, 0, 0, 900'000'000))));
      auto b = reserve(budget, traced(reservation(path, "b",
                                                  amount(1, 0, 0, 200'000'000))));
      budget_limits late;
      late.deadline_ms = now_ms() - 1000;
      auto c = reserve(budget, traced(reservation({scope("run-late", late)},
                                                  "c", amount(1))));
      auto d = reserve(budget, traced(reservation(path, "d", amount(-1))));
      REQUIRE(a.granted);
      REQUIRE_FALSE(b.granted);
      REQUIRE_FALSE(c.granted);
      REQUIRE_FALSE(d.granted);
      // The flush is answered after every record sent before it.
      bool flushed = false;
      self->request(tracer, 10s, tr_flush_atom::value)
        .receive([&flushed](bool) { flushed = true; },
                 [](caf::error& err) { FAIL(error_text(err)); });
      REQUIRE(flushed);
      std::lock_guard<std::mutex> guard{log->mtx};
      const auto& ev = log->events;
      THEN("the warning and each refusal are events naming account and "
           "limit, in the reservation's span") {
        REQUIRE(ev.size() == 4);
        for (const auto& e : ev) {
          CHECK(e["trace_id"] == "t1");
          CHECK(e["span_id"] == "s1");
        }
        CHECK(ev[0]["name"] == "budget.warning");
        CHECK(ev[0]["attributes"]["troupe.budget.account"] == "global");
        CHECK(ev[0]["attributes"]["troupe.budget.limit"] == "cost");
        CHECK(ev[0]["attributes"]["troupe.budget.warning"] == a.warnings.at(0));
        CHECK(ev[1]["name"] == "budget.denied");
        CHECK(ev[1]["attributes"]["troupe.budget.account"] == "global");
        CHECK(ev[1]["attributes"]["troupe.budget.limit"] == "cost");
        CHECK(ev[1]["attributes"]["troupe.budget.reason"] == b.reason);
        CHECK(ev[1]["attributes"]["troupe.budget.reservation"] == "b");
        CHECK(ev[2]["name"] == "budget.denied");
        CHECK(ev[2]["attributes"]["troupe.budget.account"] == "run-late");
        CHECK(ev[2]["attributes"]["troupe.budget.limit"] == "deadline");
        CHECK(ev[3]["name"] == "budget.denied");
        CHECK(ev[3]["attributes"]["troupe.budget.limit"] == "malformed");
      }
    }
    caf::anon_send_exit(tracer, caf::exit_reason::user_shutdown);
  }
}

// --- release and close ------------------------------------------------------

SCENARIO_METHOD(budget_fixture,
                "released and closed reservations free the "
                "budget",
                "[budget]") {
  GIVEN("a run holding 3 of its team's 3 steps") {
    auto budget = spawn_budget(sys);
    auto path = [](const char* run) {
      return std::vector<budget_scope>{scope("team-r", step_limit(3)),
                                       scope(run)};
    };
    REQUIRE(
      reserve(budget, reservation(path("run-1"), "a", amount(3))).granted);
    REQUIRE_FALSE(
      reserve(budget, reservation(path("run-2"), "b", amount(1))).granted);
    WHEN("the run releases the reservation") {
      self->send(budget, budget_release{"run-1", "a"});
      THEN("the steps are free again everywhere") {
        for (auto name : {"run-1", "team-r", "global"})
          CHECK(query(budget, name).reserved == budget_amount{});
        CHECK(
          reserve(budget, reservation(path("run-2"), "b", amount(3))).granted);
      }
      AND_WHEN("a late charge for the released reservation arrives") {
        self->send(budget, charge("run-1", "a", amount(1, 5)));
        THEN("the usage is still counted, the reservation not restored") {
          auto s = query(budget, "team-r");
          CHECK(s.used == amount(1, 5));
          CHECK(s.reserved == budget_amount{});
        }
      }
    }
    WHEN("the run's account is closed") {
      self->send(budget, budget_close{"run-1"});
      THEN("its reservations are released and the account is gone") {
        CHECK_FALSE(query(budget, "run-1").exists);
        CHECK(query(budget, "team-r").exists);
        CHECK(query(budget, "team-r").reserved == budget_amount{});
        CHECK(query(budget, "global").reserved == budget_amount{});
        CHECK(
          reserve(budget, reservation(path("run-2"), "b", amount(3))).granted);
      }
      AND_WHEN("a charge for it arrives after all") {
        self->send(budget, charge("run-1", "a", amount(1)));
        THEN("it is ignored") {
          CHECK(query(budget, "global").used == budget_amount{});
        }
      }
    }
    WHEN("the team is closed while its run is open") {
      self->send(budget, budget_close{"team-r"});
      THEN("the team stays while it has a child, but refuses new work") {
        CHECK(query(budget, "team-r").exists);
        auto v = reserve(budget, reservation(path("run-3"), "c", amount(1)));
        CHECK_FALSE(v.granted);
        CHECK(v.reason == "budget 'team-r' is closed");
        CHECK_FALSE(query(budget, "run-3").exists);
      }
      AND_WHEN("its runs are closed too") {
        self->send(budget, charge("run-1", "a", amount(2)));
        self->send(budget, budget_close{"run-1"});
        // The refused reservation of run-2 created its account, too.
        self->send(budget, budget_close{"run-2"});
        THEN("both are gone and global keeps what they used") {
          CHECK_FALSE(query(budget, "run-1").exists);
          CHECK_FALSE(query(budget, "team-r").exists);
          auto g = query(budget, "global");
          CHECK(g.used == amount(2));
          CHECK(g.reserved == budget_amount{});
          CHECK(g.granted == 1);
          CHECK(g.denied == 1);
        }
      }
    }
    WHEN("global is closed") {
      self->send(budget, budget_close{"global"});
      THEN("nothing happens") {
        CHECK(query(budget, "global").exists);
        CHECK(query(budget, "global").reserved == amount(3));
      }
    }
  }
}

// --- collection -------------------------------------------------------------

// Collection runs on a timer, so the test waits for it: it polls with queries,
// each after a short delayed message to itself, a bounded number of times.
// An account must not go before idle_ttl (checked right after it was used),
// and must be gone within a generous bound well above idle_ttl plus one sweep
// period; how soon exactly depends on the scheduler, so it is not asserted.
SCENARIO_METHOD(budget_fixture, "idle implicit accounts are collected",
                "[budget]") {
  GIVEN("a budget that collects accounts idle for 50 ms") {
    budget_config cfg;
    cfg.idle_ttl = 50ms;
    auto budget = spawn_budget(sys, cfg);
    auto gone_within = [this, &budget](const std::string& name,
                                       std::chrono::milliseconds bound) {
      for (auto waited = 0ms; waited < bound; waited += 20ms) {
        if (!query(budget, name).exists)
          return true;
        pause(20ms);
      }
      return !query(budget, name).exists;
    };
    WHEN("a run in an implicit team is used and closed") {
      std::vector<budget_scope> path{scope("team-gc"), scope("run-gc")};
      REQUIRE(reserve(budget, reservation(path, "a", amount(1, 10))).granted);
      auto charged = std::chrono::steady_clock::now();
      self->send(budget, charge("run-gc", "a", amount(1, 10)));
      self->send(budget, budget_close{"run-gc"});
      THEN("the run goes at once, the team once it has been idle") {
        CHECK_FALSE(query(budget, "run-gc").exists);
        auto team_exists = query(budget, "team-gc").exists;
        // Only meaningful when the machine did not stall past idle_ttl.
        if (std::chrono::steady_clock::now() - charged < 40ms)
          CHECK(team_exists);
        CHECK(gone_within("team-gc", 5000ms));
        auto g = query(budget, "global");
        CHECK(g.exists);
        CHECK(g.used == amount(1, 10));
      }
    }
    WHEN("a run is never closed") {
      std::vector<budget_scope> path{scope("team-idle"), scope("run-idle")};
      REQUIRE(reserve(budget, reservation(path, "a", amount(1))).granted);
      self->send(budget, charge("run-idle", "a", amount(1)));
      THEN("the run and then its team are collected once idle") {
        CHECK(gone_within("run-idle", 5000ms));
        CHECK(gone_within("team-idle", 5000ms));
        CHECK(query(budget, "global").used == amount(1));
      }
    }
    WHEN("a run and its team have a deadline still ahead") {
      auto team_limits = step_limit(1);
      team_limits.deadline_ms = now_ms() + 60000;
      budget_limits run_limits;
      run_limits.deadline_ms = team_limits.deadline_ms;
      std::vector<budget_scope> path{scope("team-live", team_limits),
                                     scope("run-live", run_limits)};
      REQUIRE(reserve(budget, reservation(path, "a", amount(1))).granted);
      self->send(budget, charge("run-live", "a", amount(1)));
      // A run without a deadline, used at the same time, marks when the
      // sweep has run past idle_ttl.
      std::vector<budget_scope> marker{scope("run-marker")};
      REQUIRE(reserve(budget, reservation(marker, "m", amount(1))).granted);
      self->send(budget, charge("run-marker", "m", amount(1)));
      REQUIRE(gone_within("run-marker", 5000ms));
      THEN("both are kept, and the team's limit still holds") {
        CHECK(query(budget, "team-live").exists);
        CHECK(query(budget, "run-live").used == amount(1));
        auto again = reserve(budget, reservation(path, "b", amount(1)));
        CHECK_FALSE(again.granted);
        CHECK_THAT(again.reason, Catch::Contains("team-live"));
      }
    }
    WHEN("a run holds an open reservation") {
      std::vector<budget_scope> path{scope("run-busy")};
      REQUIRE(reserve(budget, reservation(path, "a", amount(1))).granted);
      pause(200ms);
      THEN("it is not collected") {
        CHECK(query(budget, "run-busy").exists);
        self->send(budget, budget_release{"run-busy", "a"});
        CHECK(gone_within("run-busy", 5000ms));
      }
    }
  }
}

TEST_CASE("a budget actor with accounts does not hold up shutdown",
          "[budget]") {
  // Its sweep timer must not keep it alive once nobody holds a handle.
  auto started = std::chrono::steady_clock::now();
  {
    budget_fixture f;
    auto budget = spawn_budget(f.sys); // idle_ttl: 10 minutes
    REQUIRE(f.reserve(budget, reservation({scope("team"), scope("run")}, "a",
                                          amount(1)))
              .granted);
  }
  CHECK(std::chrono::steady_clock::now() - started < 30s);
}

// --- the race ---------------------------------------------------------------

namespace {

/// One racing client's count.
struct client_state {
  static inline const char* name = "budget_test.client";
  int64_t granted = 0;
  int64_t next = 0;
};

using client_actor = caf::stateful_actor<client_state>;

/// Reserves `estimate` on `path`, charges it, and repeats until refused; then
/// closes its run account and reports (granted, 1) to `collector`.
void reserve_until_denied(client_actor* self, budget_actor budget,
                          caf::actor collector, std::vector<budget_scope> path,
                          budget_amount estimate) {
  auto run = path.back().account;
  auto req = reservation(path, run + "#" + std::to_string(self->state.next++),
                         estimate);
  self->request(budget, 60s, req)
    .then(
      [=](budget_verdict& v) {
        if (v.granted) {
          ++self->state.granted;
          self->send(budget, charge(run, v.reservation_id, estimate));
          reserve_until_denied(self, budget, collector, path, estimate);
          return;
        }
        self->send(budget, budget_close{run});
        self->send(collector, self->state.granted, int64_t{1});
        self->quit();
      },
      [=](caf::error&) {
        self->send(collector, self->state.granted, int64_t{0});
        self->quit();
      });
}

/// What the watcher saw: the most ever used + reserved on global.
struct watch_state {
  static inline const char* name = "budget_test.watcher";
  int64_t polls = 0;
  int64_t max_steps = 0;
  int64_t max_cost = 0;
  bool stop = false;
};

using watch_actor = caf::stateful_actor<watch_state>;

void poll(watch_actor* self, budget_actor budget) {
  self
    ->request(budget, 60s, bg_query_atom::value,
              std::string{global_budget_account})
    .then(
      [=](budget_snapshot& s) {
        auto& st = self->state;
        ++st.polls;
        st.max_steps = std::max(st.max_steps, s.used.steps + s.reserved.steps);
        st.max_cost = std::max(st.max_cost,
                               s.used.cost_nusd + s.reserved.cost_nusd);
        if (st.stop)
          self->quit();
        else
          poll(self, budget);
      },
      [=](caf::error&) { self->quit(); });
}

struct race_case {
  budget_limits global;
  budget_limits team;
  budget_amount estimate;
  /// How many reservations fit.
  int64_t fits = 0;
};

void race(budget_fixture& f, const race_case& rc) {
  constexpr int clients = 1000;
  auto budget = spawn_budget(f.sys, config(rc.global));
  auto watcher = f.sys.spawn([budget](watch_actor* self) -> caf::behavior {
    poll(self, budget);
    return {
      [self](bt_stop_atom) {
        self->state.stop = true;
        return caf::make_message(self->state.polls, self->state.max_steps,
                                 self->state.max_cost);
      },
    };
  });
  auto collector = caf::actor_cast<caf::actor>(f.self);
  for (int i = 0; i < clients; ++i) {
    std::vector<budget_scope> path{scope("team-race", rc.team),
                                   scope("run-" + std::to_string(i))};
    f.sys.spawn([=](client_actor* self) {
      reserve_until_denied(self, budget, collector, path, rc.estimate);
    });
  }
  int64_t granted = 0;
  int64_t ended_by_denial = 0;
  int reports = 0;
  bool timed_out = false;
  while (reports < clients && !timed_out)
    f.self->receive(
      [&](int64_t n, int64_t denied) {
        granted += n;
        ended_by_denial += denied;
        ++reports;
      },
      caf::after(60s) >> [&] { timed_out = true; });
  REQUIRE_FALSE(timed_out);
  CHECK(ended_by_denial == clients);
  CHECK(granted == rc.fits);
  int64_t polls = 0;
  int64_t max_steps = 0;
  int64_t max_cost = 0;
  f.self->request(watcher, 10s, bt_stop_atom::value)
    .receive(
      [&](int64_t p, int64_t s, int64_t c) {
        polls = p;
        max_steps = s;
        max_cost = c;
      },
      [](caf::error& err) { FAIL(error_text(err)); });
  // Each client closed its run account before reporting (same process: the
  // close was in the budget's mailbox before the report reached us).
  auto g = f.query(budget, "global");
  auto team = f.query(budget, "team-race");
  CHECK(polls > 0);
  CHECK(g.used.steps == rc.fits * rc.estimate.steps);
  CHECK(g.used.tokens.input_tokens
        == rc.fits * rc.estimate.tokens.input_tokens);
  CHECK(g.used.tokens.output_tokens
        == rc.fits * rc.estimate.tokens.output_tokens);
  CHECK(g.used.cost_nusd == rc.fits * rc.estimate.cost_nusd);
  CHECK(g.reserved == budget_amount{});
  CHECK(g.granted == rc.fits);
  CHECK(g.denied == clients);
  CHECK(team.used == g.used);
  CHECK(team.granted == rc.fits);
  CHECK(team.denied == clients);
  CHECK_FALSE(f.query(budget, "run-0").exists);
  CHECK_FALSE(f.query(budget, "run-999").exists);
  // Never over a limit, not even for a moment.
  auto cap = [](int64_t limit) {
    return limit > 0 ? limit : std::numeric_limits<int64_t>::max();
  };
  CHECK(max_steps <= cap(rc.global.max_steps));
  CHECK(max_cost <= cap(usd_to_nusd(rc.global.max_cost_usd)));
  CHECK(g.used.steps <= cap(rc.global.max_steps));
  CHECK(g.used.steps <= cap(rc.team.max_steps));
  CHECK(g.used.cost_nusd <= cap(usd_to_nusd(rc.global.max_cost_usd)));
}

} // namespace

TEST_CASE_METHOD(budget_fixture,
                 "1000 racing clients use exactly the global step limit",
                 "[budget][race]") {
  race_case rc;
  rc.global.max_steps = 1000;
  rc.global.max_cost_usd = 100;
  rc.estimate = amount(1, 37, 11, 12'345);
  rc.fits = 1000;
  race(*this, rc);
}

TEST_CASE_METHOD(budget_fixture,
                 "1000 racing clients use exactly what fits the cost limit",
                 "[budget][race]") {
  race_case rc;
  rc.global.max_steps = 5000;
  rc.global.max_cost_usd = 0.1; // 100'000'000 nano-dollars
  rc.estimate = amount(1, 10, 3, 123'457);
  rc.fits = 100'000'000 / 123'457;
  REQUIRE(rc.fits == 809); // 809 * 123'457 = 99'876'713 nano-dollars
  race(*this, rc);
}

TEST_CASE_METHOD(budget_fixture,
                 "1000 racing clients use exactly their team's step limit",
                 "[budget][race]") {
  race_case rc;
  rc.global.max_steps = 5000;
  rc.team.max_steps = 777;
  rc.estimate = amount(1, 1, 1, 1);
  rc.fits = 777;
  race(*this, rc);
}

TEST_CASE_METHOD(budget_fixture,
                 "usage beyond its reservation is logged once per account",
                 "[budget]") {
  std::ostringstream log;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  budget_limits tokens;
  tokens.max_input_tokens = 5000;
  auto budget = spawn_budget(sys, config(tokens));
  std::vector<budget_scope> path{scope("run-over")};
  for (auto id : {"a", "b"}) {
    REQUIRE(reserve(budget, reservation(path, id, amount(1, 100, 10))).granted);
    self->send(budget, charge("run-over", id, amount(1, 400, 10)));
  }
  // Output past its estimate, where nothing limits output: not worth a word.
  std::vector<budget_scope> other{scope("run-free")};
  REQUIRE(reserve(budget, reservation(other, "c", amount(1, 100, 10))).granted);
  self->send(budget, charge("run-free", "c", amount(1, 100, 900)));
  // Answered after the charges: they were sent first.
  auto used = query(budget, "run-over").used;
  auto free_used = query(budget, "run-free").used;
  spdlog::set_default_logger(previous);
  CHECK(used == amount(2, 800, 20));
  CHECK(free_used == amount(1, 100, 900));
  auto text = log.str();
  CHECK(text.find("run-free") == std::string::npos);
  auto first = text.find("[warning] budget: 'run-over' used more than "
                         "reservation 'a' set aside (used 1 step, 400 input "
                         "+ 10 output tokens");
  REQUIRE(first != std::string::npos);
  // The second overrun of the same account is not logged as a warning.
  CHECK(text.find("used more than", text.find('\n', first))
        == std::string::npos);
}

// --- spending of earlier attempts (budget_recount) -------------------------

TEST_CASE_METHOD(budget_fixture,
                 "a recount brings a restarted run's earlier spending into its "
                 "accounts, and the limits then hold",
                 "[budget][recount]") {
  // A new process: nothing is known of the run, whose first attempt (in a
  // process now gone) spent 2 of its team's 3 steps.
  auto budget = spawn_budget(sys, config({}));
  std::vector<budget_scope> path{scope("run-9/team", step_limit(3)),
                                 scope("run-9/clerk#1.1", step_limit(3))};
  self->send(budget, recount(path, "run-9/clerk/d1", amount(2, 100, 20, 500)));
  auto team = query(budget, "run-9/team");
  REQUIRE(team.exists);
  CHECK(team.used == amount(2, 100, 20, 500));
  CHECK(query(budget, "run-9/clerk#1.1").used == amount(2, 100, 20, 500));
  CHECK(query(budget, "global").used == amount(2, 100, 20, 500));
  CHECK(team.granted == 0); // a recount reserves nothing

  // Another member of the team may take the one step left, not two.
  std::vector<budget_scope> member{scope("run-9/team", step_limit(3)),
                                   scope("run-9/reviewer#1.1", step_limit(3))};
  auto first = reserve(budget, reservation(member, "r1", amount(1, 10)));
  CHECK(first.granted);
  self->send(budget, charge("run-9/reviewer#1.1", "r1", amount(1, 10)));
  auto second = reserve(budget, reservation(member, "r2", amount(1, 10)));
  CHECK_FALSE(second.granted);
  CHECK_THAT(second.reason, StartsWith("budget 'run-9/team' exhausted"));
}

TEST_CASE_METHOD(budget_fixture,
                 "what a budget counted under a key is not counted again by a "
                 "recount",
                 "[budget][recount]") {
  auto budget = spawn_budget(sys, config({}));
  std::vector<budget_scope> path{scope("run-3/a#1.1")};
  // The first attempt, in this process: two calls charged under the key.
  for (auto id : {"c1", "c2"}) {
    REQUIRE(reserve(budget, reservation(path, id, amount(1, 50, 10))).granted);
    self->send(budget, charge("run-3/a#1.1", id, amount(1, 40, 8, 100), "k"));
  }
  REQUIRE(query(budget, "global").used == amount(2, 80, 16, 200));

  SECTION("a restart here adds nothing above the run's new account") {
    // The new attempt's account is another one: it takes the run's whole
    // spending, so the run's own limits see it; its ancestors hold it
    // already.
    std::vector<budget_scope> again{scope("run-3/a#1.2", step_limit(3))};
    self->send(budget, recount(again, "k", amount(1, 40, 8, 100)));
    self->send(budget, recount(again, "k", amount(2, 80, 16, 200)));
    CHECK(query(budget, "global").used == amount(2, 80, 16, 200));
    CHECK(query(budget, "run-3/a#1.2").used == amount(2, 80, 16, 200));
    // Its limit of 3 steps leaves one.
    CHECK(reserve(budget, reservation(again, "c3", amount(1))).granted);
    CHECK_FALSE(reserve(budget, reservation(again, "c4", amount(1))).granted);
  }
  SECTION("only the part beyond what was counted is added") {
    self->send(budget, recount(path, "k", amount(3, 90, 16, 250)));
    CHECK(query(budget, "global").used == amount(3, 90, 16, 250));
    // Counted now: sending the same total again changes nothing.
    self->send(budget, recount(path, "k", amount(3, 90, 16, 250)));
    CHECK(query(budget, "global").used == amount(3, 90, 16, 250));
  }
  SECTION("another key is another run's spending") {
    self->send(budget, recount(path, "other", amount(1, 5, 1, 7)));
    CHECK(query(budget, "global").used == amount(3, 85, 17, 207));
  }
  SECTION("a charge without a key is not remembered for recounts") {
    REQUIRE(reserve(budget, reservation(path, "c3", amount(1, 50, 10))).granted);
    self->send(budget, charge("run-3/a#1.1", "c3", amount(1, 40, 8, 100)));
    self->send(budget, recount(path, "k", amount(2, 80, 16, 200)));
    CHECK(query(budget, "global").used == amount(3, 120, 24, 300));
  }
}

TEST_CASE_METHOD(budget_fixture, "a malformed recount is ignored with a warning",
                 "[budget][recount]") {
  std::ostringstream log;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  auto budget = spawn_budget(sys, config({}));
  std::vector<budget_scope> path{scope("run-4/a#1.1")};
  self->send(budget, recount(path, "", amount(1)));
  self->send(budget, recount({}, "k", amount(1)));
  self->send(budget, recount(path, "k", amount(-1, 5)));
  self->send(budget, recount({scope("")}, "k", amount(1)));
  budget_limits bad;
  bad.max_steps = -2;
  self->send(budget, recount({scope("run-4/b", bad)}, "k", amount(1)));
  auto used = query(budget, "global").used;
  spdlog::set_default_logger(previous);
  CHECK(used == amount(0));
  CHECK_FALSE(query(budget, "run-4/a#1.1").exists);
  auto text = log.str();
  CHECK_THAT(text, Catch::Contains("ignoring a recount for '': it has no key"));
  CHECK_THAT(text, Catch::Contains(
                     "ignoring a recount for 'k': it has no account path"));
  CHECK_THAT(text, Catch::Contains("ignoring a recount for 'k': its total is "
                                   "negative (-1 steps"));
  CHECK_THAT(text, Catch::Contains("path entry 0 has no account name"));
  CHECK_THAT(text,
             Catch::Contains("budget 'run-4/b' has a negative max_steps"));
}

TEST_CASE_METHOD(budget_fixture,
                 "what was counted under a key outlives idle_ttl while the "
                 "run's account does",
                 "[budget][recount]") {
  auto cfg = config({});
  cfg.idle_ttl = 50ms;
  auto budget = spawn_budget(sys, cfg);
  // A run's account with a deadline an hour away: a run waiting for a human.
  budget_limits limits;
  limits.deadline_ms = now_ms() + 3'600'000;
  std::vector<budget_scope> path{scope("run-5/a#1.1", limits)};
  REQUIRE(reserve(budget, reservation(path, "c1", amount(1, 10))).granted);
  self->send(budget, charge("run-5/a#1.1", "c1", amount(1, 10, 2), "k5"));
  // Several sweeps pass while the account waits.
  pause(300ms);
  REQUIRE(query(budget, "run-5/a#1.1").exists);
  // A restart in this process now recounts what was charged: still known,
  // so nothing is added above the new account.
  std::vector<budget_scope> again{scope("run-5/a#1.2", limits)};
  self->send(budget, recount(again, "k5", amount(1, 10, 2)));
  CHECK(query(budget, "global").used == amount(1, 10, 2));
}

#include "supervisors/supervisor.hpp"

#include <catch2/catch.hpp>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>

#include "messages/errors.hpp"
#include "messages/type_ids.hpp"
#include "support/system_fixture.hpp"

using namespace troupe;
using namespace std::chrono_literals;

namespace {

using t_crash_atom = caf::atom_constant<caf::atom("t_crash")>;
using t_done_atom = caf::atom_constant<caf::atom("t_done")>;

/// A child that throws on t_crash and exits normally on t_done.
caf::behavior test_child(caf::event_based_actor* self, std::string name) {
  return {
    [name](t_crash_atom) -> caf::result<void> {
      throw std::runtime_error("boom in " + name);
    },
    [self](t_done_atom) { self->quit(); },
  };
}

struct fixture : troupe::test::system_fixture {
  caf::scoped_actor observer{sys};

  child_spec child(const std::string& name,
                   restart_policy restart = restart_policy::permanent) {
    child_spec spec;
    spec.name = name;
    spec.restart = restart;
    caf::actor obs = caf::actor_cast<caf::actor>(observer);
    // The supervisor calls factories in start order; the notice tells the
    // observer which child started, in that order.
    spec.factory = [name, obs](caf::actor_system& s) {
      caf::anon_send(obs, name);
      return s.spawn(test_child, name);
    };
    return spec;
  }

  /// The next `n` start notices, in order.
  std::vector<std::string> starts(size_t n) {
    std::vector<std::string> out;
    for (size_t i = 0; i < n; ++i)
      observer->receive([&](const std::string& s) { out.push_back(s); },
                        caf::after(5s) >> [&] { out.push_back("<timeout>"); });
    return out;
  }

  /// True when no start notice arrives within a short bound.
  bool no_start() {
    bool none = true;
    observer->receive([&](const std::string&) { none = false; },
                      caf::after(200ms) >> [] {});
    return none;
  }

  caf::actor child_of(const supervisor_actor& sup, const std::string& name) {
    caf::actor out;
    observer->request(sup, 5s, sup_child_atom::value, name)
      .receive([&](caf::actor& a) { out = a; }, [](caf::error&) {});
    return out;
  }

  supervisor_stats stats(const supervisor_actor& sup) {
    supervisor_stats out;
    observer->request(sup, 5s, sup_stats_atom::value)
      .receive([&](supervisor_stats& s) { out = s; }, [](caf::error&) {});
    return out;
  }

  supervisor_config config(restart_strategy strategy, int32_t max_restarts = 10) {
    supervisor_config c;
    c.name = "sup";
    c.strategy = strategy;
    c.max_restarts = max_restarts;
    c.window = 10s;
    return c;
  }
};

using strings = std::vector<std::string>;

} // namespace

TEST_CASE_METHOD(fixture, "one_for_one restarts only the child that crashed",
                 "[supervisor]") {
  auto sup = spawn_supervisor(sys, config(restart_strategy::one_for_one),
                              {child("a"), child("b"), child("c")});
  CHECK(starts(3) == strings{"a", "b", "c"});
  auto a = child_of(sup, "a");
  auto b = child_of(sup, "b");
  auto c = child_of(sup, "c");
  observer->send(b, t_crash_atom::value);
  CHECK(starts(1) == strings{"b"});
  CHECK(no_start());
  CHECK(child_of(sup, "a") == a);
  CHECK(child_of(sup, "b") != b);
  CHECK(child_of(sup, "c") == c);
  auto s = stats(sup);
  CHECK(s.restarts == 1);
  CHECK(s.children.at(1).restarts == 1);
  CHECK(s.children.at(0).restarts == 0);
  observer->send_exit(sup, caf::exit_reason::user_shutdown);
}

TEST_CASE_METHOD(fixture, "one_for_all restarts every child in start order",
                 "[supervisor]") {
  auto sup = spawn_supervisor(sys, config(restart_strategy::one_for_all),
                              {child("a"), child("b"), child("c")});
  CHECK(starts(3) == strings{"a", "b", "c"});
  auto a = child_of(sup, "a");
  observer->send(child_of(sup, "b"), t_crash_atom::value);
  CHECK(starts(3) == strings{"a", "b", "c"});
  CHECK(child_of(sup, "a") != a);
  CHECK(stats(sup).restarts == 1);
  observer->send_exit(sup, caf::exit_reason::user_shutdown);
}

TEST_CASE_METHOD(fixture,
                 "rest_for_one restarts the crashed child and those after it",
                 "[supervisor]") {
  auto sup = spawn_supervisor(sys, config(restart_strategy::rest_for_one),
                              {child("a"), child("b"), child("c")});
  CHECK(starts(3) == strings{"a", "b", "c"});
  auto a = child_of(sup, "a");
  observer->send(child_of(sup, "b"), t_crash_atom::value);
  CHECK(starts(2) == strings{"b", "c"});
  CHECK(no_start());
  CHECK(child_of(sup, "a") == a);
  observer->send_exit(sup, caf::exit_reason::user_shutdown);
}

TEST_CASE_METHOD(fixture, "restart policies decide who comes back",
                 "[supervisor]") {
  auto sup = spawn_supervisor(
    sys, config(restart_strategy::one_for_one),
    {child("perm"), child("trans", restart_policy::transient),
     child("temp", restart_policy::temporary)});
  CHECK(starts(3) == strings{"perm", "trans", "temp"});
  // A normal exit: permanent comes back, transient does not.
  observer->send(child_of(sup, "perm"), t_done_atom::value);
  CHECK(starts(1) == strings{"perm"});
  auto trans = child_of(sup, "trans");
  observer->send(trans, t_done_atom::value);
  // A crash: temporary does not come back either.
  auto temp = child_of(sup, "temp");
  observer->send(temp, t_crash_atom::value);
  // Awaiting the dead incarnations returns once the supervisor has handled
  // their ends: with an error, since neither comes back.
  for (auto& dead : {trans, temp})
    observer->request(sup, 5s, sup_await_atom::value,
                      dead == trans ? std::string{"trans"} : std::string{"temp"},
                      dead.address())
      .receive([](caf::actor&) { FAIL("a retired child was handed out"); },
               [](caf::error& err) {
                 CHECK_THAT(error_text(err), Catch::Contains("not restarted"));
               });
  CHECK(no_start());
  auto s = stats(sup);
  CHECK(s.restarts == 1);
  CHECK(s.retired == 2);
  CHECK_FALSE(s.children.at(1).running);
  CHECK_FALSE(s.children.at(2).running);
  observer->request(sup, 5s, sup_child_atom::value, std::string{"temp"})
    .receive([](caf::actor&) { FAIL("a retired child has no incarnation"); },
             [](caf::error& err) {
               CHECK_THAT(error_text(err), Catch::Contains("not running"));
             });
  // A transient child that crashes is restarted.
  auto sup2 = spawn_supervisor(sys, config(restart_strategy::one_for_one),
                               {child("t2", restart_policy::transient)});
  CHECK(starts(1) == strings{"t2"});
  observer->send(child_of(sup2, "t2"), t_crash_atom::value);
  CHECK(starts(1) == strings{"t2"});
  observer->send_exit(sup, caf::exit_reason::user_shutdown);
  observer->send_exit(sup2, caf::exit_reason::user_shutdown);
}

TEST_CASE_METHOD(fixture,
                 "past its intensity a supervisor gives up and its parent "
                 "restarts it",
                 "[supervisor]") {
  auto inner_cfg = config(restart_strategy::one_for_one, 2);
  inner_cfg.name = "inner";
  auto outer_cfg = config(restart_strategy::one_for_one, 5);
  outer_cfg.name = "outer";
  auto outer = spawn_supervisor(
    sys, outer_cfg, {supervisor_child("inner", inner_cfg, {child("w")})});
  CHECK(starts(1) == strings{"w"});
  auto first_inner = child_of(outer, "inner");
  auto inner = caf::actor_cast<supervisor_actor>(first_inner);
  // Two crashes are within the intensity: the inner supervisor restarts w.
  for (int i = 0; i < 2; ++i) {
    observer->send(child_of(inner, "w"), t_crash_atom::value);
    CHECK(starts(1) == strings{"w"});
  }
  CHECK(stats(inner).restarts == 2);
  observer->monitor(first_inner);
  // The third is one too many: inner gives up with an error...
  observer->send(child_of(inner, "w"), t_crash_atom::value);
  bool down = false;
  observer->receive(
    [&](caf::down_msg& msg) {
      down = true;
      CHECK(msg.source == first_inner.address());
      CHECK_THAT(error_text(msg.reason),
                 Catch::Contains("supervisor 'inner' gave up")
                   && Catch::Contains("child 'w'"));
    },
    caf::after(5s) >> [] {});
  CHECK(down);
  // ...and outer, its parent, starts a fresh inner, which starts w again.
  CHECK(starts(1) == strings{"w"});
  auto s = stats(outer);
  CHECK(s.restarts == 1);
  CHECK(s.children.at(0).restarts == 1);
  CHECK(child_of(outer, "inner") != first_inner);
  observer->send_exit(outer, caf::exit_reason::user_shutdown);
}

TEST_CASE_METHOD(fixture, "restarts back off exponentially within the window",
                 "[supervisor]") {
  auto cfg = config(restart_strategy::one_for_one, 10);
  cfg.backoff_base = 100ms;
  cfg.backoff_cap = 250ms;
  auto sup = spawn_supervisor(sys, cfg, {child("slow")});
  CHECK(starts(1) == strings{"slow"});
  std::vector<std::chrono::milliseconds> waited;
  for (int i = 0; i < 3; ++i) {
    auto victim = child_of(sup, "slow");
    auto before = std::chrono::steady_clock::now();
    observer->send(victim, t_crash_atom::value);
    REQUIRE(starts(1) == strings{"slow"});
    waited.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - before));
  }
  // 100 ms, then 200 ms, then capped at 250 ms.
  CHECK(waited[0] >= 100ms);
  CHECK(waited[1] >= 200ms);
  CHECK(waited[2] >= 250ms);
  CHECK(waited[2] < 2s);
  observer->send_exit(sup, caf::exit_reason::user_shutdown);
}

TEST_CASE_METHOD(fixture, "a stopped supervisor takes its children along",
                 "[supervisor]") {
  auto sup = spawn_supervisor(sys, config(restart_strategy::one_for_one),
                              {child("a"), child("b")});
  CHECK(starts(2) == strings{"a", "b"});
  auto a = child_of(sup, "a");
  auto b = child_of(sup, "b");
  observer->monitor(a);
  observer->monitor(b);
  observer->send_exit(sup, caf::exit_reason::user_shutdown);
  size_t downs = 0;
  for (int i = 0; i < 2; ++i)
    observer->receive([&](caf::down_msg&) { ++downs; }, caf::after(5s) >> [] {});
  CHECK(downs == 2);
  CHECK(no_start());
}

TEST_CASE_METHOD(fixture, "bad supervisor settings are refused by name",
                 "[supervisor]") {
  auto cfg = config(restart_strategy::one_for_one);
  CHECK_THROWS_WITH(spawn_supervisor(sys, cfg, {child("x"), child("x")}),
                    Catch::Contains("'x' is used twice"));
  child_spec nameless;
  nameless.factory = [](caf::actor_system&) { return caf::actor{}; };
  CHECK_THROWS_WITH(spawn_supervisor(sys, cfg, {nameless}),
                    Catch::Contains("has no name"));
  child_spec no_factory;
  no_factory.name = "nf";
  CHECK_THROWS_WITH(spawn_supervisor(sys, cfg, {no_factory}),
                    Catch::Contains("'nf' has no factory"));
  cfg.window = 0ms;
  CHECK_THROWS_WITH(spawn_supervisor(sys, cfg, {child("y")}),
                    Catch::Contains("window"));
}

TEST_CASE_METHOD(fixture,
                 "sup_await hands out the next incarnation once it has started",
                 "[supervisor]") {
  auto cfg = config(restart_strategy::one_for_one);
  cfg.backoff_base = 100ms;
  auto sup = spawn_supervisor(sys, cfg, {child("w"), child("keep", restart_policy::temporary)});
  CHECK(starts(2) == strings{"w", "keep"});
  auto old = child_of(sup, "w");
  observer->send(old, t_crash_atom::value);
  // Asked right away, with the dead incarnation named, the supervisor waits
  // out the 100 ms backoff instead of handing back the dead one.
  caf::actor fresh;
  observer->request(sup, 5s, sup_await_atom::value, std::string{"w"}, old.address())
    .receive([&](caf::actor& a) { fresh = a; },
             [](caf::error& err) { FAIL(error_text(err)); });
  CHECK(fresh);
  CHECK(fresh != old);
  CHECK(starts(1) == strings{"w"});
  // A retired child cannot be awaited. Naming the dead incarnation makes the
  // supervisor wait for its down message, whatever order messages arrive in.
  auto keep = child_of(sup, "keep");
  observer->send(keep, t_crash_atom::value);
  observer->request(sup, 5s, sup_await_atom::value, std::string{"keep"}, keep.address())
    .receive([](caf::actor&) { FAIL("a retired child was handed out"); },
             [](caf::error& err) {
               CHECK_THAT(error_text(err), Catch::Contains("not restarted"));
             });
  observer->send_exit(sup, caf::exit_reason::user_shutdown);
}

#include "actors/approval_gate.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <string>
#include <vector>

#include <caf/actor_cast.hpp>
#include <caf/after.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "messages/errors.hpp"
#include "support/system_fixture.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

/// How long a test waits for any one answer.
constexpr auto patience = 10s;

approval_request refund_request(std::string id = "", int64_t ttl_ms = 0) {
  approval_request req;
  req.request_id = std::move(id);
  req.ref.run_id = "run-1";
  req.agent = "support";
  req.action = "issue_refund";
  req.args = json{{"order", "A1"}, {"amount", 30}};
  req.reason = "refunds need a human";
  req.ttl_ms = ttl_ms;
  return req;
}

/// A gate, an agent waiting at it and a human deciding. Requests go out
/// asynchronously from `agent`; their decisions are awaited with decision_of.
struct gate_fixture : system_fixture {
  explicit gate_fixture(approval_gate_config gc = {})
    : gate(spawn_approval_gate(sys, gc)) {
  }

  ~gate_fixture() {
    caf::anon_send_exit(gate, caf::exit_reason::user_shutdown);
  }

  using pending_handle = decltype(std::declval<caf::scoped_actor&>()->request(
    std::declval<approval_gate_actor&>(), patience, approval_request{}));

  /// Sends a request as the agent; the decision comes later.
  pending_handle ask(approval_request req) {
    return agent->request(gate, patience, std::move(req));
  }

  /// Waits for the decision on a request sent with ask().
  approval_decision decision_of(pending_handle& h) {
    approval_decision out;
    caf::error failed;
    h.receive([&](approval_decision& d) { out = std::move(d); },
              [&](caf::error& err) { failed = std::move(err); });
    if (failed)
      FAIL("the agent got an error instead of a decision: "
           << error_text(failed));
    return out;
  }

  std::vector<approval_request> list() {
    std::vector<approval_request> out;
    caf::error failed;
    human->request(gate, patience, apr_list_atom::value)
      .receive([&](std::vector<approval_request>& xs) { out = std::move(xs); },
               [&](caf::error& err) { failed = std::move(err); });
    if (failed)
      FAIL("listing failed: " << error_text(failed));
    return out;
  }

  /// The human's decision: the request decided, or the gate's error.
  caf::expected<approval_request> decide(approval_decision d) {
    caf::expected<approval_request> out{approval_request{}};
    human->request(gate, patience, apr_decide_atom::value, std::move(d))
      .receive([&](approval_request& r) { out = std::move(r); },
               [&](caf::error& err) { out = std::move(err); });
    return out;
  }

  approval_gate_actor gate;
  caf::scoped_actor agent{sys};
  caf::scoped_actor human{sys};
};

approval_gate_config with_max_pending(size_t n) {
  approval_gate_config gc;
  gc.max_pending = n;
  return gc;
}

} // namespace

SCENARIO("a human approves or denies a pending request", "[approvals]") {
  gate_fixture f;
  GIVEN("an agent waiting for approval of a refund") {
    auto pending = f.ask(refund_request());
    auto listed = f.list();
    REQUIRE(listed.size() == 1);
    const auto id = listed[0].request_id;
    THEN("the gate gave it an id, a creation time and the default ttl") {
      CHECK(id.rfind("apr-", 0) == 0);
      CHECK(id.size() == 12);
      CHECK(listed[0].created_ms > 0);
      CHECK(listed[0].ttl_ms == approval_gate_config{}.default_ttl.count());
      CHECK(listed[0].action == "issue_refund");
      CHECK(listed[0].args.value == json{{"order", "A1"}, {"amount", 30}});
    }
    WHEN("the human approves it") {
      approval_decision d;
      d.request_id = id;
      d.verdict = approval_verdict::approve;
      d.who = "alice";
      auto decided = f.decide(d);
      THEN("the human gets the request and the agent the approval") {
        REQUIRE(decided);
        CHECK(decided->request_id == id);
        CHECK(decided->action == "issue_refund");
        auto got = f.decision_of(pending);
        CHECK(got.request_id == id);
        CHECK(got.verdict == approval_verdict::approve);
        CHECK(got.who == "alice");
        CHECK(got.decided_ms >= listed[0].created_ms);
        CHECK(f.list().empty());
      }
    }
    WHEN("the human denies it with a note") {
      approval_decision d;
      d.request_id = id;
      d.verdict = approval_verdict::deny;
      d.who = "bob";
      d.note = "refund limit reached";
      REQUIRE(f.decide(d));
      THEN("the agent gets the denial with the note") {
        auto got = f.decision_of(pending);
        CHECK(got.verdict == approval_verdict::deny);
        CHECK(got.who == "bob");
        CHECK(got.note == "refund limit reached");
      }
    }
    WHEN("the human decides without saying who they are") {
      approval_decision d;
      d.request_id = id;
      d.verdict = approval_verdict::approve;
      REQUIRE(f.decide(d));
      THEN("the decision names 'unknown'") {
        CHECK(f.decision_of(pending).who == "unknown");
      }
    }
  }
}

SCENARIO("deciding a request that is not pending is an error naming it",
         "[approvals]") {
  gate_fixture f;
  WHEN("the id is unknown") {
    approval_decision d;
    d.request_id = "apr-nothere";
    d.verdict = approval_verdict::approve;
    auto decided = f.decide(d);
    THEN("the gate says no such request is pending") {
      REQUIRE_FALSE(decided);
      CHECK(decided.error().category() == error_category);
      CHECK(decided.error().code() == static_cast<uint8_t>(errc::invalid_input));
      CHECK_THAT(error_text(decided.error()),
                 Catch::Contains("no pending approval request 'apr-nothere'")
                   && Catch::Contains("decided or expired"));
    }
  }
  WHEN("a request is decided twice") {
    auto pending = f.ask(refund_request("apr-twice"));
    approval_decision d;
    d.request_id = "apr-twice";
    d.verdict = approval_verdict::deny;
    d.who = "alice";
    REQUIRE(f.decide(d));
    d.verdict = approval_verdict::approve;
    auto again = f.decide(d);
    THEN("the second decision is refused and the first one stands") {
      REQUIRE_FALSE(again);
      CHECK_THAT(error_text(again.error()),
                 Catch::Contains("no pending approval request 'apr-twice'"));
      CHECK(f.decision_of(pending).verdict == approval_verdict::deny);
    }
  }
  WHEN("a human's verdict is 'expired'") {
    auto pending = f.ask(refund_request("apr-exp"));
    approval_decision d;
    d.request_id = "apr-exp";
    d.verdict = approval_verdict::expired;
    auto decided = f.decide(d);
    THEN("it is invalid input and the request stays pending") {
      REQUIRE_FALSE(decided);
      CHECK(decided.error().code() == static_cast<uint8_t>(errc::invalid_input));
      CHECK_THAT(error_text(decided.error()), Catch::Contains("apr-exp"));
      REQUIRE(f.list().size() == 1);
      d.verdict = approval_verdict::approve;
      REQUIRE(f.decide(d));
      CHECK(f.decision_of(pending).verdict == approval_verdict::approve);
    }
  }
}

SCENARIO("a request nobody decides expires", "[approvals]") {
  gate_fixture f;
  GIVEN("a request with a 50 ms time-to-live") {
    auto pending = f.ask(refund_request("apr-short", 50));
    THEN("the agent gets verdict expired from the gate") {
      auto got = f.decision_of(pending);
      CHECK(got.request_id == "apr-short");
      CHECK(got.verdict == approval_verdict::expired);
      CHECK(got.who == "approval gate");
      CHECK(got.note == "no decision within 50 ms");
      AND_THEN("it is no longer pending, and deciding it is an error") {
        CHECK(f.list().empty());
        approval_decision d;
        d.request_id = "apr-short";
        d.verdict = approval_verdict::approve;
        auto late = f.decide(d);
        REQUIRE_FALSE(late);
        CHECK_THAT(error_text(late.error()),
                   Catch::Contains("no pending approval request 'apr-short'"));
      }
    }
  }
}

SCENARIO("pending requests are listed oldest first", "[approvals]") {
  gate_fixture f;
  auto first = f.ask(refund_request("apr-1"));
  auto second = f.ask(refund_request("apr-2"));
  auto third = f.ask(refund_request("apr-3"));
  auto ids = [&] {
    std::vector<std::string> out;
    for (const auto& r : f.list())
      out.push_back(r.request_id);
    return out;
  };
  CHECK(ids() == std::vector<std::string>{"apr-1", "apr-2", "apr-3"});
  approval_decision d;
  d.request_id = "apr-2";
  d.verdict = approval_verdict::approve;
  REQUIRE(f.decide(d));
  CHECK(ids() == std::vector<std::string>{"apr-1", "apr-3"});
  CHECK(f.decision_of(second).verdict == approval_verdict::approve);
  for (auto id : {"apr-3", "apr-1"}) {
    d.request_id = id;
    d.verdict = approval_verdict::deny;
    REQUIRE(f.decide(d));
  }
  CHECK(f.decision_of(first).verdict == approval_verdict::deny);
  CHECK(f.decision_of(third).verdict == approval_verdict::deny);
  CHECK(ids().empty());
}

SCENARIO("watchers are told of every new request", "[approvals]") {
  gate_fixture f;
  caf::scoped_actor watcher{f.sys};
  caf::anon_send(f.gate, apr_watch_atom::value,
                 caf::actor_cast<caf::actor>(watcher));
  auto pending = f.ask(refund_request("apr-watched"));
  approval_request seen;
  watcher->receive([&](approval_request& r) { seen = std::move(r); },
                   caf::after(patience) >> [] { FAIL("no request seen"); });
  CHECK(seen.request_id == "apr-watched");
  CHECK(seen.created_ms > 0);
  CHECK(seen.agent == "support");
  approval_decision d;
  d.request_id = "apr-watched";
  d.verdict = approval_verdict::approve;
  REQUIRE(f.decide(d));
  CHECK(f.decision_of(pending).verdict == approval_verdict::approve);
}

SCENARIO("a stopping gate denies what is pending", "[approvals]") {
  gate_fixture f;
  auto a = f.ask(refund_request("apr-a"));
  auto b = f.ask(refund_request("apr-b"));
  REQUIRE(f.list().size() == 2);
  caf::anon_send_exit(f.gate, caf::exit_reason::user_shutdown);
  for (auto* h : {&a, &b}) {
    auto got = f.decision_of(*h);
    CHECK(got.verdict == approval_verdict::deny);
    CHECK(got.who == "approval gate");
    CHECK(got.note == "approval gate stopped");
  }
}

SCENARIO("a full queue denies new requests at once", "[approvals]") {
  gate_fixture f{with_max_pending(1)};
  auto waiting = f.ask(refund_request("apr-in"));
  auto refused = f.ask(refund_request("apr-over"));
  auto got = f.decision_of(refused);
  CHECK(got.request_id == "apr-over");
  CHECK(got.verdict == approval_verdict::deny);
  CHECK(got.who == "approval gate");
  CHECK_THAT(got.note, Catch::Contains("queue is full"));
  auto listed = f.list();
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].request_id == "apr-in");
  approval_decision d;
  d.request_id = "apr-in";
  d.verdict = approval_verdict::approve;
  REQUIRE(f.decide(d));
  CHECK(f.decision_of(waiting).verdict == approval_verdict::approve);
}

#include "runtime/approvals.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <stdexcept>
#include <string>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/exit_reason.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "actors/approval_gate.hpp"
#include "messages/errors.hpp"
#include "messages/type_ids.hpp"

using namespace troupe;
using namespace std::chrono_literals;

namespace {

/// An actor system that can publish and reach remote actors.
struct networked_system {
  static caf::actor_system_config& configured(caf::actor_system_config& cfg) {
    register_messages(cfg);
    cfg.load<caf::io::middleman>();
    cfg.set("logger.console-verbosity", caf::atom("quiet"));
    return cfg;
  }
  caf::actor_system_config cfg;
  caf::actor_system sys{configured(cfg)};
};

/// A gate published on 127.0.0.1 (any free port) in one actor system, an
/// agent waiting at it there, and a second actor system for the client.
struct remote_fixture {
  remote_fixture() {
    gate = spawn_approval_gate(server.sys);
    port = publish_approval_gate(server.sys, gate, "127.0.0.1", 0);
  }

  ~remote_fixture() {
    caf::anon_send_exit(gate, caf::exit_reason::user_shutdown);
  }

  networked_system server;
  networked_system client_side;
  approval_gate_actor gate;
  uint16_t port = 0;
  caf::scoped_actor agent{server.sys};
};

approval_request refund_request(std::string id) {
  approval_request req;
  req.request_id = std::move(id);
  req.agent = "support";
  req.action = "issue_refund";
  req.args = json{{"order", "A1"}, {"amount", 30}};
  req.reason = "refunds need a human";
  return req;
}

} // namespace

TEST_CASE("parse_host_port splits HOST:PORT and refuses anything else",
          "[approvals]") {
  using hp = std::pair<std::string, uint16_t>;
  CHECK(parse_host_port("127.0.0.1:4343") == hp{"127.0.0.1", 4343});
  CHECK(parse_host_port("localhost:0") == hp{"localhost", 0});
  CHECK(parse_host_port("gate.example.com:65535")
        == hp{"gate.example.com", 65535});
  CHECK(parse_host_port("[::1]:80") == hp{"::1", 80});
  for (const char* bad : {"", "127.0.0.1", ":4343", "127.0.0.1:", "host:65536",
                          "host:-1", "host:12ab", "host:4343 ", "::1:80",
                          "host:123456"}) {
    INFO("address '" << bad << "'");
    CHECK_THROWS_WITH(parse_host_port(bad),
                      "approvals address '" + std::string{bad}
                        + "' must be HOST:PORT with a port from 0 to 65535");
  }
}

SCENARIO("a human decides through a published gate from another actor system",
         "[approvals]") {
  remote_fixture f;
  REQUIRE(f.port != 0);
  approval_client client{f.client_side.sys, "127.0.0.1", f.port, 10s};
  CHECK(client.address() == "127.0.0.1:" + std::to_string(f.port));
  GIVEN("no request") {
    THEN("the list is empty") {
      CHECK(client.list().empty());
    }
  }
  GIVEN("an agent waiting for approval") {
    auto pending = f.agent->request(f.gate, 10s, refund_request("apr-remote"));
    // The agent's request is in the gate's mailbox before the list request
    // is sent, so the list shows it.
    auto listed = client.list();
    REQUIRE(listed.size() == 1);
    CHECK(listed[0].request_id == "apr-remote");
    CHECK(listed[0].args.value == json{{"order", "A1"}, {"amount", 30}});
    CHECK(listed[0].created_ms > 0);
    WHEN("the client approves it") {
      auto r = client.decide("apr-remote", approval_verdict::approve, "alice",
                             "fine");
      THEN("the agent gets the approval") {
        CHECK(r.request_id == "apr-remote");
        CHECK(r.action == "issue_refund");
        approval_decision got;
        pending.receive([&](approval_decision& d) { got = std::move(d); },
                        [&](caf::error& err) { FAIL(error_text(err)); });
        CHECK(got.verdict == approval_verdict::approve);
        CHECK(got.who == "alice");
        CHECK(got.note == "fine");
        CHECK(client.list().empty());
      }
    }
    WHEN("the client decides an unknown id") {
      THEN("decide throws the gate's reason") {
        CHECK_THROWS_WITH(
          client.decide("apr-nope", approval_verdict::deny, "bob", "no"),
          Catch::Contains("no pending approval request 'apr-nope'"));
        CHECK(client.list().size() == 1);
      }
    }
  }
}

TEST_CASE("the client says clearly when no gate can be reached",
          "[approvals]") {
  networked_system client_side;
  // Nobody listens on port 1 of the loopback interface.
  CHECK_THROWS_WITH(
    approval_client(client_side.sys, "127.0.0.1", 1, 5s),
    Catch::StartsWith("cannot reach the approval gate at 127.0.0.1:1: "));
}

TEST_CASE("publishing needs a middleman and a free port", "[approvals]") {
  SECTION("without a middleman") {
    caf::actor_system_config cfg;
    register_messages(cfg);
    caf::actor_system sys{cfg};
    auto gate = spawn_approval_gate(sys);
    CHECK_THROWS_WITH(publish_approval_gate(sys, gate, "127.0.0.1", 0),
                      Catch::Contains("127.0.0.1:0")
                        && Catch::Contains("no middleman"));
    caf::anon_send_exit(gate, caf::exit_reason::user_shutdown);
  }
  SECTION("on a port another gate holds") {
    remote_fixture f;
    auto other = spawn_approval_gate(f.server.sys);
    CHECK_THROWS_WITH(
      publish_approval_gate(f.server.sys, other, "127.0.0.1", f.port),
      Catch::StartsWith("cannot serve approvals on 127.0.0.1:"
                        + std::to_string(f.port) + ": "));
    caf::anon_send_exit(other, caf::exit_reason::user_shutdown);
  }
}

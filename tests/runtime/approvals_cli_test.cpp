// `troupe approvals list | approve | deny` and `troupe run --approvals`, run as
// a user runs them: the real binary, against a gate this test process publishes.

#include <catch2/catch.hpp>

#include <chrono>
#include <regex>
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
#include "runtime/approvals.hpp"
#include "support/paths.hpp"
#include "support/process.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

std::string troupe_cmd(const std::string& args) {
  return shell_quote(cli_path()) + " " + args;
}

/// A gate published on 127.0.0.1 (any free port) and an agent waiting at it.
struct published_gate {
  static caf::actor_system_config& configured(caf::actor_system_config& cfg) {
    register_messages(cfg);
    cfg.load<caf::io::middleman>();
    cfg.set("logger.console-verbosity", caf::atom("quiet"));
    return cfg;
  }

  published_gate()
    : gate(spawn_approval_gate(sys)),
      port(publish_approval_gate(sys, gate, "127.0.0.1", 0)),
      address("127.0.0.1:" + std::to_string(port)) {
  }

  ~published_gate() {
    caf::anon_send_exit(gate, caf::exit_reason::user_shutdown);
  }

  using pending_handle = decltype(std::declval<caf::scoped_actor&>()->request(
    std::declval<approval_gate_actor&>(), 30s, approval_request{}));

  /// The agent asks to issue a refund; the decision comes later.
  pending_handle ask(const std::string& id) {
    approval_request req;
    req.request_id = id;
    req.ref.run_id = "run-cli";
    req.agent = "support";
    req.action = "issue_refund";
    req.args = json{{"order", "A1"}, {"amount", 30}};
    req.reason = "refunds need a human";
    return agent->request(gate, 30s, std::move(req));
  }

  /// Waits for the agent's decision.
  approval_decision decision_of(pending_handle& h) {
    approval_decision out;
    caf::error failed;
    h.receive([&](approval_decision& d) { out = std::move(d); },
              [&](caf::error& err) { failed = std::move(err); });
    if (failed)
      FAIL("the agent got an error: " << error_text(failed));
    return out;
  }

  caf::actor_system_config cfg;
  caf::actor_system sys{configured(cfg)};
  approval_gate_actor gate;
  uint16_t port;
  std::string address;
  caf::scoped_actor agent{sys};
};

/// Nobody listens on port 1 of the loopback interface.
constexpr const char* nowhere = "127.0.0.1:1";

} // namespace

SCENARIO("troupe approvals list shows the pending requests", "[approvals]") {
  published_gate g;
  GIVEN("no request") {
    auto p = run_command(troupe_cmd("approvals list --connect " + g.address));
    INFO(p.err);
    CHECK(p.exit_code == 0);
    CHECK(p.out == "no pending approval requests\n");
  }
  GIVEN("two requests") {
    // Both stay pending until the gate stops.
    [[maybe_unused]] auto first = g.ask("apr-0000aaaa");
    [[maybe_unused]] auto second = g.ask("apr-0000bbbb");
    auto p = run_command(troupe_cmd("approvals list --connect " + g.address));
    INFO(p.out << p.err);
    CHECK(p.exit_code == 0);
    THEN("each has a block whose first line names id, agent and action") {
      auto a = p.out.find("apr-0000aaaa  support  issue_refund  waiting ");
      auto b = p.out.find("apr-0000bbbb  support  issue_refund  waiting ");
      REQUIRE(a != std::string::npos);
      REQUIRE(b != std::string::npos);
      CHECK(a < b); // oldest first
      CHECK_THAT(p.out, Catch::Contains("left\n"));
      CHECK_THAT(p.out,
                 Catch::Contains("  args:   {\"amount\":30,\"order\":\"A1\"}"));
      CHECK_THAT(p.out, Catch::Contains("  reason: refunds need a human"));
      CHECK_THAT(p.out, Catch::Contains("  run:    run-cli"));
      CHECK_THAT(p.out, Catch::Contains("2 pending approval requests at "
                                        + g.address));
    }
  }
  GIVEN("the address in TROUPE_APPROVALS instead of --connect") {
    [[maybe_unused]] auto pending = g.ask("apr-0000cccc");
    auto p = run_command("TROUPE_APPROVALS=" + g.address + " "
                         + troupe_cmd("approvals list"));
    INFO(p.err);
    CHECK(p.exit_code == 0);
    CHECK_THAT(p.out, Catch::Contains("apr-0000cccc  support  issue_refund"));
  }
}

SCENARIO("troupe approvals approve and deny decide for the waiting agent",
         "[approvals]") {
  published_gate g;
  auto pending = g.ask("apr-0000dddd");
  WHEN("a human approves it") {
    auto p = run_command(troupe_cmd("approvals approve apr-0000dddd --as alice "
                                    "--note 'looks right' --connect "
                                    + g.address));
    INFO(p.err);
    CHECK(p.exit_code == 0);
    CHECK_THAT(p.out, Catch::StartsWith("approved apr-0000dddd: issue_refund")
                        && Catch::Contains("as alice: looks right"));
    THEN("the agent gets the approval") {
      auto d = g.decision_of(pending);
      CHECK(d.verdict == approval_verdict::approve);
      CHECK(d.who == "alice");
      CHECK(d.note == "looks right");
    }
  }
  WHEN("a human denies it") {
    auto p = run_command(troupe_cmd("approvals deny apr-0000dddd --as bob "
                                    "--note 'over the limit' --connect "
                                    + g.address));
    INFO(p.err);
    CHECK(p.exit_code == 0);
    CHECK_THAT(p.out, Catch::StartsWith("denied apr-0000dddd: issue_refund"));
    THEN("the agent gets the denial and the note") {
      auto d = g.decision_of(pending);
      CHECK(d.verdict == approval_verdict::deny);
      CHECK(d.who == "bob");
      CHECK(d.note == "over the limit");
    }
  }
  WHEN("deny has no note") {
    auto p = run_command(
      troupe_cmd("approvals deny apr-0000dddd --connect " + g.address));
    THEN("it is a usage error and the request stays pending") {
      CHECK(p.exit_code == 2);
      CHECK_THAT(p.err, Catch::Contains("--note"));
      auto again = run_command(
        troupe_cmd("approvals list --connect " + g.address));
      CHECK_THAT(again.out, Catch::Contains("apr-0000dddd"));
    }
  }
  WHEN("the id is not pending") {
    auto p = run_command(
      troupe_cmd("approvals approve apr-nothere --connect " + g.address));
    THEN("the gate's error goes to stderr with exit code 1") {
      CHECK(p.exit_code == 1);
      CHECK(p.out.empty());
      CHECK_THAT(p.err,
                 Catch::Contains("no pending approval request 'apr-nothere'"));
    }
  }
}

SCENARIO("troupe approvals says clearly when it cannot reach a gate",
         "[approvals]") {
  WHEN("nothing listens at the address") {
    auto p = run_command(
      troupe_cmd("approvals list --timeout 5 --connect " + std::string{nowhere}));
    CHECK(p.exit_code == 3);
    CHECK_THAT(p.err, Catch::Contains("cannot reach the approval gate at "
                                      + std::string{nowhere}));
  }
  WHEN("the address is malformed") {
    auto p = run_command(troupe_cmd("approvals list --connect nohost"));
    CHECK(p.exit_code == 2);
    CHECK_THAT(p.err, Catch::Contains("approvals address 'nohost' must be "
                                      "HOST:PORT"));
  }
}

SCENARIO("troupe run --approvals serves the run's gate", "[approvals]") {
  auto swarm = source_dir() + "/examples/support/support.swarm.json";
  WHEN("port 0 is asked for") {
    auto p = run_command(troupe_cmd("run " + shell_quote(swarm)
                                    + " --goal 'what is 2 + 2?' --approvals "
                                      "127.0.0.1:0"));
    INFO(p.err);
    THEN("it names the port it is bound to") {
      std::smatch m;
      REQUIRE(std::regex_search(
        p.err, m, std::regex{"approvals: listening on 127\\.0\\.0\\.1:(\\d+)"}));
      CHECK(std::stoi(m[1]) > 0);
    }
  }
  WHEN("the address is malformed") {
    auto p = run_command(troupe_cmd("run " + shell_quote(swarm)
                                    + " --goal x --approvals 127.0.0.1:99999"));
    CHECK(p.exit_code == 2);
    CHECK_THAT(p.err, Catch::Contains("approvals address '127.0.0.1:99999'"));
  }
  WHEN("the help is asked for") {
    auto p = run_command(troupe_cmd("approvals list --help"));
    CHECK(p.exit_code == 0);
    CHECK_THAT(p.out, Catch::Contains("TROUPE_APPROVALS")
                        && Catch::Contains("127.0.0.1:4343"));
  }
}

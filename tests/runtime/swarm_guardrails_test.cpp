// Guardrails in swarm files: what load_swarm reads from /tools (declared
// tools and their guards), /budget, /prices, /policy and /model_limits, what
// it refuses (naming the file, the JSON pointer and the problem), and a
// guarded swarm run end to end on the scripted model.

#include "runtime/swarm.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <string>

#include "runtime/runtime.hpp"
#include "support/runtime_fixture.hpp"
#include "support/temp_dir.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;

namespace {

/// A folder with a one-rule script, an orders table, and swarm files.
struct guard_dir {
  temp_dir dir;

  guard_dir() {
    dir.write("t.script.json",
              R"js({"rules": [{"reply": {"content": "ok"}}]})js");
    dir.write("orders.json", R"js({"A-1": {"amount": 5}})js");
  }

  swarm_definition load(const std::string& text) const {
    return load_swarm(dir.write("t.swarm.json", text));
  }

  std::string rejection(const std::string& text) const {
    try {
      load(text);
    } catch (const swarm_error& ex) {
      return ex.what();
    }
    FAIL("the swarm file was accepted:\n" << text);
    return {};
  }
};

/// One agent "desk" using `tools`, with the top-level fields in `extra`.
std::string swarm_with(const std::string& tools_section,
                       const std::string& agent_tools,
                       const std::string& extra = "") {
  return R"({"model": "scripted:t.script.json", "tools": )" + tools_section
         + R"(, "agents": [{"name": "desk", "role": "clerk", "tools": )"
         + agent_tools + "}]" + extra + "}";
}

constexpr const char* lookup_tool_json =
  R"({"get_order": {"kind": "lookup", "file": "orders.json", "key": "order_id")";

} // namespace

SCENARIO("a declared tool's guards are read from the swarm file",
         "[swarm][guardrails]") {
  guard_dir d;
  auto def = d.load(swarm_with(
    std::string{lookup_tool_json} + R"(,
      "timeout_ms": 700,
      "retry": {"max_retries": 2, "backoff": "linear", "base_ms": 20,
                "cap_ms": 90, "attempt_timeout_ms": 300,
                "retry_on": ["transient"]},
      "breaker": {"failure_threshold": 4, "cooldown_ms": 1500,
                  "half_open_probes": 2},
      "limits": {"rate_per_sec": 3, "burst": 2, "max_concurrent": 5,
                 "max_wait_ms": 900},
      "idempotency": {"scope": "global", "fields": ["order_id"]}}})",
    R"(["get_order"])"));
  REQUIRE(def.tools.count("get_order") == 1);
  const auto& t = def.tools.at("get_order");
  CHECK(t.kind == "lookup");
  CHECK(t.timeout == 700ms);
  CHECK(t.guards.retry.max_retries == 2);
  CHECK(t.guards.retry.backoff == backoff_kind::linear);
  CHECK(t.guards.retry.base == 20ms);
  CHECK(t.guards.retry.cap == 90ms);
  CHECK(t.guards.retry.attempt_timeout == 300ms);
  CHECK(t.guards.retry.retry_on
        == std::vector<tool_error_kind>{tool_error_kind::transient});
  CHECK(t.guards.breaker.failure_threshold == 4);
  CHECK(t.guards.breaker.cooldown == 1500ms);
  CHECK(t.guards.breaker.half_open_probes == 2);
  CHECK(t.guards.limits.rate_per_sec == Approx(3));
  CHECK(t.guards.limits.burst == 2);
  CHECK(t.guards.limits.max_concurrent == 5);
  CHECK(t.guards.limits.max_wait == 900ms);
  CHECK(t.idempotency.scope == idempotency_scope::global);
  CHECK(t.idempotency.fields == std::vector<std::string>{"order_id"});
  CHECK(def.agents.at(0).role == "clerk");
}

SCENARIO("budget, prices, policy and model limits reach the runtime config",
         "[swarm][guardrails]") {
  guard_dir d;
  auto def = d.load(swarm_with(
    std::string{lookup_tool_json} + "}}", R"(["get_order"])",
    R"(, "budget": {"max_steps": 40, "max_cost_usd": 0.5, "warn_share": 0.9},
       "prices": {"scripted:t.script.json": {"input_usd_per_mtok": 2,
                                             "output_usd_per_mtok": 8}},
       "model_limits": {"scripted:t.script.json": {"max_concurrent": 3}},
       "policy": {"default": "deny", "rules": [
         {"name": "reads", "roles": ["clerk"], "tools": ["get_order"],
          "decision": "allow"}]})"));
  runtime_config cfg;
  configure(cfg, def);
  CHECK(cfg.budget.global.max_steps == 40);
  CHECK(cfg.budget.global.max_cost_usd == Approx(0.5));
  CHECK(cfg.budget.warn_share == Approx(0.9));
  // Models are named as agents name them: the script path is resolved.
  auto model = def.agents.at(0).model;
  const auto* price = cfg.prices.find(model);
  REQUIRE(price != nullptr);
  CHECK(price->input_usd_per_mtok == Approx(2));
  CHECK(price->output_usd_per_mtok == Approx(8));
  // 1000 input + 100 output tokens: 2000 + 800 micro-dollars.
  CHECK(cfg.prices.cost_nusd(model, {1000, 100}) == 2800000);
  REQUIRE(cfg.model_limits.count(model) == 1);
  CHECK(cfg.model_limits.at(model).max_concurrent == 3);
  CHECK(cfg.policy.default_decision == policy_decision::deny);
  REQUIRE(cfg.policy.rules.size() == 1);
  CHECK(cfg.policy.rules[0].name == "reads");
}

SCENARIO("bad guardrail sections are refused naming the pointer",
         "[swarm][guardrails]") {
  guard_dir d;
  auto with_tool = [&](const std::string& fields) {
    return d.rejection(
      swarm_with(std::string{lookup_tool_json} + ", " + fields + "}}",
                 R"(["get_order"])"));
  };
  SECTION("an unknown backoff") {
    CHECK_THAT(with_tool(R"("retry": {"backoff": "fibonacci"})"),
               Contains("/tools/get_order/retry/backoff: unknown backoff "
                        "'fibonacci'"));
  }
  SECTION("a base above the cap") {
    CHECK_THAT(with_tool(R"("retry": {"base_ms": 500, "cap_ms": 100})"),
               Contains("/tools/get_order: tool 'get_order'"));
  }
  SECTION("a breaker threshold of zero") {
    CHECK_THAT(with_tool(R"("breaker": {"failure_threshold": 0})"),
               Contains("/tools/get_order/breaker/failure_threshold: must be "
                        "between 1 and"));
  }
  SECTION("an unknown idempotency scope") {
    CHECK_THAT(with_tool(R"("idempotency": {"scope": "forever"})"),
               Contains("/tools/get_order/idempotency/scope: unknown scope "
                        "'forever' (expected call, run or global)"));
  }
  SECTION("an unknown field in a guard") {
    CHECK_THAT(with_tool(R"("breaker": {"cooldown": 5})"),
               Contains("/tools/get_order/breaker/cooldown: unknown field"));
  }
  SECTION("an integer too large for 64 bits is named as written") {
    CHECK_THAT(with_tool(R"("timeout_ms": 18446744073709551615)"),
               Contains("/tools/get_order/timeout_ms")
                 && Contains("18446744073709551615"));
  }
  SECTION("\"kind\": \"builtin\" under a name that is not a builtin's") {
    CHECK_THAT(d.rejection(swarm_with(R"({"x": {"kind": "builtin"}})",
                                      R"(["x"])")),
               Contains("/tools/x/kind: 'x' is not a builtin tool (builtin "
                        "tools: calculator, clock, kv_lookup)"));
  }
  SECTION("a lookup table that is not an object names the tool") {
    d.dir.write("list.json", "[1, 2]");
    CHECK_THAT(d.rejection(swarm_with(
                 R"({"get_order": {"kind": "lookup", "file": "list.json"}})",
                 R"(["get_order"])")),
               Contains("/tools/get_order/file: get_order: '")
                 && Contains("holds a JSON array"));
  }
  SECTION("a budget share outside (0, 1]") {
    CHECK_THAT(d.rejection(swarm_with("{}", "[]",
                                      R"(, "budget": {"warn_share": 1.5})")),
               Contains("/budget/warn_share: must be between 0.01 and 1"));
  }
  SECTION("a negative price") {
    CHECK_THAT(d.rejection(swarm_with(
                 "{}", "[]",
                 R"(, "prices": {"m": {"input_usd_per_mtok": -1}})")),
               Contains("/prices/m/input_usd_per_mtok: must be between 0"));
  }
  SECTION("a policy rule naming a tool the swarm does not have") {
    CHECK_THAT(d.rejection(swarm_with(
                 "{}", "[]",
                 R"(, "policy": {"rules": [{"name": "r", "tools": ["calc"],
                                          "decision": "deny"}]})")),
               Contains("/policy/rules/0/tools/0: rule 'r' names unknown tool "
                        "'calc'"));
  }
  SECTION("a policy rule naming a role no agent has") {
    CHECK_THAT(d.rejection(swarm_with(
                 "{}", "[]",
                 R"(, "policy": {"rules": [{"name": "r", "roles": ["desk"],
                                          "decision": "deny"}]})")),
               Contains("/policy/rules/0/roles/0: rule 'r' names role 'desk', "
                        "which no agent has (roles: clerk;"));
  }
  SECTION("a missing alternative model script") {
    CHECK_THAT(d.rejection(R"({"model": "scripted:t.script.json",
        "agents": [{"name": "a", "confidence": {"execute_at": 0.9,
          "alternative_model": "scripted:missing.script.json"}}]})"),
               Contains("/agents/0/confidence/alternative_model: "));
  }
}

SCENARIO("a policy rule may use wildcards for roles and tools",
         "[swarm][guardrails]") {
  guard_dir d;
  auto def = d.load(swarm_with(
    "{}", R"(["clock"])",
    R"(, "policy": {"rules": [{"name": "all", "roles": ["*"], "tools": ["*"],
                              "decision": "allow"}]})"));
  CHECK(def.rules.rules.size() == 1);
}

SCENARIO("a swarm's journal tool behind a breaker fails fast once it opens",
         "[swarm][guardrails]") {
  guard_dir d;
  // The model asks for the mail tool at every step; after two failures the
  // breaker opens and the third call fails fast without reaching the tool.
  d.dir.write("mail.script.json", R"js({"rules": [
    {"role": "tool", "regex": "circuit open", "reply": {"content": "gave up"}},
    {"reply": {"tool_calls": [{"name": "send", "arguments": {"to": "x"}}]}}]})js");
  auto outbox = d.dir.file("outbox.jsonl");
  auto def = d.load(R"({"model": "scripted:mail.script.json",
    "tools": {"send": {"kind": "journal", "file": ")" + outbox + R"(",
      "fail_first": 100,
      "breaker": {"failure_threshold": 2, "cooldown_ms": 60000}}},
    "agents": [{"name": "mailer", "tools": ["send"], "max_steps": 6,
                "loops": {"repeat_threshold": 0, "stall_steps": 0}}]})");
  runtime_config cfg = test_runtime_config();
  configure(cfg, def);
  runtime rt{cfg};
  auto inst = instantiate(rt, def);
  run_options opts;
  opts.timeout = 60s;
  auto r = rt.run(inst.entry, "mail x", opts);
  REQUIRE(r.status == run_status::complete);
  CHECK(r.answer == "gave up");
  REQUIRE(r.steps.size() == 4);
  std::vector<tool_error_kind> kinds;
  for (size_t i = 0; i < 3; ++i)
    kinds.push_back(r.steps[i].tool_results.at(0).error.kind);
  CHECK(kinds
        == std::vector<tool_error_kind>{tool_error_kind::transient,
                                        tool_error_kind::transient,
                                        tool_error_kind::circuit_open});
  CHECK(rt.breaker_state("send") == "open");
  // The journal counted no successful send (every attempt failed).
  std::ifstream in{outbox};
  std::string line;
  CHECK_FALSE(std::getline(in, line));
}

#include "runtime/policy.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <utility>
#include <vector>

using namespace troupe;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

/// The example from runtime/policy.hpp, verbatim.
constexpr const char* documented_example = R"js(
  {"default": "deny",
   "rules": [
     {"name": "support-reads", "roles": ["support"], "tools": ["get_order"],
      "decision": "allow"},
     {"name": "big-refunds", "tools": ["issue_refund"],
      "when": {"amount": {"min": 100}}, "decision": "require_approval",
      "reason": "refunds of $100 or more need a human", "ttl_ms": 600000},
     {"name": "refunds", "tools": ["issue_refund"],
      "require": {"amount": {"max": 5000}, "currency": {"enum": ["USD"]}},
      "decision": "allow"},
     {"name": "emails", "tools": ["send_email"], "decision": "allow_with_caps",
      "caps": {"subject": {"max_length": 80}}, "max_calls_per_run": 3}]}
)js";

policy parse(const std::string& text) {
  return parse_policy(json::parse(text), "swarm.json", "/policy");
}

/// The message parse_policy throws for `text`.
std::string parse_error(const std::string& text) {
  try {
    parse(text);
  } catch (const policy_error& ex) {
    return ex.what();
  }
  FAIL("no policy_error for " << text);
  return {};
}

policy_query query(std::string tool, json args, std::string role = "support",
                   std::string principal = "alice", int32_t calls = 0) {
  policy_query q;
  q.role = std::move(role);
  q.principal = std::move(principal);
  q.tool = std::move(tool);
  q.args = std::move(args);
  q.calls_so_far = calls;
  return q;
}

policy_rule rule(std::string name, policy_decision d) {
  policy_rule r;
  r.name = std::move(name);
  r.decision = d;
  return r;
}

arg_constraint min_max(std::optional<double> lo, std::optional<double> hi) {
  arg_constraint c;
  c.min = lo;
  c.max = hi;
  return c;
}

arg_constraint pattern(std::string re) {
  arg_constraint c;
  c.pattern = std::move(re);
  return c;
}

arg_constraint max_length(size_t n) {
  arg_constraint c;
  c.max_length = n;
  return c;
}

arg_constraint one_of(std::vector<json> xs) {
  arg_constraint c;
  c.one_of = std::move(xs);
  return c;
}

/// A compiled policy of one rule, then a default of `fallback`.
policy single(policy_rule r,
              policy_decision fallback = policy_decision::allow) {
  policy p;
  p.rules.push_back(std::move(r));
  p.default_decision = fallback;
  compile(p);
  return p;
}

} // namespace

// --- decisions ---------------------------------------------------------------

TEST_CASE("policy decisions have names", "[policy]") {
  CHECK(std::string{to_string(policy_decision::allow)} == "allow");
  CHECK(std::string{to_string(policy_decision::allow_with_caps)}
        == "allow_with_caps");
  CHECK(std::string{to_string(policy_decision::require_approval)}
        == "require_approval");
  CHECK(std::string{to_string(policy_decision::deny)} == "deny");
}

SCENARIO("the documented example decides every kind of call", "[policy]") {
  GIVEN("the example policy") {
    auto p = parse(documented_example);
    THEN("it reads back field by field") {
      CHECK(p.default_decision == policy_decision::deny);
      REQUIRE(p.rules.size() == 4);
      CHECK(p.rules[0].name == "support-reads");
      CHECK(p.rules[0].roles == std::vector<std::string>{"support"});
      CHECK(p.rules[0].tools == std::vector<std::string>{"get_order"});
      CHECK(p.rules[0].principals.empty());
      CHECK(p.rules[0].decision == policy_decision::allow);
      const auto& big = p.rules[1];
      CHECK(big.decision == policy_decision::require_approval);
      REQUIRE(big.when.size() == 1);
      CHECK(big.when[0].first == "amount");
      CHECK(big.when[0].second.min == 100);
      CHECK_FALSE(big.when[0].second.max);
      CHECK(big.reason == "refunds of $100 or more need a human");
      CHECK(big.ttl_ms == 600000);
      const auto& refunds = p.rules[2];
      REQUIRE(refunds.require.size() == 2);
      CHECK(refunds.require[0].first == "amount");
      CHECK(refunds.require[0].second.max == 5000);
      CHECK(refunds.require[1].first == "currency");
      CHECK(refunds.require[1].second.one_of == std::vector<json>{"USD"});
      const auto& emails = p.rules[3];
      CHECK(emails.decision == policy_decision::allow_with_caps);
      REQUIRE(emails.caps.size() == 1);
      CHECK(emails.caps[0].first == "subject");
      CHECK(emails.caps[0].second.max_length == size_t{80});
      CHECK(emails.max_calls_per_run == 3);
    }
    WHEN("support reads an order") {
      auto v = evaluate(p, query("get_order", {{"id", 7}}));
      THEN("it is allowed by its rule") {
        CHECK(v.decision == policy_decision::allow);
        CHECK(v.rule == "support-reads");
        CHECK(v.args == json{{"id", 7}});
        CHECK(v.capped.empty());
      }
    }
    WHEN("a writer reads an order") {
      auto v = evaluate(p, query("get_order", {{"id", 7}}, "writer"));
      THEN("no rule matches and the default denies") {
        CHECK(v.decision == policy_decision::deny);
        CHECK(v.rule.empty());
        CHECK(v.reason == "no policy rule matched; the default is deny");
        CHECK(v.args == json{{"id", 7}});
      }
    }
    WHEN("a big refund is asked for") {
      auto v = evaluate(p, query("issue_refund",
                                 {{"amount", 250}, {"currency", "USD"}}));
      THEN("a human must approve it") {
        CHECK(v.decision == policy_decision::require_approval);
        CHECK(v.rule == "big-refunds");
        CHECK(v.reason == "refunds of $100 or more need a human");
        CHECK(v.ttl_ms == 600000);
      }
    }
    WHEN("a small refund is asked for") {
      auto v = evaluate(p, query("issue_refund",
                                 {{"amount", 20}, {"currency", "USD"}}));
      THEN("the next rule allows it") {
        CHECK(v.decision == policy_decision::allow);
        CHECK(v.rule == "refunds");
      }
    }
    WHEN("a small refund in euros is asked for") {
      auto v = evaluate(p, query("issue_refund",
                                 {{"amount", 20}, {"currency", "EUR"}}));
      THEN("the require constraint denies it") {
        CHECK(v.decision == policy_decision::deny);
        CHECK(v.rule == "refunds");
        CHECK(v.reason
              == "denied by rule 'refunds': argument 'currency' is \"EUR\", "
                 "not one of: \"USD\"");
      }
    }
    WHEN("an email with a long subject is sent") {
      std::string subject(100, 'x');
      auto v = evaluate(p, query("send_email",
                                 {{"subject", subject}, {"to", "bob"}}));
      THEN("it runs with the subject cut") {
        CHECK(v.decision == policy_decision::allow_with_caps);
        CHECK(v.rule == "emails");
        CHECK(v.args == json{{"subject", std::string(80, 'x')}, {"to", "bob"}});
        CHECK(v.capped
              == std::vector<std::string>{
                "argument 'subject' capped from 100 to 80 characters"});
      }
    }
    WHEN("the fourth email of a run is sent") {
      auto v = evaluate(p, query("send_email", {{"subject", "hi"}}, "support",
                                 "alice", 3));
      THEN("it is denied naming the rule and the limit") {
        CHECK(v.decision == policy_decision::deny);
        CHECK(v.rule == "emails");
        CHECK(v.reason
              == "denied by rule 'emails': tool 'send_email' may be called at "
                 "most 3 times per run, and this run has called it 3 times");
      }
    }
  }
}

TEST_CASE("a deny rule gives its reason or a default one", "[policy]") {
  auto r = rule("no-shell", policy_decision::deny);
  r.tools = {"shell"};
  auto p = single(r);
  auto v = evaluate(p, query("shell", {{"cmd", "ls"}}));
  CHECK(v.decision == policy_decision::deny);
  CHECK(v.rule == "no-shell");
  CHECK(v.reason
        == "denied by rule 'no-shell': calls of tool 'shell' are not allowed");
  CHECK(v.args == json{{"cmd", "ls"}});
  r.reason = "shell access is off in production";
  p = single(r);
  CHECK(evaluate(p, query("shell", {})).reason
        == "denied by rule 'no-shell': shell access is off in production");
  CHECK(evaluate(p, query("ls", {})).decision == policy_decision::allow);
}

TEST_CASE("require_approval without a reason names its rule", "[policy]") {
  auto p = single(rule("ask", policy_decision::require_approval));
  auto v = evaluate(p, query("anything", {}));
  CHECK(v.decision == policy_decision::require_approval);
  CHECK(v.reason == "rule 'ask' requires a human's approval");
  CHECK(v.ttl_ms == 0);
}

TEST_CASE("without a matching rule the default decides", "[policy]") {
  policy empty;
  compile(empty);
  auto v = evaluate(empty, query("t", {{"a", 1}}));
  CHECK(v.decision == policy_decision::allow);
  CHECK(v.rule.empty());
  CHECK(v.reason == "no policy rule matched; the default is allow");
  CHECK(v.args == json{{"a", 1}});
  empty.default_decision = policy_decision::deny;
  CHECK(evaluate(empty, query("t", {})).reason
        == "no policy rule matched; the default is deny");
}

TEST_CASE("the first matching rule decides", "[policy]") {
  policy p;
  auto a = rule("first", policy_decision::deny);
  a.tools = {"t"};
  auto b = rule("second", policy_decision::allow);
  p.rules = {a, b};
  compile(p);
  CHECK(evaluate(p, query("t", {})).rule == "first");
  CHECK(evaluate(p, query("u", {})).rule == "second");
  std::swap(p.rules[0], p.rules[1]);
  CHECK(evaluate(p, query("t", {})).rule == "second");
}

TEST_CASE("roles, principals and tools match by list or wildcard", "[policy]") {
  auto r = rule("r", policy_decision::deny);
  SECTION("lists") {
    r.roles = {"support", "billing"};
    r.principals = {"alice"};
    r.tools = {"refund"};
    auto p = single(r);
    CHECK(evaluate(p, query("refund", {}, "support", "alice")).rule == "r");
    CHECK(evaluate(p, query("refund", {}, "billing", "alice")).rule == "r");
    CHECK(evaluate(p, query("refund", {}, "writer", "alice")).rule.empty());
    CHECK(evaluate(p, query("refund", {}, "support", "bob")).rule.empty());
    CHECK(evaluate(p, query("lookup", {}, "support", "alice")).rule.empty());
  }
  SECTION("wildcards") {
    r.roles = {"*"};
    r.principals = {"*"};
    r.tools = {"refund", "*"};
    auto p = single(r);
    CHECK(evaluate(p, query("anything", {}, "anyone", "anybody")).rule == "r");
  }
  SECTION("empty lists") {
    auto p = single(r);
    CHECK(evaluate(p, query("x", {}, "", "")).rule == "r");
  }
}

// --- constraints -------------------------------------------------------------

TEST_CASE("when constraints select the rule", "[policy]") {
  auto r = rule("r", policy_decision::deny);
  auto matches = [&r](const json& args) {
    auto p = single(r);
    return evaluate(p, query("t", args)).rule == "r";
  };
  SECTION("min and max") {
    r.when = {{"n", min_max(10, 20)}};
    CHECK(matches({{"n", 10}}));
    CHECK(matches({{"n", 20.0}}));
    CHECK_FALSE(matches({{"n", 9.5}}));
    CHECK_FALSE(matches({{"n", 21}}));
    CHECK_FALSE(matches({{"n", "15"}})); // a string is not a number
    CHECK_FALSE(matches({{"n", true}}));
    CHECK_FALSE(matches({{"m", 15}})); // missing: no match
  }
  SECTION("pattern") {
    r.when = {{"to", pattern(R"([a-z]+@example\.com)")}};
    CHECK(matches({{"to", "bob@example.com"}}));
    CHECK_FALSE(matches({{"to", "bob@example.com.evil"}})); // whole string
    CHECK_FALSE(matches({{"to", "x bob@example.com"}}));
    CHECK_FALSE(matches({{"to", 42}}));
    CHECK_FALSE(matches(json::object()));
  }
  SECTION("enum") {
    r.when = {{"c", one_of({"USD", 5, nullptr})}};
    CHECK(matches({{"c", "USD"}}));
    CHECK(matches({{"c", 5}}));
    CHECK(matches({{"c", 5.0}}));
    CHECK(matches({{"c", nullptr}}));
    CHECK_FALSE(matches({{"c", "usd"}}));
    CHECK_FALSE(matches({{"c", json::array({"USD"})}}));
  }
  SECTION("max_length counts characters") {
    r.when = {{"s", max_length(3)}};
    CHECK(matches({{"s", "abc"}}));
    CHECK(matches({{"s", "äöü"}})); // 6 bytes, 3 characters
    CHECK_FALSE(matches({{"s", "abcd"}}));
    CHECK_FALSE(matches({{"s", 1}}));
  }
  SECTION("several constraints must all hold") {
    r.when = {{"n", min_max(1, std::nullopt)}, {"s", max_length(2)}};
    CHECK(matches({{"n", 1}, {"s", "ab"}}));
    CHECK_FALSE(matches({{"n", 0}, {"s", "ab"}}));
    CHECK_FALSE(matches({{"n", 1}, {"s", "abc"}}));
  }
}

TEST_CASE("require constraints deny naming the rule and the failure",
          "[policy]") {
  auto r = rule("refunds", policy_decision::allow);
  auto reason = [&r](const json& args) {
    auto p = single(r);
    auto v = evaluate(p, query("t", args));
    return v.decision == policy_decision::deny ? v.reason : std::string{};
  };
  SECTION("min and max") {
    r.require = {{"amount", min_max(1, 5000)}};
    CHECK(reason({{"amount", 5000}}).empty());
    CHECK(reason({{"amount", 9000}})
          == "denied by rule 'refunds': argument 'amount' is 9000, above the "
             "maximum 5000");
    CHECK(reason({{"amount", 0.5}})
          == "denied by rule 'refunds': argument 'amount' is 0.5, below the "
             "minimum 1");
    CHECK(reason({{"amount", "9000"}})
          == "denied by rule 'refunds': argument 'amount' is a string, not a "
             "number");
    CHECK(reason({{"amount", nullptr}})
          == "denied by rule 'refunds': argument 'amount' is null, not a "
             "number");
  }
  SECTION("missing") {
    r.require = {{"amount", min_max(1, 5000)}};
    CHECK(reason({{"sum", 10}})
          == "denied by rule 'refunds': argument 'amount' is missing");
  }
  SECTION("pattern") {
    r.require = {{"id", pattern("[0-9]{3}")}};
    CHECK(reason({{"id", "123"}}).empty());
    CHECK(reason({{"id", "1234"}})
          == "denied by rule 'refunds': argument 'id' is \"1234\", which does "
             "not match the pattern '[0-9]{3}'");
    CHECK(reason({{"id", 123}})
          == "denied by rule 'refunds': argument 'id' is a number, not a "
             "string");
    CHECK_THAT(reason({{"id", std::string(20000, '1')}}),
               Contains("too long to check"));
  }
  SECTION("enum") {
    r.require = {{"currency", one_of({"USD", "CAD"})}};
    CHECK(reason({{"currency", "CAD"}}).empty());
    CHECK(reason({{"currency", "EUR"}})
          == "denied by rule 'refunds': argument 'currency' is \"EUR\", not "
             "one of: \"USD\", \"CAD\"");
  }
  SECTION("max_length") {
    r.require = {{"note", max_length(4)}};
    CHECK(reason({{"note", "ok"}}).empty());
    CHECK(reason({{"note", "too long"}})
          == "denied by rule 'refunds': argument 'note' is 8 characters long, "
             "above the maximum length 4");
    CHECK(reason({{"note", json::array()}})
          == "denied by rule 'refunds': argument 'note' is an array, not a "
             "string");
  }
  SECTION("a long value is cut in the reason") {
    r.require = {{"s", one_of({"a"})}};
    auto why = reason({{"s", std::string(500, 'b')}});
    CHECK(why.size() < 200);
    CHECK_THAT(why, Contains("...,"));
  }
}

TEST_CASE("arguments that are not an object never throw", "[policy]") {
  auto r = rule("r", policy_decision::allow);
  r.require = {{"amount", min_max(1, 5)}};
  auto p = single(r);
  for (const json& args : {json(nullptr), json(42), json("text"),
                           json::array({1, 2}), json(true)}) {
    INFO(args.dump());
    policy_verdict v;
    REQUIRE_NOTHROW(v = evaluate(p, query("t", args)));
    CHECK(v.decision == policy_decision::deny);
    CHECK_THAT(v.reason, StartsWith("denied by rule 'r': argument 'amount' "
                                    "is missing"));
    CHECK(v.args == args);
  }
  auto w = rule("w", policy_decision::deny);
  w.when = {{"x", max_length(1)}};
  auto c = rule("caps", policy_decision::allow_with_caps);
  c.caps = {{"x", max_length(1)}};
  policy q;
  q.rules = {w, c};
  compile(q);
  auto v = evaluate(q, query("t", json::array({"long"})));
  CHECK(v.rule == "caps"); // `when` does not match, caps find nothing
  CHECK(v.capped.empty());
  CHECK(v.args == json::array({"long"}));
}

TEST_CASE("a pattern on a huge string fails instead of crashing", "[policy]") {
  auto r = rule("r", policy_decision::allow);
  r.require = {{"s", pattern("(a|b)*")}};
  auto p = single(r);
  std::string just_fits(10000, 'a');
  CHECK(evaluate(p, query("t", {{"s", just_fits}})).decision
        == policy_decision::allow);
  auto v = evaluate(p, query("t", {{"s", std::string(1'000'000, 'a')}}));
  CHECK(v.decision == policy_decision::deny);
  CHECK(v.reason
        == "denied by rule 'r': argument 's' is too long to check against the "
           "pattern '(a|b)*' (1000000 bytes, at most 10000)");
}

// --- caps --------------------------------------------------------------------

TEST_CASE("allow_with_caps clamps arguments and says what changed",
          "[policy]") {
  auto r = rule("caps", policy_decision::allow_with_caps);
  r.caps = {{"amount", min_max(10, 500)},
            {"ratio", min_max(0, 0.5)},
            {"subject", max_length(5)},
            {"absent", max_length(1)}};
  auto p = single(r);
  SECTION("numbers are clamped to min and max") {
    auto v = evaluate(p, query("t", {{"amount", 900}, {"ratio", 0.75}}));
    CHECK(v.decision == policy_decision::allow_with_caps);
    CHECK(v.args == json{{"amount", 500}, {"ratio", 0.5}});
    CHECK(v.args["amount"].is_number_integer());
    CHECK(
      v.capped
      == std::vector<std::string>{"argument 'amount' capped from 900 to 500",
                                  "argument 'ratio' capped from 0.75 to 0.5"});
    v = evaluate(p, query("t", {{"amount", 3}}));
    CHECK(v.args == json{{"amount", 10}});
    CHECK(v.capped
          == std::vector<std::string>{"argument 'amount' capped from 3 to 10"});
  }
  SECTION("values within the caps are left alone") {
    json args{{"amount", 100}, {"subject", "hello"}, {"other", "x"}};
    auto v = evaluate(p, query("t", args));
    CHECK(v.args == args);
    CHECK(v.capped.empty());
  }
  SECTION("strings are cut at a character boundary") {
    auto v = evaluate(p, query("t", {{"subject", "hello world"}}));
    CHECK(v.args["subject"] == "hello");
    CHECK(v.capped
          == std::vector<std::string>{
            "argument 'subject' capped from 11 to 5 characters"});
    // "Grüße, Welt": ü and ß take two bytes each.
    v = evaluate(p, query("t", {{"subject", "Grüße, Welt"}}));
    CHECK(v.args["subject"] == "Grüße");
    v = evaluate(p, query("t", {{"subject", "日本語のテキスト"}}));
    CHECK(v.args["subject"] == "日本語のテ");
    CHECK(v.capped
          == std::vector<std::string>{
            "argument 'subject' capped from 8 to 5 characters"});
    v = evaluate(p, query("t", {{"subject", "😀😀😀😀😀😀"}}));
    CHECK(v.args["subject"] == "😀😀😀😀😀");
  }
  SECTION("wrong types are not capped") {
    json args{{"amount", "900"}, {"subject", 12345678}};
    auto v = evaluate(p, query("t", args));
    CHECK(v.args == args);
    CHECK(v.capped.empty());
  }
  SECTION("max_calls_per_run") {
    r.max_calls_per_run = 2;
    p = single(r);
    CHECK(evaluate(p, query("t", {}, "a", "b", 1)).decision
          == policy_decision::allow_with_caps);
    auto v = evaluate(p, query("mail", {}, "a", "b", 2));
    CHECK(v.decision == policy_decision::deny);
    CHECK(v.rule == "caps");
    CHECK(v.reason
          == "denied by rule 'caps': tool 'mail' may be called at most 2 times "
             "per run, and this run has called it 2 times");
  }
}

// --- compile -----------------------------------------------------------------

TEST_CASE("compile checks a policy built in C++", "[policy]") {
  policy p;
  SECTION("names are required and unique") {
    p.rules = {rule("", policy_decision::allow)};
    CHECK_THROWS_AS(compile(p), policy_error);
    p.rules = {rule("a", policy_decision::allow),
               rule("a", policy_decision::deny)};
    CHECK_THROWS_WITH(compile(p), Contains("'a'"));
  }
  SECTION("a bad pattern names the rule and the argument") {
    auto r = rule("mail", policy_decision::allow);
    r.when = {{"to", pattern("([a-z]+")}};
    p.rules = {r};
    CHECK_THROWS_WITH(compile(p), Contains("'mail'") && Contains("'to'")
                                    && Contains("invalid pattern"));
  }
  SECTION("min above max") {
    auto r = rule("r", policy_decision::allow);
    r.require = {{"n", min_max(5, 1)}};
    p.rules = {r};
    CHECK_THROWS_WITH(compile(p), Contains("minimum 5 is above the maximum 1"));
  }
  SECTION("caps only on allow_with_caps") {
    auto r = rule("r", policy_decision::allow);
    r.caps = {{"n", min_max(1, 5)}};
    p.rules = {r};
    CHECK_THROWS_WITH(compile(p), Contains("caps"));
  }
  SECTION("patterns compile, and evaluate works uncompiled too") {
    auto r = rule("r", policy_decision::deny);
    r.when = {{"s", pattern("x+")}};
    p.rules = {r};
    CHECK(evaluate(p, query("t", {{"s", "xx"}})).rule == "r");
    compile(p);
    CHECK(p.rules[0].when[0].second.compiled != nullptr);
    CHECK(evaluate(p, query("t", {{"s", "xy"}})).rule.empty());
  }
}

// --- parsing -----------------------------------------------------------------

TEST_CASE("parse_policy names the pointer of every mistake", "[policy]") {
  SECTION("an unknown decision") {
    CHECK(parse_error(R"({"rules": [{"name": "a", "decision": "allow"},
                                    {"name": "b", "decision": "deny"},
                                    {"name": "c", "decision": "alow"}]})")
          == "swarm.json: /policy/rules/2/decision: unknown decision 'alow' "
             "(expected one of: allow, allow_with_caps, require_approval, "
             "deny)");
    CHECK_THAT(parse_error(R"({"default": "maybe"})"),
               StartsWith("swarm.json: /policy/default: unknown decision "
                          "'maybe'"));
    CHECK_THAT(parse_error(R"({"default": "allow_with_caps"})"),
               StartsWith("swarm.json: /policy/default: "));
  }
  SECTION("unknown fields") {
    CHECK_THAT(parse_error(R"({"rulez": []})"),
               StartsWith("swarm.json: /policy/rulez: unknown field"));
    CHECK_THAT(parse_error(R"({"rules": [{"name": "a", "decision": "allow",
                                          "tool": ["x"]}]})"),
               StartsWith("swarm.json: /policy/rules/0/tool: unknown field"));
    CHECK_THAT(parse_error(R"({"rules": [{"name": "a", "decision": "allow",
                                          "when": {"n": {"minimum": 1}}}]})"),
               StartsWith("swarm.json: /policy/rules/0/when/n/minimum: "
                          "unknown field"));
    CHECK_THAT(parse_error(R"({"rules": [{"name": "a",
                                          "decision": "allow_with_caps",
                                          "caps": {"n": {"pattern": "x"}}}]})"),
               StartsWith("swarm.json: /policy/rules/0/caps/n/pattern: "
                          "unknown field"));
  }
  SECTION("a bad regex") {
    CHECK_THAT(parse_error(R"({"rules": [{"name": "a", "decision": "allow",
                                          "require": {"a/b": {"pattern": "(x"}}}]})"),
               StartsWith("swarm.json: /policy/rules/0/require/a~1b/pattern: "
                          "invalid regular expression '(x'"));
  }
  SECTION("names") {
    CHECK(parse_error(R"({"rules": [{"name": "a", "decision": "allow"},
                                    {"name": "a", "decision": "deny"}]})")
          == "swarm.json: /policy/rules/1/name: rule name 'a' is already used "
             "by /policy/rules/0");
    CHECK(parse_error(R"({"rules": [{"decision": "allow"}]})")
          == "swarm.json: /policy/rules/0: missing required field 'name'");
    CHECK(parse_error(R"({"rules": [{"name": "", "decision": "allow"}]})")
          == "swarm.json: /policy/rules/0/name: must not be empty");
    CHECK(parse_error(R"({"rules": [{"name": "a"}]})")
          == "swarm.json: /policy/rules/0: missing required field "
             "'decision'");
  }
  SECTION("wrong types") {
    CHECK(parse_error(R"([])")
          == "swarm.json: /policy: must be a JSON object, got array");
    CHECK(parse_error(R"({"rules": {}})")
          == "swarm.json: /policy/rules: must be an array of rules, got "
             "object");
    CHECK(parse_error(R"({"rules": [{"name": 5, "decision": "allow"}]})")
          == "swarm.json: /policy/rules/0/name: must be a string, got number");
    CHECK(parse_error(R"({"rules": [{"name": "a", "decision": "allow",
                                     "roles": "support"}]})")
          == "swarm.json: /policy/rules/0/roles: must be an array of names, "
             "got string");
    CHECK(parse_error(R"({"rules": [{"name": "a", "decision": "allow",
                                     "tools": ["x", 3]}]})")
          == "swarm.json: /policy/rules/0/tools/1: must be a non-empty name");
    CHECK(parse_error(R"({"rules": [{"name": "a", "decision": "allow",
                                     "when": {"n": {"min": "1"}}}]})")
          == "swarm.json: /policy/rules/0/when/n/min: must be a number, got "
             "string");
    CHECK(parse_error(R"({"rules": [{"name": "a", "decision": "allow",
                                     "when": {"n": {"max_length": -1}}}]})")
          == "swarm.json: /policy/rules/0/when/n/max_length: must be between "
             "0 and 9223372036854775807, got -1");
    CHECK(parse_error(R"({"rules": [{"name": "a", "decision": "allow",
                                     "when": {"n": {"enum": []}}}]})")
          == "swarm.json: /policy/rules/0/when/n/enum: must be a non-empty "
             "array of values, got an empty array");
    CHECK(parse_error(R"({"rules": [{"name": "a", "decision": "allow",
                                     "when": []}]})")
          == "swarm.json: /policy/rules/0/when: must be a JSON object, got "
             "array");
    CHECK(parse_error(R"({"rules": [{"name": "a",
                                     "decision": "allow_with_caps",
                                     "max_calls_per_run": 1.5}]})")
          == "swarm.json: /policy/rules/0/max_calls_per_run: must be an "
             "integer, got number");
  }
  SECTION("fields that do not fit the decision") {
    CHECK_THAT(parse_error(R"({"rules": [{"name": "a", "decision": "allow",
                                          "caps": {}}]})"),
               StartsWith("swarm.json: /policy/rules/0/caps: "));
    CHECK_THAT(parse_error(R"({"rules": [{"name": "a", "decision": "deny",
                                          "ttl_ms": 5}]})"),
               StartsWith("swarm.json: /policy/rules/0/ttl_ms: "));
    CHECK_THAT(parse_error(R"({"rules": [{"name": "a", "decision": "allow",
                                          "max_calls_per_run": 5}]})"),
               StartsWith("swarm.json: /policy/rules/0/max_calls_per_run: "));
    CHECK_THAT(parse_error(R"({"rules": [{"name": "a", "decision": "allow",
                                          "when": {"n": {"min": 5, "max": 1}}}]})"),
               StartsWith("swarm.json: /policy/rules/0/when/n/min: "));
  }
  SECTION("a policy at the root of its own file") {
    try {
      parse_policy(json::parse(R"({"default": 1})"), "policy.json");
      FAIL("no error");
    } catch (const policy_error& ex) {
      CHECK(std::string{ex.what()}
            == "policy.json: /default: must be a string, got number");
    }
  }
}

TEST_CASE("parse_policy accepts a minimal policy", "[policy]") {
  auto p = parse("{}");
  CHECK(p.rules.empty());
  CHECK(p.default_decision == policy_decision::allow);
  p = parse(R"({"default": "require_approval"})");
  CHECK(evaluate(p, query("t", {})).decision
        == policy_decision::require_approval);
  p = parse(R"({"rules": [{"name": "a", "decision": "deny",
                           "when": {"to": {"pattern": "[a-z]+"}}}]})");
  REQUIRE(p.rules[0].when[0].second.compiled != nullptr);
  CHECK(evaluate(p, query("t", {{"to", "abc"}})).rule == "a");
  CHECK(evaluate(p, query("t", {{"to", "ab1"}})).rule.empty());
}

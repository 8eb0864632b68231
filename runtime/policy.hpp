#pragma once

// The policy engine: rules that decide, for every tool call an agent's model
// proposes, whether it runs. The model's claims count for nothing; only the
// agent's role, the run's principal, the tool and its arguments do.
//
// Rules are tried in order; the first rule that matches decides:
//   allow             the call runs;
//   allow_with_caps   the call runs with its arguments clamped to the rule's
//                     caps (the model is told what was capped), and at most
//                     `max_calls_per_run` times in a run;
//   require_approval  the agent pauses until a human approves (approval gate);
//   deny              the model gets an observation naming the rule.
// A rule matches when the role, principal and tool are in its lists (empty or
// "*" = any) and every `when` constraint holds. A matching rule whose
// `require` constraints fail denies, naming the rule and the constraint.
// Nothing matching: the policy's default decision (allow unless set).
//
// In JSON (a swarm file's "policy", or parse_policy):
//   {"default": "deny",
//    "rules": [
//      {"name": "support-reads", "roles": ["support"], "tools": ["get_order"],
//       "decision": "allow"},
//      {"name": "big-refunds", "tools": ["issue_refund"],
//       "when": {"amount": {"min": 100}}, "decision": "require_approval",
//       "reason": "refunds of $100 or more need a human", "ttl_ms": 600000},
//      {"name": "refunds", "tools": ["issue_refund"],
//       "require": {"amount": {"max": 5000}, "currency": {"enum": ["USD"]}},
//       "decision": "allow"},
//      {"name": "emails", "tools": ["send_email"], "decision": "allow_with_caps",
//       "caps": {"subject": {"max_length": 80}}, "max_calls_per_run": 3}]}
// Constraints: "min", "max" (numbers), "pattern" (an ECMAScript regex the
// whole string must match), "enum" (allowed values), "max_length" (strings,
// in characters). A constraint on an absent argument (or on arguments that
// are not an object) makes `when` not match and `require` fail; one on a
// value of the wrong type (min on a string) fails. Strings longer than 10000
// bytes fail a pattern rather than be matched (std::regex is slow on long
// input). Caps take only min, max and max_length; the default decision is
// allow, deny or require_approval.

#include <cstdint>
#include <memory>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "messages/json_value.hpp"

namespace troupe {

/// What the policy decided.
enum class policy_decision : uint8_t {
  allow,
  allow_with_caps,
  require_approval,
  deny,
};

/// "allow", "allow_with_caps", "require_approval", "deny".
const char* to_string(policy_decision x);

/// A constraint on one argument.
struct arg_constraint {
  std::optional<double> min;
  std::optional<double> max;
  /// The whole string must match (ECMAScript syntax); empty = none.
  std::string pattern;
  /// Allowed values; empty = any.
  std::vector<json> one_of;
  /// In characters (UTF-8 code points).
  std::optional<size_t> max_length;
  /// `pattern` compiled (by compile() or parse_policy).
  std::shared_ptr<const std::regex> compiled;
};

/// One rule.
struct policy_rule {
  std::string name;
  /// Agent roles, principals and tools it applies to; empty or "*" = any.
  std::vector<std::string> roles;
  std::vector<std::string> principals;
  std::vector<std::string> tools;
  /// Argument conditions for the rule to match.
  std::vector<std::pair<std::string, arg_constraint>> when;
  /// Argument conditions a matching call must meet, or be denied.
  std::vector<std::pair<std::string, arg_constraint>> require;
  policy_decision decision = policy_decision::allow;
  /// allow_with_caps: numeric arguments are clamped to min/max and strings
  /// cut to max_length.
  std::vector<std::pair<std::string, arg_constraint>> caps;
  /// allow_with_caps: calls of the tool allowed per run; 0 = no limit.
  int32_t max_calls_per_run = 0;
  /// Shown to the model (deny) or to the human (require_approval).
  std::string reason;
  /// require_approval: how long the human has; 0 = the agent's
  /// approval_ttl (agent_spec).
  int64_t ttl_ms = 0;
};

/// The longest time-to-live of an approval: 7 days.
inline constexpr int64_t max_approval_ttl_ms = 7LL * 24 * 3600 * 1000;

/// A set of rules.
struct policy {
  std::vector<policy_rule> rules;
  policy_decision default_decision = policy_decision::allow;
};

/// What a policy says about one call.
struct policy_verdict {
  policy_decision decision = policy_decision::allow;
  /// The rule that decided; empty for the default.
  std::string rule;
  /// One sentence: why, naming the rule and what failed.
  std::string reason;
  /// The arguments to run with (capped for allow_with_caps).
  json args;
  /// What a cap changed, one line each ("amount capped from 900 to 500").
  std::vector<std::string> capped;
  int64_t ttl_ms = 0;
};

/// The call being judged.
struct policy_query {
  std::string role;
  std::string principal;
  std::string tool;
  json args;
  /// Calls of this tool already made in the run.
  int32_t calls_so_far = 0;
};

/// Decides one call.
policy_verdict evaluate(const policy& p, const policy_query& q);

/// A policy document is wrong; what() names the origin and JSON pointer.
class policy_error : public std::invalid_argument {
public:
  using std::invalid_argument::invalid_argument;
};

/// Reads a policy from JSON (format above). Throws policy_error naming
/// `origin` and the JSON pointer of the bad field (`pointer` is the policy's
/// own pointer inside a larger document).
policy parse_policy(const json& doc, const std::string& origin,
                    const std::string& pointer = "");

/// Checks a policy built in C++ (non-empty unique rule names, valid
/// patterns, min <= max, caps only on allow_with_caps rules) and compiles its
/// patterns. Throws policy_error naming the rule and field. evaluate() needs
/// a compiled policy; the runtime compiles the policies it is given.
void compile(policy& p);

} // namespace troupe

#include "runtime/guardrail_lines.hpp"

namespace troupe {

namespace {

std::string text(const json& attrs, const char* key) {
  auto i = attrs.find(key);
  if (i == attrs.end())
    return "?";
  return i->is_string() ? i->get<std::string>() : safe_dump(*i);
}

} // namespace

std::string describe_guardrail_event(const json& record) {
  if (!record.is_object() || record.value("type", "") != "event")
    return {};
  auto name = record.value("name", "");
  auto found = record.find("attributes");
  if (found == record.end() || !found->is_object())
    return {};
  const auto& a = *found;
  if (name == "policy.decision")
    return "policy: " + text(a, "gen_ai.tool.name") + " -> "
           + text(a, "troupe.policy.decision")
           + (a.value("troupe.policy.rule", "").empty()
                ? std::string{" (default)"}
                : " by rule '" + text(a, "troupe.policy.rule") + "'");
  if (name == "approval.requested")
    return "approval: " + text(a, "troupe.approval.id") + " asks a human for "
           + text(a, "troupe.approval.action") + " ("
           + text(a, "troupe.approval.reason") + ")";
  if (name == "approval.decided")
    return "approval: " + text(a, "troupe.approval.id") + " "
           + text(a, "troupe.approval.verdict") + " by "
           + text(a, "troupe.approval.who")
           + (a.value("troupe.approval.note", "").empty()
                ? std::string{}
                : ": " + text(a, "troupe.approval.note"));
  if (name == "tool.retry")
    return "retry: " + text(a, "gen_ai.tool.name") + " attempt "
           + text(a, "troupe.attempt") + " after "
           + text(a, "troupe.backoff_ms") + " ms (" + text(a, "error.type")
           + ")";
  if (name == "breaker.transition")
    return "breaker: " + text(a, "gen_ai.tool.name") + " "
           + text(a, "troupe.breaker.from") + " -> "
           + text(a, "troupe.breaker.to");
  if (name == "limiter.wait")
    return "limiter: " + text(a, "gen_ai.tool.name") + " waited "
           + text(a, "troupe.wait_ms") + " ms";
  if (name == "tool.replayed")
    return "ledger: " + text(a, "gen_ai.tool.name")
           + " answered with the result recorded under its idempotency key "
           + text(a, "troupe.idempotency_key") + " (the tool did not run again)";
  if (name == "confidence.route")
    return "confidence: " + text(a, "troupe.confidence") + " -> "
           + text(a, "troupe.confidence.route");
  if (name == "guardrail.warning")
    return "warning: " + text(a, "troupe.warning");
  return {};
}

} // namespace troupe

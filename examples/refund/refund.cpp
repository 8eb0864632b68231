// The refund desk: one support agent behind every guardrail, built with the
// troupe API (refund.swarm.json is the same desk as a swarm file).
//
//   policy      issue_refund needs a human from 100 USD and is denied above
//               1000; send_email is capped; anything unlisted is denied
//   approvals   a "desk lead" thread approves refunds up to 300 USD and
//               denies the rest, through runtime::decide
//   retries     issue_refund's first call hangs after paying: the retry waits
//               for that call (same idempotency key), so it pays once
//   breaker     send_email fails three times in a row: the circuit opens and
//               the model sees circuit_open; after the cool-down a probe closes it
//   limiter     get_order admits 4 calls a second
//   ledger      a refund asked for again is answered from the ledger
//   confidence  an unsure reply is sent back for clarification
//   loops       a model that keeps asking the same thing is halted
//   budget      prices per model and a global money budget: a warning at 80%,
//               then a run halted, then one refused
//
//   ./refund_example        (writes refunds.jsonl, outbox.jsonl and
//                            refund-drafts.jsonl in the working directory)

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/builtin_tools.hpp"
#include "runtime/guardrail_lines.hpp"
#include "runtime/runtime.hpp"

namespace {

using namespace std::chrono_literals;

/// Guardrail lines from the trace, printed after each run.
struct guardrail_log {
  std::mutex mtx;
  std::vector<std::string> lines;

  void operator()(const troupe::json& record) {
    auto line = troupe::describe_guardrail_event(record);
    if (line.empty())
      return;
    std::lock_guard<std::mutex> guard{mtx};
    lines.push_back(std::move(line));
  }

  std::vector<std::string> take() {
    std::lock_guard<std::mutex> guard{mtx};
    return std::exchange(lines, {});
  }
};

/// A person at the desk: decides approval requests as they arrive.
class desk_lead {
public:
  explicit desk_lead(troupe::runtime& rt) : rt_(rt), thread_([this] { loop(); }) {
  }

  ~desk_lead() {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  /// Called on an actor thread: hand the request over, never block.
  void enqueue(troupe::approval_request req) {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      queue_.push_back(std::move(req));
    }
    cv_.notify_all();
  }

private:
  void loop() {
    for (;;) {
      troupe::approval_request req;
      {
        std::unique_lock<std::mutex> lock{mtx_};
        cv_.wait(lock, [this] { return done_ || !queue_.empty(); });
        if (done_)
          return;
        req = std::move(queue_.front());
        queue_.pop_front();
      }
      auto amount = req.args.value.value("amount", 0.0);
      auto approve = amount <= 300;
      rt_.decide(req.request_id,
                 approve ? troupe::approval_verdict::approve
                         : troupe::approval_verdict::deny,
                 "desk-lead",
                 approve ? "ok" : "over 300 USD needs a manager's sign-off");
    }
  }

  troupe::runtime& rt_;
  std::mutex mtx_;
  std::condition_variable cv_;
  std::deque<troupe::approval_request> queue_;
  bool done_ = false;
  std::thread thread_;
};

troupe::json refund_schema() {
  return {{"type", "object"},
          {"properties",
           {{"order_id", {{"type", "string"}}},
            {"amount", {{"type", "number"}, {"minimum", 0}}},
            {"reason", {{"type", "string"}}}}},
          {"required", {"order_id", "amount"}},
          {"additionalProperties", false}};
}

size_t lines_in(const std::string& path) {
  std::ifstream in{path};
  size_t n = 0;
  for (std::string line; std::getline(in, line);)
    n += line.empty() ? 0 : 1;
  return n;
}

} // namespace

int main() {
  troupe::log_to_stderr(); // stdout is the example's own output
  std::string dir = TROUPE_EXAMPLE_DIR;
  std::string model = "scripted:" + dir + "/refund.script.json";
  for (auto file : {"refunds.jsonl", "outbox.jsonl", "refund-drafts.jsonl"})
    std::remove(file);

  auto log = std::make_shared<guardrail_log>();
  troupe::runtime_config cfg;
  // TROUPE_MODEL=openai:gpt-4o-mini (or anthropic:...) runs it on a real model.
  cfg.model_override = troupe::model_override_from_env();
  cfg.trace_path = "refund-trace.jsonl";
  cfg.trace_listeners.push_back([log](const troupe::json& r) { (*log)(r); });
  cfg.load_middleman = false;
  // Money: prices per million tokens, and a global budget with a warning at 80%.
  cfg.prices.set(model, {3.0, 15.0});
  cfg.budget.global.max_cost_usd = 0.07;
  cfg.budget.warn_share = 0.8;
  // The policy: first matching rule decides; anything unlisted is denied.
  troupe::policy_rule reads;
  reads.name = "support-reads";
  reads.roles = {"support"};
  reads.tools = {"get_order", "draft_refund"};
  troupe::policy_rule big;
  big.name = "refunds-need-a-human";
  big.roles = {"support"};
  big.tools = {"issue_refund"};
  troupe::arg_constraint from_100, up_to_1000;
  from_100.min = 100;
  up_to_1000.max = 1000;
  big.when = {{"amount", from_100}};
  big.require = {{"amount", up_to_1000}};
  big.decision = troupe::policy_decision::require_approval;
  big.reason = "refunds of 100 USD or more need a human";
  troupe::policy_rule small = reads;
  small.name = "small-refunds";
  small.tools = {"issue_refund"};
  troupe::policy_rule email;
  email.name = "customer-email";
  email.roles = {"support"};
  email.tools = {"send_email"};
  email.decision = troupe::policy_decision::allow_with_caps;
  troupe::arg_constraint short_subject;
  short_subject.max_length = 60;
  email.caps = {{"subject", short_subject}};
  email.max_calls_per_run = 3;
  cfg.policy.rules = {reads, big, small, email};
  cfg.policy.default_decision = troupe::policy_decision::deny;
  troupe::runtime rt{cfg};

  // Tools, each with its guards.
  auto get_order = troupe::lookup_tool(
    "get_order", "Looks an order up by its id (like A-1001).",
    dir + "/orders.json", "order_id");
  get_order.guards.limits.rate_per_sec = 4;
  get_order.guards.limits.max_wait = 5s;
  rt.tools().add(get_order);

  troupe::journal_settings drafts;
  drafts.file = "refund-drafts.jsonl";
  drafts.parameters = refund_schema();
  drafts.result = "drafted a refund of {amount} USD for {order_id}";
  rt.tools().add(troupe::journal_tool("draft_refund", drafts));

  troupe::journal_settings refunds;
  refunds.description = "Pays a refund back to the customer. Irreversible.";
  refunds.file = "refunds.jsonl";
  refunds.parameters = refund_schema();
  refunds.parameters["properties"].erase("reason");
  refunds.result = "refund of {amount} USD issued for {order_id}";
  refunds.delay_first = 1; // pays, then hangs past the attempt's timeout
  refunds.delay = 400ms;
  auto issue_refund = troupe::journal_tool("issue_refund", refunds);
  issue_refund.guards.retry.max_retries = 2;
  issue_refund.guards.retry.backoff = troupe::backoff_kind::constant;
  issue_refund.guards.retry.base = 50ms;
  issue_refund.guards.retry.attempt_timeout = 250ms;
  // One refund per order, whatever run or step asks for it.
  issue_refund.idempotency.scope = troupe::idempotency_scope::global;
  issue_refund.idempotency.fields = {"order_id"};
  rt.tools().add(issue_refund);

  troupe::journal_settings outbox;
  outbox.file = "outbox.jsonl";
  outbox.parameters = {{"type", "object"},
                       {"properties",
                        {{"to", {{"type", "string"}}},
                         {"subject", {{"type", "string"}}},
                         {"body", {{"type", "string"}}}}},
                       {"required", {"to", "subject", "body"}},
                       {"additionalProperties", false}};
  outbox.result = "email sent to {to}";
  outbox.fail_first = 3; // the mail server is down for a while
  auto send_email = troupe::journal_tool("send_email", outbox);
  send_email.guards.retry.max_retries = 1;
  send_email.guards.retry.base = 40ms;
  send_email.guards.retry.cap = 200ms;
  send_email.guards.breaker.failure_threshold = 3;
  send_email.guards.breaker.cooldown = 1s;
  rt.tools().add(send_email);

  troupe::agent_spec spec;
  spec.name = "support";
  spec.role = "support";
  spec.system_prompt = "You are the refund desk of Acme Outfitters.";
  spec.model = model;
  spec.tools = {"get_order", "draft_refund", "issue_refund", "send_email"};
  spec.max_steps = 8;
  spec.confidence.enabled = true;
  spec.loops.halt = true;
  auto agent = rt.spawn_agent(spec);

  desk_lead lead{rt};
  rt.on_approval_request([&lead](troupe::approval_request req) {
    lead.enqueue(std::move(req));
  });

  const char* goals[] = {
    "Order A-1001 arrived broken. Please refund it.",
    "Order A-1002 arrived broken. Please refund it.",
    "Order A-1003 arrived broken. Please refund it.",
    "Where is my order A-1004?",
    "Is order A-1005 eligible for a refund?",
    "Check the status of orders A-1001, A-1002 and A-1004.",
    "Resend the refund confirmation for order A-1001.",
    "Summarise every order.",
    "Summarise every order.",
  };
  int number = 0;
  for (auto goal : goals) {
    if (++number == 7) {
      // Once send_email's breaker has cooled down, its next call is a probe.
      auto state = rt.breaker_state("send_email");
      if (state == "open") {
        std::cout << "(the mail breaker is open; waiting out its 1 s "
                     "cool-down)\n\n";
        std::this_thread::sleep_for(1100ms);
      } else {
        std::cout << "(the mail breaker is " << state
                  << ": its cool-down has passed)\n\n";
      }
    }
    auto r = rt.run(agent, goal);
    rt.flush_trace();
    std::cout << number << ". " << goal << "\n";
    for (const auto& line : log->take())
      std::cout << "   " << line << "\n";
    std::printf("   -> %s after %zu step(s), $%.4f", troupe::to_string(r.status),
                r.steps.size(), troupe::nusd_to_usd(r.cost_nusd));
    if (!r.error.empty())
      std::cout << ": " << r.error;
    if (!r.answer.empty())
      std::cout << "\n   answer: " << r.answer;
    std::cout << "\n\n";
  }

  auto global = rt.budget_usage();
  std::printf("budget: $%.4f of $%.2f spent in %lld steps; %lld reservations "
              "granted, %lld refused\n",
              troupe::nusd_to_usd(global.used.cost_nusd),
              global.limits.max_cost_usd,
              static_cast<long long>(global.used.steps),
              static_cast<long long>(global.granted),
              static_cast<long long>(global.denied));
  std::cout << "side effects: " << lines_in("refunds.jsonl")
            << " refund(s) paid (refunds.jsonl), " << lines_in("outbox.jsonl")
            << " email(s) sent (outbox.jsonl), "
            << lines_in("refund-drafts.jsonl") << " draft(s)\n"
            << "mail breaker: " << rt.breaker_state("send_email")
            << "; trace: " << cfg.trace_path << "\n";
  return EXIT_SUCCESS;
}

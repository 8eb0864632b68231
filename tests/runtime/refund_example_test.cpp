// The refund desk (issue 4), run as a user runs it: the refund_example binary
// in a fresh folder, and refund.swarm.json through `troupe run --approvals`
// with a human deciding from another process through `troupe approvals`.
// Asserts on what the programs print, and more on what they leave behind:
// the JSONL trace and the side-effect journals (refunds, outbox, drafts).

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "messages/json_value.hpp"
#include "support/child_process.hpp"
#include "support/paths.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// -- files --------------------------------------------------------------------

/// The records of a JSONL file (none when the file does not exist).
std::vector<json> jsonl(const std::string& path) {
  std::vector<json> out;
  std::ifstream in{path};
  for (std::string line; std::getline(in, line);)
    if (!line.empty())
      out.push_back(json::parse(line));
  return out;
}

std::string refund_swarm() {
  return source_dir() + "/examples/refund/refund.swarm.json";
}

std::string troupe_cmd(const std::string& args) {
  return shell_quote(cli_path()) + " " + args;
}

/// The examples are built next to the CLI: BUILD/examples/NAME.
std::string example_binary(const std::string& name) {
  return (fs::path{cli_path()}.parent_path() / "examples" / name).string();
}

const json& attrs_of(const json& rec) {
  static const json none = json::object();
  auto i = rec.find("attributes");
  return i != rec.end() && i->is_object() ? *i : none;
}

std::string attr(const json& rec, const char* key) {
  const auto& a = attrs_of(rec);
  auto i = a.find(key);
  if (i == a.end())
    return {};
  return i->is_string() ? i->get<std::string>() : i->dump();
}

// -- the trace ----------------------------------------------------------------

/// A trace file, and its runs (invoke_agent spans) in the order they started.
struct trace_file {
  std::vector<json> records;
  std::vector<json> runs;

  explicit trace_file(const std::string& path) : records(jsonl(path)) {
    for (const auto& r : records)
      if (r.value("type", "") == "span"
          && r.value("name", "").rfind("invoke_agent ", 0) == 0)
        runs.push_back(r);
    std::sort(runs.begin(), runs.end(), [](const json& a, const json& b) {
      return a.at("start_ns").get<int64_t>() < b.at("start_ns").get<int64_t>();
    });
  }

  /// Events named `name` (of one run's trace when trace_id is given), in
  /// the order they happened.
  std::vector<json> events(const std::string& name,
                           const std::string& trace_id = {}) const {
    std::vector<json> out;
    for (const auto& r : records)
      if (r.value("type", "") == "event" && r.value("name", "") == name
          && (trace_id.empty() || r.value("trace_id", "") == trace_id))
        out.push_back(r);
    std::stable_sort(out.begin(), out.end(), [](const json& a, const json& b) {
      return a.at("time_ns").get<int64_t>() < b.at("time_ns").get<int64_t>();
    });
    return out;
  }

  /// Finished spans whose name starts with `prefix`.
  std::vector<json> spans(const std::string& prefix,
                          const std::string& trace_id = {}) const {
    std::vector<json> out;
    for (const auto& r : records)
      if (r.value("type", "") == "span"
          && r.value("name", "").rfind(prefix, 0) == 0
          && (trace_id.empty() || r.value("trace_id", "") == trace_id))
        out.push_back(r);
    return out;
  }

  /// Events named `name` for tool `tool`.
  std::vector<json> tool_events(const std::string& name, const std::string& tool,
                                const std::string& trace_id = {}) const {
    auto all = events(name, trace_id);
    std::vector<json> out;
    for (auto& e : all)
      if (attr(e, "gen_ai.tool.name") == tool)
        out.push_back(std::move(e));
    return out;
  }
};

std::string trace_id_of(const json& run) {
  return run.at("trace_id").get<std::string>();
}

bool during(const json& event, const json& run) {
  auto t = event.at("time_ns").get<int64_t>();
  return t >= run.at("start_ns").get<int64_t>()
         && t <= run.at("end_ns").get<int64_t>();
}

/// Micro-dollars of the model calls in the trace: the example's prices are 3
/// USD per million input tokens and 15 per million output tokens.
int64_t spent_micro_usd(const std::vector<json>& chat_spans) {
  int64_t total = 0;
  for (const auto& s : chat_spans) {
    const auto& a = attrs_of(s);
    total += a.value("gen_ai.usage.input_tokens", int64_t{0}) * 3
             + a.value("gen_ai.usage.output_tokens", int64_t{0}) * 15;
  }
  return total;
}

// -- the refund_example binary ---------------------------------------------------

const char* const desk_goals[] = {
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
constexpr size_t desk_runs = sizeof(desk_goals) / sizeof(desk_goals[0]);

/// One run of refund_example in its own folder, with what it printed (log
/// lines dropped, each numbered run's block apart) and what it wrote.
struct desk_output {
  temp_dir dir;
  process_output proc;
  std::string text;                 // stdout without the log lines
  std::map<int, std::string> block; // "N. goal" and its indented lines
  std::vector<json> refunds, outbox, drafts;
  std::unique_ptr<trace_file> trace;

  desk_output() {
    auto bin = example_binary("refund_example");
    if (!fs::exists(bin))
      return;
    proc = run_command("cd " + shell_quote(dir.path().string()) + " && "
                       + shell_quote(bin));
    // spdlog lines ("[2026-...] [info] ...") share stdout with the report.
    static const std::regex log_line{R"(^\[\d{4}-\d\d-\d\d .*)"};
    static const std::regex heading{R"(^(\d+)\. )"};
    std::istringstream in{proc.out};
    int current = 0;
    for (std::string line; std::getline(in, line);) {
      if (std::regex_match(line, log_line))
        continue;
      text += line + "\n";
      std::smatch m;
      if (std::regex_search(line, m, heading))
        current = std::stoi(m[1]);
      else if (line.rfind("   ", 0) != 0)
        current = 0; // the summary and the breaker's note are no run's
      if (current != 0)
        block[current] += line + "\n";
    }
    refunds = jsonl(dir.file("refunds.jsonl"));
    outbox = jsonl(dir.file("outbox.jsonl"));
    drafts = jsonl(dir.file("refund-drafts.jsonl"));
    trace = std::make_unique<trace_file>(dir.file("refund-trace.jsonl"));
  }
};

/// The example runs once per test process: the cases below read the same run.
const desk_output& desk() {
  static desk_output out;
  INFO("refund_example at " << example_binary("refund_example"));
  REQUIRE(fs::exists(example_binary("refund_example")));
  INFO("stdout:\n" << out.proc.out << "\nstderr:\n" << out.proc.err);
  REQUIRE(out.proc.exit_code == 0);
  REQUIRE(out.trace != nullptr);
  REQUIRE(out.trace->runs.size() == desk_runs);
  for (size_t i = 0; i < desk_runs; ++i) {
    INFO("run " << i + 1);
    REQUIRE(attr(out.trace->runs[i], "troupe.goal") == desk_goals[i]);
    REQUIRE(out.block.count(static_cast<int>(i + 1)) == 1);
  }
  return out;
}

/// Run n (1-based) of the example, from its invoke_agent span.
const json& run_span(const desk_output& d, size_t n) {
  return d.trace->runs.at(n - 1);
}

std::string tid(const desk_output& d, size_t n) {
  return trace_id_of(run_span(d, n));
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos;
       at = text.find(what, at + what.size()))
    ++n;
  return n;
}

/// `troupe run refund.swarm.json` in a fresh folder, serving its approval gate
/// on a free port, paused at its approval request for the A-1001 refund.
struct paused_refund_run {
  temp_dir dir;
  std::string trace = dir.file("trace.jsonl");
  std::string out = dir.file("answer.txt");
  child_process child{{cli_path(), "run", refund_swarm(), "--goal",
                       "Order A-1001 arrived broken. Please refund it.",
                       "--approvals", "127.0.0.1:0", "--trace", trace,
                       "--timeout", "45"},
                      dir.path().string(),
                      out};
  std::string address;
  std::string request_id;
  std::string listing;

  /// Waits (bounded) for the gate's address, the pause, and the request in
  /// `troupe approvals list`.
  void wait_until_pending() {
    REQUIRE(child.started());
    // Within the ctest limit of 120 s: 30 s to pause, 20 s to see the
    // request listed, 45 s to finish after the decision.
    auto deadline = std::chrono::steady_clock::now() + 30s;
    auto left = [&] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    };
    auto bound = child.wait_for_line(
      std::regex{R"(approvals: listening on (127\.0\.0\.1:\d+))"}, left());
    {
      INFO("stderr of troupe run:\n" << child.err());
      REQUIRE(!bound.empty());
    }
    address = bound[1];
    // The progress line the run prints when the agent pauses.
    auto paused = child.wait_for_line(
      std::regex{R"(support awaits approval: (apr-[0-9a-f]+): issue_refund)"},
      left());
    {
      INFO("stderr of troupe run:\n" << child.err());
      REQUIRE(!paused.empty());
    }
    request_id = paused[1];
    // The request reaches the gate just after the pause is announced: ask
    // again until it is listed, a bounded number of times within 20 s.
    deadline = std::chrono::steady_clock::now() + 20s;
    for (int tries = 0; tries < 50; ++tries) {
      auto p = run_command(
        troupe_cmd("approvals list --timeout 5 --connect " + address));
      INFO("approvals list: " << p.exit_code << "\n" << p.out << p.err);
      REQUIRE(p.exit_code == 0);
      listing = p.out;
      if (listing.find(request_id) != std::string::npos
          || left().count() <= 0)
        break;
    }
    INFO("last listing:\n" << listing);
    REQUIRE(listing.find(request_id) != std::string::npos);
  }
};

/// The run's stderr, answer and exit code once a human has decided.
struct finished_run {
  int exit_code = -1;
  std::string answer;
  std::string err;
};

finished_run finish(paused_refund_run& run) {
  finished_run out;
  out.exit_code = run.child.wait_exit(45s);
  out.answer = read_file(run.out);
  out.err = run.child.err();
  return out;
}

} // namespace

// -- the refund_example binary ---------------------------------------------------

SCENARIO("the refund desk pays A-1001 exactly once despite a timed-out attempt "
         "and a second request",
         "[examples][guardrails]") {
  const auto& d = desk();
  INFO("stdout:\n" << d.text);
  GIVEN("refunds.jsonl, the side-effect journal of issue_refund") {
    THEN("it holds one refund: 120 USD for A-1001, paid in the first run") {
      REQUIRE(d.refunds.size() == 1);
      const auto& paid = d.refunds[0];
      CHECK(paid.at("tool") == "issue_refund");
      CHECK(paid.at("args").at("order_id") == "A-1001");
      CHECK(paid.at("args").at("amount") == 120);
      CHECK(paid.at("run_id") == attr(run_span(d, 1), "troupe.run.id"));
      CHECK_THAT(d.text, Catch::Contains("side effects: 1 refund(s) paid"));
    }
  }
  GIVEN("the first run's trace") {
    auto t1 = tid(d, 1);
    auto calls = d.trace->spans("execute_tool issue_refund", t1);
    THEN("issue_refund's first attempt timed out and was retried") {
      auto retries = d.trace->tool_events("tool.retry", "issue_refund", t1);
      REQUIRE(!retries.empty());
      CHECK(attr(retries[0], "error.type") == "timeout");
      CHECK(attr(retries[0], "troupe.attempt") == "2");
      REQUIRE(calls.size() == 1);
      CHECK(calls[0].at("status") == "ok");
      CHECK(attrs_of(calls[0]).value("troupe.tool.attempts", 0) >= 2);
    }
    THEN("the journal line carries the call's idempotency key") {
      REQUIRE(calls.size() == 1);
      REQUIRE(d.refunds.size() == 1);
      auto key = attr(calls[0], "troupe.idempotency_key");
      CHECK(!key.empty());
      CHECK(d.refunds[0].at("key") == key);
    }
  }
  GIVEN("the seventh run, which asks for the same refund again") {
    auto t1 = tid(d, 1);
    auto t7 = tid(d, 7);
    auto first = d.trace->spans("execute_tool issue_refund", t1);
    auto again = d.trace->spans("execute_tool issue_refund", t7);
    REQUIRE(first.size() == 1);
    REQUIRE(again.size() == 1);
    auto key = attr(first[0], "troupe.idempotency_key");
    THEN("the call has the first one's key and its result comes from the "
         "ledger") {
      CHECK(attr(again[0], "troupe.idempotency_key") == key);
      CHECK(again[0].at("status") == "ok");
      CHECK(attr(again[0], "gen_ai.tool.call.result")
            == attr(first[0], "gen_ai.tool.call.result"));
      auto replayed = d.trace->tool_events("tool.replayed", "issue_refund", t7);
      REQUIRE(replayed.size() == 1);
      CHECK(attr(replayed[0], "troupe.idempotency_key") == key);
      // Whatever else was answered from the ledger (the first run's retry
      // may be) was that same refund.
      for (const auto& e : d.trace->events("tool.replayed")) {
        CHECK(attr(e, "gen_ai.tool.name") == "issue_refund");
        CHECK(attr(e, "troupe.idempotency_key") == key);
      }
    }
    THEN("the report says so") {
      CHECK_THAT(d.block.at(7), Catch::Contains("ledger: issue_refund")
                                  && Catch::Contains("-> complete")
                                  && Catch::Contains("issued once"));
    }
  }
}

SCENARIO("the refund desk: a human denies A-1002, the policy denies A-1003",
         "[examples][guardrails]") {
  const auto& d = desk();
  INFO("stdout:\n" << d.text);
  auto t1 = tid(d, 1), t2 = tid(d, 2), t3 = tid(d, 3);
  GIVEN("A-1001 (120 USD)") {
    THEN("the desk lead was asked and approved") {
      auto asked = d.trace->events("approval.requested", t1);
      auto decided = d.trace->events("approval.decided", t1);
      REQUIRE(asked.size() == 1);
      REQUIRE(decided.size() == 1);
      CHECK(attr(asked[0], "troupe.approval.action") == "issue_refund");
      CHECK(attr(decided[0], "troupe.approval.id")
            == attr(asked[0], "troupe.approval.id"));
      CHECK(attr(decided[0], "troupe.approval.verdict") == "approve");
      CHECK(attr(decided[0], "troupe.approval.who") == "desk-lead");
    }
  }
  GIVEN("A-1002 (450 USD)") {
    THEN("the desk lead was asked and denied, and nothing was paid") {
      auto asked = d.trace->events("approval.requested", t2);
      auto decided = d.trace->events("approval.decided", t2);
      REQUIRE(asked.size() == 1);
      REQUIRE(decided.size() == 1);
      CHECK(attr(asked[0], "troupe.approval.action") == "issue_refund");
      CHECK(attr(decided[0], "troupe.approval.verdict") == "deny");
      CHECK(attr(decided[0], "troupe.approval.who") == "desk-lead");
      CHECK_THAT(attr(decided[0], "troupe.approval.note"),
                 Catch::Contains("over 300 USD"));
      for (const auto& call : d.trace->spans("execute_tool issue_refund", t2))
        CHECK(call.at("status") != "ok");
      CHECK(attr(run_span(d, 2), "troupe.run.status") == "complete");
      CHECK_THAT(d.block.at(2),
                 Catch::Contains("approval: " + attr(asked[0],
                                                     "troupe.approval.id"))
                   && Catch::Contains("answer: I could not issue the refund "
                                      "for order A-1002")
                   && Catch::Contains("denied 'issue_refund'"));
    }
  }
  GIVEN("A-1003 (2400 USD)") {
    THEN("rule 'refunds-need-a-human' denied it outright: no human was "
         "asked, nothing was paid") {
      CHECK(d.trace->events("approval.requested", t3).empty());
      auto decisions = d.trace->tool_events("policy.decision", "issue_refund", t3);
      REQUIRE(decisions.size() == 1);
      CHECK(attr(decisions[0], "troupe.policy.decision") == "deny");
      CHECK(attr(decisions[0], "troupe.policy.rule") == "refunds-need-a-human");
      auto rejected = d.trace->tool_events("tool.rejected", "issue_refund", t3);
      REQUIRE(rejected.size() == 1);
      CHECK_THAT(attr(rejected[0], "troupe.observation"),
                 Catch::Contains("denied by rule 'refunds-need-a-human'"));
      CHECK(d.trace->spans("execute_tool issue_refund", t3).empty());
      CHECK_THAT(d.block.at(3),
                 Catch::Contains("issue_refund -> deny by rule "
                                 "'refunds-need-a-human'")
                   && Catch::Contains("answer: Order A-1003 is above what the "
                                      "desk may refund"));
    }
  }
  THEN("both were drafted, neither was paid") {
    std::vector<std::string> drafted, paid;
    for (const auto& r : d.drafts)
      drafted.push_back(r.at("args").at("order_id").get<std::string>());
    for (const auto& r : d.refunds)
      paid.push_back(r.at("args").at("order_id").get<std::string>());
    CHECK(drafted == std::vector<std::string>{"A-1001", "A-1002", "A-1003"});
    CHECK(paid == std::vector<std::string>{"A-1001"});
  }
}

SCENARIO("the refund desk's mail breaker opens after three failures and "
         "closes after a probe",
         "[examples][guardrails]") {
  const auto& d = desk();
  INFO("stdout:\n" << d.text);
  auto transitions = d.trace->tool_events("breaker.transition", "send_email");
  std::vector<std::string> path;
  for (const auto& t : transitions)
    path.push_back(attr(t, "troupe.breaker.from") + " -> "
                   + attr(t, "troupe.breaker.to"));
  THEN("closed -> open in the first run, then half_open -> closed in the "
       "seventh") {
    REQUIRE(path
            == std::vector<std::string>{"closed -> open", "open -> half_open",
                                        "half_open -> closed"});
    CHECK(during(transitions[0], run_span(d, 1)));
    CHECK(during(transitions[2], run_span(d, 7)));
    // The cool-down (1 s) passed between opening and the probe.
    CHECK(transitions[1].at("time_ns").get<int64_t>()
            - transitions[0].at("time_ns").get<int64_t>()
          >= 1'000'000'000);
    CHECK_THAT(d.block.at(1), Catch::Contains("breaker: send_email closed -> "
                                              "open"));
    CHECK_THAT(d.block.at(7), Catch::Contains("breaker: send_email half_open "
                                              "-> closed"));
    CHECK_THAT(d.text, Catch::Contains("mail breaker: closed"));
  }
  THEN("the first run retried the transient failures, then failed fast on "
       "the open circuit") {
    auto t1 = tid(d, 1);
    auto retries = d.trace->tool_events("tool.retry", "send_email", t1);
    REQUIRE(!retries.empty());
    for (const auto& r : retries)
      CHECK(attr(r, "error.type") == "transient");
    auto calls = d.trace->spans("execute_tool send_email", t1);
    REQUIRE(calls.size() == 2);
    for (const auto& c : calls)
      CHECK(c.at("status") == "error");
    std::sort(calls.begin(), calls.end(), [](const json& a, const json& b) {
      return a.at("start_ns").get<int64_t>() < b.at("start_ns").get<int64_t>();
    });
    CHECK_THAT(calls[1].value("status_message", ""),
               Catch::Contains("circuit open for tool 'send_email'"));
    CHECK_THAT(d.block.at(1), Catch::Contains("retry: send_email attempt 2")
                                && Catch::Contains("mail service is down"));
  }
  THEN("the one email in the outbox is the seventh run's probe") {
    REQUIRE(d.outbox.size() == 1);
    CHECK(d.outbox[0].at("run_id") == attr(run_span(d, 7), "troupe.run.id"));
    CHECK(d.outbox[0].at("args").at("to") == "ada@example.com");
  }
}

SCENARIO("the refund desk halts a loop and sends an unsure reply back",
         "[examples][guardrails]") {
  const auto& d = desk();
  INFO("stdout:\n" << d.text);
  GIVEN("the fourth run, which keeps looking A-1004 up") {
    auto t4 = tid(d, 4);
    const auto& run = run_span(d, 4);
    THEN("it is halted as a loop before the third identical call runs") {
      CHECK(attr(run, "troupe.run.status") == "halted");
      CHECK_THAT(run.value("status_message", ""),
                 Catch::Contains("loop suspected"));
      auto warnings = d.trace->events("guardrail.warning", t4);
      REQUIRE(warnings.size() == 1);
      CHECK_THAT(attr(warnings[0], "troupe.warning"),
                 Catch::Contains("loop suspected: tool 'get_order' called 3 "
                                 "times with the same arguments")
                   && Catch::Contains("A-1004"));
      CHECK(d.trace->spans("execute_tool get_order", t4).size() == 2);
      CHECK_THAT(d.block.at(4), Catch::Contains("-> halted after")
                                  && Catch::Contains("loop suspected"));
      CHECK(count_of(d.block.at(4), "warning: loop suspected") == 1);
    }
  }
  GIVEN("the fifth run, whose first reply has confidence 0.55") {
    auto t5 = tid(d, 5);
    THEN("the reply is routed to clarify, and the run then completes") {
      auto routes = d.trace->events("confidence.route", t5);
      REQUIRE(!routes.empty());
      CHECK(attrs_of(routes[0]).value("troupe.confidence", 0.0)
            == Approx(0.55));
      CHECK(attr(routes[0], "troupe.confidence.route") == "clarify");
      CHECK(attr(run_span(d, 5), "troupe.run.status") == "complete");
      CHECK_THAT(d.block.at(5), Catch::Contains("confidence: 0.55 -> clarify")
                                  && Catch::Contains("30-day refund window"));
    }
  }
}

SCENARIO("the refund desk's money budget warns at 80 percent, halts a run, "
         "refuses the next, and is never overspent",
         "[examples][guardrails]") {
  const auto& d = desk();
  INFO("stdout:\n" << d.text);
  constexpr int64_t limit_micro_usd = 70'000; // $0.07
  auto chats = d.trace->spans("chat ");
  auto spent = spent_micro_usd(chats);
  THEN("one warning, once the spend reached 80% of $0.07") {
    std::vector<json> warnings;
    for (const auto& w : d.trace->events("guardrail.warning"))
      if (attr(w, "troupe.warning").find("80%") != std::string::npos)
        warnings.push_back(w);
    REQUIRE(warnings.size() == 1);
    auto text = attr(warnings[0], "troupe.warning");
    std::smatch m;
    REQUIRE(std::regex_search(text, m,
                              std::regex{R"(budget 'global': 80% of its cost )"
                                         R"(limit reached \(\$([0-9.]+) of )"
                                         R"(\$0\.0700\))"}));
    auto at = std::stod(m[1]);
    CHECK(at >= 0.056);
    CHECK(at <= 0.07);
    // Printed once, in the run it happened in.
    CHECK(count_of(d.text, "warning: budget 'global': 80%") == 1);
    size_t run = 0;
    for (size_t i = 1; i <= desk_runs; ++i)
      if (d.block.at(static_cast<int>(i)).find("warning: budget 'global': 80%")
          != std::string::npos)
        run = i;
    REQUIRE(run != 0);
    CHECK(warnings[0].at("trace_id") == tid(d, run));
  }
  THEN("the eighth run is halted by the budget after its first step") {
    const auto& r8 = run_span(d, 8);
    CHECK(attr(r8, "troupe.run.status") == "halted");
    CHECK(attrs_of(r8).value("troupe.run.steps", -1) == 1);
    CHECK_THAT(r8.value("status_message", ""),
               Catch::Contains("budget 'global' exhausted"));
    CHECK_THAT(d.block.at(8), Catch::Contains("-> halted after 1 step(s)")
                                && Catch::Contains("budget 'global' exhausted"));
  }
  THEN("the ninth run is refused without a model call") {
    const auto& r9 = run_span(d, 9);
    CHECK(attr(r9, "troupe.run.status") == "halted");
    CHECK(attrs_of(r9).value("troupe.run.steps", -1) == 0);
    CHECK_THAT(r9.value("status_message", ""),
               Catch::StartsWith("refused: budget 'global' exhausted"));
    CHECK(d.trace->spans("chat ", tid(d, 9)).empty());
    CHECK_THAT(d.block.at(9), Catch::Contains("-> halted after 0 step(s), "
                                              "$0.0000: refused: budget "
                                              "'global' exhausted"));
  }
  THEN("the model calls in the trace cost at most $0.07, as the report says") {
    CHECK(spent <= limit_micro_usd);
    CHECK(spent > limit_micro_usd * 8 / 10);
    std::smatch m;
    REQUIRE(std::regex_search(d.text, m,
                              std::regex{R"(budget: \$([0-9.]+) of \$0\.07 )"
                                         R"(spent in (\d+) steps)"}));
    auto reported = std::stod(m[1]);
    CHECK(reported <= 0.07);
    CHECK(reported == Approx(spent / 1e6).margin(0.00005));
    CHECK(std::stoul(m[2]) == chats.size());
    // And run by run.
    double sum = 0;
    static const std::regex run_cost{R"(-> [a-z_]+ after \d+ step\(s\), \$([0-9.]+))"};
    for (size_t i = 1; i <= desk_runs; ++i) {
      INFO("run " << i);
      REQUIRE(std::regex_search(d.block.at(static_cast<int>(i)), m, run_cost));
      sum += std::stod(m[1]);
    }
    CHECK(sum <= 0.07 + 0.0005); // nine figures rounded to 4 places
    CHECK(sum == Approx(spent / 1e6).margin(0.0005));
  }
}

// -- refund.swarm.json through the CLI ----------------------------------------

SCENARIO("troupe approvals deny stops the swarm's refund; the run goes on "
         "without paying",
         "[examples][guardrails][approvals]") {
  paused_refund_run run;
  run.wait_until_pending();
  INFO("listing:\n" << run.listing);
  THEN("the listing shows the real request") {
    CHECK_THAT(run.listing,
               Catch::Contains(run.request_id + "  support  issue_refund  "
                                                "waiting ")
                 && Catch::Contains(R"(  args:   {"amount":120,"order_id":"A-1001"})")
                 && Catch::Contains("  reason: refunds of 100 USD or more need "
                                    "a human")
                 && Catch::Contains("1 pending approval request at "
                                    + run.address));
  }
  WHEN("a human denies it with a note") {
    auto p = run_command(troupe_cmd("approvals deny " + run.request_id
                                    + " --as tester --note 'call the customer"
                                      " first' --timeout 10 --connect "
                                    + run.address));
    INFO("approvals deny: " << p.out << p.err);
    REQUIRE(p.exit_code == 0);
    CHECK_THAT(p.out, Catch::StartsWith("denied " + run.request_id
                                        + ": issue_refund"));
    auto done = finish(run);
    INFO("troupe run stderr:\n" << done.err);
    THEN("the agent reads the denial and the note, answers, and nothing is "
         "paid") {
      CHECK(done.exit_code == 0);
      CHECK_THAT(done.answer,
                 Catch::Contains("I could not issue the refund for order "
                                 "A-1001")
                   && Catch::Contains("a human (tester) denied 'issue_refund': "
                                      "call the customer first"));
      CHECK(jsonl(run.dir.file("refunds.jsonl")).empty());
      CHECK(jsonl(run.dir.file("outbox.jsonl")).empty());
      CHECK(jsonl(run.dir.file("refund-drafts.jsonl")).size() == 1);
      trace_file trace{run.trace};
      auto decided = trace.events("approval.decided");
      REQUIRE(decided.size() == 1);
      CHECK(attr(decided[0], "troupe.approval.id") == run.request_id);
      CHECK(attr(decided[0], "troupe.approval.verdict") == "deny");
      CHECK(attr(decided[0], "troupe.approval.who") == "tester");
      CHECK(attr(decided[0], "troupe.approval.note")
            == "call the customer first");
      for (const auto& call : trace.spans("execute_tool issue_refund"))
        CHECK(call.at("status") != "ok");
      CHECK(trace.tool_events("tool.retry", "issue_refund").empty());
      REQUIRE(trace.runs.size() == 1);
      CHECK(attr(trace.runs[0], "troupe.run.status") == "complete");
    }
  }
}

SCENARIO("troupe approvals approve lets the swarm's refund through, paid "
         "once despite the retry",
         "[examples][guardrails][approvals]") {
  paused_refund_run run;
  run.wait_until_pending();
  WHEN("a human approves it") {
    auto p = run_command(troupe_cmd("approvals approve " + run.request_id
                                    + " --as tester --note 'fine' --timeout 10 "
                                      "--connect "
                                    + run.address));
    INFO("approvals approve: " << p.out << p.err);
    REQUIRE(p.exit_code == 0);
    CHECK_THAT(p.out, Catch::StartsWith("approved " + run.request_id
                                        + ": issue_refund"));
    auto done = finish(run);
    INFO("troupe run stderr:\n" << done.err);
    THEN("the refund is paid once though its first attempt timed out") {
      CHECK(done.exit_code == 0);
      CHECK_THAT(done.answer, Catch::Contains("The refund for order A-1001 "
                                              "(120 USD) is issued"));
      auto refunds = jsonl(run.dir.file("refunds.jsonl"));
      REQUIRE(refunds.size() == 1);
      CHECK(refunds[0].at("args").at("order_id") == "A-1001");
      CHECK(refunds[0].at("args").at("amount") == 120);
      trace_file trace{run.trace};
      auto decided = trace.events("approval.decided");
      REQUIRE(decided.size() == 1);
      CHECK(attr(decided[0], "troupe.approval.id") == run.request_id);
      CHECK(attr(decided[0], "troupe.approval.verdict") == "approve");
      CHECK(attr(decided[0], "troupe.approval.who") == "tester");
      auto retries = trace.tool_events("tool.retry", "issue_refund");
      REQUIRE(!retries.empty());
      CHECK(attr(retries[0], "error.type") == "timeout");
      auto calls = trace.spans("execute_tool issue_refund");
      REQUIRE(calls.size() == 1);
      CHECK(calls[0].at("status") == "ok");
      CHECK(attrs_of(calls[0]).value("troupe.tool.attempts", 0) >= 2);
      CHECK(refunds[0].at("key") == attr(calls[0], "troupe.idempotency_key"));
    }
    THEN("the mail breaker opened and no email went out") {
      CHECK(done.exit_code == 0);
      trace_file trace{run.trace};
      auto transitions = trace.tool_events("breaker.transition", "send_email");
      REQUIRE(!transitions.empty());
      CHECK(attr(transitions[0], "troupe.breaker.from") == "closed");
      CHECK(attr(transitions[0], "troupe.breaker.to") == "open");
      CHECK(jsonl(run.dir.file("outbox.jsonl")).empty());
      CHECK_THAT(done.answer, Catch::Contains("mail service is down"));
    }
  }
}

SCENARIO("troupe run on the refund swarm: the policy decides small and huge "
         "refunds without a human",
         "[examples][guardrails]") {
  temp_dir dir;
  auto trace_path = dir.file("trace.jsonl");
  auto run = [&](const std::string& goal) {
    // No gate is served: a request for approval would wait out --timeout.
    return run_command("cd " + shell_quote(dir.path().string()) + " && "
                       + troupe_cmd("run " + shell_quote(refund_swarm())
                                    + " --goal " + shell_quote(goal)
                                    + " --timeout 30 --trace "
                                    + shell_quote(trace_path)));
  };
  WHEN("A-1005 (35 USD) arrived broken") {
    auto p = run("Order A-1005 arrived broken. Please refund it.");
    INFO(p.out << p.err);
    THEN("rule 'small-refunds' lets it through and it is paid once") {
      CHECK(p.exit_code == 0);
      CHECK_THAT(p.out, Catch::Contains("The refund for order A-1005 (35 USD) "
                                        "is issued"));
      auto refunds = jsonl(dir.file("refunds.jsonl"));
      REQUIRE(refunds.size() == 1);
      CHECK(refunds[0].at("args").at("order_id") == "A-1005");
      trace_file trace{trace_path};
      CHECK(trace.events("approval.requested").empty());
      auto decisions = trace.tool_events("policy.decision", "issue_refund");
      REQUIRE(decisions.size() == 1);
      CHECK(attr(decisions[0], "troupe.policy.decision") == "allow");
      CHECK(attr(decisions[0], "troupe.policy.rule") == "small-refunds");
    }
  }
  WHEN("A-1003 (2400 USD) arrived broken") {
    auto p = run("Order A-1003 arrived broken. Please refund it.");
    INFO(p.out << p.err);
    THEN("rule 'refunds-need-a-human' denies it and nothing is paid") {
      CHECK(p.exit_code == 0);
      CHECK_THAT(p.out,
                 Catch::Contains("denied by rule 'refunds-need-a-human'"));
      CHECK(jsonl(dir.file("refunds.jsonl")).empty());
      trace_file trace{trace_path};
      CHECK(trace.events("approval.requested").empty());
      auto decisions = trace.tool_events("policy.decision", "issue_refund");
      REQUIRE(decisions.size() == 1);
      CHECK(attr(decisions[0], "troupe.policy.decision") == "deny");
      CHECK(attr(decisions[0], "troupe.policy.rule") == "refunds-need-a-human");
    }
  }
}

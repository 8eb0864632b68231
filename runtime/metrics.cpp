#include "runtime/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <deque>
#include <initializer_list>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>

#include "runtime/store.hpp"

namespace troupe {

namespace {

using prometheus::Counter;
using prometheus::Gauge;
using prometheus::Histogram;

using buckets = Histogram::BucketBoundaries;

/// Calls and waits inside a process: 1 ms .. 60 s.
const buckets latency_buckets{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                              0.25,  0.5,    1,     2.5,  5,     10,   30,
                              60};

/// Whole runs and their time in the queue: 50 ms .. 1 h.
const buckets run_buckets{0.05, 0.1, 0.25, 0.5, 1,   2.5, 5,   10,
                          30,   60,  120,  300, 600, 1800, 3600};

/// A human's answer: 1 s .. 1 day.
const buckets human_buckets{1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600,
                            14400, 86400};

/// Steps of a run (agents allow up to 10000).
const buckets step_buckets{1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 610,
                           1597, 10000};

/// The longest label value kept as it is.
constexpr size_t max_label_bytes = 128;

/// Whether `s` is valid UTF-8 without control characters.
bool printable_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if (c < 0x20 || c == 0x7f)
        return false;
      ++i;
      continue;
    }
    size_t len = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > s.size())
      return false;
    uint32_t cp = c & (0xff >> (len + 1));
    for (size_t k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 0x2)
        return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    // Overlong forms, surrogates and values past Unicode are not UTF-8.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800)
        || (len == 4 && cp < 0x10000) || cp > 0x10ffff
        || (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp < 0xa0))
      return false;
    i += len;
  }
  return true;
}

/// The values one label of one metric has taken.
struct label_bound {
  std::unordered_set<std::string> seen;

  /// `v` as the label's value: itself while there is room, else "other".
  std::string admit(const std::string& v, size_t max_values) {
    if (v.empty())
      return "unknown";
    if (v.size() > max_label_bytes || !printable_utf8(v))
      return "other";
    if (seen.count(v) != 0)
      return v;
    if (seen.size() >= max_values)
      return "other";
    seen.insert(v);
    return v;
  }
};

/// One metric family with its label names, their bounds and its series by
/// (bounded) label values. Series pointers stay valid as long as the
/// registry: nothing is ever removed.
template <class T>
struct family {
  prometheus::Family<T>* fam = nullptr;
  std::vector<std::string> names;
  std::vector<label_bound> bounds;
  std::map<std::vector<std::string>, T*> series;
  buckets bounds_of_histogram;
};

/// Registers a family of metric type T.
template <class T>
family<T> make_family(prometheus::Registry& registry, const char* name,
                      const char* help, std::vector<std::string> labels,
                      buckets b = {}) {
  family<T> f;
  if constexpr (std::is_same<T, Counter>::value)
    f.fam = &prometheus::BuildCounter().Name(name).Help(help).Register(registry);
  else if constexpr (std::is_same<T, Gauge>::value)
    f.fam = &prometheus::BuildGauge().Name(name).Help(help).Register(registry);
  else
    f.fam =
      &prometheus::BuildHistogram().Name(name).Help(help).Register(registry);
  f.bounds.resize(labels.size());
  f.names = std::move(labels);
  f.bounds_of_histogram = std::move(b);
  return f;
}

// -- reading records ----------------------------------------------------------

/// A record's attributes: an object, or null for none. Anything else makes
/// the record malformed (nullptr).
const json* attributes_of(const json& record) {
  static const json empty = json::object();
  auto i = record.find("attributes");
  if (i == record.end() || i->is_null())
    return &empty;
  return i->is_object() ? &*i : nullptr;
}

/// A string field; nullopt when missing or not a string.
std::optional<std::string> text(const json& obj, const char* key) {
  auto i = obj.find(key);
  if (i == obj.end() || !i->is_string())
    return std::nullopt;
  return i->get<std::string>();
}

/// A model's label: its name, but a scripted model's script by file name
/// only ("scripted:/srv/swarms/support.json" -> "scripted:support.json"), so
/// where a server keeps its files neither shows in metrics nor splits them.
std::string model_label(std::string name) {
  static const std::string scripted = "scripted:";
  if (name.compare(0, scripted.size(), scripted) != 0)
    return name;
  auto slash = name.find_last_of('/');
  if (slash == std::string::npos || slash < scripted.size())
    return name;
  return scripted + name.substr(slash + 1);
}

std::optional<std::string> model_text(const json& obj, const char* key) {
  auto v = text(obj, key);
  if (v)
    *v = model_label(std::move(*v));
  return v;
}

/// What an optional number field holds: absent, a usable value (finite and
/// not negative), or bad (any other type or value).
struct number_field {
  bool present = false;
  bool bad = false;
  double value = 0;
};

number_field number(const json& obj, const char* key) {
  number_field out;
  auto i = obj.find(key);
  if (i == obj.end() || i->is_null())
    return out;
  out.present = true;
  if (!i->is_number()) {
    out.bad = true;
    return out;
  }
  out.value = i->get<double>();
  out.bad = !std::isfinite(out.value) || out.value < 0;
  return out;
}

/// The text after `prefix` when `s` starts with it.
std::optional<std::string> after(const std::string& s, std::string_view prefix) {
  if (s.size() < prefix.size() || s.compare(0, prefix.size(), prefix) != 0)
    return std::nullopt;
  return s.substr(prefix.size());
}

/// An attribute naming something, else the span name's tail; nullopt when
/// the attribute is there but not a string.
std::optional<std::string> subject(const json& attrs, const char* key,
                                   const std::string& tail) {
  auto i = attrs.find(key);
  if (i == attrs.end())
    return tail;
  if (!i->is_string())
    return std::nullopt;
  auto v = i->get<std::string>();
  return v.empty() ? tail : v;
}

} // namespace

// -- the registry -------------------------------------------------------------

struct metrics::impl {
  explicit impl(size_t max_values) : max_values(max_values) {
    auto& r = registry;
    // Trace records.
    model_calls = make_family<Counter>(
      r, "troupe_model_calls_total",
      "Model calls (chat spans) by model and outcome (ok, error, or replayed "
      "from the journal of a resumed run: no tokens, cost or latency counted).",
      {"model", "outcome"});
    model_duration = make_family<Histogram>(
      r, "troupe_model_call_duration_seconds",
      "How long model calls took, in seconds, by model.", {"model"},
      latency_buckets);
    model_tokens = make_family<Counter>(
      r, "troupe_model_tokens_total",
      "Tokens model calls used, by model and kind (input or output).",
      {"model", "kind"});
    model_cost = make_family<Counter>(
      r, "troupe_model_cost_usd_total",
      "What model calls cost by the price table, in US dollars, by model.",
      {"model"});
    model_retries = make_family<Counter>(
      r, "troupe_model_retries_total",
      "Model calls sent again after a retryable failure, by model.",
      {"model"});
    model_fallbacks = make_family<Counter>(
      r, "troupe_model_fallbacks_total",
      "Times a fallback chain moved past a failed model, by that model.",
      {"model"});
    model_cache_hits = make_family<Counter>(
      r, "troupe_model_cache_hits_total",
      "Model calls answered from the response cache, by model.", {"model"});
    tool_calls = make_family<Counter>(
      r, "troupe_tool_calls_total",
      "Tool calls (execute_tool spans) by tool and outcome (ok or error).",
      {"tool", "outcome"});
    tool_duration = make_family<Histogram>(
      r, "troupe_tool_call_duration_seconds",
      "How long tool calls took, retries included, in seconds, by tool.",
      {"tool"}, latency_buckets);
    tool_errors = make_family<Counter>(
      r, "troupe_tool_call_errors_total",
      "Failed tool calls by tool and error type.", {"tool", "type"});
    tool_retries = make_family<Counter>(
      r, "troupe_tool_retries_total",
      "Tool call attempts after the first, by tool.", {"tool"});
    tool_rejections = make_family<Counter>(
      r, "troupe_tool_rejections_total",
      "Tool calls a model proposed that the agent refused before they ran, "
      "by error type.",
      {"type"});
    agent_runs = make_family<Counter>(
      r, "troupe_agent_runs_total",
      "Runs of agents and teams (invoke_agent spans) by agent and status.",
      {"agent", "status"});
    agent_duration = make_family<Histogram>(
      r, "troupe_agent_run_duration_seconds",
      "How long runs of agents and teams took, in seconds, by agent.",
      {"agent"}, run_buckets);
    agent_steps = make_family<Counter>(
      r, "troupe_agent_steps_total",
      "Agent steps (one model call each, with its tool calls), by agent.",
      {"agent"});
    breaker_state = make_family<Gauge>(
      r, "troupe_breaker_state",
      "State of each tool's circuit breaker: 0 closed, 1 half_open, 2 open.",
      {"tool"});
    breaker_transitions = make_family<Counter>(
      r, "troupe_breaker_transitions_total",
      "Circuit breaker state changes by tool and the state entered.",
      {"tool", "to"});
    budget_denials = make_family<Counter>(
      r, "troupe_budget_denials_total",
      "Model calls a budget refused, by the limit that refused them.",
      {"limit"});
    budget_warnings = make_family<Counter>(
      r, "troupe_budget_warnings_total",
      "Budget accounts that crossed their warning share of a limit, by limit.",
      {"limit"});
    limiter_wait = make_family<Histogram>(
      r, "troupe_limiter_queue_wait_seconds",
      "How long calls waited in a rate or concurrency limiter's queue, in "
      "seconds, by kind (tool or model) and target.",
      {"kind", "target"}, latency_buckets);
    approval_requests = make_family<Counter>(
      r, "troupe_approval_requests_total",
      "Actions that waited for a human's approval.", {});
    approval_decisions = make_family<Counter>(
      r, "troupe_approval_decisions_total",
      "Approval decisions by verdict (approve, deny, expired).", {"verdict"});
    approval_wait = make_family<Histogram>(
      r, "troupe_approval_wait_seconds",
      "How long approval requests waited for their decision, in seconds.", {},
      human_buckets);
    policy_decisions = make_family<Counter>(
      r, "troupe_policy_decisions_total",
      "Policy decisions on tool calls by decision.", {"decision"});
    guardrail_warnings = make_family<Counter>(
      r, "troupe_guardrail_warnings_total",
      "Guardrail warnings raised in runs (budget shares, loops), by agent.",
      {"agent"});
    ignored = make_family<Counter>(
      r, "troupe_trace_records_ignored_total",
      "Trace records that were malformed and so left uncounted.", {});
    // The run service.
    runs = make_family<Gauge>(
      r, "troupe_runs",
      "Runs of the run service now in each live status.", {"status"});
    runs_finished = make_family<Counter>(
      r, "troupe_runs_finished_total",
      "Runs of the run service that ended, by swarm and final status.",
      {"swarm", "status"});
    run_steps = make_family<Histogram>(
      r, "troupe_run_steps",
      "Steps finished runs took, by swarm.", {"swarm"}, step_buckets);
    run_duration = make_family<Histogram>(
      r, "troupe_run_duration_seconds",
      "How long finished runs ran, in seconds, by swarm and status.",
      {"swarm", "status"}, run_buckets);
    tokens = make_family<Counter>(
      r, "troupe_tokens_total",
      "Tokens finished runs used, by swarm and kind (input or output).",
      {"swarm", "kind"});
    cost = make_family<Counter>(
      r, "troupe_cost_usd_total",
      "What finished runs cost, in US dollars, by swarm.", {"swarm"});
    queue_depth = make_family<Gauge>(
      r, "troupe_run_queue_depth",
      "Runs waiting for room to start.", {});
    running = make_family<Gauge>(
      r, "troupe_runs_running", "Runs running now.", {});
    queue_wait = make_family<Histogram>(
      r, "troupe_run_queue_wait_seconds",
      "How long runs waited in the queue before they started, in seconds.",
      {}, run_buckets);
    // Series that exist from the start, so a scrape shows them at zero.
    std::lock_guard<std::mutex> guard{mtx};
    at(ignored, {});
    at(runs, {"queued"});
    at(runs, {"running"});
    at(queue_depth, {});
    at(running, {});
  }

  /// The series of `f` for label values `values`, bounded; mtx is held.
  template <class T>
  T& at(family<T>& f, std::initializer_list<std::string> values) {
    std::vector<std::string> key;
    key.reserve(values.size());
    size_t i = 0;
    for (const auto& v : values)
      key.push_back(f.bounds[i++].admit(v, max_values));
    return series_of(f, std::move(key));
  }

  /// The series of `f` for label values already bounded; mtx is held.
  template <class T>
  T& series_of(family<T>& f, std::vector<std::string> key) {
    auto found = f.series.find(key);
    if (found != f.series.end())
      return *found->second;
    prometheus::Labels labels;
    for (size_t k = 0; k < key.size(); ++k)
      labels.emplace(f.names[k], key[k]);
    T* series = nullptr;
    if constexpr (std::is_same<T, Histogram>::value)
      series = &f.fam->Add(labels, f.bounds_of_histogram);
    else
      series = &f.fam->Add(labels);
    f.series.emplace(std::move(key), series);
    return *series;
  }

  /// Counts a record, or counts it as ignored. Never throws.
  void observe(const json& record) noexcept;

  /// Counts a record; false when it is malformed.
  bool apply(const json& record);
  bool on_span(const json& record);
  bool on_event(const json& record);

  const size_t max_values;
  prometheus::Registry registry;
  /// Guards the families' bounds and series maps and live_runs.
  std::mutex mtx;
  family<Counter> model_calls, model_tokens, model_cost, model_retries,
    model_fallbacks, model_cache_hits, tool_calls, tool_errors, tool_retries,
    tool_rejections, agent_runs, agent_steps, breaker_transitions,
    budget_denials, budget_warnings, approval_requests, approval_decisions,
    policy_decisions, guardrail_warnings, ignored, runs_finished, tokens, cost;
  family<Gauge> breaker_state, runs, queue_depth, running;
  family<Histogram> model_duration, tool_duration, agent_duration,
    limiter_wait, approval_wait, run_steps, run_duration, queue_wait;
  /// troupe_runs's values by (bounded) status, kept here so a status that
  /// was never entered cannot go below zero.
  std::map<std::string, int64_t> live_runs;
  /// Chat spans whose reply came from the journal (a model.replayed event
  /// names the span before it ends), oldest first; bounded, in case a span
  /// never ends.
  /// The last status run_status() heard for each unfinished run.
  std::map<std::string, std::string> run_statuses;
  std::unordered_set<std::string> replayed;
  std::deque<std::string> replayed_order;
  static constexpr size_t max_replayed = 4096;
};

void metrics::impl::observe(const json& record) noexcept {
  try {
    if (apply(record))
      return;
    spdlog::debug("metrics: malformed trace record ignored");
  } catch (const std::exception& ex) {
    spdlog::debug("metrics: trace record ignored: {}", ex.what());
  }
  try {
    std::lock_guard<std::mutex> guard{mtx};
    at(ignored, {}).Increment();
  } catch (const std::exception& ex) {
    spdlog::error("metrics: cannot count an ignored trace record: {}",
                  ex.what());
  }
}

bool metrics::impl::apply(const json& record) {
  if (!record.is_object())
    return false;
  auto type = text(record, "type");
  if (!type)
    return false;
  if (*type == "span")
    return on_span(record);
  if (*type == "event")
    return on_event(record);
  // A span that begins is counted when it ends.
  return *type == "span_start";
}

bool metrics::impl::on_span(const json& record) {
  auto name = text(record, "name");
  auto status = text(record, "status");
  const auto* attrs = attributes_of(record);
  if (!name || !status || attrs == nullptr)
    return false;
  auto seconds = [&record]() -> std::optional<double> {
    auto ms = number(record, "duration_ms");
    if (!ms.present || ms.bad)
      return std::nullopt;
    return ms.value / 1000;
  };
  bool ok = *status == "ok";
  if (auto tail = after(*name, "chat ")) {
    auto model = subject(*attrs, "gen_ai.request.model", *tail);
    if (model)
      *model = model_label(std::move(*model));
    auto duration = seconds();
    auto in = number(*attrs, "gen_ai.usage.input_tokens");
    auto out = number(*attrs, "gen_ai.usage.output_tokens");
    auto nusd = number(*attrs, "troupe.cost_nusd");
    if (!model || !duration || in.bad || out.bad || nusd.bad)
      return false;
    std::lock_guard<std::mutex> guard{mtx};
    auto span = text(record, "span_id");
    if (span && replayed.erase(*span) > 0) {
      // Paid for by the attempt that first got it.
      at(model_calls, {*model, "replayed"}).Increment();
      return true;
    }
    at(model_calls, {*model, ok ? "ok" : "error"}).Increment();
    at(model_duration, {*model}).Observe(*duration);
    if (in.present)
      at(model_tokens, {*model, "input"}).Increment(in.value);
    if (out.present)
      at(model_tokens, {*model, "output"}).Increment(out.value);
    if (nusd.present)
      at(model_cost, {*model}).Increment(nusd.value / 1e9);
    return true;
  }
  if (auto tail = after(*name, "execute_tool ")) {
    auto tool = subject(*attrs, "gen_ai.tool.name", *tail);
    auto duration = seconds();
    if (!tool || !duration)
      return false;
    if (auto i = attrs->find("troupe.tool.ok"); i != attrs->end()) {
      if (!i->is_boolean())
        return false;
      ok = i->get<bool>();
    }
    std::string type;
    if (!ok) {
      auto i = attrs->find("error.type");
      if (i != attrs->end() && !i->is_string())
        return false;
      type = i != attrs->end() ? i->get<std::string>() : "";
    }
    std::lock_guard<std::mutex> guard{mtx};
    at(tool_calls, {*tool, ok ? "ok" : "error"}).Increment();
    at(tool_duration, {*tool}).Observe(*duration);
    if (!ok)
      at(tool_errors, {*tool, type}).Increment();
    return true;
  }
  if (auto tail = after(*name, "invoke_agent ")) {
    auto agent = subject(*attrs, "gen_ai.agent.name", *tail);
    auto duration = seconds();
    auto i = attrs->find("troupe.run.status");
    if (!agent || !duration || (i != attrs->end() && !i->is_string()))
      return false;
    auto run_status = i != attrs->end() ? i->get<std::string>() : "";
    std::lock_guard<std::mutex> guard{mtx};
    at(agent_runs, {*agent, run_status}).Increment();
    at(agent_duration, {*agent}).Observe(*duration);
    return true;
  }
  if (after(*name, "step ")) {
    auto agent = text(*attrs, "gen_ai.agent.name");
    if (!agent)
      return false;
    std::lock_guard<std::mutex> guard{mtx};
    at(agent_steps, {*agent}).Increment();
    return true;
  }
  return true;
}

bool metrics::impl::on_event(const json& record) {
  auto name = text(record, "name");
  const auto* attrs = attributes_of(record);
  if (!name || attrs == nullptr)
    return false;
  const auto& a = *attrs;
  /// Counts `f` under the string attribute `key`; false when it is missing.
  auto count_by = [this, &a](family<Counter>& f, const char* key,
                             bool is_model = false) {
    auto v = is_model ? model_text(a, key) : text(a, key);
    if (!v)
      return false;
    std::lock_guard<std::mutex> guard{mtx};
    at(f, {*v}).Increment();
    return true;
  };
  if (*name == "breaker.transition") {
    auto tool = text(a, "gen_ai.tool.name");
    auto to = text(a, "troupe.breaker.to");
    if (!tool || !to)
      return false;
    double value = 0;
    if (*to == "closed")
      value = 0;
    else if (*to == "half_open")
      value = 1;
    else if (*to == "open")
      value = 2;
    else
      return false;
    std::lock_guard<std::mutex> guard{mtx};
    at(breaker_state, {*tool}).Set(value);
    at(breaker_transitions, {*tool, *to}).Increment();
    return true;
  }
  if (*name == "budget.denied")
    return count_by(budget_denials, "troupe.budget.limit");
  if (*name == "budget.warning")
    return count_by(budget_warnings, "troupe.budget.limit");
  if (*name == "limiter.wait") {
    auto tool = text(a, "gen_ai.tool.name");
    auto model = model_text(a, "gen_ai.request.model");
    auto ms = number(a, "troupe.wait_ms");
    if ((!tool && !model) || !ms.present || ms.bad)
      return false;
    std::lock_guard<std::mutex> guard{mtx};
    at(limiter_wait, {tool ? "tool" : "model", tool ? *tool : *model})
      .Observe(ms.value / 1000);
    return true;
  }
  if (*name == "tool.retry")
    return count_by(tool_retries, "gen_ai.tool.name");
  if (*name == "model.retry")
    return count_by(model_retries, "gen_ai.request.model", true);
  if (*name == "model.fallback")
    return count_by(model_fallbacks, "troupe.model.failed", true);
  if (*name == "model.cache_hit")
    return count_by(model_cache_hits, "gen_ai.request.model", true);
  if (*name == "model.replayed") {
    auto span = text(record, "span_id");
    if (!span)
      return false;
    std::lock_guard<std::mutex> guard{mtx};
    if (replayed.insert(*span).second) {
      replayed_order.push_back(*span);
      if (replayed_order.size() > max_replayed) {
        replayed.erase(replayed_order.front());
        replayed_order.pop_front();
      }
    }
    return true;
  }
  if (*name == "approval.gate.pending") {
    std::lock_guard<std::mutex> guard{mtx};
    at(approval_requests, {}).Increment();
    return true;
  }
  if (*name == "approval.gate.decided") {
    auto verdict = text(a, "troupe.approval.verdict");
    auto waited = number(a, "troupe.approval.waited_ms");
    if (!verdict || waited.bad)
      return false;
    std::lock_guard<std::mutex> guard{mtx};
    at(approval_decisions, {*verdict}).Increment();
    if (waited.present)
      at(approval_wait, {}).Observe(waited.value / 1000);
    return true;
  }
  if (*name == "policy.decision")
    return count_by(policy_decisions, "troupe.policy.decision");
  if (*name == "tool.rejected")
    return count_by(tool_rejections, "error.type");
  if (*name == "guardrail.warning")
    return count_by(guardrail_warnings, "gen_ai.agent.name");
  return true;
}

// -- metrics ------------------------------------------------------------------

metrics::metrics(metrics_options opts) {
  if (opts.max_label_values == 0)
    throw std::invalid_argument("metrics: max_label_values must be at least 1");
  impl_ = std::make_shared<impl>(opts.max_label_values);
}

metrics::~metrics() = default;

trace_listener metrics::listener() {
  // Holds the state, not `this`: the tracer may outlive this object.
  return [state = impl_](const json& record) { state->observe(record); };
}

void metrics::observe(const json& record) noexcept {
  impl_->observe(record);
}

std::string metrics::render() const {
  prometheus::TextSerializer serializer;
  return serializer.Serialize(impl_->registry.Collect());
}

void metrics::run_status_changed(const std::string& swarm,
                                 const std::string& from,
                                 const std::string& to) {
  if (to.empty()) {
    spdlog::warn("metrics: run of swarm '{}' changed to an empty status",
                 swarm);
    return;
  }
  auto& st = *impl_;
  std::lock_guard<std::mutex> guard{st.mtx};
  auto move = [&st](const std::string& status, int64_t by) {
    // Counted under the label value the gauge shows (bounded).
    auto label = st.runs.bounds[0].admit(status, st.max_values);
    auto& n = st.live_runs[label];
    n = std::max<int64_t>(n + by, 0);
    st.series_of(st.runs, {label}).Set(static_cast<double>(n));
  };
  if (!from.empty() && !is_finished_status(from))
    move(from, -1);
  if (is_finished_status(to))
    st.at(st.runs_finished, {swarm, to}).Increment();
  else
    move(to, +1);
}

void metrics::run_status(const std::string& run_id, const std::string& swarm,
                         const std::string& to) {
  std::string from;
  {
    auto& st = *impl_;
    std::lock_guard<std::mutex> guard{st.mtx};
    auto i = st.run_statuses.find(run_id);
    if (i != st.run_statuses.end())
      from = i->second;
    if (is_finished_status(to)) {
      if (i != st.run_statuses.end())
        st.run_statuses.erase(i);
    } else if (!to.empty()) {
      st.run_statuses[run_id] = to;
    }
  }
  run_status_changed(swarm, from, to);
}

void metrics::run_changed(const stored_run& run, const std::string& from) {
  // By run id: a run resumed from the store was never counted here, whatever
  // status it had.
  run_status(run.id, run.swarm, run.status);
  if (run.status == "running" && from == "queued" && run.started_ms > 0
      && run.created_ms > 0 && run.attempts == 1)
    observe_queue_wait(static_cast<double>(run.started_ms - run.created_ms)
                       / 1000.0);
  if (is_finished_status(run.status)) {
    double duration = run.started_ms > 0 && run.ended_ms >= run.started_ms
                        ? static_cast<double>(run.ended_ms - run.started_ms)
                            / 1000.0
                        : -1.0;
    run_finished(run.swarm, run.status, run.steps, run.input_tokens,
                 run.output_tokens, static_cast<double>(run.cost_nusd) / 1e9,
                 duration);
  }
}

void metrics::run_finished(const std::string& swarm, const std::string& status,
                           int64_t steps, int64_t input_tokens,
                           int64_t output_tokens, double cost_usd,
                           double duration_s) {
  auto& st = *impl_;
  std::lock_guard<std::mutex> guard{st.mtx};
  if (steps >= 0)
    st.at(st.run_steps, {swarm}).Observe(static_cast<double>(steps));
  if (input_tokens >= 0)
    st.at(st.tokens, {swarm, "input"})
      .Increment(static_cast<double>(input_tokens));
  if (output_tokens >= 0)
    st.at(st.tokens, {swarm, "output"})
      .Increment(static_cast<double>(output_tokens));
  if (std::isfinite(cost_usd) && cost_usd >= 0)
    st.at(st.cost, {swarm}).Increment(cost_usd);
  if (std::isfinite(duration_s) && duration_s >= 0)
    st.at(st.run_duration, {swarm, status}).Observe(duration_s);
}

void metrics::set_queue(int64_t queued, int64_t running) {
  auto& st = *impl_;
  std::lock_guard<std::mutex> guard{st.mtx};
  if (queued >= 0)
    st.at(st.queue_depth, {}).Set(static_cast<double>(queued));
  if (running >= 0)
    st.at(st.running, {}).Set(static_cast<double>(running));
}

void metrics::observe_queue_wait(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0)
    return;
  auto& st = *impl_;
  std::lock_guard<std::mutex> guard{st.mtx};
  st.at(st.queue_wait, {}).Observe(seconds);
}

} // namespace troupe

#pragma once

// Prometheus metrics: what a runtime's trace says, counted, plus what the run
// service reports directly, in the text exposition format (0.0.4) that
// `GET /metrics` serves.
//
//   troupe::metrics m;
//   cfg.trace_listeners.push_back(m.listener());   // before the runtime starts
//   svc_opts.on_status = [&m](auto& run, auto& from) { m.run_changed(run, from); };
//   std::string body = m.render();                 // Content-Type: m.content_type
//
// From trace records (actors/tracer.hpp):
//   span "chat {model}"            troupe_model_calls_total{model,outcome=ok|error|replayed}
//                                  troupe_model_call_duration_seconds{model}
//                                  troupe_model_tokens_total{model,kind=input|output}
//                                  troupe_model_cost_usd_total{model}
//   span "execute_tool {name}"     troupe_tool_calls_total{tool,outcome=ok|error}
//                                  troupe_tool_call_duration_seconds{tool}
//                                  troupe_tool_call_errors_total{tool,type}
//   span "invoke_agent {name}"     troupe_agent_runs_total{agent,status}
//                                  troupe_agent_run_duration_seconds{agent}
//   span "step N"                  troupe_agent_steps_total{agent}
//   event breaker.transition       troupe_breaker_state{tool} (0 closed,
//                                  1 half_open, 2 open),
//                                  troupe_breaker_transitions_total{tool,to}
//   event budget.denied            troupe_budget_denials_total{limit}
//   event budget.warning           troupe_budget_warnings_total{limit}
//   event limiter.wait             troupe_limiter_queue_wait_seconds{kind=tool|model,target}
//   event tool.retry / model.retry troupe_tool_retries_total{tool},
//                                  troupe_model_retries_total{model}
//   event model.fallback           troupe_model_fallbacks_total{model} (the one that failed)
//   event model.cache_hit          troupe_model_cache_hits_total{model}
//   event approval.gate.pending    troupe_approval_requests_total
//   event approval.gate.decided    troupe_approval_decisions_total{verdict},
//                                  troupe_approval_wait_seconds
//   event policy.decision          troupe_policy_decisions_total{decision}
//   event tool.rejected            troupe_tool_rejections_total{type}
//   event guardrail.warning        troupe_guardrail_warnings_total{agent}
// A `model` label is the model's name, a scripted one's script by file name
// only ("scripted:support.json").
// A record of a kind above that lacks what its metrics need (or is not a JSON
// object with a string "type") changes nothing and is counted in
// troupe_trace_records_ignored_total; other records are simply not counted.
// The limiter traces only how long a queued call waited, not the queue's
// depth, so there is no limiter depth gauge.
//
// From the run service (the methods below):
//   troupe_runs{status}                    runs now queued, running, ... (live
//                                          statuses; a finished run leaves it)
//   troupe_runs_finished_total{swarm,status}
//   troupe_run_steps{swarm}, troupe_run_duration_seconds{swarm}  (histograms)
//   troupe_tokens_total{swarm,kind=input|output}, troupe_cost_usd_total{swarm}
//   troupe_run_queue_depth, troupe_runs_running, troupe_run_queue_wait_seconds
//
// Useful queries: the error rate of each tool over five minutes,
//   sum by (tool) (rate(troupe_tool_calls_total{outcome="error"}[5m]))
//     / sum by (tool) (rate(troupe_tool_calls_total[5m]))
// the 95th percentile of model latency,
//   histogram_quantile(0.95, sum by (le, model)
//     (rate(troupe_model_call_duration_seconds_bucket[5m])))
// and the tools whose breaker is open: troupe_breaker_state == 2.
//
// Label cardinality is bounded: each label of each metric takes at most
// `max_label_values` distinct values (200 by default); later new values are
// counted under "other", as are values that are not printable UTF-8 or longer
// than 128 bytes, and a missing (empty) value is "unknown". Model names, tool
// names and agent names come from configuration, but a model can propose any
// tool name and a remote peer can name anything, so the bound is what keeps
// one bad actor from growing the registry without end.
//
// Everything is thread-safe: the listener runs on the tracer's thread, the
// run service calls from its own, render() from the HTTP server's. The
// listener never throws and never blocks beyond a short mutex.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "actors/tracer.hpp"

namespace troupe {

struct stored_run;

/// How a metrics registry is set up.
struct metrics_options {
  /// Distinct values each label of each metric may take before new ones
  /// count as "other" (at least 1).
  size_t max_label_values = 200;
};

/// A Prometheus registry fed by trace records and the run service.
class metrics {
public:
  /// The Content-Type of render()'s text.
  static constexpr const char* content_type =
    "text/plain; version=0.0.4; charset=utf-8";

  /// Throws std::invalid_argument when max_label_values is 0.
  explicit metrics(metrics_options opts = {});

  ~metrics();

  metrics(const metrics&) = delete;
  metrics& operator=(const metrics&) = delete;

  /// A trace listener that counts records (add it to
  /// runtime_config::trace_listeners). It shares the registry, so it stays
  /// valid after this object is gone.
  trace_listener listener();

  /// Counts one trace record (what listener() calls). Never throws.
  void observe(const json& record) noexcept;

  /// Every metric in the text exposition format 0.0.4.
  std::string render() const;

  /// A run of `swarm` moved from status `from` (empty for a new run) to
  /// `to`. Live statuses ("queued", "running", ...) are counted in
  /// troupe_runs; a finished one ("complete", "max_steps", "failed",
  /// "halted", "cancelled") counts in troupe_runs_finished_total instead.
  void run_status_changed(const std::string& swarm, const std::string& from,
                          const std::string& to);

  /// Run `run_id` of `swarm` is now in status `to`: run_status_changed with
  /// the status this object last heard for that run as `from`. A run it has
  /// not heard of yet (a new one, or one resumed from a store) counts as
  /// new, whatever status it had before; a finished one is forgotten. What
  /// the run service calls.
  void run_status(const std::string& run_id, const std::string& swarm,
                  const std::string& to);

  /// What run_service_options::on_status calls: run_status() with the
  /// run's record, its queue wait when it first starts (created to started),
  /// and run_finished() with the record's totals when it ends.
  void run_changed(const stored_run& run, const std::string& from);

  /// A run of `swarm` ended: its steps, tokens, cost and how long it ran.
  /// Negative or non-finite figures are left out.
  void run_finished(const std::string& swarm, const std::string& status,
                    int64_t steps, int64_t input_tokens, int64_t output_tokens,
                    double cost_usd, double duration_s);

  /// How many runs wait for room and how many run.
  void set_queue(int64_t queued, int64_t running);

  /// A run waited `seconds` in the queue before it started.
  void observe_queue_wait(double seconds);

  struct impl;

private:
  std::shared_ptr<impl> impl_;
};

} // namespace troupe

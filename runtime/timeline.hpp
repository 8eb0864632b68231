#pragma once

// A timeline of which agent ran when, built from the trace: a trace listener
// collects every finished span, and render() draws a text Gantt chart with one
// row per agent or team (its invoke_agent spans as bars) and the run's totals.
//
//   troupe::timeline tl;
//   cfg.trace_listeners.push_back(tl.listener());
//   ... run ...
//   std::cout << tl.render();
//
//   agent         0s                          1.21s  runs steps tools  busy
//   research      [==========================]          1     0     0  1.21s
//   planner       [###]                                 1     1     0  0.15s
//   researcher_1     [#########]                        1     2     1  0.40s
//   ...
//
// '#' marks an agent's run, '=' a team's, 'x' a run that did not complete.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "actors/tracer.hpp"

namespace troupe {

/// One run of one agent or team, as a bar.
struct timeline_bar {
  std::string agent;
  bool team = false;
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  /// The run's status ("complete", "failed"...).
  std::string status;
  /// Model calls and tool calls made inside this run (not in nested runs).
  int64_t model_calls = 0;
  int64_t tool_calls = 0;
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
};

/// Totals over everything the timeline saw.
struct timeline_totals {
  int64_t wall_ns = 0;
  int64_t agents = 0;
  int64_t runs = 0;
  int64_t model_calls = 0;
  int64_t tool_calls = 0;
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  /// Runs (agents' and teams') that did not complete.
  int64_t incomplete = 0;
};

/// Collects spans and draws them. Thread-safe; copies share one collection.
class timeline {
public:
  timeline();

  /// The listener to add to runtime_config::trace_listeners.
  trace_listener listener() const;

  /// Adds one trace record (what the listener does).
  void add(const json& record);

  /// Every run seen, in start order, with its calls attributed.
  std::vector<timeline_bar> bars() const;

  timeline_totals totals() const;

  /// The chart, `width` columns wide, and a totals line. At most `max_rows`
  /// rows; the rest are summarised in one line.
  std::string render(size_t width = 48, size_t max_rows = 40) const;

private:
  struct span {
    std::string id;
    std::string parent;
    std::string name;
    int64_t start_ns = 0;
    int64_t end_ns = 0;
    std::string status;
    json attributes;
  };

  struct data {
    mutable std::mutex mtx;
    std::vector<span> spans;
  };

  std::shared_ptr<data> data_;
};

} // namespace troupe

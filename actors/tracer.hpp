#pragma once

// The tracer collects spans and events from every actor (fire-and-forget) and
// hands each finished record to its sinks: a JSONL file, one JSON object per
// line, and in-process listeners (the CLI's progress view, tests).
//
// Records:
//   {"type":"span_start", ...}   listeners only: a span has begun
//   {"type":"span", "trace_id", "span_id", "parent_span_id", "name",
//    "start_ns", "end_ns", "duration_ms", "status", "status_message", "attributes"}
//   {"type":"event", "trace_id", "span_id", "name", "time_ns", "attributes"}
// A span is written once, when it ends, with its start and end; spans still
// open when the tracer stops are written with status "unfinished".

#include <functional>
#include <string>
#include <vector>

#include <caf/fwd.hpp>

#include "messages/json_value.hpp"
#include "messages/trace.hpp"

namespace troupe {

/// Receives every trace record as it is produced, on the tracer's thread: it
/// must be quick and must not block.
using trace_listener = std::function<void(const json& record)>;

/// Where the tracer writes.
struct tracer_config {
  /// JSONL file to append to; empty for none.
  std::string jsonl_path;
  std::vector<trace_listener> listeners;
};

/// Spawns a tracer. Throws std::runtime_error naming the file when the JSONL
/// file cannot be opened.
tracer_actor spawn_tracer(caf::actor_system& sys, tracer_config cfg);

} // namespace troupe

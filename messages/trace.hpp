#pragma once

// The trace protocol: everyone -> tracer, fire-and-forget.
//   span_start, span_end, trace_event
// Attribute names follow the OpenTelemetry GenAI conventions
// (gen_ai.operation.name, gen_ai.agent.name, gen_ai.request.model, ...).

#include <cstdint>
#include <string>

#include <caf/atom.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "messages/define.hpp"
#include "messages/json_value.hpp"

namespace troupe {

/// A span has begun.
struct span_start {
  std::string trace_id;
  std::string span_id;
  /// Empty for a root span.
  std::string parent_span_id;
  std::string name;
  int64_t start_ns = 0;
  json_value attributes;
};
TROUPE_MESSAGE(span_start, trace_id, span_id, parent_span_id, name, start_ns,
               attributes)

/// A span has ended; `attributes` are merged over the start's.
struct span_end {
  std::string trace_id;
  std::string span_id;
  int64_t end_ns = 0;
  /// "ok" or "error".
  std::string status = "ok";
  std::string status_message;
  json_value attributes;
};
TROUPE_MESSAGE(span_end, trace_id, span_id, end_ns, status, status_message,
               attributes)

/// A point in time inside a span: a state transition, a retry, a warning.
struct trace_event {
  std::string trace_id;
  std::string span_id;
  std::string name;
  int64_t time_ns = 0;
  json_value attributes;
};
TROUPE_MESSAGE(trace_event, trace_id, span_id, name, time_ns, attributes)

/// Asks the tracer to flush its sinks; it replies once all earlier records are written.
using tr_flush_atom = caf::atom_constant<caf::atom("tr_flush")>;

/// The tracer.
using tracer_actor =
  caf::typed_actor<caf::reacts_to<span_start>, caf::reacts_to<span_end>,
                   caf::reacts_to<trace_event>,
                   caf::replies_to<tr_flush_atom>::with<bool>>;

} // namespace troupe

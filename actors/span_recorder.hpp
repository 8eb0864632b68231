#pragma once

// The sending side of the trace protocol: starts and ends spans and emits
// events to a tracer, fire-and-forget. Without a tracer every call is a no-op,
// so tracing costs nothing when it is off.

#include <string>

#include "messages/json_value.hpp"
#include "messages/trace.hpp"

namespace troupe {

/// Sends spans and events of one trace to a tracer.
class span_recorder {
public:
  span_recorder() = default;

  explicit span_recorder(tracer_actor tracer) : tracer_(std::move(tracer)) {
    // nop
  }

  /// Whether records go anywhere.
  bool enabled() const noexcept {
    return static_cast<bool>(tracer_);
  }

  /// Starts a span and returns its new id.
  std::string start(const std::string& trace_id, const std::string& parent,
                    std::string name, json attributes = json::object()) const;

  /// Ends a span; `attributes` are merged over the ones given at start.
  void end(const std::string& trace_id, const std::string& span_id,
           json attributes = json::object(), const std::string& error = "") const;

  /// Emits an event inside a span.
  void event(const std::string& trace_id, const std::string& span_id,
             std::string name, json attributes = json::object()) const;

private:
  tracer_actor tracer_;
};

} // namespace troupe

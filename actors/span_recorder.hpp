#pragma once

// The sending side of the trace protocol: starts and ends spans and emits
// events to a tracer, fire-and-forget. Attributes are passed as a callable
// returning the JSON object, so without a tracer nothing is built or sent and
// tracing costs next to nothing when it is off.

#include <string>
#include <utility>

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

  /// Starts a span and returns its new id ("" when tracing is off).
  /// `attrs()` returns the span's attributes.
  template <class Attrs>
  std::string start(const std::string& trace_id, const std::string& parent,
                    const std::string& name, Attrs&& attrs) const {
    if (!enabled())
      return {};
    return send_start(trace_id, parent, name, attrs());
  }

  /// Ends a span; the attributes `attrs()` returns are merged over the ones
  /// given at start. A non-empty `error` marks the span as failed.
  template <class Attrs>
  void end(const std::string& trace_id, const std::string& span_id,
           Attrs&& attrs, const std::string& error = "") const {
    if (enabled() && !span_id.empty())
      send_end(trace_id, span_id, attrs(), error);
  }

  /// Emits an event inside a span.
  template <class Attrs>
  void event(const std::string& trace_id, const std::string& span_id,
             const std::string& name, Attrs&& attrs) const {
    if (enabled())
      send_event(trace_id, span_id, name, attrs());
  }

  /// No attributes.
  static json none() {
    return json::object();
  }

private:
  std::string send_start(const std::string& trace_id, const std::string& parent,
                         const std::string& name, json attrs) const;

  void send_end(const std::string& trace_id, const std::string& span_id,
                json attrs, const std::string& error) const;

  void send_event(const std::string& trace_id, const std::string& span_id,
                  const std::string& name, json attrs) const;

  tracer_actor tracer_;
};

} // namespace troupe

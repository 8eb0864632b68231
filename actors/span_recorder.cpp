#include "actors/span_recorder.hpp"

#include <caf/send.hpp>

#include "runtime/clock.hpp"

namespace troupe {

std::string span_recorder::send_start(const std::string& trace_id,
                                      const std::string& parent,
                                      const std::string& name,
                                      json attrs) const {
  auto id = new_span_id();
  caf::anon_send(tracer_, span_start{trace_id, id, parent, name, now_ns(),
                                     std::move(attrs)});
  return id;
}

void span_recorder::send_end(const std::string& trace_id,
                             const std::string& span_id, json attrs,
                             const std::string& error) const {
  caf::anon_send(tracer_, span_end{trace_id, span_id, now_ns(),
                                   error.empty() ? "ok" : "error", error,
                                   std::move(attrs)});
}

void span_recorder::send_event(const std::string& trace_id,
                               const std::string& span_id,
                               const std::string& name, json attrs) const {
  caf::anon_send(tracer_, trace_event{trace_id, span_id, name, now_ns(),
                                      std::move(attrs)});
}

} // namespace troupe

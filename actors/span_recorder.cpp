#include "actors/span_recorder.hpp"

#include <caf/send.hpp>

#include "runtime/clock.hpp"

namespace troupe {

std::string span_recorder::start(const std::string& trace_id,
                                 const std::string& parent, std::string name,
                                 json attributes) const {
  auto id = new_span_id();
  if (tracer_)
    caf::anon_send(tracer_, span_start{trace_id, id, parent, std::move(name),
                                       now_ns(), std::move(attributes)});
  return id;
}

void span_recorder::end(const std::string& trace_id, const std::string& span_id,
                        json attributes, const std::string& error) const {
  if (!tracer_ || span_id.empty())
    return;
  caf::anon_send(tracer_, span_end{trace_id, span_id, now_ns(),
                                   error.empty() ? "ok" : "error", error,
                                   std::move(attributes)});
}

void span_recorder::event(const std::string& trace_id,
                          const std::string& span_id, std::string name,
                          json attributes) const {
  if (tracer_)
    caf::anon_send(tracer_, trace_event{trace_id, span_id, std::move(name),
                                        now_ns(), std::move(attributes)});
}

} // namespace troupe

#include "actors/tracer.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <unordered_map>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

namespace troupe {

namespace {

struct tracer_state {
  static inline const char* name = "troupe.tracer";

  std::unique_ptr<std::ofstream> out;
  std::string path;
  std::vector<trace_listener> listeners;
  std::unordered_map<std::string, span_start> open;

  /// Hands a record to one listener; a listener that throws loses that record,
  /// not the tracer.
  void notify(const trace_listener& listener, const json& record) {
    try {
      listener(record);
    } catch (const std::exception& ex) {
      spdlog::error("trace listener threw: {}", ex.what());
    }
  }

  void emit(const json& record, bool to_listeners = true) {
    if (out) {
      *out << safe_dump(record)
           << '\n';
      if (!*out) {
        spdlog::error("trace file {}: write failed; further records dropped",
                      path);
        out.reset();
      }
    }
    if (to_listeners)
      for (auto& listener : listeners)
        notify(listener, record);
  }

  static json span_record(span_start& s, int64_t end_ns,
                          const std::string& status,
                          const std::string& status_message,
                          json& end_attributes) {
    json attrs = s.attributes.value.is_object()
                   ? std::move(s.attributes.value)
                   : json::object();
    if (end_attributes.is_object())
      for (auto& item : end_attributes.items())
        attrs[item.key()] = std::move(item.value());
    return json{{"type", "span"},
                {"trace_id", s.trace_id},
                {"span_id", s.span_id},
                {"parent_span_id", s.parent_span_id},
                {"name", s.name},
                {"start_ns", s.start_ns},
                {"end_ns", end_ns},
                {"duration_ms", static_cast<double>(end_ns - s.start_ns) / 1e6},
                {"status", status},
                {"status_message", status_message},
                {"attributes", std::move(attrs)}};
  }

  ~tracer_state() {
    for (auto& kvp : open) {
      json none = json::object();
      // Listeners belong to code that may be gone by now: file only.
      emit(span_record(kvp.second, kvp.second.start_ns, "unfinished",
                       "the tracer stopped before this span ended", none),
           false);
    }
    if (out)
      out->flush();
  }
};

tracer_actor::behavior_type
tracer(tracer_actor::stateful_pointer<tracer_state> self,
       std::shared_ptr<std::ofstream> out, tracer_config cfg) {
  if (out)
    self->state.out = std::make_unique<std::ofstream>(std::move(*out));
  self->state.path = cfg.jsonl_path;
  self->state.listeners = std::move(cfg.listeners);
  return {
    [self](span_start& s) {
      auto& st = self->state;
      if (!st.listeners.empty()) {
        json rec{{"type", "span_start"},
                 {"trace_id", s.trace_id},
                 {"span_id", s.span_id},
                 {"parent_span_id", s.parent_span_id},
                 {"name", s.name},
                 {"start_ns", s.start_ns},
                 {"attributes", s.attributes.value}};
        for (auto& listener : st.listeners)
          st.notify(listener, rec);
      }
      auto key = s.span_id;
      st.open.insert_or_assign(std::move(key), std::move(s));
    },
    [self](span_end& e) {
      auto& st = self->state;
      auto i = st.open.find(e.span_id);
      if (i == st.open.end()) {
        spdlog::warn("tracer: end of unknown span {} ignored", e.span_id);
        return;
      }
      st.emit(tracer_state::span_record(i->second, e.end_ns, e.status,
                                        e.status_message, e.attributes.value));
      // A failure is what a reader will look for after a crash: keep it.
      if (e.status != "ok" && st.out)
        st.out->flush();
      st.open.erase(i);
    },
    [self](trace_event& ev) {
      self->state.emit(json{{"type", "event"},
                            {"trace_id", ev.trace_id},
                            {"span_id", ev.span_id},
                            {"name", ev.name},
                            {"time_ns", ev.time_ns},
                            {"attributes", ev.attributes.value}});
    },
    [self](tr_flush_atom) {
      if (self->state.out)
        self->state.out->flush();
      return true;
    },
  };
}

} // namespace

tracer_actor spawn_tracer(caf::actor_system& sys, tracer_config cfg) {
  std::shared_ptr<std::ofstream> out;
  if (!cfg.jsonl_path.empty()) {
    out = std::make_shared<std::ofstream>(cfg.jsonl_path, std::ios::app);
    if (!*out)
      throw std::runtime_error("cannot open trace file " + cfg.jsonl_path
                               + ": " + std::strerror(errno));
  }
  return sys.spawn(tracer, std::move(out), std::move(cfg));
}

} // namespace troupe

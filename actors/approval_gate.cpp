#include "actors/approval_gate.hpp"

#include <algorithm>
#include <cstdint>
#include <map>
#include <unordered_map>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/exit_reason.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <caf/typed_response_promise.hpp>
#include <spdlog/spdlog.h>

#include "actors/span_recorder.hpp"
#include "messages/errors.hpp"
#include "runtime/clock.hpp"

namespace troupe {

namespace {

/// The gate's own timer: (id, seq) of a request whose time-to-live ran out.
/// It is not part of approval_gate_actor, so only the gate can send it.
using apr_expire_atom = caf::atom_constant<caf::atom("apr_expire")>;

/// The gate's full interface: the public one plus its timer.
using gate_actor = approval_gate_actor::extend<
  caf::reacts_to<apr_expire_atom, std::string, uint64_t>>;

/// Who decides when no human does.
constexpr const char* gate_name = "approval gate";

/// A request waiting for a decision.
struct pending_request {
  approval_request req;
  caf::typed_response_promise<approval_decision> promise;
};

struct gate_state {
  static inline const char* name = "troupe.approval_gate";
  approval_gate_config cfg;
  span_recorder trace;
  /// Pending requests by arrival number, so the oldest comes first.
  std::map<uint64_t, pending_request> pending;
  /// Request id -> arrival number.
  std::unordered_map<std::string, uint64_t> index;
  uint64_t next_seq = 0;
  std::vector<caf::actor> watchers;

  /// Removes a pending request and delivers `d` to whoever waits for it.
  approval_request settle(std::map<uint64_t, pending_request>::iterator i,
                          approval_decision d) {
    auto req = std::move(i->second.req);
    auto promise = std::move(i->second.promise);
    index.erase(req.request_id);
    pending.erase(i);
    d.request_id = req.request_id;
    if (d.decided_ms == 0)
      d.decided_ms = now_ms();
    trace_decision(req, d);
    spdlog::info("approval gate: {} {} ({} for agent {}) by {}{}",
                 req.request_id, past_tense(d.verdict), req.action, req.agent,
                 d.who, d.note.empty() ? "" : ": " + d.note);
    promise.deliver(std::move(d));
    return req;
  }

  void trace_decision(const approval_request& req,
                      const approval_decision& d) const {
    if (req.ref.trace_id.empty())
      return;
    const auto& ref = req.ref;
    trace.event(ref.trace_id, ref.span_id, "approval.gate.decided", [&] {
      return json{{"troupe.approval.id", req.request_id},
                  {"troupe.approval.action", req.action},
                  {"troupe.approval.verdict", d.verdict},
                  {"troupe.approval.who", d.who},
                  {"troupe.approval.note", d.note},
                  {"troupe.approval.waited_ms", d.decided_ms - req.created_ms}};
    });
  }

  static const char* past_tense(approval_verdict v) {
    switch (v) {
      case approval_verdict::approve:
        return "approved";
      case approval_verdict::deny:
        return "denied";
      case approval_verdict::expired:
        break;
    }
    return "expired";
  }
};

using gate_self = gate_actor::stateful_pointer<gate_state>;

bool has_terminated(const caf::actor& who) {
  auto* ptr = caf::actor_cast<caf::abstract_actor*>(who);
  return ptr == nullptr || ptr->getf(caf::abstract_actor::is_terminated_flag);
}

/// Tells every live watcher of a new request; forgets the ones that stopped.
void notify_watchers(gate_self self, const approval_request& req) {
  auto& ws = self->state.watchers;
  ws.erase(std::remove_if(ws.begin(), ws.end(), has_terminated), ws.end());
  for (const auto& w : ws)
    caf::anon_send(w, req);
}

caf::result<approval_decision> on_request(gate_self self,
                                          approval_request& req) {
  auto& st = self->state;
  if (req.request_id.empty())
    req.request_id = "apr-" + random_hex(4);
  if (req.created_ms == 0)
    req.created_ms = now_ms();
  if (req.ttl_ms <= 0)
    req.ttl_ms = st.cfg.default_ttl.count();
  if (st.index.count(req.request_id) != 0)
    return make_error(errc::invalid_input, "approval request '"
                                             + req.request_id
                                             + "' is already pending");
  if (st.pending.size() >= st.cfg.max_pending) {
    spdlog::warn("approval gate: denied {} ({} for agent {}): {} requests "
                 "already pending",
                 req.request_id, req.action, req.agent, st.pending.size());
    approval_decision d{req.request_id, approval_verdict::deny, gate_name,
                        "the approval queue is full ("
                          + std::to_string(st.cfg.max_pending)
                          + " requests pending)",
                        now_ms()};
    st.trace_decision(req, d);
    return d;
  }
  auto seq = st.next_seq++;
  if (!req.ref.trace_id.empty())
    st.trace.event(req.ref.trace_id, req.ref.span_id, "approval.gate.pending",
                   [&] {
                     return json{{"troupe.approval.id", req.request_id},
                                 {"troupe.approval.agent", req.agent},
                                 {"troupe.approval.action", req.action},
                                 {"troupe.approval.reason", req.reason},
                                 {"troupe.approval.ttl_ms", req.ttl_ms}};
                   });
  spdlog::info("approval gate: {} pending ({} for agent {}: {}), {} ms to "
               "decide",
               req.request_id, req.action, req.agent, req.reason, req.ttl_ms);
  self->delayed_send(caf::actor_cast<gate_actor>(self),
                     std::chrono::milliseconds{req.ttl_ms},
                     apr_expire_atom::value, req.request_id, seq);
  notify_watchers(self, req);
  auto promise = self->make_response_promise<approval_decision>();
  st.index.emplace(req.request_id, seq);
  st.pending.emplace(seq, pending_request{std::move(req), promise});
  return promise;
}

caf::result<approval_request> on_decide(gate_self self,
                                        approval_decision& d) {
  auto& st = self->state;
  auto i = st.index.find(d.request_id);
  if (i == st.index.end())
    return make_error(errc::invalid_input,
                      "no pending approval request '" + d.request_id
                        + "' (it may have been decided or expired)");
  if (d.verdict == approval_verdict::expired)
    return make_error(errc::invalid_input,
                      "a decision on approval request '" + d.request_id
                        + "' must approve or deny it, not expire it");
  if (d.who.empty())
    d.who = "unknown";
  d.decided_ms = now_ms();
  return st.settle(st.pending.find(i->second), std::move(d));
}

void on_expire(gate_self self, const std::string& id, uint64_t seq) {
  auto& st = self->state;
  auto i = st.pending.find(seq);
  // Decided already (or a later request reused the id): nothing to do.
  if (i == st.pending.end() || i->second.req.request_id != id)
    return;
  auto ttl = i->second.req.ttl_ms;
  st.settle(i, approval_decision{id, approval_verdict::expired, gate_name,
                                 "no decision within " + std::to_string(ttl)
                                   + " ms",
                                 0});
}

gate_actor::behavior_type approval_gate(gate_self self,
                                        approval_gate_config cfg,
                                        tracer_actor tracer) {
  self->state.cfg = cfg;
  self->state.trace = span_recorder{std::move(tracer)};
  // CAF 0.17 drops the promises of a stopped actor without an answer, so the
  // waiting agents are told here.
  self->set_exit_handler([self](caf::exit_msg& msg) {
    auto& st = self->state;
    if (!st.pending.empty())
      spdlog::warn("approval gate: stopping with {} pending requests",
                   st.pending.size());
    while (!st.pending.empty())
      st.settle(st.pending.begin(),
                approval_decision{{}, approval_verdict::deny, gate_name,
                                  "approval gate stopped", 0});
    self->quit(msg.reason);
  });
  self->set_down_handler([self](caf::down_msg& msg) {
    auto& ws = self->state.watchers;
    ws.erase(std::remove_if(ws.begin(), ws.end(),
                            [&](const caf::actor& w) {
                              return w.address() == msg.source;
                            }),
             ws.end());
  });
  return {
    [self](approval_request& req) -> caf::result<approval_decision> {
      return on_request(self, req);
    },
    [self](apr_list_atom) {
      std::vector<approval_request> out;
      out.reserve(self->state.pending.size());
      for (const auto& [seq, p] : self->state.pending)
        out.push_back(p.req);
      return out;
    },
    [self](apr_decide_atom,
           approval_decision& d) -> caf::result<approval_request> {
      return on_decide(self, d);
    },
    [self](apr_watch_atom, caf::actor& watcher) {
      auto& ws = self->state.watchers;
      if (!watcher || std::find(ws.begin(), ws.end(), watcher) != ws.end())
        return;
      self->monitor(watcher);
      ws.push_back(std::move(watcher));
    },
    [self](apr_expire_atom, const std::string& id, uint64_t seq) {
      on_expire(self, id, seq);
    },
  };
}

} // namespace

approval_gate_actor spawn_approval_gate(caf::actor_system& sys,
                                        approval_gate_config cfg,
                                        tracer_actor tracer) {
  return sys.spawn(approval_gate, cfg, std::move(tracer));
}

} // namespace troupe

#include "runtime/replicated_agent.hpp"

#include <map>
#include <stdexcept>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_response_promise.hpp>
#include <spdlog/spdlog.h>

#include "actors/agent.hpp"
#include "actors/span_recorder.hpp"
#include "messages/cluster.hpp"
#include "messages/errors.hpp"
#include "runtime/cluster.hpp"
#include "supervisors/team_run.hpp"

namespace troupe {

namespace {

struct replica_slot {
  agent_replica replica;
  bool alive = true;
  /// Why it was lost.
  std::string lost;
  int32_t in_flight = 0;
};

struct pending_run {
  run_task task;
  caf::typed_response_promise<run_result> promise;
  size_t replica = 0;
  /// Grows with every dispatch, so an answer from a lost replica that still
  /// arrives is ignored.
  uint64_t generation = 0;
  std::vector<std::string> moves;
};

struct replicated_state {
  static inline const char* name = "troupe.replicated_agent";

  replicated_config cfg;
  std::vector<replica_slot> slots;
  std::map<uint64_t, pending_run> runs;
  uint64_t next_id = 0;
  span_recorder trace;
};

using replicated_self = caf::stateful_actor<replicated_state>;

std::string lost_nodes(const replicated_state& st) {
  std::string out;
  for (const auto& s : st.slots)
    out += (out.empty() ? "" : "; ") + s.replica.node + ": " + s.lost;
  return out;
}

void finish(replicated_self* self, uint64_t id, run_result result) {
  auto& st = self->state;
  auto i = st.runs.find(id);
  if (i == st.runs.end())
    return;
  auto& run = i->second;
  result.warnings.insert(result.warnings.begin(), run.moves.begin(),
                         run.moves.end());
  run.promise.deliver(std::move(result));
  st.runs.erase(i);
}

void lose(replicated_self* self, size_t index, const std::string& why);

void dispatch(replicated_self* self, uint64_t id) {
  auto& st = self->state;
  auto& run = st.runs.at(id);
  size_t best = st.slots.size();
  for (size_t k = 0; k < st.slots.size(); ++k)
    if (st.slots[k].alive
        && (best == st.slots.size()
            || st.slots[k].in_flight < st.slots[best].in_flight))
      best = k;
  if (best == st.slots.size()) {
    finish(self, id,
           failed_result(run.task,
                         "agent '" + st.cfg.name
                           + "': no node hosting it is left ("
                           + lost_nodes(st) + ")",
                         st.cfg.name));
    return;
  }
  run.replica = best;
  auto gen = ++run.generation;
  auto& slot = st.slots[best];
  ++slot.in_flight;
  self->request(slot.replica.actor, member_timeout(run.task), run.task)
    .then(
      [self, id, gen, best](run_result& r) {
        auto& st = self->state;
        auto i = st.runs.find(id);
        if (i == st.runs.end() || i->second.generation != gen)
          return;
        --st.slots[best].in_flight;
        // A replica stopped by its node (leaving the cluster, or dropping
        // this one for silence) answers its runs as it stops: that is the
        // node going away, not the run's outcome.
        auto stopped = "agent '" + st.cfg.name + "@"
                       + st.slots[best].replica.node + "' stopped: ";
        if ((r.status == run_status::cancelled
             || r.status == run_status::failed)
            && r.error.rfind(stopped, 0) == 0) {
          lose(self, best, r.error.substr(stopped.size() - 9));
          return;
        }
        finish(self, id, std::move(r));
      },
      [self, id, gen, best](caf::error& err) {
        auto& st = self->state;
        auto i = st.runs.find(id);
        if (i == st.runs.end() || i->second.generation != gen)
          return;
        --st.slots[best].in_flight;
        // The replica's actor is gone (its node with it): move the run.
        if (err == caf::sec::request_receiver_down
            || err == caf::exit_reason::remote_link_unreachable) {
          lose(self, best, error_text(err));
          return;
        }
        auto& slot = st.slots[best];
        finish(self, id,
               failed_result(i->second.task,
                             "agent '" + st.cfg.name + "@" + slot.replica.node
                               + "': " + error_text(err),
                             st.cfg.name + "@" + slot.replica.node));
      });
}

void lose(replicated_self* self, size_t index, const std::string& why) {
  auto& st = self->state;
  auto& slot = st.slots[index];
  if (!slot.alive)
    return;
  slot.alive = false;
  slot.lost = why;
  slot.in_flight = 0;
  std::vector<uint64_t> moved;
  for (auto& [id, run] : st.runs)
    if (run.replica == index)
      moved.push_back(id);
  // A replica without runs (its node left, or this process is stopping) is
  // worth a warning only when it held work.
  if (moved.empty())
    spdlog::info("agent {}: replica on node {} gone: {}", st.cfg.name,
                 slot.replica.node, why);
  else
    spdlog::warn("agent {}: replica on node {} lost with {} run(s): {}",
                 st.cfg.name, slot.replica.node, moved.size(), why);
  for (auto id : moved) {
    auto& run = st.runs.at(id);
    auto from = slot.replica.node;
    auto ref = run.task.ref;
    run.moves.push_back("node '" + from + "' was lost (" + why
                        + "); the run of agent '" + st.cfg.name
                        + "' was sent again to another node");
    dispatch(self, id); // may answer (and forget) the run at once
    auto i = st.runs.find(id);
    std::string to = i != st.runs.end()
                       ? st.slots[i->second.replica].replica.node
                       : std::string{};
    st.trace.event(ref.trace_id, ref.span_id, "cluster.reassign", [&] {
      return json{{"gen_ai.agent.name", st.cfg.name},
                  {"troupe.run.id", ref.run_id},
                  {"troupe.node.from", from},
                  {"troupe.node.to", to},
                  {"troupe.node.lost", why}};
    });
  }
}

caf::behavior replicated_agent(replicated_self* self, replicated_config cfg) {
  auto& st = self->state;
  st.trace = span_recorder{cfg.tracer};
  for (auto& r : cfg.replicas) {
    self->monitor(r.actor);
    st.slots.push_back({r, true, {}, 0});
  }
  if (cfg.node)
    self->send(cfg.node, cl_subscribe_atom::value,
               caf::actor_cast<caf::actor>(self));
  st.cfg = std::move(cfg);
  self->set_down_handler([self](caf::down_msg& msg) {
    auto& st = self->state;
    for (size_t k = 0; k < st.slots.size(); ++k)
      if (st.slots[k].replica.actor.address() == msg.source)
        lose(self, k, "its agent went down: " + error_text(msg.reason));
  });
  self->set_exit_handler([self](caf::exit_msg& msg) {
    auto& st = self->state;
    auto status = msg.reason == caf::exit_reason::user_shutdown
                    ? run_status::cancelled
                    : run_status::failed;
    auto runs = std::move(st.runs);
    st.runs.clear();
    for (auto& [id, run] : runs) {
      auto r = failed_result(run.task,
                             "agent '" + st.cfg.name
                               + "' stopped: " + error_text(msg.reason),
                             st.cfg.name);
      r.status = status;
      run.promise.deliver(std::move(r));
    }
    for (auto& s : st.slots)
      if (s.alive)
        self->send_exit(s.replica.actor, msg.reason);
    self->quit(msg.reason);
  });
  return {
    [self](run_task& task) -> caf::result<run_result> {
      auto& st = self->state;
      auto id = ++st.next_id;
      auto& run = st.runs[id];
      run.task = std::move(task);
      run.promise = self->make_response_promise<run_result>();
      auto rp = run.promise;
      dispatch(self, id);
      return rp;
    },
    [self](ev_subscribe_atom, caf::actor& sink, event_mask mask) {
      // Events come straight from the replicas, named "agent@node".
      for (auto& s : self->state.slots)
        self->send(s.replica.actor, ev_subscribe_atom::value, sink, mask);
    },
    [self](ev_unsubscribe_atom, caf::actor& sink) {
      for (auto& s : self->state.slots)
        self->send(s.replica.actor, ev_unsubscribe_atom::value, sink);
    },
    [self](const cluster_event& ev) {
      if (ev.kind != cluster_event_kind::failed
          && ev.kind != cluster_event_kind::left)
        return;
      auto& st = self->state;
      for (size_t k = 0; k < st.slots.size(); ++k)
        if (st.slots[k].replica.node == ev.node)
          lose(self, k, "node " + std::string{to_string(ev.kind)} + ": "
                          + ev.detail);
    },
  };
}

} // namespace

runnable_actor spawn_replicated_agent(caf::actor_system& sys,
                                      replicated_config cfg) {
  if (cfg.replicas.empty())
    throw std::invalid_argument("agent '" + cfg.name
                                + "': a replicated agent needs a replica");
  for (const auto& r : cfg.replicas)
    if (!r.actor)
      throw std::invalid_argument("agent '" + cfg.name + "': the replica on '"
                                  + r.node + "' has no actor");
  return caf::actor_cast<runnable_actor>(
    sys.spawn(replicated_agent, std::move(cfg)));
}

} // namespace troupe

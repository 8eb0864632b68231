#pragma once

// Events between agents. Every runnable (agent or team) keeps an event_hub of
// subscribers and publishes to it as its runs start, step and end:
//
//   observer --(ev_subscribe_atom, sink, mask)--> agent
//   agent    --agent_event{task_completed, answer...}--> sink   (no polling)
//
// An observer is any actor that handles agent_event; spawn_event_observer
// makes one from a callback, and wake_on makes one that starts a run on
// another agent when an event arrives, so agents can be chained by events.

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include "messages/run.hpp"

namespace troupe {

/// The subscribers of one runnable. Not thread-safe: it lives in an actor's state.
class event_hub {
public:
  /// Adds a subscriber, or replaces its mask when it is subscribed already.
  /// A zero mask unsubscribes.
  void subscribe(caf::actor sink, event_mask mask);

  void unsubscribe(const caf::actor& sink);

  /// Whether anyone wants this kind (so the caller can skip building events).
  bool wants(event_kind kind) const noexcept;

  /// Sends the event to every subscriber whose mask holds its kind, and
  /// forgets subscribers that have stopped.
  void publish(const agent_event& ev);

  size_t size() const noexcept {
    return subs_.size();
  }

private:
  std::vector<std::pair<caf::actor, event_mask>> subs_;
  event_mask any_ = 0;
};

/// The handler of ev_subscribe_atom for a runnable whose state keeps its
/// event_hub as `events`; with unsubscribe_handler, what every agent and
/// team puts in its behavior.
template <class Self>
auto subscribe_handler(Self self) {
  return [self](ev_subscribe_atom, caf::actor& sink, event_mask mask) {
    self->state.events.subscribe(std::move(sink), mask);
  };
}

template <class Self>
auto unsubscribe_handler(Self self) {
  return [self](ev_unsubscribe_atom, caf::actor& sink) {
    self->state.events.unsubscribe(sink);
  };
}

/// An event built from a run's identity and a finished result (kind
/// task_completed or task_failed from its status).
agent_event finished_event(const std::string& source, const run_result& r,
                           const std::string& trace_id);

/// An event for a run that has just started.
agent_event started_event(const std::string& source, const run_task& task);

/// Called on an actor thread for each event: keep it short.
using event_callback = std::function<void(const agent_event&)>;

/// Spawns an actor that calls `fn` for each event it receives, subscribes it
/// to `source` for the kinds in `mask` and returns it. Stop it (send_exit)
/// when done; a runtime adopts it with rt.adopt().
event_sink spawn_event_observer(caf::actor_system& sys,
                                const runnable_actor& source, event_mask mask,
                                event_callback fn);

/// Builds the task a woken runnable runs from the event that woke it.
using wake_task_fn = std::function<run_task(const agent_event&)>;

/// Wakes `target` with a run each time `source` emits an event of `kind`:
/// an observer subscribed to `source` sends `target` the task `make_task`
/// builds (by default: the event's answer as the goal, in the same trace).
/// The runs' results go to `done` when given. Returns the observer.
event_sink wake_on(caf::actor_system& sys, const runnable_actor& source,
                   event_kind kind, const runnable_actor& target,
                   wake_task_fn make_task = {},
                   std::function<void(run_result)> done = {});

} // namespace troupe

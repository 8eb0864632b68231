#pragma once

// The store actor: how actors reach the durable store (runtime/store.hpp)
// without blocking their own threads. It runs detached (a thread of its own),
// so SQLite's disk I/O never stalls CAF's scheduler, and it answers:
//
//   the idempotency ledger protocol      tool adapters (a durable ledger_actor)
//   (st_ckpt_put_atom, run, key, step, final, state)     agents, after every step
//   (st_ckpt_get_atom, run, key) -> state or null        agents, when a run begins
//   (st_jr_get_atom, key) -> value or null               the journaled model
//   (st_jr_put_atom, run, key, kind, value) -> true      the journaled model
//   (st_event_atom, run, data)                           the run service
//   (st_sync_atom) -> true                               the run service
//
// Writes are fire-and-forget and applied in the order each sender sent them.
// A write that fails is logged (the run goes on: a missing checkpoint only
// means more replay on resume); a read that fails answers an error.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <caf/fwd.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "messages/json_value.hpp"
#include "messages/tool.hpp"

namespace troupe {

class store;

/// Saves a checkpoint: (st_ckpt_put_atom, run_id, key, step, final, state).
using st_ckpt_put_atom = caf::atom_constant<caf::atom("st_ckput")>;

/// The last checkpoint of a key: (st_ckpt_get_atom, run_id, key) ->
/// {"step", "final", "state"}, or null when there is none.
using st_ckpt_get_atom = caf::atom_constant<caf::atom("st_ckget")>;

/// A journal entry: (st_jr_get_atom, key) -> the value, or null.
using st_jr_get_atom = caf::atom_constant<caf::atom("st_jrget")>;

/// Records one: (st_jr_put_atom, run_id, key, kind, value) -> true once it
/// is committed (a reply is journaled before anyone acts on it); the first
/// value of a key stays.
using st_jr_put_atom = caf::atom_constant<caf::atom("st_jrput")>;

/// Appends an event to a run: (st_event_atom, run_id, data).
using st_event_atom = caf::atom_constant<caf::atom("st_event")>;

/// Answers true once everything sent to the store actor before it has been
/// applied (its mailbox is first in, first out): a barrier, so the run
/// service stores a run's last trace events before it marks the run ended.
using st_sync_atom = caf::atom_constant<caf::atom("st_sync")>;

/// The store's actor interface: a durable idempotency ledger, and more.
using store_actor = ledger_actor::extend<
  caf::reacts_to<st_ckpt_put_atom, std::string, std::string, int32_t, bool,
                 json_value>,
  caf::replies_to<st_ckpt_get_atom, std::string, std::string>::with<json_value>,
  caf::replies_to<st_jr_get_atom, std::string>::with<json_value>,
  caf::replies_to<st_jr_put_atom, std::string, std::string, std::string,
                  json_value>::with<bool>,
  caf::reacts_to<st_event_atom, std::string, json_value>,
  caf::replies_to<st_sync_atom>::with<bool>>;

/// Called on the store actor's thread with each event appended through it:
/// the run, the event's number in the run and its data.
using store_event_fn =
  std::function<void(const std::string& run_id, int64_t seq, const json& data)>;

/// Spawns the store actor (detached) over an open store.
store_actor spawn_store_actor(caf::actor_system& sys, std::shared_ptr<store> db,
                              store_event_fn on_event = {});

} // namespace troupe

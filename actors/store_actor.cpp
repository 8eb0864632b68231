#include "actors/store_actor.hpp"

#include <exception>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/spawn_options.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

#include "messages/errors.hpp"
#include "runtime/clock.hpp"
#include "runtime/store.hpp"

namespace troupe {

namespace {

struct store_actor_state {
  static inline const char* name = "troupe.store";
  std::shared_ptr<store> db;
  store_event_fn on_event;
};

/// Runs a write; a failure is logged, not thrown (the run goes on).
template <class F>
void write(store_actor_state& st, const char* what, F&& fn) {
  try {
    fn();
  } catch (const std::exception& ex) {
    spdlog::error("store {}: {} failed: {}", st.db->path(), what, ex.what());
  }
}

/// Runs a read; a failure becomes the requester's error.
template <class F>
caf::result<json_value> read(store_actor_state& st, const char* what, F&& fn) {
  try {
    return json_value{fn()};
  } catch (const std::exception& ex) {
    spdlog::error("store {}: {} failed: {}", st.db->path(), what, ex.what());
    return make_error(errc::unavailable,
                             std::string{"store: "} + what + ": " + ex.what());
  }
}

store_actor::behavior_type
store_behavior(store_actor::stateful_pointer<store_actor_state> self,
               std::shared_ptr<store> db, store_event_fn on_event) {
  self->state.db = std::move(db);
  self->state.on_event = std::move(on_event);
  return {
    [self](ld_lookup_atom, const std::string& key) -> caf::result<ledger_entry> {
      try {
        return self->state.db->get_ledger(key);
      } catch (const std::exception& ex) {
        spdlog::error("store {}: ledger lookup failed: {}",
                      self->state.db->path(), ex.what());
        return make_error(errc::unavailable,
                                 std::string{"store: ledger lookup: "}
                                   + ex.what());
      }
    },
    [self](ld_record_atom, const std::string& key, const tool_result& result) {
      write(self->state, "ledger record",
            [&] { self->state.db->put_ledger(key, result, now_ms()); });
    },
    [self](st_ckpt_put_atom, std::string& run_id, std::string& key,
           int32_t step, bool final, json_value& state) {
      write(self->state, "checkpoint", [&] {
        checkpoint cp;
        cp.run_id = std::move(run_id);
        cp.key = std::move(key);
        cp.step = step;
        cp.final = final;
        cp.state = std::move(state.value);
        cp.saved_ms = now_ms();
        self->state.db->put_checkpoint(cp);
      });
    },
    [self](st_ckpt_get_atom, const std::string& run_id,
           const std::string& key) {
      return read(self->state, "checkpoint lookup", [&]() -> json {
        auto cp = self->state.db->last_checkpoint(run_id, key);
        if (!cp)
          return nullptr;
        return json{{"step", cp->step},
                    {"final", cp->final},
                    {"state", std::move(cp->state)}};
      });
    },
    [self](st_jr_get_atom, const std::string& key) {
      return read(self->state, "journal lookup", [&]() -> json {
        auto value = self->state.db->get_journal(key);
        return value ? std::move(*value) : json(nullptr);
      });
    },
    [self](st_jr_put_atom, const std::string& run_id, const std::string& key,
           const std::string& kind, const json_value& value) {
      bool ok = false;
      write(self->state, "journal record", [&] {
        self->state.db->put_journal(run_id, key, kind, value.value);
        ok = true;
      });
      return ok;
    },
    [self](st_event_atom, const std::string& run_id, const json_value& data) {
      write(self->state, "event", [&] {
        auto seq = self->state.db->append_event(run_id, data.value);
        if (self->state.on_event)
          self->state.on_event(run_id, seq, data.value);
      });
    },
    [](st_sync_atom) { return true; },
  };
}

} // namespace

store_actor spawn_store_actor(caf::actor_system& sys, std::shared_ptr<store> db,
                              store_event_fn on_event) {
  return sys.spawn<caf::detached>(store_behavior, std::move(db),
                                  std::move(on_event));
}

} // namespace troupe

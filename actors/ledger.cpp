#include "actors/ledger.hpp"

#include <deque>
#include <unordered_map>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "runtime/clock.hpp"

namespace troupe {

namespace {

struct ledger_state {
  static inline const char* name = "troupe.ledger";
  ledger_config cfg;
  std::unordered_map<std::string, ledger_entry> entries;
  /// Keys in the order they were recorded, for eviction.
  std::deque<std::pair<int64_t, std::string>> order;

  /// Drops entries past the size bound or older than the ttl.
  void evict(int64_t now) {
    auto oldest_allowed = now - static_cast<int64_t>(cfg.ttl.count());
    while (!order.empty()
           && (entries.size() > cfg.max_entries
               || order.front().first < oldest_allowed)) {
      auto [at, key] = std::move(order.front());
      order.pop_front();
      auto i = entries.find(key);
      // A key recorded again later has a newer entry: keep that one.
      if (i != entries.end() && i->second.recorded_ms == at)
        entries.erase(i);
    }
  }
};

ledger_actor::behavior_type
ledger(ledger_actor::stateful_pointer<ledger_state> self, ledger_config cfg) {
  self->state.cfg = cfg;
  return {
    [self](ld_lookup_atom, const std::string& key) {
      auto& st = self->state;
      st.evict(now_ms());
      auto i = st.entries.find(key);
      if (i == st.entries.end())
        return ledger_entry{key, false, {}, 0};
      return i->second;
    },
    [self](ld_record_atom, std::string& key, tool_result& result) {
      auto& st = self->state;
      auto now = now_ms();
      auto& entry = st.entries[key];
      entry.key = key;
      entry.found = true;
      entry.result = std::move(result);
      entry.recorded_ms = now;
      st.order.emplace_back(now, std::move(key));
      st.evict(now);
    },
  };
}

} // namespace

ledger_actor spawn_ledger(caf::actor_system& sys, ledger_config cfg) {
  return sys.spawn(ledger, cfg);
}

} // namespace troupe

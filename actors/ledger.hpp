#pragma once

// The idempotency ledger: completed tool calls by idempotency key, so that a
// retried or duplicated call returns the recorded result instead of running
// its tool again. Tool adapters look a key up before they run a body and
// record every successful result (also one that arrives after its caller
// timed out: the side effect happened). This one keeps entries in memory, the
// oldest dropped past `max_entries` or `ttl`; a durable store can answer the
// same protocol.

#include <chrono>
#include <cstddef>

#include <caf/fwd.hpp>

#include "messages/tool.hpp"

namespace troupe {

/// How the in-memory ledger is bounded.
struct ledger_config {
  size_t max_entries = 100000;
  std::chrono::milliseconds ttl{std::chrono::hours{24}};
};

/// Spawns an in-memory idempotency ledger.
ledger_actor spawn_ledger(caf::actor_system& sys, ledger_config cfg = {});

} // namespace troupe

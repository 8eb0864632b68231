#pragma once

// The tool adapter serves one registered tool:
//
//   tool_call --> validate args against the schema --(bad)--> tool_result{invalid_arguments}
//                      |
//                      v (good)
//            post the body to the blocking pool ----> tool_result{ok, content}
//                      |                         \--> tool_result{transient|permanent}
//                      +-- per-call timer ----------> tool_result{timeout}
//
// A blocking body (the default) never runs on an actor thread; a tool declared
// non-blocking (tool_definition::blocking = false) runs in place. Whichever of
// "done" and "timer" arrives first answers the caller.
//
// Idempotency: a call with a key already recorded in the ledger is answered
// with the recorded result (replayed) and the body does not run. A call whose
// key is in flight (the same call retried or duplicated while its body runs,
// even after the first caller timed out) waits for that body instead of
// starting another. A body that succeeds is recorded in the ledger, also when
// it finishes after its caller gave up: its side effect happened. So a tool
// that did its work and then timed out, retried with the same key, runs once.
// A read-only tool (tool_definition::read_only) is given no ledger: a repeat
// reads again.
//
// A tool with guards.limits.max_concurrent has its bodies capped here too: a
// body holds its slot until it returns, also after its callers timed out, so
// a hung downstream system never has more calls in flight than the cap; a
// call still waiting for a slot when its caller gives up never runs.

#include <memory>

#include <caf/fwd.hpp>

#include "messages/tool.hpp"
#include "runtime/tool_registry.hpp"

namespace troupe {

class blocking_pool;

/// Spawns the adapter actor for `tool`, running its body on `pool`.
tool_actor spawn_tool_adapter(caf::actor_system& sys, tool_ptr tool,
                              std::shared_ptr<blocking_pool> pool,
                              ledger_actor ledger = {});

} // namespace troupe

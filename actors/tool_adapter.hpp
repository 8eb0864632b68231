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
// non-blocking (tool_definition::blocking = false) runs in place. Whichever of "done" and "timer"
// arrives first answers the caller; a body that finishes after its timeout is
// logged and its result dropped (the thread cannot be taken back).

#include <memory>

#include <caf/fwd.hpp>

#include "messages/tool.hpp"
#include "runtime/tool_registry.hpp"

namespace troupe {

class blocking_pool;

/// Spawns the adapter actor for `tool`, running its body on `pool`.
tool_actor spawn_tool_adapter(caf::actor_system& sys, tool_ptr tool,
                              std::shared_ptr<blocking_pool> pool);

} // namespace troupe

#pragma once

// The supervision protocol: anyone -> supervisor.
//   sup_child_atom, name -> caf::actor      the child's current incarnation
//   sup_await_atom, name, stale -> caf::actor  the same, waiting out a restart
//   sup_stats_atom       -> supervisor_stats restarts and give-ups so far
// Crashes reach a supervisor as down messages of the children it monitors; a
// supervisor that gives up exits with an error, which its own parent sees the
// same way.

#include <cstdint>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_addr.hpp>
#include <caf/atom.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "messages/define.hpp"

namespace troupe {

/// Restarts of one child.
struct child_stats {
  std::string name;
  int64_t restarts = 0;
  /// Whether the child is running now.
  bool running = false;
};
TROUPE_MESSAGE(child_stats, name, restarts, running)

/// What a supervisor has done so far.
struct supervisor_stats {
  std::string name;
  int64_t restarts = 0;
  /// Children that ended and were not restarted (temporary, or transient
  /// after a normal exit).
  int64_t retired = 0;
  std::vector<child_stats> children;
};
TROUPE_MESSAGE(supervisor_stats, name, restarts, retired, children)

/// Asks for a child's current incarnation by name.
using sup_child_atom = caf::atom_constant<caf::atom("sup_child")>;

/// Asks for a child's incarnation other than `stale` (one the caller saw die;
/// empty for none), waiting while it is being restarted; fails when the child
/// is retired or the supervisor gives up.
using sup_await_atom = caf::atom_constant<caf::atom("sup_await")>;

/// Asks for the supervisor's counters.
using sup_stats_atom = caf::atom_constant<caf::atom("sup_stats")>;

/// A supervisor.
using supervisor_actor = caf::typed_actor<
  caf::replies_to<sup_child_atom, std::string>::with<caf::actor>,
  caf::replies_to<sup_await_atom, std::string, caf::actor_addr>::with<caf::actor>,
  caf::replies_to<sup_stats_atom>::with<supervisor_stats>>;

} // namespace troupe

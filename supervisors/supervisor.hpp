#pragma once

// The supervisor: starts children from specs, monitors them (it does not die
// with them), and restarts them by policy when they end.
//
//        child down (crash or exit)
//              |
//              v
//   restart? --no (temporary; transient after a normal exit)--> retire child
//     |yes
//     v
//   intensity: more than max_restarts within window? --yes--> stop children,
//     |no                                                     exit with an error
//     v                                                       (the parent decides)
//   stop the siblings the strategy names (one_for_all: all; rest_for_one: the
//   ones started after it), wait the backoff, start them again in order
//
// A supervisor is itself a child like any other: a parent supervisor's factory
// may spawn one, and then an escalation is just another crash to the parent,
// exactly as in Erlang/OTP. Restarts, retirements and give-ups are trace
// events and are counted (sup_stats_atom). Stopped siblings are demonitored and
// sent an exit; their replacements may start before the old incarnation has
// finished its current message.

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include "messages/supervision.hpp"
#include "messages/trace.hpp"

namespace troupe {

/// When a child that ended is started again.
enum class restart_policy : uint8_t {
  /// Always.
  permanent,
  /// Only after an abnormal exit (a crash, an error); not after a normal one.
  transient,
  /// Never.
  temporary,
};

/// Which children restart together.
enum class restart_strategy : uint8_t {
  /// Only the child that ended.
  one_for_one,
  /// Every child.
  one_for_all,
  /// The child that ended and every child started after it.
  rest_for_one,
};

/// Makes a child's actor; called for the first start and every restart.
using child_factory = std::function<caf::actor(caf::actor_system&)>;

/// One child of a supervisor.
struct child_spec {
  std::string name;
  child_factory factory;
  restart_policy restart = restart_policy::permanent;
};

/// How a supervisor behaves.
struct supervisor_config {
  std::string name = "supervisor";
  restart_strategy strategy = restart_strategy::one_for_one;
  /// Restart intensity: at most this many restarts within `window`...
  int32_t max_restarts = 3;
  std::chrono::milliseconds window{std::chrono::seconds{5}};
  /// ...each after a backoff of base * 2^(k-1) for the k-th restart in the
  /// window, at most `backoff_cap`. A zero base restarts at once.
  std::chrono::milliseconds backoff_base{0};
  std::chrono::milliseconds backoff_cap{std::chrono::seconds{1}};
  /// Optional: restarts and give-ups become trace events.
  tracer_actor tracer;
};

/// Whether a down or exit reason counts as a crash (anything but a normal
/// exit or a shutdown).
bool is_abnormal(const caf::error& reason);

/// Spawns a supervisor and starts its children in order. Throws
/// std::invalid_argument naming the bad spec or setting.
supervisor_actor spawn_supervisor(caf::actor_system& sys,
                                  supervisor_config cfg,
                                  std::vector<child_spec> children);

/// A child spec whose child is itself a supervisor (for supervision trees).
child_spec supervisor_child(std::string name, supervisor_config cfg,
                            std::vector<child_spec> children,
                            restart_policy restart = restart_policy::permanent);

} // namespace troupe

#pragma once

// An actor system per test case, with every troupe message registered.

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>

#include "messages/type_ids.hpp"

namespace troupe::test {

/// Owns a config and an actor system built from it.
struct system_fixture {
  static caf::actor_system_config& configured(caf::actor_system_config& cfg) {
    register_messages(cfg);
    return cfg;
  }
  caf::actor_system_config cfg;
  caf::actor_system sys{configured(cfg)};
};

} // namespace troupe::test

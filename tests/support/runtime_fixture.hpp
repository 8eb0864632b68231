#pragma once

// A runtime for tests (no middleman: nothing here goes across nodes) and a
// log of every model request, for suites that register recording models.

#include <memory>

#include "runtime/runtime.hpp"
#include "support/test_models.hpp"

namespace troupe::test {

/// The config tests start from.
inline runtime_config test_runtime_config() {
  runtime_config cfg;
  cfg.load_middleman = false;
  return cfg;
}

/// A runtime and a model log, per test case.
struct runtime_fixture {
  runtime rt{test_runtime_config()};
  std::shared_ptr<model_log> log = std::make_shared<model_log>();
};

} // namespace troupe::test

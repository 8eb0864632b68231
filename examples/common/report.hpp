#pragma once

// What every team example prints at the end: the answer, the run's status and
// the timeline of which agent ran when (with the run's totals).

#include <iostream>

#include "messages/run.hpp"
#include "runtime/timeline.hpp"

namespace troupe_examples {

/// Prints the answer, status and timeline; returns the process exit code.
inline int report(const troupe::run_result& result, const troupe::timeline& chart) {
  std::cout << result.answer << "\n\nstatus: " << troupe::to_string(result.status);
  if (!result.error.empty())
    std::cout << " (" << result.error << ")";
  std::cout << "\n\n" << chart.render() << "\n";
  return result.status == troupe::run_status::complete ? 0 : 1;
}

} // namespace troupe_examples

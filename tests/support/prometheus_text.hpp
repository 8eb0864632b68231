#pragma once

// Reads a Prometheus text exposition back into samples, and lints one with
// the real `promtool check metrics` (Debian's prometheus package, installed
// by scripts/setup.sh).

#include <map>
#include <string>
#include <vector>

#include "support/process.hpp"

namespace troupe::test {

/// What a sample missing from the exposition reads as.
constexpr double missing = -1;

/// One sample line: name{labels} value.
struct sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

using label_set = std::map<std::string, std::string>;

/// The samples of a text exposition; a line it cannot read fails the test.
std::vector<sample> parse(const std::string& text);

/// The value of the sample with exactly these labels, or `missing`.
double value(const std::vector<sample>& samples, const std::string& name,
             const label_set& labels = {});

/// A histogram bucket's count (`le` compared as a number), or `missing`.
double bucket(const std::vector<sample>& samples, const std::string& name,
              label_set labels, double le);

/// The path of an executable `name` found in PATH, or "" when none is.
std::string find_program(const std::string& name);

/// What `promtool check metrics` says of `exposition` (it reads stdin). The
/// test fails, naming the fix, when promtool is not installed.
process_output promtool_check(const std::string& exposition);

} // namespace troupe::test

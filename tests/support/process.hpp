#pragma once

// Runs a command line to completion and captures what it printed; reads a
// whole file.

#include <string>

namespace troupe::test {

/// What a finished process left behind.
struct process_output {
  int exit_code = -1;
  std::string out;
  std::string err;
};

/// Runs `command` through /bin/sh with stdout and stderr captured apart.
process_output run_command(const std::string& command);

/// Quotes one argument for /bin/sh.
std::string shell_quote(const std::string& arg);

/// The whole contents of the file at `path` (empty when it cannot be read).
std::string read_file(const std::string& path);

} // namespace troupe::test

#pragma once

// Where the tests find the source tree and the built CLI.

#include <string>

namespace troupe::test {

/// The repository root.
std::string source_dir();

/// The built troupe CLI binary.
std::string cli_path();

} // namespace troupe::test

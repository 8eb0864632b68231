#include "support/paths.hpp"

namespace troupe::test {

std::string source_dir() {
  return TROUPE_SOURCE_DIR;
}

std::string cli_path() {
  return TROUPE_CLI_PATH;
}

} // namespace troupe::test

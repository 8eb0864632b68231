#pragma once

// A fresh directory under the system temp dir, removed with its contents at
// the end of the test.

#include <filesystem>
#include <fstream>
#include <string>

#include "runtime/clock.hpp"

namespace troupe::test {

/// A temporary directory that lives as long as this object.
class temp_dir {
public:
  temp_dir()
    : path_(std::filesystem::temp_directory_path()
            / ("troupe-test-" + random_hex(6))) {
    std::filesystem::create_directories(path_);
  }

  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }

  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  /// The directory.
  const std::filesystem::path& path() const noexcept {
    return path_;
  }

  /// A path inside the directory.
  std::string file(const std::string& name) const {
    return (path_ / name).string();
  }

  /// Writes `text` to a file in the directory and returns its path.
  std::string write(const std::string& name, const std::string& text) const {
    auto path = file(name);
    std::ofstream out{path, std::ios::binary};
    out << text;
    return path;
  }

private:
  std::filesystem::path path_;
};

} // namespace troupe::test

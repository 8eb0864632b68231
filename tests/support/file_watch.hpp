#pragma once

// Waiting for other processes without sleeping: a watch wakes when a file in
// one of its folders is created, written or moved in (inotify), or when one of
// its child processes exits (a pidfd), and never otherwise.
//
//   file_watch watch{{dir_a, dir_b}};
//   while (!condition()) if (!watch.wait(deadline)) break;
//
// Make the watch before the first check of the condition: a change between
// the check and wait() then still wakes wait().

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace troupe::test {

class file_watch {
public:
  /// Watches these folders (each must exist).
  explicit file_watch(const std::vector<std::string>& dirs);

  ~file_watch();

  file_watch(const file_watch&) = delete;
  file_watch& operator=(const file_watch&) = delete;

  /// Also wakes when the child process `pid` exits.
  void watch_exit(pid_t pid);

  /// Blocks until a change or an exit, or `deadline`; false on the deadline.
  /// Consumes what woke it.
  bool wait(std::chrono::steady_clock::time_point deadline);

private:
  int inotify_ = -1;
  std::vector<int> pidfds_;
};

/// Checks `done` now and after every change in `dirs`, until it holds (true)
/// or `limit` passes (false).
template <class Predicate>
bool wait_until(const std::vector<std::string>& dirs, Predicate done,
                std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  file_watch watch{dirs};
  while (!done())
    if (!watch.wait(deadline))
      return done();
  return true;
}

} // namespace troupe::test

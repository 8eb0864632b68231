#pragma once

// The blocking pool runs work that may block (a user's synchronous tool body)
// away from CAF's scheduler threads, which must never block. Results go back
// to actors as messages; the pool knows nothing about actors.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace troupe {

/// A fixed set of threads draining a FIFO of jobs.
class blocking_pool {
public:
  /// Starts `threads` workers (at least one).
  explicit blocking_pool(size_t threads);

  blocking_pool(const blocking_pool&) = delete;
  blocking_pool& operator=(const blocking_pool&) = delete;

  /// Calls stop().
  ~blocking_pool();

  /// Queues a job; returns false (and drops it) once the pool is stopping.
  bool post(std::function<void()> job);

  /// Stops taking jobs, drops the queued ones that have not started (logging
  /// how many), and joins the workers once their running jobs return.
  void stop();

  /// Jobs queued and not yet started.
  size_t queued() const;

  /// Number of worker threads.
  size_t size() const noexcept {
    return workers_.size();
  }

private:
  void work();

  mutable std::mutex mtx_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

} // namespace troupe

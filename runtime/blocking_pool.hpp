#pragma once

// The blocking pool runs work that may block (a user's synchronous tool body)
// away from CAF's scheduler threads, which must never block. Results go back
// to actors as messages; the pool knows nothing about actors.
//
// Stopping cannot take a thread back from a body that never returns, so stop()
// waits a grace period for running jobs and then detaches the stragglers. A
// job that finishes after that must not touch the (by then destroyed) actor
// system: jobs deliver their results through a delivery_gate, which stop()
// closes first.

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace troupe {

/// Lets late jobs know whether anyone is still there to receive their result.
class delivery_gate {
public:
  /// Runs `deliver` unless the gate is closed; returns whether it ran. close()
  /// waits for a delivery under way.
  template <class F>
  bool deliver(F&& fn) {
    std::lock_guard<std::mutex> guard{mtx_};
    if (!open_)
      return false;
    fn();
    return true;
  }

  /// No delivery runs after this returns.
  void close() {
    std::lock_guard<std::mutex> guard{mtx_};
    open_ = false;
  }

private:
  std::mutex mtx_;
  bool open_ = true;
};

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

  /// Stops taking jobs, drops the queued ones that have not started, closes
  /// the delivery gate, waits up to `grace` for running jobs and detaches the
  /// workers still busy after that (logging how many). Idempotent; must not
  /// be called from a job.
  void stop(std::chrono::milliseconds grace = std::chrono::seconds{5});

  /// Jobs queued and not yet started.
  size_t queued() const;

  /// Jobs running now.
  size_t running() const;

  /// Number of worker threads started.
  size_t size() const noexcept {
    return size_;
  }

  /// The gate jobs deliver their results through.
  std::shared_ptr<delivery_gate> gate() const noexcept {
    return gate_;
  }

private:
  struct shared_state {
    mutable std::mutex mtx;
    std::condition_variable cv;
    std::condition_variable idle;
    std::deque<std::function<void()>> jobs;
    size_t running = 0;
    bool stopping = false;
  };

  static void work(std::shared_ptr<shared_state> st);

  std::shared_ptr<shared_state> state_;
  std::shared_ptr<delivery_gate> gate_;
  std::vector<std::thread> workers_;
  size_t size_ = 0;
  std::once_flag stopped_;
};

} // namespace troupe

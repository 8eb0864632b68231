#include "runtime/blocking_pool.hpp"

#include <algorithm>
#include <exception>

#include <spdlog/spdlog.h>

namespace troupe {

blocking_pool::blocking_pool(size_t threads) {
  threads = std::max<size_t>(threads, 1);
  workers_.reserve(threads);
  for (size_t i = 0; i < threads; ++i)
    workers_.emplace_back([this] { work(); });
}

blocking_pool::~blocking_pool() {
  stop();
}

bool blocking_pool::post(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (stopping_)
      return false;
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
  return true;
}

void blocking_pool::stop() {
  size_t dropped = 0;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (stopping_ && workers_.empty())
      return;
    stopping_ = true;
    dropped = jobs_.size();
    jobs_.clear();
  }
  cv_.notify_all();
  if (dropped > 0)
    spdlog::warn("blocking pool stopped with {} queued job(s) not run", dropped);
  for (auto& worker : workers_)
    if (worker.joinable())
      worker.join();
  workers_.clear();
}

size_t blocking_pool::queued() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return jobs_.size();
}

void blocking_pool::work() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> guard{mtx_};
      cv_.wait(guard, [this] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty())
        return; // stopping and drained
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    try {
      job();
    } catch (const std::exception& ex) {
      // Jobs report their own failures; one that escapes is a bug worth a log line.
      spdlog::error("blocking pool job threw: {}", ex.what());
    }
  }
}

} // namespace troupe

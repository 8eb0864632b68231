#include "runtime/blocking_pool.hpp"

#include <algorithm>
#include <exception>

#include <spdlog/spdlog.h>

namespace troupe {

blocking_pool::blocking_pool(size_t threads)
  : state_(std::make_shared<shared_state>()),
    gate_(std::make_shared<delivery_gate>()) {
  size_ = std::max<size_t>(threads, 1);
  workers_.reserve(size_);
  try {
    for (size_t i = 0; i < size_; ++i)
      workers_.emplace_back(work, state_);
  } catch (...) {
    stop(std::chrono::milliseconds{0});
    throw;
  }
}

blocking_pool::~blocking_pool() {
  stop();
}

bool blocking_pool::post(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> guard{state_->mtx};
    if (state_->stopping)
      return false;
    state_->jobs.push_back(std::move(job));
  }
  state_->cv.notify_one();
  return true;
}

void blocking_pool::stop(std::chrono::milliseconds grace) {
  std::call_once(stopped_, [this, grace] {
    size_t dropped = 0;
    size_t stuck = 0;
    {
      std::unique_lock<std::mutex> lock{state_->mtx};
      state_->stopping = true;
      dropped = state_->jobs.size();
      state_->jobs.clear();
      state_->cv.notify_all();
      // Late results must not reach a runtime that is going away.
      gate_->close();
      state_->idle.wait_for(lock, grace, [this] { return state_->running == 0; });
      stuck = state_->running;
    }
    if (dropped > 0)
      spdlog::warn("blocking pool stopped with {} queued job(s) not run",
                   dropped);
    if (stuck > 0)
      spdlog::error("blocking pool: {} job(s) still running after {} ms; their "
                    "threads are detached and their results will be dropped",
                    stuck, grace.count());
    for (auto& worker : workers_) {
      if (!worker.joinable())
        continue;
      if (stuck > 0)
        worker.detach();
      else
        worker.join();
    }
    workers_.clear();
  });
}

size_t blocking_pool::queued() const {
  std::lock_guard<std::mutex> guard{state_->mtx};
  return state_->jobs.size();
}

size_t blocking_pool::running() const {
  std::lock_guard<std::mutex> guard{state_->mtx};
  return state_->running;
}

void blocking_pool::work(std::shared_ptr<shared_state> st) {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock{st->mtx};
      st->cv.wait(lock, [&st] { return st->stopping || !st->jobs.empty(); });
      if (st->jobs.empty())
        return; // stopping and drained
      job = std::move(st->jobs.front());
      st->jobs.pop_front();
      ++st->running;
    }
    try {
      job();
    } catch (const std::exception& ex) {
      // Jobs report their own failures; one that escapes is a bug worth a log line.
      spdlog::error("blocking pool job threw: {}", ex.what());
    } catch (...) {
      spdlog::error("blocking pool job threw a non-standard exception");
    }
    {
      std::lock_guard<std::mutex> guard{st->mtx};
      --st->running;
    }
    st->idle.notify_all();
  }
}

} // namespace troupe

#pragma once

// The runtime's I/O threads: an Asio io_context run by a few threads, where
// network code (model APIs, HTTP tools, the gateway) performs its asynchronous
// operations. Completions reach actors only as messages.

#include <cstddef>
#include <memory>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

namespace troupe {

/// An io_context and the threads that run it.
class io_pool {
public:
  /// Starts `threads` threads (at least one) running the context.
  explicit io_pool(size_t threads);

  io_pool(const io_pool&) = delete;
  io_pool& operator=(const io_pool&) = delete;

  /// Calls stop().
  ~io_pool();

  /// The context to post I/O work on.
  boost::asio::io_context& context() noexcept {
    return ctx_;
  }

  /// Stops the context (handlers not yet run are abandoned) and joins the
  /// threads. Must not be called from an I/O thread.
  void stop();

private:
  boost::asio::io_context ctx_;
  std::unique_ptr<
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type>>
    guard_;
  std::vector<std::thread> threads_;
};

} // namespace troupe

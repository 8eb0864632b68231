#include "runtime/io_pool.hpp"

#include <algorithm>

namespace troupe {

io_pool::io_pool(size_t threads)
  : guard_(std::make_unique<boost::asio::executor_work_guard<
             boost::asio::io_context::executor_type>>(ctx_.get_executor())) {
  threads = std::max<size_t>(threads, 1);
  for (size_t i = 0; i < threads; ++i)
    threads_.emplace_back([this] { ctx_.run(); });
}

io_pool::~io_pool() {
  stop();
}

void io_pool::stop() {
  guard_.reset();
  ctx_.stop();
  for (auto& t : threads_)
    if (t.joinable())
      t.join();
  threads_.clear();
}

} // namespace troupe

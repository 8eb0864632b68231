#include "support/file_watch.hpp"

#include <poll.h>
#include <sys/inotify.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace troupe::test {

file_watch::file_watch(const std::vector<std::string>& dirs) {
  inotify_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (inotify_ < 0)
    throw std::runtime_error(std::string{"inotify_init1: "}
                             + std::strerror(errno));
  for (const auto& dir : dirs)
    if (::inotify_add_watch(inotify_, dir.c_str(),
                            IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE
                              | IN_MOVED_TO)
        < 0)
      throw std::runtime_error("cannot watch " + dir + ": "
                               + std::strerror(errno));
}

file_watch::~file_watch() {
  for (auto fd : pidfds_)
    ::close(fd);
  if (inotify_ >= 0)
    ::close(inotify_);
}

void file_watch::watch_exit(pid_t pid) {
  auto fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0)
    throw std::runtime_error(std::string{"pidfd_open: "}
                             + std::strerror(errno));
  pidfds_.push_back(fd);
}

bool file_watch::wait(std::chrono::steady_clock::time_point deadline) {
  std::vector<pollfd> fds{{inotify_, POLLIN, 0}};
  for (auto fd : pidfds_)
    fds.push_back({fd, POLLIN, 0});
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                  deadline - std::chrono::steady_clock::now())
                  .count();
    if (left <= 0)
      return false;
    auto n = ::poll(fds.data(), fds.size(), static_cast<int>(left));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    // Drain the inotify queue; the events themselves do not matter.
    alignas(inotify_event) char buf[4096];
    while (::read(inotify_, buf, sizeof(buf)) > 0) {
    }
    // A pidfd stays readable once its process exited: stop watching it so
    // the next wait blocks again.
    for (size_t i = 1; i < fds.size(); ++i)
      if (fds[i].revents != 0) {
        ::close(fds[i].fd);
        pidfds_.erase(pidfds_.begin() + static_cast<long>(i - 1));
        fds.erase(fds.begin() + static_cast<long>(i));
        --i;
      }
    return true;
  }
}

} // namespace troupe::test

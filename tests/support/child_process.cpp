#include "support/child_process.hpp"
#include "support/file_watch.hpp"
#include "support/process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

extern char** environ;

namespace troupe::test {

namespace {

/// The test process's environment without its TROUPE_* variables.
std::vector<std::string> child_environment() {
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e)
    if (std::strncmp(*e, "TROUPE_", 7) != 0)
      out.emplace_back(*e);
  return out;
}

} // namespace

child_process::child_process(const std::vector<std::string>& args,
                             const std::string& cwd,
                             const std::string& stdout_path)
  : out_path_(stdout_path) {
  start(args, cwd, nullptr);
}

child_process::child_process(const std::vector<std::string>& args,
                             const std::string& cwd,
                             const std::string& stdout_path,
                             const std::string& stderr_path)
  : out_path_(stdout_path), err_path_(stderr_path) {
  start(args, cwd, &stderr_path);
}

void child_process::start(const std::vector<std::string>& args,
                          const std::string& cwd,
                          const std::string* stderr_path) {
  // argv and the environment are built before fork: the child may only make
  // async-signal-safe calls.
  std::vector<char*> argv;
  for (const auto& a : args)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  auto env_store = child_environment();
  std::vector<char*> env;
  for (auto& e : env_store)
    env.push_back(e.data());
  env.push_back(nullptr);
  int fds[2] = {-1, -1};
  int err = -1;
  if (stderr_path == nullptr) {
    if (::pipe2(fds, O_CLOEXEC) != 0)
      return;
    err = fds[1];
  } else {
    err = ::open(stderr_path->c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                 0644);
  }
  int out = ::open(out_path_.c_str(),
                   O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (err < 0 || out < 0 || in < 0) {
    for (int fd : {fds[0], err, out, in})
      if (fd >= 0)
        ::close(fd);
    return;
  }
  auto parent = ::getpid();
  pid_ = ::fork();
  if (pid_ == 0) {
    // Only async-signal-safe calls between fork and exec. The child dies with
    // the test process, also when that is killed (a ctest timeout) before the
    // destructor could run.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent)
      ::_exit(127);
    if (::chdir(cwd.c_str()) != 0 || ::dup2(in, 0) < 0 || ::dup2(out, 1) < 0
        || ::dup2(err, 2) < 0)
      ::_exit(127);
    ::execve(argv[0], argv.data(), env.data());
    ::_exit(127);
  }
  ::close(err);
  ::close(out);
  ::close(in);
  if (pid_ < 0) {
    if (fds[0] >= 0)
      ::close(fds[0]);
    return;
  }
  if (stderr_path == nullptr)
    err_fd_ = fds[0];
}

child_process::~child_process() {
  if (pid_ > 0 && !reaped_) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  if (err_fd_ >= 0)
    ::close(err_fd_);
}

bool child_process::started() const noexcept {
  return pid_ > 0 && (err_fd_ >= 0 || !err_path_.empty());
}

bool child_process::running() {
  if (pid_ <= 0 || reaped_)
    return false;
  int status = 0;
  auto r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    status_ = status;
    return false;
  }
  return r == 0;
}

void child_process::send_signal(int sig) {
  if (pid_ > 0 && !reaped_)
    ::kill(pid_, sig);
}

std::vector<std::string>
child_process::wait_for_line(const std::regex& re,
                             std::chrono::milliseconds limit) {
  if (err_fd_ < 0)
    return {};
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    // Complete lines not looked at yet.
    for (auto nl = pending_.find('\n'); nl != std::string::npos;
         nl = pending_.find('\n')) {
      lines_.push_back(pending_.substr(0, nl));
      pending_.erase(0, nl + 1);
      std::smatch m;
      if (std::regex_search(lines_.back(), m, re))
        return {m.begin(), m.end()};
    }
    if (eof_ || !read_some(deadline))
      return {};
  }
}

std::vector<std::string>
child_process::wait_for_err(const std::regex& re,
                            std::chrono::milliseconds limit) {
  if (err_path_.empty() || !started())
    return {};
  auto deadline = std::chrono::steady_clock::now() + limit;
  // Wakes on writes to the stderr file and on the child's exit.
  file_watch watch{{std::filesystem::path{err_path_}.parent_path().string()}};
  if (running())
    watch.watch_exit(pid_);
  for (;;) {
    // Whether it ran before the file is read: a child that has exited has
    // written all it will, so its last line counts even without a newline.
    bool alive = running();
    auto text = err();
    size_t at = 0;
    while (at < text.size()) {
      auto nl = text.find('\n', at);
      if (nl == std::string::npos && alive)
        break; // a line still being written
      auto end = nl == std::string::npos ? text.size() : nl;
      auto line = text.substr(at, end - at);
      std::smatch m;
      if (std::regex_search(line, m, re))
        return {m.begin(), m.end()};
      at = end + 1;
    }
    if (!alive || !watch.wait(deadline))
      return {};
  }
}

int child_process::wait_exit(std::chrono::milliseconds limit) {
  if (!started())
    return -1;
  auto deadline = std::chrono::steady_clock::now() + limit;
  // Pipe mode: stderr to its end first (it closes when the child exits).
  bool drained = true;
  if (err_fd_ >= 0) {
    while (!eof_)
      if (!read_some(deadline))
        break;
    drained = eof_;
  }
  // Wait for the exit, bounded by the deadline.
  if (drained && running()) {
    file_watch watch{{}};
    watch.watch_exit(pid_);
    while (running())
      if (!watch.wait(deadline))
        break;
  }
  if (!reaped_) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
    reaped_ = true;
    return -1;
  }
  if (!drained)
    return -1;
  return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
}

int child_process::stop(std::chrono::milliseconds limit) {
  if (pid_ > 0 && !reaped_)
    ::kill(pid_, SIGTERM);
  return wait_exit(limit);
}

std::string child_process::err() const {
  if (!err_path_.empty())
    return read_file(err_path_);
  std::string out;
  for (const auto& l : lines_)
    out += l + "\n";
  return out + pending_;
}

std::string child_process::out() const {
  return read_file(out_path_);
}

bool child_process::read_some(std::chrono::steady_clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
    deadline - std::chrono::steady_clock::now());
  if (left.count() <= 0)
    return false;
  pollfd p{err_fd_, POLLIN, 0};
  auto ready = ::poll(&p, 1, static_cast<int>(left.count()));
  if (ready < 0 && errno == EINTR)
    return true;
  if (ready <= 0)
    return false;
  char buf[4096];
  auto n = ::read(err_fd_, buf, sizeof(buf));
  if (n < 0)
    return errno == EINTR || errno == EAGAIN;
  if (n == 0)
    eof_ = true;
  else
    pending_.append(buf, static_cast<size_t>(n));
  return true;
}

} // namespace troupe::test

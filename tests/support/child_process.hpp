#pragma once

// A child process that keeps running while the test drives it (fork/exec in
// the background), killed by its pid when the object goes away.

#include <sys/types.h>

#include <chrono>
#include <regex>
#include <string>
#include <vector>

namespace troupe::test {

/// A program run as a child process in a folder. stdout goes to a file;
/// stderr either comes through a pipe the test reads line by line with finite
/// timeouts, or goes to a file (for long-running children whose stderr nobody
/// drains). A child still running when the object is destroyed is killed
/// (SIGKILL, by its pid) and reaped; one whose test process dies first gets
/// SIGKILL from the kernel (PR_SET_PDEATHSIG).
///
/// Every child runs with the test process's environment minus its TROUPE_*
/// variables, so a developer's TROUPE_MODEL or TROUPE_APPROVALS cannot change
/// what a test runs; a test passes what it needs as arguments.
///
/// Exit codes: wait_exit and stop return the code the child passed to exit(),
/// or -1 when it ended by a signal or did not end in time.
class child_process {
public:
  /// stderr through a pipe: read it with wait_for_line, wait_exit and err.
  child_process(const std::vector<std::string>& args, const std::string& cwd,
                const std::string& stdout_path);

  /// stderr to the file `stderr_path`: err() reads that file and
  /// wait_for_err polls it.
  child_process(const std::vector<std::string>& args, const std::string& cwd,
                const std::string& stdout_path,
                const std::string& stderr_path);

  ~child_process();

  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  /// Whether the fork succeeded and the output files / pipe were opened
  /// (an exec failure shows as exit code 127).
  bool started() const noexcept;

  /// The child's pid (-1 when it did not start).
  pid_t pid() const noexcept {
    return pid_;
  }

  /// Whether the child has not been reaped yet and has not exited (reaps it
  /// when it has).
  bool running();

  /// Sends `signal` to the child (when it has not been reaped yet).
  void send_signal(int sig);

  /// Pipe mode only: reads stderr until a line matches `re` or `limit`
  /// passes or stderr ends; the match and its groups, or nothing. Each line
  /// is looked at once: a later call continues after the line that matched.
  std::vector<std::string> wait_for_line(const std::regex& re,
                                         std::chrono::milliseconds limit);

  /// File mode only: polls the stderr file every 20 ms until one of its
  /// complete lines matches `re`; the match and its groups, or nothing when
  /// `limit` passes or the child exits without such a line. Every call
  /// searches the whole file from its start, so output printed before the
  /// call counts.
  std::vector<std::string> wait_for_err(const std::regex& re,
                                        std::chrono::milliseconds limit);

  /// Waits for the child to exit (in pipe mode reading stderr to its end)
  /// and reaps it; the exit code, or -1 when it did not end within `limit`
  /// (it is killed with SIGKILL then) or ended by a signal.
  int wait_exit(std::chrono::milliseconds limit);

  /// Asks the child to end (SIGTERM) and waits for it like wait_exit: when
  /// it is still running after `limit` it gets SIGKILL. The exit code, or
  /// -1 when it ended by a signal (SIGTERM left unhandled included) or had
  /// to be killed.
  int stop(std::chrono::milliseconds limit = std::chrono::seconds{10});

  /// All of stderr read so far (pipe mode), or the stderr file's contents.
  std::string err() const;

  /// The stdout file's contents so far.
  std::string out() const;

private:
  void start(const std::vector<std::string>& args, const std::string& cwd,
             const std::string* stderr_path);

  /// Waits for stderr output until `deadline`; false on timeout or error.
  bool read_some(std::chrono::steady_clock::time_point deadline);

  pid_t pid_ = -1;
  int err_fd_ = -1;
  std::string out_path_;
  std::string err_path_;
  bool eof_ = false;
  bool reaped_ = false;
  int status_ = 0;
  std::string pending_;
  std::vector<std::string> lines_;
};

} // namespace troupe::test

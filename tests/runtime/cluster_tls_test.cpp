// TLS between cluster nodes, as an operator runs it: certificates made with
// scripts/make-cluster-certs.sh, real `troupe node` and `troupe run --cluster`
// processes on loopback. Peers with a certificate from another CA, or with no
// TLS at all, are refused at the handshake and the cluster keeps serving; bad
// certificate files are refused before the node starts.

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/paths.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

extern char** environ;

using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

using steady = std::chrono::steady_clock;

std::string slurp(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

/// Polls `pred` every 20 ms until it holds or `timeout` passes.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout) {
  auto deadline = steady::now() + timeout;
  for (;;) {
    if (pred())
      return true;
    if (steady::now() >= deadline)
      return false;
    std::this_thread::sleep_for(20ms);
  }
}

/// A process started in the background with stdout and stderr going to
/// files; killed (SIGKILL) and reaped at scope exit if it still runs. (Local:
/// tests/support/child_process.hpp did not exist when this test was written.)
class bg_process {
public:
  bg_process(const std::vector<std::string>& argv, const std::string& dir,
             const std::string& label, const std::string& cwd = "")
    : out_path_(dir + "/" + label + ".out"),
      err_path_(dir + "/" + label + ".err") {
    std::vector<char*> args;
    for (const auto& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    // The environment without TROUPE_* (TROUPE_MODEL would replace the
    // swarm's scripted model), built before fork.
    std::vector<std::string> env_store;
    for (char** e = environ; *e != nullptr; ++e)
      if (std::strncmp(*e, "TROUPE_", 7) != 0)
        env_store.emplace_back(*e);
    std::vector<char*> env;
    for (auto& e : env_store)
      env.push_back(e.data());
    env.push_back(nullptr);
    int out_fd = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err_fd = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (out_fd < 0 || err_fd < 0 || null_fd < 0)
      FAIL("cannot open the output files in " << dir);
    auto parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      // Dies with the test process, whatever ends it.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent)
        ::_exit(127);
      ::dup2(null_fd, 0);
      ::dup2(out_fd, 1);
      ::dup2(err_fd, 2);
      if (!cwd.empty() && ::chdir(cwd.c_str()) != 0)
        ::_exit(127);
      ::execve(args[0], args.data(), env.data());
      ::_exit(127);
    }
    ::close(out_fd);
    ::close(err_fd);
    ::close(null_fd);
    if (pid_ < 0)
      FAIL("fork failed: " << std::strerror(errno));
  }

  ~bg_process() {
    if (running()) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }

  bg_process(const bg_process&) = delete;
  bg_process& operator=(const bg_process&) = delete;

  /// False once the process has exited (and then exit_code() is set).
  bool running() {
    if (exit_code_)
      return false;
    int status = 0;
    auto r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status)
                                     : 128 + WTERMSIG(status);
      return false;
    }
    return r == 0;
  }

  /// The exit code, once it exits within `timeout`; none if it still runs.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
    eventually([this] { return !running(); }, timeout);
    return exit_code_;
  }

  /// SIGTERM, then the exit code (SIGKILL after `timeout`).
  std::optional<int> stop(std::chrono::milliseconds timeout = 10s) {
    if (running())
      ::kill(pid_, SIGTERM);
    auto code = wait_exit(timeout);
    if (!code && running()) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      exit_code_ = 128 + SIGKILL;
    }
    return code;
  }

  std::string out() const {
    return slurp(out_path_);
  }

  std::string err() const {
    return slurp(err_path_);
  }

  /// Waits until stderr matches `re` (first match, group 1 if any) while the
  /// process runs; none if it exits first or `timeout` passes.
  std::optional<std::string> wait_for_err(const std::regex& re,
                                          std::chrono::milliseconds timeout) {
    std::optional<std::string> found;
    eventually(
      [&] {
        bool alive = running();
        std::smatch m;
        auto text = err();
        if (std::regex_search(text, m, re)) {
          found = m.size() > 1 ? m[1].str() : m[0].str();
          return true;
        }
        return !alive;
      },
      timeout);
    return found;
  }

private:
  std::string out_path_;
  std::string err_path_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

const std::regex listening_re{
  R"(troupe node \S+: listening on 127\.0\.0\.1:(\d+) \(TLS\))"};

/// Certificates for the nodes and a client (from the operator's script), a
/// rogue CA with a certificate of its own, and the cluster example's files.
struct tls_cluster {
  temp_dir dir;
  std::string certs = dir.file("certs");
  std::string rogue = dir.file("rogue");
  std::string example = dir.file("example");

  tls_cluster() {
    auto made = run_command(
      "bash " + shell_quote(source_dir() + "/scripts/make-cluster-certs.sh")
      + " " + shell_quote(certs)
      + " coordinator worker-1 worker-2 worker-3 client");
    INFO(made.err);
    REQUIRE(made.exit_code == 0);
    // The operator is told which flags to pass.
    REQUIRE(made.out.find("--tls-cert") != std::string::npos);
    // A second CA, unrelated to the cluster's, and a node certificate from it
    // (same name, same extensions: only the signer differs).
    std::filesystem::create_directories(rogue);
    auto r = shell_quote(rogue);
    auto rogue_made = run_command(
      "set -e; cd " + r
      + "; openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256"
        " -nodes -sha256 -days 30"
        " -subj /CN=rogue-ca -keyout ca.key -out ca.pem"
        "; openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256"
        " -nodes -subj /CN=worker-1"
        " -keyout node.key -out node.csr"
        "; printf 'basicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth,"
        "clientAuth\\n' > ext"
        "; openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key"
        " -CAcreateserial -sha256 -days 30 -extfile ext -out node.pem");
    INFO(rogue_made.err);
    REQUIRE(rogue_made.exit_code == 0);
    std::filesystem::copy(source_dir() + "/examples/cluster", example);
  }

  std::vector<std::string> tls_flags(const std::string& who) const {
    return {"--tls-cert", certs + "/" + who + ".pem", "--tls-key",
            certs + "/" + who + ".key", "--tls-ca", certs + "/ca.pem"};
  }

  std::vector<std::string> rogue_flags() const {
    return {"--tls-cert", rogue + "/node.pem", "--tls-key", rogue + "/node.key",
            "--tls-ca", rogue + "/ca.pem"};
  }

  /// `troupe node` argv; `join` empty = a seed.
  std::vector<std::string>
  node_argv(const std::string& name, const std::string& swarm,
            const std::string& join,
            const std::vector<std::string>& tls) const {
    std::vector<std::string> argv{cli_path(), "node",     "--name",
                                  name,       "--listen", "127.0.0.1:0"};
    if (!swarm.empty()) {
      argv.push_back("--swarm");
      argv.push_back(example + "/" + swarm);
    }
    if (!join.empty()) {
      argv.insert(argv.end(), {"--join", join, "--join-timeout", "3"});
    }
    argv.insert(argv.end(), tls.begin(), tls.end());
    return argv;
  }
};

/// A TLS coordinator (hosting the example's record_finding), up and listening.
struct tls_coordinator {
  const tls_cluster& c;
  bg_process proc;
  std::string address;

  explicit tls_coordinator(const tls_cluster& cluster)
    : c(cluster),
      proc(c.node_argv("coordinator", "coordinator.swarm.json", "",
                       c.tls_flags("coordinator")),
           c.dir.path().string(), "coordinator", c.dir.path().string()) {
    auto port = proc.wait_for_err(listening_re, 30s);
    INFO(proc.err());
    REQUIRE(port);
    address = "127.0.0.1:" + *port;
  }
};

const std::regex joined_re{
  R"(joined the cluster through \S+ \(members: ([^)]*)\))"};

} // namespace

TEST_CASE("TLS nodes with certificates from the cluster CA join and run a "
          "swarm across the cluster",
          "[cluster][tls]") {
  tls_cluster c;
  tls_coordinator coord{c};
  auto dir = c.dir.path().string();
  bg_process w1{c.node_argv("worker-1", "worker.swarm.json", coord.address,
                            c.tls_flags("worker-1")),
                dir, "worker-1", dir};
  auto members1 = w1.wait_for_err(joined_re, 30s);
  INFO("worker-1: " << w1.err());
  REQUIRE(members1);
  CHECK(members1->find("coordinator") != std::string::npos);
  bg_process w2{c.node_argv("worker-2", "worker.swarm.json", coord.address,
                            c.tls_flags("worker-2")),
                dir, "worker-2", dir};
  auto members2 = w2.wait_for_err(joined_re, 30s);
  INFO("worker-2: " << w2.err());
  REQUIRE(members2);
  CHECK(members2->find("worker-1") != std::string::npos);
  // The seed sees both joins, over TLS.
  CHECK(coord.proc.wait_for_err(std::regex{"worker-2 joined"}, 10s));

  std::vector<std::string> run{cli_path(), "run", "--cluster", coord.address,
                               c.example + "/cluster.swarm.json", "--goal",
                               "Should the office replace its gas boiler with "
                               "a heat pump?",
                               "--timeout", "60"};
  auto flags = c.tls_flags("client");
  run.insert(run.end(), flags.begin(), flags.end());
  bg_process client{run, dir, "client", dir};
  auto code = client.wait_exit(90s);
  INFO("client stderr: " << client.err());
  INFO("coordinator: " << coord.proc.err());
  REQUIRE(code);
  CHECK(*code == 0);
  CHECK(client.out().find("Brief from the cluster") != std::string::npos);
  // The researchers ran on the workers, reached over TLS.
  auto err = client.err();
  CHECK(std::regex_search(err, std::regex{"researcher@worker-[12]"}));
  // The coordinator's tool recorded the three findings.
  auto findings = slurp(c.dir.file("cluster-findings.jsonl"));
  CHECK(std::count(findings.begin(), findings.end(), '\n') == 3);
  CHECK(coord.proc.running());
}

TEST_CASE("a TLS cluster refuses a node whose certificate another CA signed "
          "and keeps serving",
          "[cluster][tls]") {
  tls_cluster c;
  tls_coordinator coord{c};
  auto dir = c.dir.path().string();
  // The rogue node trusts its own CA only; the coordinator does not trust it.
  bg_process rogue{c.node_argv("rogue", "", coord.address, c.rogue_flags()),
                   dir, "rogue", dir};
  auto code = rogue.wait_exit(30s);
  INFO("rogue: " << rogue.err());
  INFO("coordinator: " << coord.proc.err());
  REQUIRE(code);
  CHECK(*code == 3);
  CHECK(rogue.err().find("error: cannot join the cluster")
        != std::string::npos);
  CHECK(rogue.err().find("joined the cluster through") == std::string::npos);
  // Refused at the TLS handshake, at the coordinator's address.
  CHECK(rogue.err().find(coord.address) != std::string::npos);
  CHECK(rogue.err().find("handshake") != std::string::npos);
  // A rogue certificate that trusts the cluster CA (it holds the cluster's
  // ca.pem) is refused by the coordinator's check alone.
  auto half = c.rogue_flags();
  half[5] = c.certs + "/ca.pem";
  bg_process rogue2{c.node_argv("rogue-2", "", coord.address, half), dir,
                    "rogue-2", dir};
  auto code2 = rogue2.wait_exit(30s);
  INFO("rogue-2: " << rogue2.err());
  REQUIRE(code2);
  CHECK(*code2 == 3);
  CHECK(rogue2.err().find("error: cannot join the cluster")
        != std::string::npos);
  // The coordinator is still up and a good node joins after them.
  REQUIRE(coord.proc.running());
  bg_process good{c.node_argv("worker-1", "worker.swarm.json", coord.address,
                              c.tls_flags("worker-1")),
                  dir, "worker-1", dir};
  auto members = good.wait_for_err(joined_re, 30s);
  INFO("worker-1: " << good.err());
  REQUIRE(members);
  CHECK(members->find("coordinator") != std::string::npos);
  CHECK(members->find("rogue") == std::string::npos);
  CHECK(members->find("plain") == std::string::npos);
  CHECK(coord.proc.err().find("rogue joined") == std::string::npos);
  CHECK(coord.proc.err().find("rogue-2 joined") == std::string::npos);
}

TEST_CASE("a TLS cluster refuses plain TCP nodes and clients",
          "[cluster][tls]") {
  tls_cluster c;
  tls_coordinator coord{c};
  auto dir = c.dir.path().string();
  bg_process plain{c.node_argv("plain", "", coord.address, {}), dir, "plain",
                   dir};
  auto code = plain.wait_exit(30s);
  INFO("plain: " << plain.err());
  INFO("coordinator: " << coord.proc.err());
  REQUIRE(code);
  CHECK(*code == 3);
  CHECK(plain.err().find("error: cannot join the cluster")
        != std::string::npos);
  CHECK(plain.err().find(coord.address) != std::string::npos);

  // A run without certificates names the address it could not join.
  bg_process client{{cli_path(), "run", "--cluster", coord.address,
                     c.example + "/cluster.swarm.json", "--goal", "anything",
                     "--timeout", "30"},
                    dir, "client", dir};
  auto client_code = client.wait_exit(60s);
  INFO("client: " << client.err());
  REQUIRE(client_code);
  CHECK(*client_code != 0);
  CHECK(client.err().find(coord.address) != std::string::npos);
  CHECK(client.out().find("Brief") == std::string::npos);

  REQUIRE(coord.proc.running());
  bg_process good{c.node_argv("worker-1", "worker.swarm.json", coord.address,
                              c.tls_flags("worker-1")),
                  dir, "worker-1", dir};
  auto members = good.wait_for_err(joined_re, 30s);
  INFO("worker-1: " << good.err());
  REQUIRE(members);
  CHECK(members->find("coordinator") != std::string::npos);
  CHECK(members->find("rogue") == std::string::npos);
  CHECK(members->find("plain") == std::string::npos);
  CHECK(coord.proc.err().find("plain joined") == std::string::npos);
}

TEST_CASE("troupe node refuses bad TLS files before it starts",
          "[cluster][tls]") {
  tls_cluster c;
  auto dir = c.dir.path().string();
  auto run_node = [&](const std::vector<std::string>& tls,
                      const std::string& label) {
    bg_process node{c.node_argv("worker-1", "", "", tls), dir, label, dir};
    auto code = node.wait_exit(30s);
    INFO(label << ": " << node.err());
    REQUIRE(code);
    return std::make_pair(*code, node.err());
  };

  SECTION("a missing key file") {
    auto tls = c.tls_flags("worker-1");
    auto missing = c.certs + "/no-such.key";
    tls[3] = missing;
    auto [code, err] = run_node(tls, "missing-key");
    INFO(err);
    CHECK(code == 2);
    CHECK(err.find("error: cluster TLS") != std::string::npos);
    CHECK(err.find(missing) != std::string::npos);
    CHECK(err.find("listening on") == std::string::npos);
  }

  SECTION("a key that does not belong to the certificate") {
    auto tls = c.tls_flags("worker-1");
    tls[3] = c.certs + "/worker-2.key";
    auto [code, err] = run_node(tls, "wrong-key");
    INFO(err);
    CHECK(code == 2);
    CHECK(err.find("error: cluster TLS") != std::string::npos);
    CHECK(err.find("worker-2.key") != std::string::npos);
    CHECK(err.find("listening on") == std::string::npos);
  }

  SECTION("a CA file that holds no certificate") {
    auto tls = c.tls_flags("worker-1");
    tls[5] = c.certs + "/worker-1.key";
    auto [code, err] = run_node(tls, "bad-ca");
    INFO(err);
    CHECK(code == 2);
    CHECK(err.find("error: cluster TLS") != std::string::npos);
    CHECK(err.find("worker-1.key") != std::string::npos);
  }
}

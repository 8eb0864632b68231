// TLS between cluster nodes, as an operator runs it: certificates made with
// scripts/make-cluster-certs.sh, real `troupe node` and `troupe run --cluster`
// processes on loopback. Peers with a certificate from another CA, or with no
// TLS at all, are refused at the handshake and the cluster keeps serving; bad
// certificate files are refused before the node starts.

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <memory>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "support/child_process.hpp"
#include "support/paths.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

/// `argv` started in the background in `dir` (the child's working folder),
/// its stdout and stderr in DIR/LABEL.out and DIR/LABEL.err; the returned
/// process is killed and reaped when it goes away while still running.
std::unique_ptr<child_process> start_in(const std::vector<std::string>& argv,
                                        const std::string& dir,
                                        const std::string& label) {
  auto p = std::make_unique<child_process>(
    argv, dir, dir + "/" + label + ".out", dir + "/" + label + ".err");
  INFO("cannot start " << label << " in " << dir);
  REQUIRE(p->started());
  return p;
}

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
  std::unique_ptr<child_process> proc;
  std::string address;

  explicit tls_coordinator(const tls_cluster& cluster)
    : c(cluster),
      proc(start_in(c.node_argv("coordinator", "coordinator.swarm.json", "",
                                c.tls_flags("coordinator")),
                    c.dir.path().string(), "coordinator")) {
    auto port = proc->wait_for_err(listening_re, 30s);
    INFO(proc->err());
    REQUIRE(!port.empty());
    address = "127.0.0.1:" + port[1];
  }
};

const std::regex joined_re{
  R"(joined the cluster through \S+ \(members: ([^)]*)\))"};

/// A TLS worker NAME (with its own certificate, hosting the example's
/// worker swarm) that joined the cluster through `seed`.
struct tls_worker {
  std::unique_ptr<child_process> proc;
  /// The members it was told of when it joined.
  std::string members;

  tls_worker(const tls_cluster& c, const std::string& name,
             const std::string& seed)
    : proc(start_in(c.node_argv(name, "worker.swarm.json", seed,
                                c.tls_flags(name)),
                    c.dir.path().string(), name)) {
    auto joined = proc->wait_for_err(joined_re, 30s);
    INFO(name << ": " << proc->err());
    REQUIRE(!joined.empty());
    members = joined[1];
  }
};

/// After peers were refused: the coordinator is still up and worker-1
/// joins it, told of the coordinator and of no rogue or plain node.
tls_worker good_worker_joins(const tls_coordinator& coord) {
  REQUIRE(coord.proc->running());
  tls_worker good{coord.c, "worker-1", coord.address};
  INFO("worker-1: " << good.proc->err());
  CHECK(good.members.find("coordinator") != std::string::npos);
  CHECK(good.members.find("rogue") == std::string::npos);
  CHECK(good.members.find("plain") == std::string::npos);
  return good;
}

/// How a node that stops by itself ended.
struct node_exit {
  int code = -1;
  std::string err;
};

/// `argv` run in the cluster's folder until it exits (within 30 s), its
/// output in LABEL.out and LABEL.err.
node_exit run_to_exit(const tls_cluster& c,
                      const std::vector<std::string>& argv,
                      const std::string& label) {
  auto node = start_in(argv, c.dir.path().string(), label);
  auto code = node->wait_exit(30s);
  INFO(label << ": " << node->err());
  REQUIRE(code != -1);
  return {code, node->err()};
}

} // namespace

TEST_CASE("TLS nodes with certificates from the cluster CA join and run a "
          "swarm across the cluster",
          "[cluster][tls]") {
  tls_cluster c;
  tls_coordinator coord{c};
  auto dir = c.dir.path().string();
  tls_worker w1{c, "worker-1", coord.address};
  INFO("worker-1: " << w1.proc->err());
  CHECK(w1.members.find("coordinator") != std::string::npos);
  tls_worker w2{c, "worker-2", coord.address};
  INFO("worker-2: " << w2.proc->err());
  CHECK(w2.members.find("worker-1") != std::string::npos);
  // The seed sees both joins, over TLS.
  CHECK(!coord.proc->wait_for_err(std::regex{"worker-2 joined"}, 10s).empty());

  std::vector<std::string> run{cli_path(), "run", "--cluster", coord.address,
                               c.example + "/cluster.swarm.json", "--goal",
                               "Should the office replace its gas boiler with "
                               "a heat pump?",
                               "--timeout", "60"};
  auto flags = c.tls_flags("client");
  run.insert(run.end(), flags.begin(), flags.end());
  auto client = start_in(run, dir, "client");
  auto code = client->wait_exit(90s);
  INFO("client stderr: " << client->err());
  INFO("coordinator: " << coord.proc->err());
  REQUIRE(code != -1);
  CHECK(code == 0);
  CHECK(client->out().find("Brief from the cluster") != std::string::npos);
  // The researchers ran on the workers, reached over TLS.
  auto err = client->err();
  CHECK(std::regex_search(err, std::regex{"researcher@worker-[12]"}));
  // The coordinator's tool recorded the three findings.
  auto findings = read_file(c.dir.file("cluster-findings.jsonl"));
  CHECK(std::count(findings.begin(), findings.end(), '\n') == 3);
  CHECK(coord.proc->running());
}

TEST_CASE("a TLS cluster refuses a node whose certificate another CA signed "
          "and keeps serving",
          "[cluster][tls]") {
  tls_cluster c;
  tls_coordinator coord{c};
  // The rogue node trusts its own CA only; the coordinator does not trust it.
  auto rogue = run_to_exit(
    c, c.node_argv("rogue", "", coord.address, c.rogue_flags()), "rogue");
  INFO("rogue: " << rogue.err);
  INFO("coordinator: " << coord.proc->err());
  CHECK(rogue.code == 3);
  CHECK(rogue.err.find("error: cannot join the cluster") != std::string::npos);
  CHECK(rogue.err.find("joined the cluster through") == std::string::npos);
  // Refused at the TLS handshake, at the coordinator's address.
  CHECK(rogue.err.find(coord.address) != std::string::npos);
  CHECK(rogue.err.find("handshake") != std::string::npos);
  // A rogue certificate next to the cluster's CA file never gets as far as
  // the handshake: the node checks its own certificate against the CA at
  // start and names the mismatch.
  auto half = c.rogue_flags();
  half[5] = c.certs + "/ca.pem";
  auto rogue2 =
    run_to_exit(c, c.node_argv("rogue-2", "", coord.address, half), "rogue-2");
  INFO("rogue-2: " << rogue2.err);
  CHECK(rogue2.code == 2);
  CHECK(rogue2.err.find("is not signed by the CA in '" + c.certs + "/ca.pem'")
        != std::string::npos);
  // The coordinator is still up and a good node joins after them.
  auto good = good_worker_joins(coord);
  INFO("worker-1: " << good.proc->err());
  CHECK(coord.proc->err().find("rogue joined") == std::string::npos);
  CHECK(coord.proc->err().find("rogue-2 joined") == std::string::npos);
}

TEST_CASE("a TLS cluster refuses plain TCP nodes and clients",
          "[cluster][tls]") {
  tls_cluster c;
  tls_coordinator coord{c};
  auto dir = c.dir.path().string();
  auto plain =
    run_to_exit(c, c.node_argv("plain", "", coord.address, {}), "plain");
  INFO("plain: " << plain.err);
  INFO("coordinator: " << coord.proc->err());
  CHECK(plain.code == 3);
  CHECK(plain.err.find("error: cannot join the cluster") != std::string::npos);
  CHECK(plain.err.find(coord.address) != std::string::npos);

  // A run without certificates names the address it could not join.
  auto client = start_in({cli_path(), "run", "--cluster", coord.address,
                          c.example + "/cluster.swarm.json", "--goal",
                          "anything", "--timeout", "30"},
                         dir, "client");
  auto client_code = client->wait_exit(60s);
  INFO("client: " << client->err());
  REQUIRE(client_code != -1);
  CHECK(client_code != 0);
  CHECK(client->err().find(coord.address) != std::string::npos);
  CHECK(client->out().find("Brief") == std::string::npos);

  auto good = good_worker_joins(coord);
  INFO("worker-1: " << good.proc->err());
  CHECK(coord.proc->err().find("plain joined") == std::string::npos);
}

TEST_CASE("troupe node refuses bad TLS files before it starts",
          "[cluster][tls]") {
  tls_cluster c;
  // worker-1's TLS flags with the one at `at` replaced by `file`: the node
  // exits with 2 and names `named`; returns its stderr.
  auto refused = [&](size_t at, const std::string& file,
                     const std::string& named, const std::string& label) {
    auto tls = c.tls_flags("worker-1");
    tls[at] = file;
    auto [code, err] =
      run_to_exit(c, c.node_argv("worker-1", "", "", tls), label);
    INFO(err);
    CHECK(code == 2);
    CHECK(err.find("error: cluster TLS") != std::string::npos);
    CHECK(err.find(named) != std::string::npos);
    return err;
  };

  SECTION("a missing key file") {
    auto missing = c.certs + "/no-such.key";
    auto err = refused(3, missing, missing, "missing-key");
    INFO(err);
    CHECK(err.find("listening on") == std::string::npos);
  }

  SECTION("a key that does not belong to the certificate") {
    auto err = refused(3, c.certs + "/worker-2.key", "worker-2.key",
                       "wrong-key");
    INFO(err);
    CHECK(err.find("listening on") == std::string::npos);
  }

  SECTION("a CA file that holds no certificate") {
    refused(5, c.certs + "/worker-1.key", "worker-1.key", "bad-ca");
  }
}

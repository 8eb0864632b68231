// A durable run killed by hand and resumed, as a user would: `troupe run
// --store` is killed with SIGKILL right after its side effect, and `troupe
// resume` takes the run up from the store.

#include <catch2/catch.hpp>

#include <csignal>
#include <fstream>
#include <regex>
#include <string>

#include "messages/json_value.hpp"
#include "runtime/store.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/durable_swarm.hpp"
#include "tests/support/file_watch.hpp"
#include "tests/support/paths.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

using namespace troupe;
using troupe::test::child_process;
using troupe::test::temp_dir;

namespace {

size_t lines_of(const std::string& path) {
  std::ifstream in{path};
  std::string line;
  size_t n = 0;
  while (std::getline(in, line))
    if (!line.empty())
      ++n;
  return n;
}

} // namespace

TEST_CASE("troupe resume finishes a run whose process was killed",
          "[durable-cli]") {
  temp_dir dir;
  auto swarm = test::write_durable_swarm(dir, false);
  auto effects = dir.file("side-effects.jsonl");
  {
    child_process run{{test::cli_path(), "run", swarm, "--goal",
                       "Please record item kiwi", "--store", "runs.db",
                       "--run-id", "kiwi-1", "-q"},
                      dir.path().string(), dir.file("run.out")};
    REQUIRE(run.started());
    REQUIRE(test::wait_until({dir.path().string()},
                             [&] { return lines_of(effects) == 1
                                          || !run.running(); },
                             std::chrono::seconds{30}));
    run.send_signal(SIGKILL);
    run.wait_exit(std::chrono::seconds{10});
  }
  REQUIRE(lines_of(effects) == 1);
  bool interrupted = false;
  {
    store_options so;
    so.path = dir.file("runs.db");
    store db{so};
    auto rec = db.get_run("kiwi-1");
    REQUIRE(rec);
    interrupted = rec->status == "running";
    if (!interrupted)
      WARN("the run ended before the kill (" << rec->status
                                              << "): nothing to resume");
  }
  child_process resume{{test::cli_path(), "resume", "kiwi-1", "--store",
                        "runs.db", "--json", "-q"},
                       dir.path().string(), dir.file("resume.out")};
  REQUIRE(resume.wait_exit(std::chrono::seconds{60}) == 0);
  auto rec = json::parse(resume.out());
  CHECK(rec.at("status") == "complete");
  CHECK(rec.at("answer") == "Reviewed: recorded item kiwi, signed off.");
  if (interrupted)
    CHECK(rec.at("attempts") == 2);
  // The side effect happened once, the ledger answered the replayed call.
  CHECK(lines_of(effects) == 1);

  // Resuming a finished run says so and prints it again.
  child_process again{{test::cli_path(), "resume", "kiwi-1", "--store",
                       "runs.db"},
                      dir.path().string(), dir.file("again.out")};
  CHECK(again.wait_exit(std::chrono::seconds{30}) == 0);
  CHECK(again.err().find("has already ended (complete)") != std::string::npos);
  CHECK(again.out().find("Reviewed: recorded item kiwi") != std::string::npos);

  // An unknown run is an error naming it.
  child_process unknown{{test::cli_path(), "resume", "nobody", "--store",
                         "runs.db"},
                        dir.path().string(), dir.file("unknown.out")};
  CHECK(unknown.wait_exit(std::chrono::seconds{30}) == 2);
  CHECK(unknown.err().find("has no run 'nobody'") != std::string::npos);
}

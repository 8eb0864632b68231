// Kill and resume: a node process running 50 durable runs is killed with
// SIGKILL at random points, several times, and started again each time; on
// start it resumes its unfinished runs from the store. In the end every run
// has completed, every side effect is in the journal file exactly once, and
// the answers equal those of the same 50 runs done without interruption.
//
// The node is this test binary started again on the hidden test case
// "[durable-node]": a real process with a run service on a SQLite file, the
// same thing `troupe serve` stands on, configured by node.json in its
// working directory.

#include <catch2/catch.hpp>

#include <unistd.h>

#include <csignal>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "runtime/run_service.hpp"
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

constexpr int run_count = 50;

std::string item_name(int i) {
  return "item-" + std::to_string(i);
}

/// The journal file's complete lines.
std::vector<json> side_effects(const std::string& path) {
  std::vector<json> lines;
  std::ifstream in{path};
  std::string line;
  while (std::getline(in, line)) {
    auto rec = json::parse(line, nullptr, false);
    if (rec.is_object())
      lines.push_back(std::move(rec));
  }
  return lines;
}

run_submission submission(int i) {
  run_submission sub;
  sub.swarm = "durable";
  sub.goal = "Please record item " + item_name(i);
  sub.run_id = item_name(i);
  return sub;
}

std::string self_exe() {
  char buf[4096];
  auto n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  REQUIRE(n > 0);
  return std::string(buf, static_cast<size_t>(n));
}

} // namespace

// The node: resumes what the store holds unfinished, submits the runs it does
// not hold yet, and waits for all of them.
TEST_CASE("durable node process (started by the kill-and-resume test)",
          "[.][durable-node]") {
  auto cfg = json::parse(test::read_file("node.json"));
  run_service_options opts;
  opts.store.path = cfg.at("store").get<std::string>();
  opts.max_concurrent_runs = 8;
  run_service svc({cfg.at("swarm").get<std::string>()}, opts);
  for (int i = 0; i < run_count; ++i)
    if (!svc.get(item_name(i)))
      svc.submit(submission(i));
  for (int i = 0; i < run_count; ++i)
    REQUIRE(svc.wait(item_name(i), std::chrono::seconds{120}).status
            == "complete");
}

TEST_CASE("50 durable runs killed with SIGKILL at random points and resumed "
          "complete with every side effect once and the answers of an "
          "uninterrupted run",
          "[durable][kill-resume]") {
  // The uninterrupted answers.
  std::map<std::string, std::string> expected;
  {
    temp_dir dir;
    run_service_options opts;
    opts.store.path = dir.file("runs.db");
    run_service svc({test::write_durable_swarm(dir)}, opts);
    for (int i = 0; i < run_count; ++i)
      svc.submit(submission(i));
    for (int i = 0; i < run_count; ++i) {
      auto rec = svc.wait(item_name(i), std::chrono::seconds{120});
      REQUIRE(rec.status == "complete");
      expected[rec.id] = rec.answer;
    }
    REQUIRE(side_effects(dir.file("side-effects.jsonl")).size()
            == static_cast<size_t>(run_count));
  }

  temp_dir dir;
  auto swarm = test::write_durable_swarm(dir);
  auto effects = dir.file("side-effects.jsonl");
  std::ofstream{dir.file("node.json")}
    << json{{"swarm", swarm}, {"store", dir.file("runs.db")}}.dump();
  auto seed = std::random_device{}();
  INFO("random seed " << seed);
  std::mt19937 rng{seed};
  std::uniform_int_distribution<size_t> ahead{0, 12};
  int kills = 0, starts = 0;
  bool done = false;
  while (!done) {
    REQUIRE(starts < 20);
    ++starts;
    child_process node{{self_exe(), "[durable-node]"}, dir.path().string(),
                       dir.file("node-" + std::to_string(starts) + ".out")};
    REQUIRE(node.started());
    // Kill at a random point: after 0 to 12 more side effects (0: while it
    // starts up and resumes), unless it finishes first. The last start runs
    // to the end.
    if (kills < 4) {
      auto target = side_effects(effects).size() + ahead(rng);
      test::wait_until({dir.path().string()},
                       [&] { return side_effects(effects).size() >= target
                                    || !node.running(); },
                       std::chrono::seconds{60});
      if (node.running()) {
        node.send_signal(SIGKILL);
        node.wait_exit(std::chrono::seconds{10});
        ++kills;
        continue;
      }
    }
    auto code = node.wait_exit(std::chrono::seconds{120});
    INFO("node output: " << node.err());
    REQUIRE(code == 0);
    done = true;
  }
  CHECK(kills >= 3);

  store_options so;
  so.path = dir.file("runs.db");
  store db{so};
  int resumed = 0;
  for (int i = 0; i < run_count; ++i) {
    auto rec = db.get_run(item_name(i));
    REQUIRE(rec);
    CHECK(rec->status == "complete");
    CHECK(rec->answer == expected.at(rec->id));
    if (rec->attempts > 1)
      ++resumed;
  }
  // Some runs were caught in the middle and resumed.
  CHECK(resumed >= 1);

  // Every side effect exactly once: one line per item, one per key.
  auto lines = side_effects(effects);
  std::map<std::string, int> per_item, per_key;
  for (const auto& line : lines) {
    ++per_item[line.at("args").at("item").get<std::string>()];
    ++per_key[line.at("key").get<std::string>()];
  }
  CHECK(lines.size() == static_cast<size_t>(run_count));
  CHECK(per_item.size() == static_cast<size_t>(run_count));
  for (const auto& [item, n] : per_item) {
    INFO(item);
    CHECK(n == 1);
  }
  CHECK(per_key.size() == static_cast<size_t>(run_count));
}

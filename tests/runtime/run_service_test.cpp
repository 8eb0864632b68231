// The run service in one process: durable runs of a real swarm (a pipeline
// whose clerk records each item in a journal file, the side effect) kept in a
// real SQLite store, resumed by a second service on the same store.

#include <catch2/catch.hpp>

#include <atomic>
#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <sqlite3.h>

#include <caf/scoped_actor.hpp>

#include "actors/store_actor.hpp"
#include "runtime/run_service.hpp"
#include "runtime/runtime.hpp"
#include "runtime/swarm.hpp"
#include "runtime/tool_registry.hpp"
#include "tests/support/durable_swarm.hpp"
#include "tests/support/file_watch.hpp"
#include "tests/support/paths.hpp"
#include "tests/support/process.hpp"
#include "tests/support/runtime_fixture.hpp"
#include "tests/support/temp_dir.hpp"

using namespace troupe;
using troupe::test::temp_dir;

namespace {

/// The journal's lines by idempotency key.
std::map<std::string, int> side_effects(const temp_dir& dir) {
  std::map<std::string, int> keys;
  std::ifstream in{dir.file("side-effects.jsonl")};
  std::string line;
  while (std::getline(in, line))
    if (!line.empty())
      ++keys[json::parse(line).at("key").get<std::string>()];
  return keys;
}

run_service_options options(const temp_dir& dir) {
  run_service_options opts;
  opts.store.path = dir.file("runs.db");
  return opts;
}

run_submission item(const std::string& name) {
  run_submission sub;
  sub.swarm = "durable";
  sub.goal = "Please record item " + name;
  return sub;
}

/// Collects a run's events as a subscriber gets them.
struct collector {
  std::mutex mtx;
  std::condition_variable cv;
  std::vector<std::pair<int64_t, json>> events;
  bool ended = false;

  run_service::event_fn fn() {
    return [this](int64_t seq, const json& data) {
      std::lock_guard<std::mutex> guard{mtx};
      events.emplace_back(seq, data);
      if (data.value("type", "") == "status"
          && is_finished_status(data.value("status", "")))
        ended = true;
      cv.notify_all();
    };
  }

  bool wait_end(std::chrono::seconds limit) {
    std::unique_lock<std::mutex> lock{mtx};
    return cv.wait_for(lock, limit, [this] { return ended; });
  }
};

} // namespace

TEST_CASE("durable runs complete, are recorded and keep one checkpoint per agent",
          "[run-service][durable]") {
  temp_dir dir;
  auto swarm = test::write_durable_swarm(dir);
  run_service svc({swarm}, options(dir));
  REQUIRE(svc.swarms().size() == 1);
  CHECK(svc.swarms()[0].name == "durable");
  std::vector<std::string> ids;
  for (auto name : {"apple", "pear", "fig"})
    ids.push_back(svc.submit(item(name)).id);
  for (size_t i = 0; i < ids.size(); ++i) {
    auto rec = svc.wait(ids[i], std::chrono::seconds{30});
    REQUIRE(rec.status == "complete");
    CHECK(rec.attempts == 1);
    CHECK(rec.input_tokens == 40 + 60 + 30);
    CHECK(rec.output_tokens == 12 + 8 + 6);
    CHECK(rec.result.at("status") == "complete");
    CHECK(rec.started_ms >= rec.created_ms);
    CHECK(rec.ended_ms >= rec.started_ms);
    // Compacted: the last checkpoint of each agent's run (clerk, reviewer).
    CHECK(svc.db().count_checkpoints(ids[i]) == 2);
    // Three model replies journaled.
    CHECK(svc.db().count_journal(ids[i]) == 3);
  }
  CHECK(svc.get(ids[0])->answer
        == "Reviewed: recorded item apple, signed off.");
  CHECK(svc.get(ids[2])->answer == "Reviewed: recorded item fig, signed off.");
  auto effects = side_effects(dir);
  CHECK(effects.size() == 3);
  for (const auto& [key, n] : effects)
    CHECK(n == 1);

  // The trace of a run holds its spans, and only its own.
  auto trace = svc.trace(ids[1]);
  std::set<std::string> names;
  for (const auto& rec : trace) {
    CHECK(rec.at("trace_id") == svc.get(ids[1])->trace_id);
    if (rec.at("type") == "span")
      names.insert(rec.at("name").get<std::string>());
  }
  CHECK(names.count("invoke_agent clerk") == 1);
  CHECK(names.count("invoke_agent reviewer") == 1);
  CHECK(names.count("execute_tool record_item") == 1);

  auto page = svc.list("complete", 2);
  CHECK(page.total == 3);
  CHECK(page.runs.size() == 2);
  CHECK_FALSE(page.next_cursor.empty());
}

TEST_CASE("a run's events replay from any number and then follow live",
          "[run-service][durable]") {
  temp_dir dir;
  run_service svc({test::write_durable_swarm(dir)}, options(dir));
  auto id = svc.submit(item("plum")).id;
  collector live;
  auto token = svc.subscribe(id, 0, live.fn());
  REQUIRE(live.wait_end(std::chrono::seconds{30}));
  svc.unsubscribe(token);
  std::vector<std::pair<int64_t, json>> all;
  {
    std::lock_guard<std::mutex> guard{live.mtx};
    all = live.events;
  }
  // Numbered 1..N without gaps, queued first and the final status last.
  REQUIRE(all.size() > 5);
  for (size_t i = 0; i < all.size(); ++i)
    CHECK(all[i].first == static_cast<int64_t>(i + 1));
  CHECK(all.front().second.at("status") == "queued");
  CHECK(all.back().second.at("status") == "complete");
  CHECK(all.back().second.at("answer")
        == "Reviewed: recorded item plum, signed off.");
  // Every span of the run was streamed before the final status.
  size_t streamed = 0, traced = 0;
  for (const auto& [seq, data] : all)
    if (data.at("type") == "trace" && data.at("record").at("type") == "span")
      ++streamed;
  for (const auto& rec : svc.trace(id))
    if (rec.at("type") == "span")
      ++traced;
  CHECK(traced >= 5);
  CHECK(streamed == traced);

  // Resuming after event k gives exactly the events after k.
  int64_t k = static_cast<int64_t>(all.size()) / 2;
  collector later;
  auto again = svc.subscribe(id, k, later.fn());
  REQUIRE(later.wait_end(std::chrono::seconds{5}));
  svc.unsubscribe(again);
  std::lock_guard<std::mutex> guard{later.mtx};
  REQUIRE(later.events.size() == all.size() - static_cast<size_t>(k));
  for (size_t i = 0; i < later.events.size(); ++i) {
    CHECK(later.events[i].first == all[k + i].first);
    CHECK(later.events[i].second == all[k + i].second);
  }
}

TEST_CASE("a run left unfinished by its service resumes in the next one with "
          "no side effect twice",
          "[run-service][durable]") {
  temp_dir dir;
  auto swarm = test::write_durable_swarm(dir);
  std::string id;
  {
    auto opts = options(dir);
    run_service first({swarm}, opts);
    id = first.submit(item("kiwi")).id;
    // Stop the first service once the side effect has happened, before the
    // run has ended (the reviewer's reply takes 15 ms more at least).
    REQUIRE(test::wait_until(
      {dir.path().string()},
      [&] { return side_effects(dir).size() == 1; },
      std::chrono::seconds{30}));
    first.shutdown();
  }
  store_options so;
  so.path = dir.file("runs.db");
  {
    store peek{so};
    auto rec = peek.get_run(id);
    REQUIRE(rec);
    if (rec->status == "complete")
      WARN("the run ended before the service stopped: nothing was resumed");
  }
  run_service second({swarm}, options(dir));
  auto rec = second.wait(id, std::chrono::seconds{30});
  REQUIRE(rec.status == "complete");
  CHECK(rec.answer == "Reviewed: recorded item kiwi, signed off.");
  auto effects = side_effects(dir);
  REQUIRE(effects.size() == 1);
  CHECK(effects.begin()->second == 1);
  if (rec.attempts == 2) {
    // The resumed attempt took the clerk's finished part from the store.
    bool replayed = false;
    for (const auto& r : second.trace(id))
      if (r.at("type") == "event"
          && (r.at("name") == "run.replayed" || r.at("name") == "run.resumed"
              || r.at("name") == "model.replayed"))
        replayed = true;
    CHECK(replayed);
  }
}

TEST_CASE("a swarm's budget bounds each run a service makes of it, and a "
          "submission's budget narrows it",
          "[run-service]") {
  temp_dir dir;
  // Three steps is what one run takes (the clerk's two, the reviewer's one):
  // as one budget for all runs, it would refuse the second run.
  auto swarm = test::write_durable_swarm(dir);
  auto doc = json::parse(test::read_file(swarm));
  doc["budget"] = {{"max_steps", 3}};
  std::ofstream{swarm} << doc.dump(2);
  run_service svc({swarm}, options(dir));
  for (auto name : {"one", "two", "three"}) {
    auto rec = svc.wait(svc.submit(item(name)).id, std::chrono::seconds{30});
    INFO(name << ": " << rec.error);
    CHECK(rec.status == "complete");
    CHECK(rec.steps == 3);
  }
  auto narrow = item("four");
  narrow.budget.max_steps = 2;
  auto rec = svc.wait(svc.submit(narrow).id, std::chrono::seconds{30});
  CHECK(rec.status == "halted");
  CHECK_THAT(rec.error, Catch::Contains("budget"));
  CHECK(rec.steps == 2);
  // The clerk's two steps went through and the reviewer's was refused: the
  // fourth item was recorded but never signed off.
  CHECK(side_effects(dir).size() == 4);
}

namespace {

/// The durable swarm with a third stage, an archivist, under a budget of 3
/// steps a run: the clerk's 2 and the reviewer's 1 fit, so every run ends
/// halted when the archivist asks for a fourth. The script is the swarm's own
/// file, dir/three.script.json; `reviewer_latency_ms` holds the reviewer's
/// reply back.
std::string write_three_stage_swarm(const temp_dir& dir,
                                    int64_t reviewer_latency_ms) {
  auto src = test::source_dir() + "/tests/runtime/durable/";
  auto script = json::parse(test::read_file(src + "durable.script.json"));
  auto& rules = script["rules"];
  for (auto& rule : rules)
    if (rule.value("agent", "") == "reviewer")
      rule["reply"]["latency_ms"] = reviewer_latency_ms;
  rules.insert(rules.end() - 1,
               json{{"name", "archive"},
                    {"agent", "archivist"},
                    {"reply", {{"content", "Archived."},
                               {"usage", {{"input_tokens", 20},
                                          {"output_tokens", 2}}}}}});
  std::ofstream{dir.file("three.script.json")} << script.dump(2);
  auto swarm = test::write_durable_swarm(dir);
  auto doc = json::parse(test::read_file(swarm));
  doc["model"] = "scripted:" + dir.file("three.script.json");
  doc["agents"].push_back({{"name", "archivist"},
                           {"system_prompt", "You archive."},
                           {"max_steps", 2}});
  doc["teams"][0]["stages"] = {"clerk", "reviewer", "archivist"};
  doc["budget"] = {{"max_steps", 3}};
  std::ofstream{swarm} << doc.dump(2);
  return swarm;
}

} // namespace

TEST_CASE("a resumed run's budget counts what its earlier attempt spent",
          "[run-service][durable][budget]") {
  temp_dir dir;
  store_options so;
  so.path = dir.file("runs.db");
  std::string id;
  {
    // The reviewer's reply is held for 10 minutes: the run cannot end
    // before this service stops.
    auto swarm = write_three_stage_swarm(dir, 600'000);
    run_service first({swarm}, options(dir));
    id = first.submit(item("kiwi")).id;
    auto goal = item("kiwi").goal;
    auto clerk_key = "clerk/"
                     + task_digest(goal, json{{"pipeline_goal", goal},
                                              {"pipeline_stage", "clerk"}});
    // Stop once the clerk's 2 steps are spent and its final checkpoint is
    // in the store.
    REQUIRE(test::wait_until(
      {dir.path().string()},
      [&] {
        store peek{so};
        auto cp = peek.last_checkpoint(id, clerk_key);
        return cp && cp->final;
      },
      std::chrono::seconds{30}));
    first.shutdown();
  }
  {
    store peek{so};
    auto rec = peek.get_run(id);
    REQUIRE(rec);
    REQUIRE(rec->status == "running");
  }
  // The next service answers at once. Without the first attempt's 2 steps
  // the run's budget would let the archivist in and the run complete.
  auto swarm = write_three_stage_swarm(dir, 0);
  run_service second({swarm}, options(dir));
  auto resumed = second.wait(id, std::chrono::seconds{30});
  auto control = second.wait(second.submit(item("fig")).id,
                             std::chrono::seconds{30});
  INFO("resumed: " << resumed.error << "; uninterrupted: " << control.error);
  CHECK(control.status == "halted");
  CHECK(control.steps == 3);
  CHECK(resumed.attempts == 2);
  CHECK(resumed.status == control.status);
  CHECK(resumed.steps == control.steps);
  CHECK_THAT(resumed.error, Catch::Contains("budget '" + id + "/desk' "
                                            "exhausted"));
  CHECK(resumed.answer == "Reviewed: recorded item kiwi, signed off.");
  // The recount is in the resumed run's trace, naming the clerk's 2 steps.
  int64_t recounted = 0;
  for (const auto& r : second.trace(id))
    if (r.at("type") == "event" && r.at("name") == "budget.recounted")
      recounted += r.at("attributes").at("troupe.budget.steps").get<int64_t>();
  CHECK(recounted == 2);
  auto effects = side_effects(dir);
  CHECK(effects.size() == 2);
  for (const auto& [key, n] : effects)
    CHECK(n == 1);
}

TEST_CASE("replies taken from the journal are counted once by a budget, in "
          "this process and in the next",
          "[durable][budget]") {
  temp_dir dir;
  auto def = load_swarm(test::write_durable_swarm(dir));
  store_options so;
  so.path = dir.file("runs.db");
  auto db = std::make_shared<store>(so);
  // As if every attempt had died just before saving its checkpoints: the
  // next one takes every reply from the journal and every tool result from
  // the ledger.
  auto erase_checkpoints = [&] {
    sqlite3* raw = nullptr;
    REQUIRE(sqlite3_open(so.path.c_str(), &raw) == SQLITE_OK);
    sqlite3_busy_timeout(raw, 5000);
    auto rc = sqlite3_exec(raw, "DELETE FROM checkpoints", nullptr, nullptr,
                           nullptr);
    sqlite3_close(raw);
    REQUIRE(rc == SQLITE_OK);
  };
  std::atomic<int> replayed{0};
  auto attempt = [&](runtime& rt) {
    auto inst = instantiate(rt, def);
    run_options opts;
    opts.run_id = "run-journal";
    opts.timeout = std::chrono::seconds{30};
    auto r = rt.run(inst.entry, item("lime").goal, opts);
    REQUIRE(r.status == run_status::complete);
    CHECK(r.answer == "Reviewed: recorded item lime, signed off.");
    // The agents' last checkpoints are on their way to the store: wait
    // until the store actor has written them.
    caf::scoped_actor self{rt.system()};
    self->request(rt.store(), std::chrono::seconds{30}, st_sync_atom::value)
      .receive([](bool) {},
               [](caf::error& err) { FAIL(to_string(err)); });
    return r;
  };
  auto config = [&] {
    auto cfg = test::test_runtime_config();
    configure(cfg, def);
    cfg.store = db;
    cfg.trace_listeners.push_back([&replayed](const json& rec) {
      if (rec.value("type", "") == "event"
          && rec.value("name", "") == "model.replayed")
        ++replayed;
    });
    return cfg;
  };
  budget_amount spent;
  // The journal replayed every reply so far, and the budget counted what the
  // first attempt spent exactly once.
  auto counted_once = [&](runtime& rt, int replays) {
    rt.flush_trace();
    CHECK(replayed == replays);
    INFO("used: " << describe(rt.budget_usage().used)
                  << "; spent: " << describe(spent));
    CHECK(rt.budget_usage().used == spent);
  };
  {
    runtime rt{config()};
    attempt(rt);
    REQUIRE(replayed == 0);
    spent = rt.budget_usage().used;
    CHECK(spent.steps == 3);
    CHECK(spent.tokens.input_tokens == 40 + 60 + 30);
    CHECK(spent.tokens.output_tokens == 12 + 8 + 6);
    erase_checkpoints();
    // Again in this process: the budget already counted all three replies.
    attempt(rt);
    counted_once(rt, 3);
    rt.shutdown();
  }
  erase_checkpoints();
  {
    // A new process's budget knows nothing: the journal's replies are
    // counted, once.
    runtime rt{config()};
    attempt(rt);
    counted_once(rt, 6);
    rt.shutdown();
  }
  CHECK(side_effects(dir).size() == 1);
}

TEST_CASE("a long-lived service lets go of the actors of ended runs",
          "[run-service]") {
  temp_dir dir;
  auto swarm = test::write_durable_swarm(dir);
  run_service svc({swarm}, options(dir));
  REQUIRE(svc.runtimes().size() == 1);
  auto& rt = *svc.runtimes()[0].second;
  auto before = rt.tracked_actors();
  // Each run instantiates the swarm anew (clerk, reviewer, the desk team):
  // 120 runs spawn several hundred actors.
  std::vector<std::string> ids;
  for (int i = 0; i < 120; ++i)
    ids.push_back(svc.submit(item("n" + std::to_string(i))).id);
  for (const auto& id : ids)
    REQUIRE(svc.wait(id, std::chrono::seconds{60}).status == "complete");
  INFO("tracked before: " << before << ", after: " << rt.tracked_actors());
  CHECK(rt.tracked_actors() < 150);
}

TEST_CASE("submissions are checked field by field", "[run-service]") {
  CHECK_THROWS_WITH(submission_from_json(json::array()),
                    Catch::Contains("must be a JSON object"));
  CHECK_THROWS_WITH(submission_from_json(json{{"goal", "x"}}),
                    Catch::Contains("swarm is missing"));
  CHECK_THROWS_WITH(submission_from_json(json{{"swarm", "s"}}),
                    Catch::Contains("goal is missing"));
  CHECK_THROWS_WITH(submission_from_json(json{{"swarm", "s"}, {"goal", 3}}),
                    Catch::Contains("goal must be a string"));
  CHECK_THROWS_WITH(
    submission_from_json(json{{"swarm", "s"}, {"goal", "g"}, {"colour", 1}}),
    Catch::Contains("unknown field 'colour'"));
  CHECK_THROWS_WITH(submission_from_json(json{{"swarm", "s"},
                                              {"goal", "g"},
                                              {"budget", {{"max_steps", -1}}}}),
                    Catch::Contains("budget.max_steps must be from 0"));
  CHECK_THROWS_WITH(submission_from_json(json{{"swarm", "s"},
                                              {"goal", "g"},
                                              {"budget", {{"tokens", 1}}}}),
                    Catch::Contains("unknown field 'budget.tokens'"));
  CHECK_THROWS_WITH(
    submission_from_json(json{{"swarm", "s"}, {"goal", "g"}, {"run_id", "a b"}}),
    Catch::Contains("run_id 'a b'"));
  auto sub = submission_from_json(json{{"swarm", "s"},
                                       {"goal", "g"},
                                       {"priority", 3},
                                       {"budget", {{"max_cost_usd", 0.5}}},
                                       {"context", {{"k", 1}}}});
  CHECK(sub.priority == 3);
  CHECK(sub.budget.max_cost_usd == 0.5);
  CHECK(sub.context.at("k") == 1);

  temp_dir dir;
  run_service svc({test::write_durable_swarm(dir)}, options(dir));
  auto bad = item("x");
  bad.swarm = "nope";
  CHECK_THROWS_WITH(svc.submit(bad), Catch::Contains("unknown swarm 'nope'")
                                       && Catch::Contains("durable"));
  auto taken = item("x");
  taken.run_id = "mine-1";
  svc.submit(taken);
  CHECK_THROWS_AS(svc.submit(taken), conflict_error);
  CHECK_THROWS_AS(svc.cancel("nobody", "test"), not_found_error);
  svc.wait("mine-1", std::chrono::seconds{30});
  CHECK_THROWS_AS(svc.cancel("mine-1", "test"), conflict_error);
}

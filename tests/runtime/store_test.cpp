#include "runtime/store.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <condition_variable>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <future>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include "runtime/clock.hpp"
#include "support/temp_dir.hpp"

using namespace troupe;
using namespace troupe::test;

namespace {

/// What `fn` threw as E (a test failure when it threw nothing).
template <class E, class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const E& ex) {
    return ex.what();
  }
  FAIL("expected an exception, none was thrown");
  return {};
}

store_options options_for(const temp_dir& dir,
                          const std::string& name = "runs.db") {
  store_options opts;
  opts.path = dir.file(name);
  return opts;
}

/// A raw SQLite connection, to build and inspect files behind the store's
/// back.
class raw_db {
public:
  explicit raw_db(const std::string& path) {
    REQUIRE(sqlite3_open(path.c_str(), &db_) == SQLITE_OK);
  }

  ~raw_db() {
    sqlite3_close(db_);
  }

  raw_db(const raw_db&) = delete;
  raw_db& operator=(const raw_db&) = delete;

  void exec(const std::string& sql) {
    char* msg = nullptr;
    auto rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &msg);
    std::string reason = msg ? msg : "";
    sqlite3_free(msg);
    INFO(sql);
    INFO(reason);
    REQUIRE(rc == SQLITE_OK);
  }

  /// Runs a statement with text parameters ?1, ?2...
  void exec(const std::string& sql, const std::vector<std::string>& params) {
    sqlite3_stmt* stmt = nullptr;
    REQUIRE(sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr)
            == SQLITE_OK);
    for (size_t i = 0; i < params.size(); ++i)
      sqlite3_bind_text(stmt, static_cast<int>(i + 1), params[i].c_str(), -1,
                        SQLITE_TRANSIENT);
    auto rc = sqlite3_step(stmt);
    sqlite3_finalize(stmt);
    INFO(sql);
    REQUIRE(rc == SQLITE_DONE);
  }

  /// The first column of the first row as text ("" when no row).
  std::string scalar(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    REQUIRE(sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr)
            == SQLITE_OK);
    std::string out;
    if (sqlite3_step(stmt) == SQLITE_ROW) {
      auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
      out = p ? p : "";
    }
    sqlite3_finalize(stmt);
    return out;
  }

  /// Column names of a table.
  std::set<std::string> columns(const std::string& table) {
    sqlite3_stmt* stmt = nullptr;
    REQUIRE(sqlite3_prepare_v2(db_, ("PRAGMA table_info(" + table + ")").c_str(),
                               -1, &stmt, nullptr)
            == SQLITE_OK);
    std::set<std::string> out;
    while (sqlite3_step(stmt) == SQLITE_ROW)
      out.insert(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 1)));
    sqlite3_finalize(stmt);
    return out;
  }

private:
  sqlite3* db_ = nullptr;
};

// The first layout of the store, as a troupe of schema 1 wrote it. Written
// out here rather than taken from the store so the test checks the
// migration against a fixed past, not against itself.
const char* v1_schema = R"sql(
CREATE TABLE troupe_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
  id TEXT PRIMARY KEY, status TEXT NOT NULL,
  swarm TEXT NOT NULL DEFAULT '', swarm_path TEXT NOT NULL DEFAULT '',
  goal TEXT NOT NULL DEFAULT '', principal TEXT NOT NULL DEFAULT '',
  request TEXT NOT NULL DEFAULT '{}', result TEXT NOT NULL DEFAULT 'null',
  answer TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '',
  input_tokens INTEGER NOT NULL DEFAULT 0,
  output_tokens INTEGER NOT NULL DEFAULT 0,
  cost_nusd INTEGER NOT NULL DEFAULT 0, steps INTEGER NOT NULL DEFAULT 0,
  created_ms INTEGER NOT NULL DEFAULT 0, started_ms INTEGER NOT NULL DEFAULT 0,
  ended_ms INTEGER NOT NULL DEFAULT 0, updated_ms INTEGER NOT NULL DEFAULT 0);
CREATE TABLE checkpoints (
  run_id TEXT NOT NULL, key TEXT NOT NULL, step INTEGER NOT NULL,
  final INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL,
  saved_ms INTEGER NOT NULL);
CREATE TABLE ledger (
  key TEXT PRIMARY KEY, result TEXT NOT NULL, recorded_ms INTEGER NOT NULL);
CREATE TABLE journal (
  key TEXT PRIMARY KEY, run_id TEXT NOT NULL, kind TEXT NOT NULL,
  value TEXT NOT NULL, recorded_ms INTEGER NOT NULL);
INSERT INTO troupe_meta (key, value) VALUES ('created_by', 'troupe (schema 1)');
PRAGMA user_version = 1;
)sql";

tool_result full_tool_result() {
  tool_result r;
  r.call_id = "call-7";
  r.name = "refund";
  r.ok = false;
  r.content = json{{"amount", 12.5}, {"note", "remboursé ✓"}};
  r.error = {tool_error_kind::transient, "gateway 503"};
  r.attempts = 3;
  r.attempt_log = {{1, 100, 200, 0, tool_error_kind::transient},
                   {2, 300, 400, 250, tool_error_kind::transient},
                   {3, 900, 950, 500, tool_error_kind::none}};
  r.replayed = true;
  r.notes = {"capped at 10 items", "second note"};
  return r;
}

stored_run full_run(const std::string& id) {
  stored_run r;
  r.id = id;
  r.status = "complete";
  r.swarm = "research";
  r.swarm_path = "examples/research/research.swarm.json";
  r.goal = "Résumé: what is CAF? 日本語 🎭";
  r.principal = "alice@example.com";
  r.request = json{{"goal", "Résumé 🎭"},
                   {"budget", {{"max_steps", 12}, {"max_cost_usd", 0.5}}},
                   {"context", {{"tags", {"a", "ü"}}}}};
  r.trace_id = "0123456789abcdef0123456789abcdef";
  r.result = json{{"status", "complete"}, {"answer", "Ça marche"}};
  r.answer = "Ça marche";
  r.error = "";
  r.input_tokens = 1234;
  r.output_tokens = 567;
  r.cost_nusd = 8900000000LL;
  r.steps = 7;
  r.created_ms = 1700000000000;
  r.started_ms = 1700000000100;
  r.ended_ms = 1700000009000;
  r.updated_ms = 1;
  r.attempts = 2;
  return r;
}

stored_run simple_run(const std::string& id, const std::string& status,
                      int64_t created_ms) {
  stored_run r;
  r.id = id;
  r.status = status;
  r.goal = "goal of " + id;
  r.created_ms = created_ms;
  return r;
}

void check_same_run(const stored_run& got, const stored_run& want) {
  CHECK(got.id == want.id);
  CHECK(got.status == want.status);
  CHECK(got.swarm == want.swarm);
  CHECK(got.swarm_path == want.swarm_path);
  CHECK(got.goal == want.goal);
  CHECK(got.principal == want.principal);
  CHECK(got.request == want.request);
  CHECK(got.trace_id == want.trace_id);
  CHECK(got.result == want.result);
  CHECK(got.answer == want.answer);
  CHECK(got.error == want.error);
  CHECK(got.input_tokens == want.input_tokens);
  CHECK(got.output_tokens == want.output_tokens);
  CHECK(got.cost_nusd == want.cost_nusd);
  CHECK(got.steps == want.steps);
  CHECK(got.created_ms == want.created_ms);
  CHECK(got.started_ms == want.started_ms);
  CHECK(got.ended_ms == want.ended_ms);
  CHECK(got.attempts == want.attempts);
}

checkpoint make_checkpoint(const std::string& run_id, const std::string& key,
                           int32_t step, json state = json::object()) {
  checkpoint cp;
  cp.run_id = run_id;
  cp.key = key;
  cp.step = step;
  cp.state = state.is_object() && state.empty()
               ? json{{"step", step}, {"key", key}}
               : std::move(state);
  cp.saved_ms = 1000 + step;
  return cp;
}

std::string read_text(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

} // namespace

// -- round trips -------------------------------------------------------------

TEST_CASE("a run record keeps every field, unicode JSON included", "[store]") {
  temp_dir dir;
  store db{options_for(dir)};
  REQUIRE(db.version() == store::schema_version);
  auto run = full_run("run-1");
  auto before = now_ms();
  db.put_run(run);
  auto after = now_ms();
  auto got = db.get_run("run-1");
  REQUIRE(got);
  check_same_run(*got, run);
  // put_run stamps the time of the write, whatever the caller passed.
  CHECK(got->updated_ms >= before);
  CHECK(got->updated_ms <= after);

  SECTION("a second put replaces the record") {
    run.status = "failed";
    run.error = "budget: max_steps";
    run.result = nullptr;
    run.attempts = 3;
    db.put_run(run);
    auto again = db.get_run("run-1");
    REQUIRE(again);
    check_same_run(*again, run);
    CHECK(again->result.is_null());
    auto counts = db.count_runs_by_status();
    REQUIRE(counts.size() == 1);
    CHECK(counts[0] == std::make_pair(std::string{"failed"}, int64_t{1}));
  }

  SECTION("an unknown id is no record") {
    CHECK_FALSE(db.get_run("nope"));
  }

  SECTION("invalid UTF-8 in a JSON document is stored as U+FFFD") {
    auto bad = simple_run("run-bad", "queued", 5);
    bad.request = json{{"goal", std::string{"caf\xff\xfe"}}};
    db.put_run(bad);
    auto got_bad = db.get_run("run-bad");
    REQUIRE(got_bad);
    CHECK(got_bad->request.at("goal") == "caf\xEF\xBF\xBD\xEF\xBF\xBD");
  }

  SECTION("a run without an id is refused") {
    auto msg = error_of<std::invalid_argument>(
      [&] { db.put_run(simple_run("", "queued", 1)); });
    CHECK_THAT(msg, Catch::Contains("run id"));
  }
}

TEST_CASE("the last checkpoint of a key is the highest step, then the newest",
          "[store]") {
  temp_dir dir;
  store db{options_for(dir)};
  db.put_checkpoint(make_checkpoint("r", "planner", 1));
  db.put_checkpoint(make_checkpoint("r", "planner", 3, json{{"v", "first 3"}}));
  db.put_checkpoint(make_checkpoint("r", "planner", 2));
  auto final_cp = make_checkpoint("r", "planner", 3, json{{"v", "second 3 ✓"}});
  final_cp.final = true;
  final_cp.saved_ms = 4242;
  db.put_checkpoint(final_cp);
  db.put_checkpoint(make_checkpoint("r", "worker", 1));
  db.put_checkpoint(make_checkpoint("other", "planner", 9));

  auto last = db.last_checkpoint("r", "planner");
  REQUIRE(last);
  CHECK(last->run_id == "r");
  CHECK(last->key == "planner");
  CHECK(last->step == 3);
  CHECK(last->final);
  CHECK(last->state == json{{"v", "second 3 ✓"}});
  CHECK(last->saved_ms == 4242);

  auto worker = db.last_checkpoint("r", "worker");
  REQUIRE(worker);
  CHECK(worker->step == 1);
  CHECK_FALSE(worker->final);
  CHECK(db.count_checkpoints("r") == 5);
  CHECK(db.count_checkpoints("other") == 1);
  CHECK_FALSE(db.last_checkpoint("r", "nobody"));
  CHECK_FALSE(db.last_checkpoint("missing", "planner"));
  CHECK_THROWS_AS(db.put_checkpoint(make_checkpoint("r", "", 1)),
                  std::invalid_argument);
}

TEST_CASE("the ledger keeps a whole tool result; a key recorded again is "
          "replaced",
          "[store]") {
  temp_dir dir;
  store db{options_for(dir)};
  auto result = full_tool_result();
  db.put_ledger("idem-1", result, 1700000000123);
  auto entry = db.get_ledger("idem-1");
  CHECK(entry.key == "idem-1");
  REQUIRE(entry.found);
  CHECK(entry.result == result);
  CHECK(entry.recorded_ms == 1700000000123);

  auto other = result;
  other.ok = true;
  other.error = {};
  other.notes.clear();
  db.put_ledger("idem-1", other, 1700000000999);
  auto replaced = db.get_ledger("idem-1");
  REQUIRE(replaced.found);
  CHECK(replaced.result == other);
  CHECK(replaced.recorded_ms == 1700000000999);

  auto missing = db.get_ledger("idem-2");
  CHECK(missing.key == "idem-2");
  CHECK_FALSE(missing.found);
}

TEST_CASE("the journal keeps the first value of a key", "[store]") {
  temp_dir dir;
  store db{options_for(dir)};
  auto first = json{{"content", "première réponse"}, {"tokens", 12}};
  db.put_journal("run-1", "req-a", "chat_response", first);
  db.put_journal("run-1", "req-a", "chat_response", json{{"content", "late"}});
  db.put_journal("run-1", "req-b", "chat_response", json{{"content", "b"}});
  db.put_journal("run-2", "req-c", "chat_response", json{{"content", "c"}});

  auto got = db.get_journal("req-a");
  REQUIRE(got);
  CHECK(*got == first);
  CHECK(db.get_journal("req-b") == json{{"content", "b"}});
  CHECK_FALSE(db.get_journal("req-z"));
  CHECK(db.count_journal("run-1") == 2);
  CHECK(db.count_journal("run-2") == 1);
  CHECK(db.count_journal("run-3") == 0);
}

TEST_CASE("events are numbered per run from 1 and read back after a number",
          "[store]") {
  temp_dir dir;
  store db{options_for(dir)};
  CHECK(db.append_event("a", json{{"n", "a1"}}) == 1);
  CHECK(db.append_event("a", json{{"n", "a2"}}) == 2);
  CHECK(db.append_event("b", json{{"n", "b1 ✓"}}) == 1);
  CHECK(db.append_event("a", json{{"n", "a3"}}) == 3);

  auto all = db.events_after("a", 0);
  REQUIRE(all.size() == 3);
  for (size_t i = 0; i < all.size(); ++i) {
    CHECK(all[i].seq == static_cast<int64_t>(i + 1));
    CHECK(all[i].data.at("n") == "a" + std::to_string(i + 1));
  }
  auto middle = db.events_after("a", 1, 1);
  REQUIRE(middle.size() == 1);
  CHECK(middle[0].seq == 2);
  CHECK(middle[0].data.at("n") == "a2");
  CHECK(db.events_after("a", 3).empty());
  CHECK(db.events_after("nobody", 0).empty());
  CHECK(db.events_after("b", 0).at(0).data.at("n") == "b1 ✓");

  SECTION("a batch is numbered in order, each run on its own count") {
    auto seqs = db.append_events({{"a", json{{"n", "a4"}}},
                                  {"b", json{{"n", "b2"}}},
                                  {"c", json{{"n", "c1"}}},
                                  {"a", json{{"n", "a5"}}}});
    CHECK(seqs == std::vector<int64_t>{4, 2, 1, 5});
    auto tail = db.events_after("a", 3);
    REQUIRE(tail.size() == 2);
    CHECK(tail[0].data.at("n") == "a4");
    CHECK(tail[1].data.at("n") == "a5");
    CHECK(db.append_events({}).empty());
  }

  SECTION("a batch with a bad entry writes none of it") {
    CHECK_THROWS_AS(db.append_events({{"a", json{{"n", "a4"}}}, {"", json{}}}),
                    std::invalid_argument);
    CHECK(db.events_after("a", 0).size() == 3);
  }

  SECTION("bad numbers and limits are refused, naming them") {
    auto msg = error_of<std::invalid_argument>(
      [&] { db.events_after("a", -1); });
    CHECK_THAT(msg, Catch::Contains("-1"));
    msg = error_of<std::invalid_argument>([&] { db.events_after("a", 0, 0); });
    CHECK_THAT(msg, Catch::Contains("limit"));
  }
}

// -- listing -----------------------------------------------------------------

TEST_CASE("runs are listed newest first, a page at a time, with a total",
          "[store]") {
  temp_dir dir;
  store db{options_for(dir)};
  // 25 complete runs and 8 failed ones; pairs share a creation time so the
  // id breaks ties.
  std::vector<stored_run> complete;
  for (int i = 0; i < 25; ++i) {
    char id[16];
    std::snprintf(id, sizeof(id), "run-%02d", i);
    complete.push_back(simple_run(id, "complete", 1000 + (i / 2) * 10));
    db.put_run(complete.back());
    if (i % 3 == 0)
      db.put_run(simple_run(std::string{"fail-"} + id, "failed", 1000 + i));
  }
  std::sort(complete.begin(), complete.end(), [](const auto& x, const auto& y) {
    return std::tie(x.created_ms, x.id) > std::tie(y.created_ms, y.id);
  });

  std::vector<std::string> seen;
  std::string cursor;
  std::vector<size_t> sizes;
  do {
    auto page = db.list_runs("complete", 10, cursor);
    CHECK(page.total == 25);
    sizes.push_back(page.runs.size());
    for (const auto& r : page.runs) {
      CHECK(r.status == "complete");
      seen.push_back(r.id);
    }
    cursor = page.next_cursor;
  } while (!cursor.empty() && sizes.size() < 10);
  CHECK(sizes == std::vector<size_t>{10, 10, 5});
  std::vector<std::string> expected;
  for (const auto& r : complete)
    expected.push_back(r.id);
  CHECK(seen == expected);

  SECTION("without a filter every run counts") {
    auto page = db.list_runs("", 1000);
    CHECK(page.total == 34);
    CHECK(page.runs.size() == 34);
    CHECK(page.next_cursor.empty());
    CHECK(db.list_runs("failed", 3).total == 9);
    CHECK(db.list_runs("queued", 3).total == 0);
    CHECK(db.list_runs("queued", 3).runs.empty());
  }

  SECTION("a run added after the first page does not shift the next one") {
    auto first = db.list_runs("complete", 10);
    db.put_run(simple_run("run-newest", "complete", 999999));
    auto second = db.list_runs("complete", 10, first.next_cursor);
    REQUIRE(second.runs.size() == 10);
    CHECK(second.runs.front().id == expected[10]);
    CHECK(second.total == 26);
  }

  SECTION("a cursor this store did not make is refused") {
    for (std::string bad : {"garbage", "abc", "7b7d", "5b312c2278225d"}) {
      INFO(bad);
      auto msg = error_of<std::invalid_argument>(
        [&] { db.list_runs("complete", 10, bad); });
      CHECK_THAT(msg, Catch::Contains("bad cursor"));
      CHECK_THAT(msg, Catch::Contains(bad));
    }
  }

  SECTION("a cursor used with another filter is refused") {
    auto first = db.list_runs("complete", 10);
    auto msg = error_of<std::invalid_argument>(
      [&] { db.list_runs("failed", 10, first.next_cursor); });
    CHECK_THAT(msg, Catch::Contains("bad cursor"));
    CHECK_THAT(msg, Catch::Contains("failed"));
  }

  SECTION("a limit outside 1..1000 is refused, naming it") {
    for (int64_t bad : {int64_t{0}, int64_t{-3}, int64_t{1001}}) {
      auto msg = error_of<std::invalid_argument>(
        [&] { db.list_runs("", bad); });
      CHECK_THAT(msg, Catch::Contains("limit"));
      CHECK_THAT(msg, Catch::Contains(std::to_string(bad)));
    }
  }
}

TEST_CASE("unfinished runs come oldest first; counts are by status",
          "[store]") {
  temp_dir dir;
  store db{options_for(dir)};
  db.put_run(simple_run("q-late", "queued", 300));
  db.put_run(simple_run("r-early", "running", 100));
  db.put_run(simple_run("done", "complete", 50));
  db.put_run(simple_run("q-mid", "queued", 200));
  db.put_run(simple_run("gone", "cancelled", 250));
  db.put_run(simple_run("broke", "failed", 260));
  db.put_run(simple_run("broke-2", "failed", 270));

  std::vector<std::string> ids;
  for (const auto& r : db.unfinished_runs())
    ids.push_back(r.id);
  CHECK(ids == std::vector<std::string>{"r-early", "q-mid", "q-late"});

  auto counts = db.count_runs_by_status();
  std::map<std::string, int64_t> by_status(counts.begin(), counts.end());
  CHECK(by_status == std::map<std::string, int64_t>{{"cancelled", 1},
                                                    {"complete", 1},
                                                    {"failed", 2},
                                                    {"queued", 2},
                                                    {"running", 1}});
  CHECK(is_finished_status("complete"));
  CHECK(is_finished_status("max_steps"));
  CHECK(is_finished_status("failed"));
  CHECK(is_finished_status("halted"));
  CHECK(is_finished_status("cancelled"));
  CHECK_FALSE(is_finished_status("queued"));
  CHECK_FALSE(is_finished_status("running"));
  CHECK_FALSE(is_finished_status(""));
}

// -- the file ----------------------------------------------------------------

TEST_CASE("a closed store opens again with everything in it", "[store]") {
  temp_dir dir;
  auto opts = options_for(dir, "nested/folder/runs.db");
  auto run = full_run("run-1");
  auto result = full_tool_result();
  {
    store db{opts};
    db.put_run(run);
    db.put_checkpoint(make_checkpoint("run-1", "agent", 4));
    db.put_ledger("idem", result, 77);
    db.put_journal("run-1", "req", "chat_response", json{{"x", 1}});
    db.append_event("run-1", json{{"type", "status"}});
  }
  REQUIRE(std::filesystem::exists(opts.path));
  {
    raw_db raw{opts.path};
    CHECK(raw.scalar("PRAGMA journal_mode") == "wal");
    CHECK(raw.scalar("PRAGMA user_version") == "2");
    CHECK(raw.scalar("SELECT value FROM troupe_meta WHERE key = 'created_by'")
          != "");
  }
  store db{opts};
  CHECK(db.version() == 2);
  auto got = db.get_run("run-1");
  REQUIRE(got);
  check_same_run(*got, run);
  auto cp = db.last_checkpoint("run-1", "agent");
  REQUIRE(cp);
  CHECK(cp->step == 4);
  CHECK(db.get_ledger("idem").result == result);
  CHECK(db.get_journal("req") == json{{"x", 1}});
  CHECK(db.append_event("run-1", json{{"type", "status"}}) == 2);
}

TEST_CASE("two stores on one file see each other's commits", "[store]") {
  temp_dir dir;
  auto opts = options_for(dir);
  store a{opts};
  store b{opts};
  CHECK(b.version() == 2);
  a.put_run(simple_run("run-1", "queued", 10));
  auto seen = b.get_run("run-1");
  REQUIRE(seen);
  CHECK(seen->status == "queued");
  auto running = *seen;
  running.status = "running";
  b.put_run(running);
  CHECK(a.get_run("run-1")->status == "running");
  CHECK(a.append_event("run-1", json{{"from", "a"}}) == 1);
  CHECK(b.append_event("run-1", json{{"from", "b"}}) == 2);
  CHECK(a.append_event("run-1", json{{"from", "a"}}) == 3);
  auto events = b.events_after("run-1", 0);
  REQUIRE(events.size() == 3);
  CHECK(events[1].data.at("from") == "b");
  b.put_ledger("k", full_tool_result(), 5);
  CHECK(a.get_ledger("k").found);
}

TEST_CASE("a file of schema 1 is migrated with its data intact",
          "[store]") {
  temp_dir dir;
  auto path = dir.file("old.db");
  auto result = full_tool_result();
  {
    raw_db raw{path};
    raw.exec(v1_schema);
    raw.exec("INSERT INTO runs (id, status, swarm, goal, principal, request, "
             "result, answer, input_tokens, created_ms, ended_ms) VALUES "
             "(?1, 'complete', 'research', ?2, 'bob', ?3, ?4, 'yes', 42, "
             "1000, 2000)",
             {"old-run", "Ancien but ✓", R"({"goal":"Ancien but ✓"})",
              R"({"status":"complete","answer":"yes"})"});
    raw.exec("INSERT INTO checkpoints (run_id, key, step, final, state, "
             "saved_ms) VALUES ('old-run', 'agent', 6, 1, ?1, 1500)",
             {R"({"messages":["é"]})"});
    raw.exec("INSERT INTO ledger (key, result, recorded_ms) VALUES ('idem', "
             "?1, 1600)",
             {json(result).dump()});
    raw.exec("INSERT INTO journal (key, run_id, kind, value, recorded_ms) "
             "VALUES ('req', 'old-run', 'chat_response', ?1, 1700)",
             {R"({"content":"kept"})"});
  }

  {
    store db{store_options{path}};
    CHECK(db.version() == 2);
    auto run = db.get_run("old-run");
    REQUIRE(run);
    CHECK(run->status == "complete");
    CHECK(run->swarm == "research");
    CHECK(run->goal == "Ancien but ✓");
    CHECK(run->principal == "bob");
    CHECK(run->request == json{{"goal", "Ancien but ✓"}});
    CHECK(run->result.at("answer") == "yes");
    CHECK(run->input_tokens == 42);
    CHECK(run->created_ms == 1000);
    CHECK(run->ended_ms == 2000);
    CHECK(run->attempts == 0);
    CHECK(run->trace_id.empty());
    auto cp = db.last_checkpoint("old-run", "agent");
    REQUIRE(cp);
    CHECK(cp->step == 6);
    CHECK(cp->final);
    CHECK(cp->state == json{{"messages", {"é"}}});
    auto entry = db.get_ledger("idem");
    REQUIRE(entry.found);
    CHECK(entry.result == result);
    CHECK(entry.recorded_ms == 1600);
    CHECK(db.get_journal("req") == json{{"content", "kept"}});
    CHECK(db.append_event("old-run", json{{"type", "resumed"}}) == 1);
    auto updated = *run;
    updated.attempts = 2;
    db.put_run(updated);
    CHECK(db.get_run("old-run")->attempts == 2);
  }
  raw_db raw{path};
  CHECK(raw.scalar("PRAGMA user_version") == "2");
  CHECK(raw.columns("runs").count("attempts") == 1);
  CHECK(raw.columns("events")
        == std::set<std::string>{"run_id", "seq", "data", "at_ms"});
}

TEST_CASE("a migration that fails leaves the file as it was", "[store]") {
  temp_dir dir;
  auto path = dir.file("clash.db");
  {
    raw_db raw{path};
    raw.exec(v1_schema);
    // Step 2 creates `events`: a table of that name makes it fail midway,
    // after it has already added runs.attempts.
    raw.exec("CREATE TABLE events (x INTEGER)");
    raw.exec("INSERT INTO runs (id, status) VALUES ('r', 'queued')");
  }
  auto msg = error_of<store_error>([&] { store db{store_options{path}}; });
  CHECK_THAT(msg, Catch::Contains(path));
  CHECK_THAT(msg, Catch::Contains("step 2"));
  CHECK_THAT(msg, Catch::Contains("events"));
  raw_db raw{path};
  CHECK(raw.scalar("PRAGMA user_version") == "1");
  CHECK(raw.columns("runs").count("attempts") == 0);
  CHECK(raw.scalar("SELECT status FROM runs WHERE id = 'r'") == "queued");
}

TEST_CASE("files that are not troupe stores of this version are refused, "
          "untouched",
          "[store]") {
  temp_dir dir;

  SECTION("a newer schema") {
    auto path = dir.file("future.db");
    {
      raw_db raw{path};
      raw.exec(v1_schema);
      raw.exec("PRAGMA user_version = 99");
    }
    auto msg = error_of<store_error>([&] { store db{store_options{path}}; });
    CHECK_THAT(msg, Catch::Contains(path));
    CHECK_THAT(msg, Catch::Contains("newer"));
    CHECK_THAT(msg, Catch::Contains("99"));
    raw_db raw{path};
    CHECK(raw.scalar("PRAGMA user_version") == "99");
  }

  SECTION("a text file") {
    auto text = std::string{"name,amount\nalice,12\n"};
    auto path = dir.write("notes.csv", text);
    auto msg = error_of<store_error>([&] { store db{store_options{path}}; });
    CHECK_THAT(msg, Catch::Contains(path));
    CHECK_THAT(msg, Catch::Contains("not a troupe store"));
    CHECK(read_text(path) == text);
  }

  SECTION("another application's SQLite file") {
    auto path = dir.file("shop.db");
    {
      raw_db raw{path};
      raw.exec("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)");
      raw.exec("INSERT INTO customers (name) VALUES ('alice')");
    }
    auto msg = error_of<store_error>([&] { store db{store_options{path}}; });
    CHECK_THAT(msg, Catch::Contains(path));
    CHECK_THAT(msg, Catch::Contains("not a troupe store"));
    CHECK_THAT(msg, Catch::Contains("customers"));
    raw_db raw{path};
    CHECK(raw.scalar("PRAGMA journal_mode") == "delete");
    CHECK(raw.scalar("SELECT name FROM customers") == "alice");
    CHECK(raw.scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'runs'")
          == "0");
  }

  SECTION("an application that also numbers its schema") {
    auto path = dir.file("versioned.db");
    {
      raw_db raw{path};
      raw.exec("CREATE TABLE runs (id TEXT)");
      raw.exec("PRAGMA user_version = 1");
    }
    auto msg = error_of<store_error>([&] { store db{store_options{path}}; });
    CHECK_THAT(msg, Catch::Contains(path));
    CHECK_THAT(msg, Catch::Contains("not a troupe store"));
  }

  SECTION("a folder") {
    auto msg = error_of<store_error>(
      [&] { store db{store_options{dir.path().string()}}; });
    CHECK_THAT(msg, Catch::Contains(dir.path().string()));
  }

  SECTION("options out of range") {
    auto opts = options_for(dir);
    opts.retention_ms = -1;
    auto msg = error_of<std::invalid_argument>([&] { store db{opts}; });
    CHECK_THAT(msg, Catch::Contains("retention_ms"));
    CHECK_FALSE(std::filesystem::exists(opts.path));
    CHECK_THROWS_AS(store{store_options{}}, std::invalid_argument);
  }
}

TEST_CASE("a stored document that does not parse is an error naming it",
          "[store]") {
  temp_dir dir;
  auto opts = options_for(dir);
  {
    store db{opts};
    db.put_run(simple_run("r", "queued", 1));
    db.put_ledger("k", full_tool_result(), 1);
  }
  {
    raw_db raw{opts.path};
    raw.exec("UPDATE runs SET request = '{broken' WHERE id = 'r'");
    raw.exec("UPDATE ledger SET result = '{\"ok\": \"not a bool\"}'");
  }
  store db{opts};
  auto msg = error_of<store_error>([&] { db.get_run("r"); });
  CHECK_THAT(msg, Catch::Contains(opts.path));
  CHECK_THAT(msg, Catch::Contains("'r' request"));
  msg = error_of<store_error>([&] { db.get_ledger("k"); });
  CHECK_THAT(msg, Catch::Contains("ledger entry 'k'"));
  // The store still works after refusing a row, and writing the run again
  // repairs it.
  CHECK(db.count_runs_by_status().size() == 1);
  db.put_run(simple_run("r", "queued", 1));
  CHECK(db.get_run("r")->request == json::object());
}

// -- compaction ----------------------------------------------------------------

TEST_CASE("compaction keeps a finished run's last checkpoint per key",
          "[store]") {
  temp_dir dir;
  store db{options_for(dir)};
  auto now = now_ms();
  auto done = simple_run("done", "complete", now - 1000);
  done.ended_ms = now - 10;
  db.put_run(done);
  db.put_run(simple_run("live", "running", now - 1000));
  for (int step = 1; step <= 5; ++step)
    db.put_checkpoint(make_checkpoint("done", "A", step));
  for (int step = 1; step <= 3; ++step)
    db.put_checkpoint(make_checkpoint("done", "B", step));
  for (int step = 1; step <= 4; ++step)
    db.put_checkpoint(make_checkpoint("live", "A", step));
  // A checkpoint of a run the store has no record of is nobody's to drop.
  db.put_checkpoint(make_checkpoint("orphan", "A", 1));
  db.put_checkpoint(make_checkpoint("orphan", "A", 2));

  auto stats = db.compact(now);
  CHECK(stats.checkpoints_removed == 6);
  CHECK(stats.runs_removed == 0);
  CHECK(db.count_checkpoints("done") == 2);
  CHECK(db.last_checkpoint("done", "A")->step == 5);
  CHECK(db.last_checkpoint("done", "B")->step == 3);
  CHECK(db.count_checkpoints("live") == 4);
  CHECK(db.count_checkpoints("orphan") == 2);
  CHECK(db.compact(now).checkpoints_removed == 0);

  SECTION("compact_run does the same for one finished run") {
    auto other = simple_run("other", "halted", now - 100);
    other.ended_ms = now - 50;
    db.put_run(other);
    db.put_checkpoint(make_checkpoint("other", "K", 1));
    db.put_checkpoint(make_checkpoint("other", "K", 2, json{{"v", "early"}}));
    db.put_checkpoint(make_checkpoint("other", "K", 2, json{{"v", "late"}}));
    db.put_checkpoint(make_checkpoint("live", "A", 5));
    CHECK(db.compact_run("other") == 2);
    CHECK(db.last_checkpoint("other", "K")->state == json{{"v", "late"}});
    CHECK(db.compact_run("live") == 0);
    CHECK(db.count_checkpoints("live") == 5);
    CHECK(db.compact_run("nobody") == 0);
  }
  SECTION("finish_run records a run's end and compacts it at once") {
    auto live = simple_run("live", "complete", now - 1000);
    live.ended_ms = now;
    live.answer = "done";
    CHECK(db.finish_run(live) == 3);
    CHECK(db.get_run("live")->status == "complete");
    CHECK(db.get_run("live")->answer == "done");
    CHECK(db.count_checkpoints("live") == 1);
    CHECK(db.last_checkpoint("live", "A")->step == 4);
  }
  SECTION("finish_run refuses a run that has not ended, changing nothing") {
    auto live = simple_run("live", "running", now - 1000);
    live.answer = "not yet";
    CHECK_THROWS_WITH(db.finish_run(live),
                      Catch::Contains("'live'") && Catch::Contains("'running'")
                        && Catch::Contains("not a finished one"));
    CHECK(db.get_run("live")->answer.empty());
    CHECK(db.count_checkpoints("live") == 4);
  }
}

TEST_CASE("compaction drops finished runs past the retention with all they "
          "kept",
          "[store]") {
  temp_dir dir;
  auto opts = options_for(dir);
  const int64_t hour = 3600 * 1000;
  opts.retention_ms = hour;
  store db{opts};
  auto now = now_ms();
  auto add = [&](const std::string& id, const std::string& status,
                 int64_t ended_ms) {
    auto r = simple_run(id, status, now - 3 * hour);
    r.ended_ms = ended_ms;
    db.put_run(r);
    db.put_checkpoint(make_checkpoint(id, "A", 1));
    db.put_checkpoint(make_checkpoint(id, "B", 1));
    db.put_journal(id, id + "-req-1", "chat_response", json{{"r", 1}});
    db.put_journal(id, id + "-req-2", "chat_response", json{{"r", 2}});
    db.append_events({{id, json{{"e", 1}}}, {id, json{{"e", 2}}},
                      {id, json{{"e", 3}}}});
  };
  add("old", "failed", now - 2 * hour);
  add("recent", "complete", now - hour / 2);
  add("stuck", "running", 0);
  db.put_ledger("fresh", full_tool_result(), now);

  auto stats = db.compact(now);
  CHECK(stats.runs_removed == 1);
  CHECK(stats.checkpoints_removed == 2);
  CHECK(stats.journal_removed == 2);
  CHECK(stats.events_removed == 3);
  CHECK(stats.ledger_removed == 0);
  CHECK_FALSE(db.get_run("old"));
  CHECK(db.count_checkpoints("old") == 0);
  CHECK(db.count_journal("old") == 0);
  CHECK_FALSE(db.get_journal("old-req-1"));
  CHECK(db.events_after("old", 0).empty());
  for (std::string id : {"recent", "stuck"}) {
    INFO(id);
    CHECK(db.get_run(id));
    CHECK(db.count_checkpoints(id) == 2);
    CHECK(db.count_journal(id) == 2);
    CHECK(db.events_after(id, 0).size() == 3);
  }
  CHECK(db.get_ledger("fresh").found);

  SECTION("the retention counts from the end, not from creation") {
    auto later = now + hour;
    auto again = db.compact(later);
    CHECK(again.runs_removed == 1);
    CHECK_FALSE(db.get_run("recent"));
    CHECK(db.get_run("stuck"));
  }
}

TEST_CASE("compaction drops ledger entries past their ttl; 0 keeps forever",
          "[store]") {
  temp_dir dir;
  const int64_t hour = 3600 * 1000;
  auto now = now_ms();
  auto opts = options_for(dir);
  opts.ledger_ttl_ms = hour;
  {
    store db{opts};
    db.put_ledger("old", full_tool_result(), now - 2 * hour);
    db.put_ledger("new", full_tool_result(), now - hour / 2);
    auto stats = db.compact(now);
    CHECK(stats.ledger_removed == 1);
    CHECK_FALSE(db.get_ledger("old").found);
    CHECK(db.get_ledger("new").found);
  }
  opts.ledger_ttl_ms = 0;
  opts.retention_ms = 0;
  store db{opts};
  auto ancient = simple_run("ancient", "complete", 1);
  ancient.ended_ms = 2;
  db.put_run(ancient);
  db.put_ledger("ancient", full_tool_result(), 1);
  auto stats = db.compact(now);
  CHECK(stats.ledger_removed == 0);
  CHECK(stats.runs_removed == 0);
  CHECK(db.get_ledger("ancient").found);
  CHECK(db.get_run("ancient"));
}

// -- concurrency ---------------------------------------------------------------

TEST_CASE("concurrent appends to one run are numbered without gaps or "
          "duplicates",
          "[store]") {
  temp_dir dir;
  auto opts = options_for(dir);
  constexpr int threads = 4;
  constexpr int per_thread = 50;
  // Two threads share one store (its mutex), two share another (SQLite's
  // locks between connections).
  store a{opts};
  store b{opts};
  std::vector<std::vector<int64_t>> got(threads);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      auto& db = t % 2 == 0 ? a : b;
      for (int i = 0; i < per_thread; ++i)
        got[t].push_back(
          db.append_event("shared", json{{"thread", t}, {"i", i}}));
    });
  for (auto& w : workers)
    w.join();

  std::set<int64_t> all;
  for (int t = 0; t < threads; ++t) {
    INFO("thread " << t);
    CHECK(std::is_sorted(got[t].begin(), got[t].end()));
    all.insert(got[t].begin(), got[t].end());
  }
  CHECK(all.size() == threads * per_thread);
  CHECK(*all.begin() == 1);
  CHECK(*all.rbegin() == threads * per_thread);

  auto events = a.events_after("shared", 0, 1000);
  REQUIRE(events.size() == threads * per_thread);
  std::vector<int> next_i(threads, 0);
  for (size_t k = 0; k < events.size(); ++k) {
    CHECK(events[k].seq == static_cast<int64_t>(k + 1));
    auto t = events[k].data.at("thread").get<int>();
    // Each thread's events appear in the order it appended them.
    CHECK(events[k].data.at("i").get<int>() == next_i[t]++);
    CHECK(got[t][events[k].data.at("i").get<int>()] == events[k].seq);
  }
}

namespace {

/// A log sink that wakes a waiting test when a line containing `needle`
/// is logged.
class watch_sink : public spdlog::sinks::base_sink<std::mutex> {
public:
  explicit watch_sink(std::string needle) : needle_(std::move(needle)) {}

  bool wait(std::chrono::seconds limit) {
    std::unique_lock<std::mutex> lock{seen_mtx_};
    return cv_.wait_for(lock, limit, [this] { return seen_; });
  }

protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::string text(msg.payload.data(), msg.payload.size());
    if (text.find(needle_) == std::string::npos)
      return;
    {
      std::lock_guard<std::mutex> guard{seen_mtx_};
      seen_ = true;
    }
    cv_.notify_all();
  }
  void flush_() override {}

private:
  std::string needle_;
  std::mutex seen_mtx_;
  std::condition_variable cv_;
  bool seen_ = false;
};

} // namespace

TEST_CASE("reads go on while a write waits for another process's lock",
          "[store]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.busy_timeout_ms = 30'000;
  store db{opts};
  db.put_run(simple_run("before", "complete", 1));
  db.append_event("before", json{{"type", "status"}});

  auto sink = std::make_shared<watch_sink>("waiting for a lock");
  auto previous = spdlog::default_logger();
  auto logger = std::make_shared<spdlog::logger>("watch", sink);
  logger->set_level(spdlog::level::debug);
  spdlog::set_default_logger(logger);
  struct restore_logger {
    std::shared_ptr<spdlog::logger> previous;
    ~restore_logger() { spdlog::set_default_logger(previous); }
  } restore{previous};

  // Another process's transaction holds the file's write lock.
  raw_db other{opts.path};
  other.exec("BEGIN IMMEDIATE");
  auto write = std::async(std::launch::async, [&] {
    db.put_run(simple_run("after", "queued", 2));
  });
  // The write is inside SQLite, waiting for the lock (its busy handler
  // said so).
  REQUIRE(sink->wait(std::chrono::seconds{15}));
  auto found = db.get_run("before");
  auto page = db.list_runs("", 10);
  auto events = db.events_after("before", 0, 10);
  auto checkpoints = db.count_checkpoints("before");
  bool still_waiting =
    write.wait_for(std::chrono::seconds{0}) == std::future_status::timeout;
  other.exec("COMMIT");
  REQUIRE_NOTHROW(write.get());
  CHECK(still_waiting);
  REQUIRE(found);
  CHECK(found->status == "complete");
  CHECK(page.total == 1);
  CHECK(events.size() == 1);
  CHECK(checkpoints == 0);
  // Once the lock is free the write went through, and reads see it.
  CHECK(db.get_run("after"));
  CHECK(db.list_runs("", 10).total == 2);
}

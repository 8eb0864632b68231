#include "runtime/store.hpp"

// How the file is laid out and kept:
// - Every value reaches SQLite as a bound parameter; the SQL texts are
//   constants (a few are assembled from constant fragments), prepared once
//   and cached by text.
// - JSON columns hold compact text (safe_dump: invalid UTF-8 becomes U+FFFD
//   rather than an exception); a stored document that does not parse is a
//   store_error naming the table and the key, never a crash.
// - Writes that read first (event numbering, compaction, migrations) run in
//   BEGIN IMMEDIATE transactions, so two processes sharing the file wait for
//   each other (busy_timeout) instead of failing to upgrade a read lock.
// - No foreign keys tie checkpoints, journal or events to runs: a runtime
//   without the run service checkpoints runs that have no record.

#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>
#include <unordered_map>

#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include "runtime/clock.hpp"

namespace troupe {

namespace detail {

struct store_statements {
  std::unordered_map<std::string, sqlite3_stmt*> by_sql;
};

/// SQLite's busy handler for the writer: waits, backing off from 1 ms to
/// 100 ms, until busy_timeout has passed, and says so once per wait.
struct busy_wait {
  std::string path;
  int timeout_ms = 0;
  std::chrono::steady_clock::time_point since;

  static int handle(void* arg, int count) {
    auto& self = *static_cast<busy_wait*>(arg);
    using clock = std::chrono::steady_clock;
    if (count == 0) {
      self.since = clock::now();
      spdlog::debug("store {}: waiting for a lock another connection holds "
                    "(up to {} ms)",
                    self.path, self.timeout_ms);
    }
    auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
                    clock::now() - self.since)
                    .count();
    if (waited >= self.timeout_ms)
      return 0;
    static constexpr std::array<int, 8> backoff{1, 2, 5, 10, 20, 50, 100, 100};
    auto step = backoff[std::min<size_t>(static_cast<size_t>(count),
                                         backoff.size() - 1)];
    sqlite3_sleep(static_cast<int>(
      std::min<int64_t>(step, self.timeout_ms - waited)));
    return 1;
  }
};

} // namespace detail

namespace {

// -- schema ------------------------------------------------------------------

/// One step of the schema: applied to a file of version `to - 1`.
struct migration {
  int to;
  const char* what;
  const char* sql;
};

// Version 1 is the first layout; version 2 adds attempts, trace ids, events
// and the indexes. Steps are only ever appended: a released step never
// changes, so every file reaches the same layout whatever version it left.
const migration migrations[] = {
  {1, "runs, checkpoints, ledger and journal", R"sql(
CREATE TABLE troupe_meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE runs (
  id            TEXT PRIMARY KEY,
  status        TEXT NOT NULL,
  swarm         TEXT NOT NULL DEFAULT '',
  swarm_path    TEXT NOT NULL DEFAULT '',
  goal          TEXT NOT NULL DEFAULT '',
  principal     TEXT NOT NULL DEFAULT '',
  request       TEXT NOT NULL DEFAULT '{}',
  result        TEXT NOT NULL DEFAULT 'null',
  answer        TEXT NOT NULL DEFAULT '',
  error         TEXT NOT NULL DEFAULT '',
  input_tokens  INTEGER NOT NULL DEFAULT 0,
  output_tokens INTEGER NOT NULL DEFAULT 0,
  cost_nusd     INTEGER NOT NULL DEFAULT 0,
  steps         INTEGER NOT NULL DEFAULT 0,
  created_ms    INTEGER NOT NULL DEFAULT 0,
  started_ms    INTEGER NOT NULL DEFAULT 0,
  ended_ms      INTEGER NOT NULL DEFAULT 0,
  updated_ms    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE checkpoints (
  run_id   TEXT NOT NULL,
  key      TEXT NOT NULL,
  step     INTEGER NOT NULL,
  final    INTEGER NOT NULL DEFAULT 0,
  state    TEXT NOT NULL,
  saved_ms INTEGER NOT NULL
);
CREATE TABLE ledger (
  key         TEXT PRIMARY KEY,
  result      TEXT NOT NULL,
  recorded_ms INTEGER NOT NULL
);
CREATE TABLE journal (
  key         TEXT PRIMARY KEY,
  run_id      TEXT NOT NULL,
  kind        TEXT NOT NULL,
  value       TEXT NOT NULL,
  recorded_ms INTEGER NOT NULL
);
)sql"},
  {2, "run attempts and trace ids, events, indexes", R"sql(
ALTER TABLE runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN trace_id TEXT NOT NULL DEFAULT '';
CREATE TABLE events (
  run_id TEXT NOT NULL,
  seq    INTEGER NOT NULL,
  data   TEXT NOT NULL,
  at_ms  INTEGER NOT NULL,
  PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE INDEX runs_by_created ON runs (created_ms, id);
CREATE INDEX runs_by_status ON runs (status, created_ms, id);
CREATE INDEX checkpoints_by_key ON checkpoints (run_id, key, step);
CREATE INDEX journal_by_run ON journal (run_id);
CREATE INDEX ledger_by_time ON ledger (recorded_ms);
)sql"},
};

static_assert(sizeof(migrations) / sizeof(migrations[0]) == store::schema_version,
              "one migration step per schema version");

/// The run statuses is_finished_status accepts, bound as ?1..?5 wherever
/// SQL selects finished runs.
constexpr std::array<const char*, 5> finished_statuses = {
  "complete", "max_steps", "failed", "halted", "cancelled"};

constexpr const char* finished_in = "status IN (?1, ?2, ?3, ?4, ?5)";

constexpr const char* run_columns
  = "id, status, swarm, swarm_path, goal, principal, request, trace_id, "
    "result, answer, error, input_tokens, output_tokens, cost_nusd, steps, "
    "created_ms, started_ms, ended_ms, updated_ms, attempts";

// -- errors ------------------------------------------------------------------

std::string in_quotes(const std::string& path) {
  return "'" + path + "'";
}

[[noreturn]] void fail(sqlite3* db, const std::string& path,
                       const std::string& op) {
  throw store_error("store " + in_quotes(path) + ": " + op + ": "
                    + (db ? sqlite3_errmsg(db) : "out of memory"));
}

/// Runs SQL without parameters (transaction control, pragmas, DDL).
void exec(sqlite3* db, const std::string& path, const std::string& op,
          const char* sql) {
  char* msg = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
    std::string reason = msg ? msg : sqlite3_errmsg(db);
    sqlite3_free(msg);
    throw store_error("store " + in_quotes(path) + ": " + op + ": " + reason);
  }
}

/// A stored JSON text back as a document; `what` names the row.
json parse_stored(const std::string& path, const std::string& what,
                  const std::string& text) {
  auto parsed = json::parse(text, nullptr, false);
  if (parsed.is_discarded())
    throw store_error("store " + in_quotes(path) + ": " + what
                      + " is not valid JSON");
  return parsed;
}

void require_key(const char* op, const char* field, const std::string& value) {
  if (value.empty())
    throw std::invalid_argument(std::string{op} + ": " + field
                                + " is empty");
}

// -- statements --------------------------------------------------------------

/// One use of a cached statement: binds, steps, and resets it when done so
/// the next use starts clean (and no read stays open).
class query {
public:
  query(sqlite3* db, const std::string& path,
        detail::store_statements& cache, const char* sql, const char* op)
    : db_(db), path_(path), op_(op) {
    auto i = cache.by_sql.find(sql);
    if (i != cache.by_sql.end()) {
      stmt_ = i->second;
      return;
    }
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_,
                           nullptr)
        != SQLITE_OK)
      fail(db_, path_, std::string{op_} + " (prepare)");
    cache.by_sql.emplace(sql, stmt_);
  }

  query(const query&) = delete;
  query& operator=(const query&) = delete;

  ~query() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

  query& bind(int i, const std::string& text) {
    check(sqlite3_bind_text64(stmt_, i, text.data(), text.size(),
                              SQLITE_TRANSIENT, SQLITE_UTF8));
    return *this;
  }

  query& bind(int i, const char* text) {
    check(sqlite3_bind_text(stmt_, i, text, -1, SQLITE_STATIC));
    return *this;
  }

  query& bind(int i, int64_t value) {
    check(sqlite3_bind_int64(stmt_, i, value));
    return *this;
  }

  query& bind(int i, const json& value) {
    return bind(i, safe_dump(value));
  }

  /// Binds the finished statuses to ?1..?5.
  query& bind_finished() {
    for (size_t i = 0; i < finished_statuses.size(); ++i)
      bind(static_cast<int>(i + 1), finished_statuses[i]);
    return *this;
  }

  /// True when a row is ready, false when the statement is done.
  bool next() {
    auto rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW)
      return true;
    if (rc == SQLITE_DONE)
      return false;
    fail(db_, path_, op_);
  }

  /// Runs a statement that returns no rows; returns the rows it changed.
  int64_t run() {
    while (next()) {
      // Statements run for effect; a RETURNING row would be ignored.
    }
    return sqlite3_changes64(db_);
  }

  int64_t int64(int col) {
    return sqlite3_column_int64(stmt_, col);
  }

  std::string text(int col) {
    auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
    return p ? std::string(p, static_cast<size_t>(
                                sqlite3_column_bytes(stmt_, col)))
             : std::string{};
  }

private:
  void check(int rc) {
    if (rc != SQLITE_OK)
      fail(db_, path_, std::string{op_} + " (bind)");
  }

  sqlite3* db_;
  const std::string& path_;
  const char* op_;
  sqlite3_stmt* stmt_ = nullptr;
};

/// A transaction that rolls back unless committed. IMMEDIATE ones take the
/// write lock up front (waiting up to busy_timeout for another process).
class transaction {
public:
  transaction(sqlite3* db, const std::string& path, const char* op,
              bool write)
    : db_(db), path_(path), op_(op) {
    exec(db_, path_, std::string{op_} + " (begin)",
         write ? "BEGIN IMMEDIATE" : "BEGIN");
  }

  transaction(const transaction&) = delete;
  transaction& operator=(const transaction&) = delete;

  ~transaction() {
    if (!done_)
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }

  void commit() {
    exec(db_, path_, std::string{op_} + " (commit)", "COMMIT");
    done_ = true;
  }

private:
  sqlite3* db_;
  const std::string& path_;
  const char* op_;
  bool done_ = false;
};

// -- runs --------------------------------------------------------------------

stored_run read_run(query& q, const std::string& path) {
  stored_run r;
  r.id = q.text(0);
  r.status = q.text(1);
  r.swarm = q.text(2);
  r.swarm_path = q.text(3);
  r.goal = q.text(4);
  r.principal = q.text(5);
  r.request = parse_stored(path, "run " + in_quotes(r.id) + " request",
                           q.text(6));
  r.trace_id = q.text(7);
  r.result = parse_stored(path, "run " + in_quotes(r.id) + " result", q.text(8));
  r.answer = q.text(9);
  r.error = q.text(10);
  r.input_tokens = q.int64(11);
  r.output_tokens = q.int64(12);
  r.cost_nusd = q.int64(13);
  r.steps = q.int64(14);
  r.created_ms = q.int64(15);
  r.started_ms = q.int64(16);
  r.ended_ms = q.int64(17);
  r.updated_ms = q.int64(18);
  r.attempts = static_cast<int32_t>(q.int64(19));
  return r;
}

// -- cursors -----------------------------------------------------------------

// A cursor is the hex of a JSON array [created_ms, id, status filter]: the
// last run of a page and the filter it was made for, so a cursor used with
// another filter is refused rather than silently skipping runs.

constexpr size_t max_cursor_size = 4096;

std::string to_hex(const std::string& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 0xf];
  }
  return out;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

std::string make_cursor(const stored_run& last, const std::string& status) {
  return to_hex(safe_dump(json::array({last.created_ms, last.id, status})));
}

[[noreturn]] void bad_cursor(const std::string& cursor,
                             const std::string& why) {
  auto shown = cursor.size() > 40 ? cursor.substr(0, 40) + "..." : cursor;
  throw std::invalid_argument("bad cursor \"" + shown + "\": " + why
                              + " (pass the next_cursor of a previous page)");
}

/// The (created_ms, id) a cursor points after.
std::pair<int64_t, std::string> read_cursor(const std::string& cursor,
                                            const std::string& status) {
  if (cursor.size() > max_cursor_size)
    bad_cursor(cursor, "too long");
  if (cursor.size() % 2 != 0)
    bad_cursor(cursor, "not one this store made");
  std::string bytes;
  bytes.reserve(cursor.size() / 2);
  for (size_t i = 0; i < cursor.size(); i += 2) {
    auto hi = hex_digit(cursor[i]);
    auto lo = hex_digit(cursor[i + 1]);
    if (hi < 0 || lo < 0)
      bad_cursor(cursor, "not one this store made");
    bytes += static_cast<char>(hi * 16 + lo);
  }
  auto doc = json::parse(bytes, nullptr, false);
  if (doc.is_discarded() || !doc.is_array() || doc.size() != 3
      || !doc[0].is_number_integer() || !doc[1].is_string()
      || !doc[2].is_string())
    bad_cursor(cursor, "not one this store made");
  if (doc[2].get<std::string>() != status)
    bad_cursor(cursor, "made for status \"" + doc[2].get<std::string>()
                         + "\", used with status \"" + status + "\"");
  return {doc[0].get<int64_t>(), doc[1].get<std::string>()};
}

} // namespace

// -- free functions ----------------------------------------------------------

bool is_finished_status(const std::string& status) {
  for (auto* name : finished_statuses)
    if (status == name)
      return true;
  return false;
}

// -- opening -----------------------------------------------------------------

namespace {

/// What a file holds before we touch it.
struct file_survey {
  int version = 0;
  /// Tables other than SQLite's own.
  std::vector<std::string> tables;
  bool has_meta = false;
};

/// Reads the version and table names with raw calls, so a file that is not
/// SQLite can be told apart from other failures.
file_survey survey(sqlite3* db, const std::string& path) {
  auto not_ours = [&](const std::string& why) {
    return store_error("store " + in_quotes(path) + " is not a troupe store: "
                       + why);
  };
  file_survey out;
  auto read = [&](const char* sql, auto&& on_row) {
    sqlite3_stmt* stmt = nullptr;
    auto rc = sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr);
    while (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      on_row(stmt);
      rc = SQLITE_OK;
    }
    std::string reason = sqlite3_errmsg(db);
    sqlite3_finalize(stmt);
    if (rc == SQLITE_DONE)
      return;
    if ((rc & 0xff) == SQLITE_NOTADB)
      throw not_ours("it is not an SQLite database (" + reason + ")");
    throw store_error("store " + in_quotes(path) + ": reading the schema: "
                      + reason);
  };
  read("PRAGMA user_version", [&](sqlite3_stmt* stmt) {
    out.version = sqlite3_column_int(stmt, 0);
  });
  read("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT "
       "LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
       [&](sqlite3_stmt* stmt) {
         auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
         std::string name = p ? p : "";
         out.has_meta = out.has_meta || name == "troupe_meta";
         out.tables.push_back(std::move(name));
       });
  if (out.version > store::schema_version)
    throw store_error("store " + in_quotes(path)
                      + " was written by a newer troupe (schema "
                      + std::to_string(out.version) + "; this build reads up to "
                      + std::to_string(store::schema_version) + ")");
  if (out.version < 0)
    throw not_ours("its user_version is " + std::to_string(out.version));
  if (out.version == 0 && !out.tables.empty()) {
    std::string names;
    for (size_t i = 0; i < out.tables.size() && i < 5; ++i)
      names += (i == 0 ? "" : ", ") + out.tables[i];
    if (out.tables.size() > 5)
      names += ", ...";
    throw not_ours("it holds tables troupe did not make (" + names + ")");
  }
  if (out.version > 0 && !out.has_meta)
    throw not_ours("its user_version is " + std::to_string(out.version)
                   + " but it has no troupe_meta table");
  return out;
}

} // namespace

store::store(store_options opts)
  : opts_(std::move(opts)),
    stmts_(std::make_unique<detail::store_statements>()) {
  if (opts_.path.empty())
    throw std::invalid_argument("store_options.path is empty: name the "
                                "SQLite file");
  if (opts_.retention_ms < 0)
    throw std::invalid_argument("store_options.retention_ms is negative ("
                                + std::to_string(opts_.retention_ms)
                                + "): use 0 to keep finished runs forever");
  if (opts_.ledger_ttl_ms < 0)
    throw std::invalid_argument("store_options.ledger_ttl_ms is negative ("
                                + std::to_string(opts_.ledger_ttl_ms)
                                + "): use 0 to keep ledger entries forever");
  if (opts_.busy_timeout_ms < 0)
    throw std::invalid_argument("store_options.busy_timeout_ms is negative ("
                                + std::to_string(opts_.busy_timeout_ms) + ")");
  const auto& path = opts_.path;
  // A missing folder is made, so `--store out/runs.db` works on a fresh tree.
  if (path != ":memory:") {
    auto dir = std::filesystem::path(path).parent_path();
    std::error_code ec;
    if (!dir.empty() && !std::filesystem::exists(dir, ec))
      std::filesystem::create_directories(dir, ec);
  }
  // The connection is ours alone behind mtx_: no SQLite mutex needed.
  auto rc = sqlite3_open_v2(path.c_str(), &db_,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE
                              | SQLITE_OPEN_NOMUTEX,
                            nullptr);
  try {
    if (rc != SQLITE_OK)
      fail(db_, path, "open");
    sqlite3_extended_result_codes(db_, 1);
    busy_ = std::make_unique<detail::busy_wait>();
    busy_->path = path;
    busy_->timeout_ms = opts_.busy_timeout_ms;
    sqlite3_busy_handler(db_, &detail::busy_wait::handle, busy_.get());
    auto found = survey(db_, path);
    // WAL only once we know the file is ours: the mode sticks to the file.
    {
      query q{db_, path, *stmts_, "PRAGMA journal_mode = WAL", "set WAL mode"};
      auto mode = q.next() ? q.text(0) : std::string{};
      if (mode != "wal")
        spdlog::warn("store {}: journal mode is '{}', not WAL", path, mode);
    }
    exec(db_, path, "set synchronous",
         opts_.durable_commits ? "PRAGMA synchronous = FULL"
                               : "PRAGMA synchronous = NORMAL");
    exec(db_, path, "enable foreign keys", "PRAGMA foreign_keys = ON");
    if (found.version < schema_version) {
      transaction tx{db_, path, "migrate", true};
      // Another process may have migrated it while we waited for the lock.
      found = survey(db_, path);
      auto from = found.version;
      for (const auto& step : migrations) {
        if (step.to <= found.version)
          continue;
        char* msg = nullptr;
        if (sqlite3_exec(db_, step.sql, nullptr, nullptr, &msg) != SQLITE_OK) {
          std::string reason = msg ? msg : sqlite3_errmsg(db_);
          sqlite3_free(msg);
          throw store_error("store " + in_quotes(path) + ": migration step "
                            + std::to_string(step.to) + " (" + step.what
                            + ") failed: " + reason
                            + "; the file is left at schema "
                            + std::to_string(from));
        }
        // PRAGMA takes no parameters; the number is our own constant.
        auto set_version = "PRAGMA user_version = " + std::to_string(step.to);
        exec(db_, path, "migration step " + std::to_string(step.to),
             set_version.c_str());
      }
      if (from == 0) {
        query q{db_, path, *stmts_,
                "INSERT OR REPLACE INTO troupe_meta (key, value) VALUES "
                "('created_by', ?1), ('created_ms', ?2)",
                "record the creator"};
        q.bind(1, "troupe (schema " + std::to_string(schema_version) + ")")
          .bind(2, std::to_string(now_ms()))
          .run();
      }
      tx.commit();
      if (from == 0)
        spdlog::info("store {}: created (schema {})", path, schema_version);
      else if (from < schema_version)
        spdlog::info("store {}: migrated from schema {} to {}", path, from,
                     schema_version);
    }
    // The reader, once the file is ours and of this schema. An in-memory
    // database (":memory:", "file::memory:...") is the writer's alone.
    bool in_memory = path == ":memory:" || path.rfind("file::memory:", 0) == 0
                     || path.find("mode=memory") != std::string::npos;
    if (!in_memory) {
      rstmts_ = std::make_unique<detail::store_statements>();
      if (sqlite3_open_v2(path.c_str(), &rdb_,
                          SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr)
          != SQLITE_OK)
        fail(rdb_, path, "open (reader)");
      sqlite3_extended_result_codes(rdb_, 1);
      sqlite3_busy_timeout(rdb_, opts_.busy_timeout_ms);
    }
  } catch (...) {
    close();
    throw;
  }
}

store::~store() {
  close();
}

std::unique_lock<std::mutex>
store::lock_reader(sqlite3*& db, detail::store_statements*& stmts) {
  if (rdb_ == nullptr) {
    db = db_;
    stmts = stmts_.get();
    return std::unique_lock<std::mutex>{mtx_};
  }
  db = rdb_;
  stmts = rstmts_.get();
  return std::unique_lock<std::mutex>{rmtx_};
}

namespace {

/// Finalizes a connection's statements and closes it (either may be null).
void close_connection(sqlite3*& db, detail::store_statements* stmts,
                      const std::string& path, const char* which) noexcept {
  if (stmts != nullptr) {
    for (auto& [sql, stmt] : stmts->by_sql)
      sqlite3_finalize(stmt);
    stmts->by_sql.clear();
  }
  if (db != nullptr) {
    if (sqlite3_close_v2(db) != SQLITE_OK)
      spdlog::warn("store {}: close ({}): {}", path, which,
                   sqlite3_errmsg(db));
    db = nullptr;
  }
}

} // namespace

void store::close() noexcept {
  close_connection(rdb_, rstmts_.get(), opts_.path, "reader");
  close_connection(db_, stmts_.get(), opts_.path, "writer");
}

int store::version() {
  sqlite3* db = nullptr;
  detail::store_statements* stmts = nullptr;
  auto guard = lock_reader(db, stmts);
  query q{db, opts_.path, *stmts, "PRAGMA user_version", "version"};
  return q.next() ? static_cast<int>(q.int64(0)) : 0;
}

// -- runs --------------------------------------------------------------------

void store::put_run(const stored_run& run) {
  require_key("put_run", "run id", run.id);
  std::lock_guard<std::mutex> guard{mtx_};
  put_run_locked(run);
}

int64_t store::finish_run(const stored_run& run) {
  require_key("finish_run", "run id", run.id);
  if (!is_finished_status(run.status))
    throw std::invalid_argument("finish_run: run '" + run.id + "' has status '"
                                + run.status + "', which is not a finished one");
  std::lock_guard<std::mutex> guard{mtx_};
  transaction tx{db_, opts_.path, "finish_run", true};
  put_run_locked(run);
  auto removed = compact_run_locked(run.id);
  tx.commit();
  return removed;
}

void store::put_run_locked(const stored_run& run) {
  query q{db_, opts_.path, *stmts_,
          "INSERT INTO runs (id, status, swarm, swarm_path, goal, principal, "
          "request, trace_id, result, answer, error, input_tokens, "
          "output_tokens, cost_nusd, steps, created_ms, started_ms, "
          "ended_ms, updated_ms, attempts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, "
          "?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, "
          "?20) ON CONFLICT (id) DO UPDATE SET status = excluded.status, "
          "swarm = excluded.swarm, swarm_path = excluded.swarm_path, "
          "goal = excluded.goal, principal = excluded.principal, "
          "request = excluded.request, trace_id = excluded.trace_id, "
          "result = excluded.result, answer = excluded.answer, "
          "error = excluded.error, input_tokens = excluded.input_tokens, "
          "output_tokens = excluded.output_tokens, "
          "cost_nusd = excluded.cost_nusd, steps = excluded.steps, "
          "created_ms = excluded.created_ms, "
          "started_ms = excluded.started_ms, ended_ms = excluded.ended_ms, "
          "updated_ms = excluded.updated_ms, attempts = excluded.attempts",
          "put_run"};
  q.bind(1, run.id)
    .bind(2, run.status)
    .bind(3, run.swarm)
    .bind(4, run.swarm_path)
    .bind(5, run.goal)
    .bind(6, run.principal)
    .bind(7, run.request)
    .bind(8, run.trace_id)
    .bind(9, run.result)
    .bind(10, run.answer)
    .bind(11, run.error)
    .bind(12, run.input_tokens)
    .bind(13, run.output_tokens)
    .bind(14, run.cost_nusd)
    .bind(15, run.steps)
    .bind(16, run.created_ms)
    .bind(17, run.started_ms)
    .bind(18, run.ended_ms)
    .bind(19, now_ms())
    .bind(20, static_cast<int64_t>(run.attempts))
    .run();
}

std::optional<stored_run> store::get_run(const std::string& id) {
  sqlite3* db = nullptr;
  detail::store_statements* stmts = nullptr;
  auto guard = lock_reader(db, stmts);
  static const std::string sql = std::string{"SELECT "} + run_columns
                                 + " FROM runs WHERE id = ?1";
  query q{db, opts_.path, *stmts, sql.c_str(), "get_run"};
  q.bind(1, id);
  if (!q.next())
    return std::nullopt;
  return read_run(q, opts_.path);
}

run_page store::list_runs(const std::string& status, int64_t limit,
                          const std::string& cursor) {
  if (limit < 1 || limit > 1000)
    throw std::invalid_argument("bad limit " + std::to_string(limit)
                                + ": expected 1..1000");
  std::optional<std::pair<int64_t, std::string>> after;
  if (!cursor.empty())
    after = read_cursor(cursor, status);
  // Four fixed texts (filter or not, cursor or not), so each can use its
  // index: runs_by_status or runs_by_created.
  static const std::string select = std::string{"SELECT "} + run_columns
                                    + " FROM runs ";
  static const std::string order
    = " ORDER BY created_ms DESC, id DESC LIMIT ?4";
  static const std::string keyset
    = "(created_ms < ?2 OR (created_ms = ?2 AND id < ?3))";
  // Every text has ?4, so binding ?1..?3 is valid even where unused.
  static const std::string sqls[4] = {
    select + order,
    select + "WHERE status = ?1" + order,
    select + "WHERE " + keyset + order,
    select + "WHERE status = ?1 AND " + keyset + order,
  };
  auto& sql = sqls[(status.empty() ? 0 : 1) + (after ? 2 : 0)];
  sqlite3* db = nullptr;
  detail::store_statements* stmts = nullptr;
  auto guard = lock_reader(db, stmts);
  // One read transaction: the page and the total see the same snapshot.
  transaction tx{db, opts_.path, "list_runs", false};
  run_page page;
  {
    query q{db, opts_.path, *stmts, sql.c_str(), "list_runs"};
    q.bind(1, status)
      .bind(2, after ? after->first : int64_t{0})
      .bind(3, after ? after->second : std::string{})
      .bind(4, limit + 1);
    while (q.next())
      page.runs.push_back(read_run(q, opts_.path));
  }
  if (static_cast<int64_t>(page.runs.size()) > limit) {
    page.runs.pop_back();
    page.next_cursor = make_cursor(page.runs.back(), status);
  }
  {
    query q{db, opts_.path, *stmts,
            "SELECT COUNT(*) FROM runs WHERE ?1 = '' OR status = ?1",
            "list_runs (count)"};
    q.bind(1, status);
    page.total = q.next() ? q.int64(0) : 0;
  }
  tx.commit();
  return page;
}

std::vector<stored_run> store::unfinished_runs() {
  sqlite3* db = nullptr;
  detail::store_statements* stmts = nullptr;
  auto guard = lock_reader(db, stmts);
  static const std::string sql
    = std::string{"SELECT "} + run_columns
      + " FROM runs WHERE status IN ('queued', 'running') ORDER BY "
        "created_ms, id";
  query q{db, opts_.path, *stmts, sql.c_str(), "unfinished_runs"};
  std::vector<stored_run> out;
  while (q.next())
    out.push_back(read_run(q, opts_.path));
  return out;
}

std::vector<std::pair<std::string, int64_t>> store::count_runs_by_status() {
  sqlite3* db = nullptr;
  detail::store_statements* stmts = nullptr;
  auto guard = lock_reader(db, stmts);
  query q{db, opts_.path, *stmts,
          "SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status",
          "count_runs_by_status"};
  std::vector<std::pair<std::string, int64_t>> out;
  while (q.next())
    out.emplace_back(q.text(0), q.int64(1));
  return out;
}

// -- checkpoints -------------------------------------------------------------

void store::put_checkpoint(const checkpoint& cp) {
  require_key("put_checkpoint", "run id", cp.run_id);
  require_key("put_checkpoint", "key", cp.key);
  std::lock_guard<std::mutex> guard{mtx_};
  query q{db_, opts_.path, *stmts_,
          "INSERT INTO checkpoints (run_id, key, step, final, state, "
          "saved_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
          "put_checkpoint"};
  q.bind(1, cp.run_id)
    .bind(2, cp.key)
    .bind(3, static_cast<int64_t>(cp.step))
    .bind(4, int64_t{cp.final ? 1 : 0})
    .bind(5, cp.state)
    .bind(6, cp.saved_ms)
    .run();
}

std::optional<checkpoint> store::last_checkpoint(const std::string& run_id,
                                                 const std::string& key) {
  sqlite3* db = nullptr;
  detail::store_statements* stmts = nullptr;
  auto guard = lock_reader(db, stmts);
  query q{db, opts_.path, *stmts,
          "SELECT step, final, state, saved_ms FROM checkpoints WHERE "
          "run_id = ?1 AND key = ?2 ORDER BY step DESC, rowid DESC LIMIT 1",
          "last_checkpoint"};
  q.bind(1, run_id).bind(2, key);
  if (!q.next())
    return std::nullopt;
  checkpoint cp;
  cp.run_id = run_id;
  cp.key = key;
  cp.step = static_cast<int32_t>(q.int64(0));
  cp.final = q.int64(1) != 0;
  cp.state = parse_stored(opts_.path,
                          "checkpoint " + in_quotes(key) + " of run "
                            + in_quotes(run_id),
                          q.text(2));
  cp.saved_ms = q.int64(3);
  return cp;
}

int64_t store::count_checkpoints(const std::string& run_id) {
  sqlite3* db = nullptr;
  detail::store_statements* stmts = nullptr;
  auto guard = lock_reader(db, stmts);
  query q{db, opts_.path, *stmts,
          "SELECT COUNT(*) FROM checkpoints WHERE run_id = ?1",
          "count_checkpoints"};
  q.bind(1, run_id);
  return q.next() ? q.int64(0) : 0;
}

// -- idempotency ledger ------------------------------------------------------

void store::put_ledger(const std::string& key, const tool_result& result,
                       int64_t recorded_ms) {
  require_key("put_ledger", "key", key);
  auto doc = json(result);
  std::lock_guard<std::mutex> guard{mtx_};
  query q{db_, opts_.path, *stmts_,
          "INSERT OR REPLACE INTO ledger (key, result, recorded_ms) VALUES "
          "(?1, ?2, ?3)",
          "put_ledger"};
  q.bind(1, key).bind(2, doc).bind(3, recorded_ms).run();
}

ledger_entry store::get_ledger(const std::string& key) {
  sqlite3* db = nullptr;
  detail::store_statements* stmts = nullptr;
  auto guard = lock_reader(db, stmts);
  query q{db, opts_.path, *stmts,
          "SELECT result, recorded_ms FROM ledger WHERE key = ?1",
          "get_ledger"};
  q.bind(1, key);
  ledger_entry entry;
  entry.key = key;
  if (!q.next())
    return entry;
  auto what = "ledger entry " + in_quotes(key);
  auto doc = parse_stored(opts_.path, what, q.text(0));
  try {
    entry.result = doc.get<tool_result>();
  } catch (const std::exception& ex) {
    throw store_error("store " + in_quotes(opts_.path) + ": " + what
                      + " is not a tool result: " + ex.what());
  }
  entry.found = true;
  entry.recorded_ms = q.int64(1);
  return entry;
}

// -- journal -----------------------------------------------------------------

void store::put_journal(const std::string& run_id, const std::string& key,
                        const std::string& kind, const json& value) {
  require_key("put_journal", "key", key);
  std::lock_guard<std::mutex> guard{mtx_};
  query q{db_, opts_.path, *stmts_,
          "INSERT OR IGNORE INTO journal (key, run_id, kind, value, "
          "recorded_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
          "put_journal"};
  q.bind(1, key)
    .bind(2, run_id)
    .bind(3, kind)
    .bind(4, value)
    .bind(5, now_ms())
    .run();
}

std::optional<json> store::get_journal(const std::string& key) {
  sqlite3* db = nullptr;
  detail::store_statements* stmts = nullptr;
  auto guard = lock_reader(db, stmts);
  query q{db, opts_.path, *stmts,
          "SELECT value FROM journal WHERE key = ?1", "get_journal"};
  q.bind(1, key);
  if (!q.next())
    return std::nullopt;
  return parse_stored(opts_.path, "journal entry " + in_quotes(key), q.text(0));
}

int64_t store::count_journal(const std::string& run_id) {
  sqlite3* db = nullptr;
  detail::store_statements* stmts = nullptr;
  auto guard = lock_reader(db, stmts);
  query q{db, opts_.path, *stmts,
          "SELECT COUNT(*) FROM journal WHERE run_id = ?1", "count_journal"};
  q.bind(1, run_id);
  return q.next() ? q.int64(0) : 0;
}

// -- events ------------------------------------------------------------------

namespace {

/// Appends one event inside the caller's write transaction.
int64_t insert_event(sqlite3* db, const std::string& path,
                     detail::store_statements& cache,
                     const std::string& run_id, const std::string& data,
                     int64_t at_ms) {
  int64_t seq = 1;
  {
    query q{db, path, cache,
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE run_id = ?1",
            "append_event (number)"};
    q.bind(1, run_id);
    if (q.next())
      seq = q.int64(0);
  }
  query q{db, path, cache,
          "INSERT INTO events (run_id, seq, data, at_ms) VALUES (?1, ?2, ?3, "
          "?4)",
          "append_event"};
  q.bind(1, run_id).bind(2, seq).bind(3, data).bind(4, at_ms).run();
  return seq;
}

} // namespace

int64_t store::append_event(const std::string& run_id, const json& data) {
  require_key("append_event", "run id", run_id);
  auto text = safe_dump(data);
  std::lock_guard<std::mutex> guard{mtx_};
  transaction tx{db_, opts_.path, "append_event", true};
  auto seq = insert_event(db_, opts_.path, *stmts_, run_id, text, now_ms());
  tx.commit();
  return seq;
}

std::vector<int64_t> store::append_events(
  const std::vector<std::pair<std::string, json>>& events) {
  std::vector<std::string> texts;
  texts.reserve(events.size());
  for (const auto& [run_id, data] : events) {
    require_key("append_events", "run id", run_id);
    texts.push_back(safe_dump(data));
  }
  std::vector<int64_t> seqs;
  seqs.reserve(events.size());
  if (events.empty())
    return seqs;
  std::lock_guard<std::mutex> guard{mtx_};
  transaction tx{db_, opts_.path, "append_events", true};
  auto at = now_ms();
  for (size_t i = 0; i < events.size(); ++i)
    seqs.push_back(
      insert_event(db_, opts_.path, *stmts_, events[i].first, texts[i], at));
  tx.commit();
  return seqs;
}

std::vector<stored_event> store::events_after(const std::string& run_id,
                                              int64_t after, int64_t limit) {
  if (after < 0)
    throw std::invalid_argument("events_after: bad event number "
                                + std::to_string(after)
                                + " (0 for the first event)");
  if (limit < 1)
    throw std::invalid_argument("events_after: bad limit "
                                + std::to_string(limit) + ": at least 1");
  sqlite3* db = nullptr;
  detail::store_statements* stmts = nullptr;
  auto guard = lock_reader(db, stmts);
  query q{db, opts_.path, *stmts,
          "SELECT seq, data FROM events WHERE run_id = ?1 AND seq > ?2 "
          "ORDER BY seq LIMIT ?3",
          "events_after"};
  q.bind(1, run_id).bind(2, after).bind(3, limit);
  std::vector<stored_event> out;
  while (q.next()) {
    stored_event ev;
    ev.seq = q.int64(0);
    ev.data = parse_stored(opts_.path,
                           "event " + std::to_string(ev.seq) + " of run "
                             + in_quotes(run_id),
                           q.text(1));
    out.push_back(std::move(ev));
  }
  return out;
}

// -- maintenance -------------------------------------------------------------

namespace {

// Deletes every checkpoint that has a later one (higher step, or the same
// step saved after it) for the same run and key.
const std::string compact_finished_sql
  = std::string{"DELETE FROM checkpoints WHERE run_id IN (SELECT id FROM "
                "runs WHERE "}
    + finished_in
    + ") AND EXISTS (SELECT 1 FROM checkpoints AS later WHERE later.run_id = "
      "checkpoints.run_id AND later.key = checkpoints.key AND (later.step > "
      "checkpoints.step OR (later.step = checkpoints.step AND later.rowid > "
      "checkpoints.rowid)))";

const std::string compact_one_sql
  = std::string{"DELETE FROM checkpoints WHERE run_id = ?6 AND EXISTS "
                "(SELECT 1 FROM runs WHERE id = ?6 AND "}
    + finished_in
    + ") AND EXISTS (SELECT 1 FROM checkpoints AS later WHERE later.run_id = "
      "checkpoints.run_id AND later.key = checkpoints.key AND (later.step > "
      "checkpoints.step OR (later.step = checkpoints.step AND later.rowid > "
      "checkpoints.rowid)))";

// Finished runs past the retention: by end time, or by their last update
// when no end time was recorded.
const std::string expired_runs = std::string{"SELECT id FROM runs WHERE "}
                                 + finished_in
                                 + " AND (CASE WHEN ended_ms > 0 THEN "
                                   "ended_ms ELSE updated_ms END) < ?6";

const std::string drop_checkpoints_sql
  = "DELETE FROM checkpoints WHERE run_id IN (" + expired_runs + ")";
const std::string drop_journal_sql
  = "DELETE FROM journal WHERE run_id IN (" + expired_runs + ")";
const std::string drop_events_sql
  = "DELETE FROM events WHERE run_id IN (" + expired_runs + ")";
const std::string drop_runs_sql
  = "DELETE FROM runs WHERE id IN (" + expired_runs + ")";

} // namespace

compaction_stats store::compact(int64_t now_ms) {
  std::lock_guard<std::mutex> guard{mtx_};
  const auto& path = opts_.path;
  compaction_stats stats;
  transaction tx{db_, path, "compact", true};
  {
    query q{db_, path, *stmts_, compact_finished_sql.c_str(),
            "compact (checkpoints)"};
    stats.checkpoints_removed += q.bind_finished().run();
  }
  if (opts_.retention_ms > 0) {
    auto cutoff = now_ms - opts_.retention_ms;
    auto drop = [&](const std::string& sql, const char* op) {
      query q{db_, path, *stmts_, sql.c_str(), op};
      return q.bind_finished().bind(6, cutoff).run();
    };
    // Children first: the runs query names the victims for each of them.
    stats.checkpoints_removed
      += drop(drop_checkpoints_sql, "compact (expired checkpoints)");
    stats.journal_removed += drop(drop_journal_sql, "compact (expired journal)");
    stats.events_removed += drop(drop_events_sql, "compact (expired events)");
    stats.runs_removed += drop(drop_runs_sql, "compact (expired runs)");
  }
  if (opts_.ledger_ttl_ms > 0) {
    query q{db_, path, *stmts_, "DELETE FROM ledger WHERE recorded_ms < ?1",
            "compact (ledger)"};
    stats.ledger_removed = q.bind(1, now_ms - opts_.ledger_ttl_ms).run();
  }
  tx.commit();
  if (stats.checkpoints_removed + stats.runs_removed + stats.ledger_removed
      > 0)
    spdlog::debug("store {}: compaction removed checkpoints: {}, runs: {} "
                  "(journal: {}, events: {}), ledger: {}",
                  path, stats.checkpoints_removed, stats.runs_removed,
                  stats.journal_removed, stats.events_removed,
                  stats.ledger_removed);
  return stats;
}

int64_t store::compact_run(const std::string& run_id) {
  std::lock_guard<std::mutex> guard{mtx_};
  return compact_run_locked(run_id);
}

int64_t store::compact_run_locked(const std::string& run_id) {
  query q{db_, opts_.path, *stmts_, compact_one_sql.c_str(), "compact_run"};
  return q.bind_finished().bind(6, run_id).run();
}

} // namespace troupe

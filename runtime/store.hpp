#pragma once

// The durable store: one SQLite file (WAL mode) that keeps what a run needs
// to survive the process running it.
//
//   runs         one record per submitted run: what was asked, its status,
//                and once it ends its result, usage and cost
//   checkpoints  each agent's run state after every step, by run and agent
//                key; a finished run's are compacted to the last one per key
//   ledger       completed tool calls by idempotency key (the idempotency
//                ledger, durable)
//   journal      model replies by request key, so a resumed run gets the
//                replies it already paid for instead of asking again
//   events       what happened in each run, numbered per run from 1 (the
//                HTTP API's server-sent events resume from a number)
//
// The schema is versioned (PRAGMA user_version). Opening a file of an older
// version migrates it in one transaction, step by step; a file of a newer
// version, or one that is not a troupe store, is refused with a store_error
// naming the file.
//
// The class is thread-safe and synchronous: writes go through one connection
// behind a mutex, reads through another (WAL lets a reader go on while a
// writer, even another process's, holds the file's write lock, so a write
// waiting up to busy_timeout for another process holds up no read). Calls
// take microseconds to a few milliseconds of local disk I/O; a write that
// has to wait for another process's lock is logged (debug) once per wait. Actors do
// not call it from their handlers: they go through the store actor
// (actors/store_actor.hpp), which runs on its own thread. Commits survive the
// process being killed (WAL, synchronous=NORMAL); a power loss may lose the
// last transactions (synchronous=FULL with `durable_commits`).

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "messages/json_value.hpp"
#include "messages/tool.hpp"

struct sqlite3;

namespace troupe {

namespace detail {
struct store_statements;
struct busy_wait;
} // namespace detail

/// A store that cannot be opened, migrated, read or written; what() names
/// the file and SQLite's reason.
class store_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// How a store is opened and bounded.
struct store_options {
  /// The SQLite file; created with its folder's permissions when missing.
  std::string path;
  /// Finished runs older than this (by end time) are deleted with
  /// everything they kept by compact(); 0 = keep them forever.
  int64_t retention_ms = 7LL * 24 * 3600 * 1000;
  /// Ledger entries older than this are deleted by compact(); 0 = forever.
  int64_t ledger_ttl_ms = 24LL * 3600 * 1000;
  /// fsync every commit (synchronous=FULL): survives power loss, slower.
  bool durable_commits = false;
  /// How long a call waits for a lock another process holds.
  int32_t busy_timeout_ms = 5000;
};

/// Run statuses a record goes through: "queued" -> "running" -> one of
/// run_status's names ("complete", "max_steps", "failed", "halted",
/// "cancelled").
bool is_finished_status(const std::string& status);

/// One submitted run.
struct stored_run {
  std::string id;
  std::string status = "queued";
  /// The swarm it runs (the name a server knows it by) and its file.
  std::string swarm;
  std::string swarm_path;
  std::string goal;
  std::string principal;
  /// The whole submission as given (budget, context, priority, timeout...).
  json request = json::object();
  /// The trace id every span of the run carries.
  std::string trace_id;
  /// The run_result as JSON once it has ended; null before.
  json result;
  std::string answer;
  std::string error;
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  int64_t cost_nusd = 0;
  int64_t steps = 0;
  /// Unix milliseconds.
  int64_t created_ms = 0;
  int64_t started_ms = 0;
  int64_t ended_ms = 0;
  int64_t updated_ms = 0;
  /// Processes that have started it: 1, plus one per resume.
  int32_t attempts = 0;
};

/// One page of runs, newest first.
struct run_page {
  std::vector<stored_run> runs;
  /// Pass as `cursor` for the next page; empty when this is the last one.
  std::string next_cursor;
  /// Runs matching the filter, all pages together.
  int64_t total = 0;
};

/// An agent's saved run state.
struct checkpoint {
  std::string run_id;
  /// Which agent run within the run (see agent.cpp: name and task digest).
  std::string key;
  int32_t step = 0;
  /// The run ended (its state is final).
  bool final = false;
  json state;
  int64_t saved_ms = 0;
};

/// One event of a run, numbered from 1 within the run.
struct stored_event {
  int64_t seq = 0;
  json data;
};

/// What compact() removed.
struct compaction_stats {
  int64_t checkpoints_removed = 0;
  int64_t runs_removed = 0;
  int64_t journal_removed = 0;
  int64_t events_removed = 0;
  int64_t ledger_removed = 0;
};

/// The SQLite store.
class store {
public:
  /// The schema version this build writes.
  static constexpr int schema_version = 2;

  /// Opens (creating it and its folder when missing) and migrates the file.
  /// Throws store_error naming the file: it cannot be opened, it is not a
  /// troupe store, it is of a newer version, a migration failed (the file is
  /// left as it was: every pending step runs in one transaction). Options
  /// out of range (an empty path, negative durations) are an
  /// std::invalid_argument naming the field.
  explicit store(store_options opts);

  store(const store&) = delete;
  store& operator=(const store&) = delete;

  ~store();

  const std::string& path() const noexcept {
    return opts_.path;
  }

  const store_options& options() const noexcept {
    return opts_;
  }

  /// The file's schema version (schema_version once opened).
  int version();

  // -- runs ------------------------------------------------------------------

  /// Inserts or replaces a run record (by id); sets updated_ms.
  void put_run(const stored_run& run);

  /// Writes the record of a run that ended and compacts its checkpoints
  /// (compact_run) in one transaction, so whoever sees the run ended finds
  /// it compacted; returns how many checkpoints went. Throws
  /// std::invalid_argument for a status that is not a finished one.
  int64_t finish_run(const stored_run& run);

  std::optional<stored_run> get_run(const std::string& id);

  /// Runs newest first (by created_ms, then id), `limit` (1..1000) at a
  /// time, only those of `status` when it is not empty. Throws
  /// std::invalid_argument for a limit out of range, or a cursor this store
  /// did not make or made for another `status`. Pages are keyset-based: runs
  /// added after the first page do not shift the next ones.
  run_page list_runs(const std::string& status, int64_t limit,
                     const std::string& cursor = "");

  /// Runs whose status is "queued" or "running", oldest first.
  std::vector<stored_run> unfinished_runs();

  /// How many runs have each status.
  std::vector<std::pair<std::string, int64_t>> count_runs_by_status();

  // -- checkpoints -----------------------------------------------------------

  void put_checkpoint(const checkpoint& cp);

  /// The latest (highest step, then newest) checkpoint of a key.
  std::optional<checkpoint> last_checkpoint(const std::string& run_id,
                                            const std::string& key);

  /// Checkpoints kept for a run (every key).
  int64_t count_checkpoints(const std::string& run_id);

  // -- idempotency ledger ----------------------------------------------------

  void put_ledger(const std::string& key, const tool_result& result,
                  int64_t recorded_ms);

  /// found = false when the key is unknown.
  ledger_entry get_ledger(const std::string& key);

  // -- journal ---------------------------------------------------------------

  /// Records a value (a model reply) under a key; a key recorded before keeps
  /// its first value.
  void put_journal(const std::string& run_id, const std::string& key,
                   const std::string& kind, const json& value);

  std::optional<json> get_journal(const std::string& key);

  /// Journal entries of a run.
  int64_t count_journal(const std::string& run_id);

  // -- events ----------------------------------------------------------------

  /// Appends an event to a run; returns its number (1 for the first).
  int64_t append_event(const std::string& run_id, const json& data);

  /// Appends several events in one transaction; returns their numbers.
  std::vector<int64_t> append_events(
    const std::vector<std::pair<std::string, json>>& events);

  /// Events of a run numbered above `after`, in order, at most `limit`.
  /// Throws std::invalid_argument for a negative `after` or a limit below 1.
  std::vector<stored_event> events_after(const std::string& run_id,
                                         int64_t after, int64_t limit = 1000);

  // -- maintenance -----------------------------------------------------------

  /// Compacts the checkpoints of every finished run to its last one per key,
  /// deletes finished runs past the retention (with their checkpoints,
  /// journal and events) and ledger entries past their ttl.
  compaction_stats compact(int64_t now_ms);

  /// Compacts one finished run's checkpoints to the last one per key;
  /// returns how many it removed (0 for a run that is unknown or has not
  /// finished: its checkpoints are left alone).
  int64_t compact_run(const std::string& run_id);

private:
  /// Finalizes the statements and closes the connection (idempotent).
  void close() noexcept;
  /// put_run and compact_run with mtx_ held.
  void put_run_locked(const stored_run& run);
  int64_t compact_run_locked(const std::string& run_id);
  /// Locks the connection reads use and names it: the reader, or the writer
  /// for an in-memory store (which a second connection would not see).
  std::unique_lock<std::mutex> lock_reader(sqlite3*& db,
                                           detail::store_statements*& stmts);

  store_options opts_;
  std::mutex mtx_;
  sqlite3* db_ = nullptr;
  /// Prepared statements by SQL text, made on first use.
  std::unique_ptr<detail::store_statements> stmts_;
  /// How long the writer has waited for another process's lock.
  std::unique_ptr<detail::busy_wait> busy_;
  /// The read-only connection, its mutex and statements.
  std::mutex rmtx_;
  sqlite3* rdb_ = nullptr;
  std::unique_ptr<detail::store_statements> rstmts_;
};

} // namespace troupe

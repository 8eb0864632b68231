#pragma once

// The run service: durable runs of the swarms a server offers. It is what
// `troupe serve` (the HTTP API) and `troupe resume` stand on.
//
//   troupe::run_service svc({"examples/research/research.swarm.json"},
//                           {"runs.db"});
//   auto rec = svc.submit({"research", "What is CAF?"});   // 202: queued
//   ... svc.get(rec.id)->status == "complete"
//
// Every swarm gets its own runtime (its prices, policy and model limits are
// the runtime's; its budget bounds each run, narrowed by a submission's
// budget), sharing one store. A submitted run is recorded
// in the store before submit() returns; it starts when fewer than
// `max_concurrent_runs` are running, on a fresh instance of its swarm (its
// own agents and teams), with the run id and trace id of its record. Each
// agent checkpoints its state to the store after every step, model replies
// go to the journal and completed tool calls to the durable ledger, so a run
// whose process died resumes from its last checkpoint without paying for a
// model reply twice or running a side effect twice: on start (resume_on_start)
// the service resumes every run the store lists as queued or running.
//
// Each run's events (its trace records, status changes and approval requests)
// are numbered from 1 in the store; subscribe() replays those after a number
// and then follows the live ones, which is what server-sent events with
// Last-Event-ID need.
//
// Methods are thread-safe and block briefly (store reads and writes); call
// them from threads of your own (an HTTP server's I/O threads), never from
// an actor's handler.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "messages/approval.hpp"
#include "messages/budget.hpp"
#include "messages/json_value.hpp"
#include "runtime/store.hpp"

namespace troupe {

class runtime;
struct runtime_config;
struct swarm_definition;

/// A request that names something that does not exist (a run, a swarm, an
/// approval): the HTTP API answers 404.
class not_found_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// A request that conflicts with the state (cancelling a finished run,
/// deciding an approval twice, a run id already taken): 409.
class conflict_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// How a service runs.
struct run_service_options {
  /// The store file (see runtime/store.hpp for its own settings).
  store_options store;
  /// Runs at once; the others wait as "queued", oldest first.
  int32_t max_concurrent_runs = 8;
  /// A run that takes longer ends failed (its deadline, too, unless its
  /// submission sets one).
  std::chrono::milliseconds run_timeout{std::chrono::minutes{10}};
  /// Resume the store's unfinished runs when the service starts.
  bool resume_on_start = true;
  /// How often finished runs are compacted (and old ones dropped); 0 = only
  /// when a run ends (its own checkpoints) and at start.
  std::chrono::milliseconds compact_every{std::chrono::minutes{10}};
  /// Called with each swarm's runtime config before its runtime starts (add
  /// trace listeners, a trace file, TLS, thread counts...). Its
  /// budget.global is empty by then (the swarm's budget is each run's); one
  /// set here bounds all of the swarm's runs together.
  std::function<void(runtime_config&, const swarm_definition&)> configure;
  /// Called with each swarm's runtime once it runs (register extra tools).
  std::function<void(runtime&, const swarm_definition&)> setup;
  /// Called with a run's record each time its status changes, and the
  /// status it had ("" for a new run; a run resumed from the store reports
  /// the status the store had): metrics. Called before the status event goes
  /// out, so whoever saw the event sees what this counted. On the service's
  /// thread, or on the caller's for submit() and cancel(); keep it short.
  std::function<void(const stored_run&, const std::string& from)> on_status;
};

/// What a client asks for.
struct run_submission {
  /// The swarm's name (its "name", else its file name without
  /// ".swarm.json"), as swarms() lists them.
  std::string swarm;
  std::string goal;
  std::string principal = "api";
  int32_t priority = 0;
  budget_limits budget;
  /// 0 = the agents' own step limits.
  int32_t max_steps = 0;
  /// Extra input for the entry agent or team; null for none.
  json context;
  /// 0 = the service's run_timeout.
  int64_t timeout_ms = 0;
  /// Empty = a fresh id; else it must be unused ("[A-Za-z0-9._-]{1,64}").
  std::string run_id;
};

/// A submission from its JSON form ({"swarm", "goal", "principal",
/// "priority", "budget": {"max_steps", "max_input_tokens",
/// "max_output_tokens", "max_cost_usd", "deadline_ms"}, "max_steps",
/// "context", "timeout_ms", "run_id"}). Throws
/// std::invalid_argument naming the field that is missing, of the wrong type
/// or out of range, and any field it does not know.
run_submission submission_from_json(const json& doc);

/// A record as the API shows it: id, swarm, goal, status, answer, error,
/// usage {input_tokens, output_tokens}, cost_usd, steps, attempts, trace_id,
/// created_ms, started_ms, ended_ms, and with `with_result` the whole
/// run_result.
json run_to_json(const stored_run& run, bool with_result = false);

/// An approval request as the API shows it: id, run_id, agent, action, args,
/// reason, created_ms, expires_ms.
json approval_to_json(const approval_request& req);

/// One swarm the service offers.
struct swarm_entry {
  std::string name;
  std::string path;
  std::string description;
  /// The agent or team that receives the goal.
  std::string entry;
};

class run_service {
public:
  /// Loads every swarm file (throws swarm_error naming the file), opens the
  /// store (throws store_error), starts a runtime per swarm and, with
  /// resume_on_start, resumes unfinished runs. Two swarms of one name are an
  /// std::invalid_argument.
  run_service(std::vector<std::string> swarm_paths, run_service_options opts);

  run_service(const run_service&) = delete;
  run_service& operator=(const run_service&) = delete;

  /// Calls shutdown().
  ~run_service();

  /// The swarms runs can be submitted to, by name.
  std::vector<swarm_entry> swarms() const;

  /// Records a run as "queued" and starts it when there is room. Throws
  /// std::invalid_argument (no goal, an unknown swarm: the message lists
  /// the known ones) or conflict_error (a run id already taken).
  stored_run submit(run_submission sub);

  std::optional<stored_run> get(const std::string& id);

  /// See store::list_runs.
  run_page list(const std::string& status, int64_t limit,
                const std::string& cursor = "");

  /// Cancels a queued or running run; returns its record (status
  /// "cancelled" once its agents have stopped: a running run's record may
  /// still say "running" when this returns). Throws not_found_error or
  /// conflict_error (the run already ended).
  stored_run cancel(const std::string& id, const std::string& who);

  /// Resumes one run the store lists as unfinished (`troupe resume`):
  /// starts it now, ahead of queued ones. Throws not_found_error, or
  /// conflict_error when it has ended or is already running here.
  stored_run resume(const std::string& id);

  /// Resumes every unfinished run (what the constructor does with
  /// resume_on_start); returns their ids.
  std::vector<std::string> resume_unfinished();

  /// Blocks until the run has ended (or `timeout` passes) and returns its
  /// record. Throws not_found_error.
  stored_run wait(const std::string& id, std::chrono::milliseconds timeout);

  /// A run's trace records, in the order they were produced.
  std::vector<json> trace(const std::string& id);

  /// Called with each event of a run: its number and its data
  /// ({"type": "status" | "trace" | "approval", ...}). On the store's thread:
  /// keep it short.
  using event_fn = std::function<void(int64_t seq, const json& data)>;

  /// Calls `fn` with the run's events numbered above `after` (from the
  /// store), then with each new one as it happens, in order, none twice.
  /// Returns a token for unsubscribe(). Throws not_found_error.
  uint64_t subscribe(const std::string& run_id, int64_t after, event_fn fn);

  void unsubscribe(uint64_t token);

  /// Requests waiting for a human in every swarm's runtime, oldest first.
  std::vector<approval_request> pending_approvals();

  /// Decides one. Throws not_found_error when no runtime has it pending.
  approval_request decide(const std::string& request_id,
                          approval_verdict verdict, const std::string& who,
                          const std::string& note);

  /// How many runs wait for room, and how many run.
  int64_t queued() const;
  int64_t running() const;

  /// The store (for tests and tools).
  store& db();

  /// Each swarm's runtime, by swarm name.
  std::vector<std::pair<std::string, runtime*>> runtimes();

  /// Stops taking runs, cancels the running ones without marking them
  /// finished (they resume when a service next starts on the store), stops
  /// every runtime. Idempotent.
  void shutdown();

  struct impl;

private:
  std::shared_ptr<impl> impl_;
};

} // namespace troupe

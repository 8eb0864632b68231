#pragma once

// troupe::runtime is the facade a C++ user touches. It owns the actor system
// (with CAF's middleman loaded for distribution), the tool and model
// registries, the tracer, the blocking pool for tool bodies and the I/O
// threads, and it stops all of them cleanly.
//
//   troupe::runtime rt;
//   rt.tools().add(troupe::calculator_tool());
//   troupe::agent_spec spec;
//   spec.name = "support";
//   spec.model = "scripted:support.script.json";
//   spec.tools = {"calculator"};
//   auto agent = rt.spawn_agent(spec);
//   auto result = rt.run(agent, "How much is 15% of 240?");
//
// Errors in set-up (an unknown tool, a bad script file) are thrown as
// std::invalid_argument / std::runtime_error naming what was wrong; a run's own
// failures come back in its run_result.

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <caf/fwd.hpp>

#include "actors/agent.hpp"
#include "actors/approval_gate.hpp"
#include "actors/budget.hpp"
#include "actors/ledger.hpp"
#include "actors/tool_guards.hpp"
#include "actors/tracer.hpp"
#include "messages/run.hpp"
#include "runtime/cluster.hpp"
#include "runtime/model_config.hpp"
#include "runtime/tool_registry.hpp"
#include "supervisors/supervised_agent.hpp"

namespace troupe {

class blocking_pool;
class http_client;
class io_pool;

/// How a runtime is set up.
struct runtime_config {
  /// CAF scheduler threads; 0 = one per core (CAF alone would start at least
  /// four, which on a two-core machine mostly steal and yield).
  size_t scheduler_threads = 0;
  /// Threads that run tool bodies.
  size_t blocking_threads = 4;
  /// Threads that run network I/O.
  size_t io_threads = 1;
  /// JSONL trace file (appended to); empty for none.
  std::string trace_path;
  /// Called with every trace record (see actors/tracer.hpp).
  std::vector<trace_listener> trace_listeners;
  /// Model for agents whose spec names none, e.g. "scripted:support.json".
  std::string default_model;
  /// CAF scheduler policy: "stealing" (work stealing, CAF's default) or
  /// "sharing" (one shared queue; wakes at once on messages from other threads).
  std::string scheduler_policy = "stealing";
  /// How long shutdown waits for tool bodies still running before it detaches
  /// their threads (their results are then dropped).
  std::chrono::milliseconds shutdown_grace{std::chrono::seconds{5}};
  /// Loads CAF's middleman (needed for nodes; off saves a thread in tests).
  bool load_middleman = true;
  /// The global budget (its limits, warning share) that every run's budget
  /// nests in.
  budget_config budget;
  /// Model prices, for the cost of runs and money budgets.
  price_table prices;
  /// Rules every agent's tool calls are judged by; none = allow all.
  troupe::policy policy;
  /// The approval gate's settings.
  approval_gate_config approvals;
  /// How many completed tool calls the idempotency ledger keeps, how long.
  ledger_config ledger;
  /// Rate and concurrency limits per model name (as agents name them):
  /// requests (rate_per_sec), tokens per minute, calls at once and a queue.
  std::map<std::string, limiter_config> model_limits;
  /// Settings per model name: endpoints, streaming, retries, fallback
  /// chains, caches (see runtime/model_config.hpp).
  std::map<std::string, model_settings> models;
  /// When set, every agent uses this model instead of its own (the examples
  /// and the CLI set it from TROUPE_MODEL).
  std::string model_override;
  /// The HTTP client's settings (extra CA file, peer verification).
  http_client_options http;
  /// TLS between nodes: when set, this runtime listens and dials peers only
  /// over TLS, and refuses peers whose certificate the CA did not sign.
  cluster_tls tls;
  /// The durable store (runtime/store.hpp), shared by every runtime that
  /// names it. With one, the idempotency ledger is the store's (completed
  /// tool calls survive the process), agents save their run state after
  /// every step and look for it when a run begins, and model replies are
  /// journaled, so a run resumed under its old id pays for no reply twice
  /// (see runtime/run_service.hpp).
  std::shared_ptr<troupe::store> store;
  /// Called (on the store actor's thread) with each event appended through
  /// the store actor.
  store_event_fn store_events;
};

/// Per-run settings.
struct run_options {
  /// Who the run acts for.
  std::string principal = "local";
  /// Where the run's calls wait in rate and concurrency limiters' queues:
  /// higher goes first (run_ref::priority).
  int32_t priority = 0;
  budget_limits budget;
  /// Overrides the agent's step limit when > 0 (the smaller wins).
  int32_t max_steps = 0;
  json context;
  /// How long the caller waits before the run counts as failed. Unless
  /// `budget.deadline_ms` is set, it is also the run's deadline, so a run
  /// nobody waits for any more stops instead of spending tokens.
  std::chrono::milliseconds timeout{std::chrono::minutes{10}};
  /// Leave empty to get a fresh id.
  std::string run_id;
};

/// Sends troupe's log lines (spdlog's default logger) to stderr at `level`
/// ("trace", "debug", "info", "warn", "error", "off"), for programs whose
/// stdout carries their results. Call it before starting a runtime.
void log_to_stderr(const std::string& level = "info");

/// Called once with a run's result, on an actor thread: keep it short.
using run_callback = std::function<void(run_result)>;

/// Owns an actor system and everything agents need.
class runtime {
public:
  explicit runtime(runtime_config cfg = {});

  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;

  /// Calls shutdown().
  ~runtime();

  /// The registry agents pick their tools from.
  tool_registry& tools() noexcept {
    return tools_;
  }

  /// Registers a model actor under a name agents can use.
  void add_model(const std::string& name, model_actor model);

  /// The model actor for a name: a registered one, "scripted:FILE" (the
  /// script is loaded once per file), or "openai:ID" / "anthropic:ID" (an
  /// HTTP endpoint), behind its limiter, fallback chain and cache when
  /// configured. Throws std::invalid_argument naming the model when it is
  /// unknown, its script is bad or its endpoint cannot be set up.
  model_actor model(const std::string& name);

  /// The actor serving a tool (one adapter per tool and version): a
  /// registered one, else one a cluster member hosts. Throws
  /// std::invalid_argument when there is no such tool.
  tool_actor tool(const std::string& name, const std::string& version = "");

  /// Spawns an agent; its model and tools are resolved now. Throws
  /// std::invalid_argument naming the agent and what is wrong.
  runnable_actor spawn_agent(agent_spec spec);

  /// Spawns an agent under its own supervisor (see
  /// supervisors/supervised_agent.hpp): a crash restarts it and the run is
  /// tried again on the new incarnation. Throws like spawn_agent.
  runnable_actor spawn_supervised_agent(agent_spec spec,
                                        supervision_options opts = {});

  /// Makes shutdown() stop an actor spawned on system() by other means (a
  /// team, a supervisor): the actor system waits for every actor, so one that
  /// nobody stops would make shutdown wait forever. Returns the handle.
  template <class Handle>
  Handle adopt(Handle handle) {
    own(handle.address());
    return handle;
  }

  /// Builds the run_task for a goal.
  run_task make_task(std::string goal, const run_options& opts = {}) const;

  /// Runs a task and waits for its result. Never throws for a run's failure:
  /// a target that dies or does not answer in time gives a failed run_result
  /// whose error says so.
  run_result run(const runnable_actor& target, std::string goal,
                 const run_options& opts = {});

  /// Runs a prepared task and waits for its result.
  run_result run_task_blocking(const runnable_actor& target, run_task task,
                               std::chrono::milliseconds timeout);

  /// Starts a run and returns at once; the future yields its result.
  std::future<run_result> submit(const runnable_actor& target, std::string goal,
                                 const run_options& opts = {});

  /// Starts a run and returns at once; `done` gets the result.
  void submit(const runnable_actor& target, run_task task,
              std::chrono::milliseconds timeout, run_callback done);

  /// The budget actor every run's budget nests in.
  budget_actor budget() const;

  /// What a budget account has used ("global" for the whole runtime; a run's
  /// account is "RUN_ID/AGENT#INSTANCE.N", a team's "RUN_ID/TEAM"). Blocks
  /// briefly.
  budget_snapshot budget_usage(const std::string& account = global_budget_account);

  /// The approval gate agents wait at.
  approval_gate_actor approvals() const;

  /// The requests waiting for a human, oldest first. Blocks briefly.
  std::vector<approval_request> pending_approvals();

  /// Decides a pending request; returns it. Throws std::invalid_argument when
  /// no request of that id is pending.
  approval_request decide(const std::string& request_id,
                          approval_verdict verdict, const std::string& who,
                          const std::string& note = "");

  /// Calls `fn` (on an actor thread: keep it short, never block) with every
  /// new approval request. Lasts until shutdown.
  void on_approval_request(std::function<void(approval_request)> fn);

  /// The state of a tool's circuit breaker: "closed", "open", "half_open",
  /// or "none" when the tool has no breaker. Blocks briefly.
  std::string breaker_state(const std::string& tool);

  /// The idempotency ledger tool adapters record completed calls in.
  ledger_actor ledger() const;

  /// The store actor; an empty handle without runtime_config::store.
  store_actor store() const;

  /// Replaces the policy for agents spawned from now on (compiled here;
  /// throws policy_error when it is wrong).
  void set_policy(troupe::policy p);

  /// Waits until every trace record sent so far is written.
  void flush_trace();

  /// The tracer (for components that trace themselves); an empty handle when
  /// the config names no trace file and no listener.
  tracer_actor tracer() const;

  /// The actor system.
  caf::actor_system& system();

  /// The I/O threads' pool.
  io_pool& io();

  /// The HTTP client HTTP models send with (made on first use). It runs on
  /// the runtime's I/O threads: drop every copy before the runtime goes.
  std::shared_ptr<http_client> http();

  /// The pool that runs tool bodies.
  std::shared_ptr<blocking_pool> blocking();

  // -- cluster (runtime/cluster.hpp) -----------------------------------------

  /// Makes this runtime a node: spawns its node actor, publishes it on
  /// opts.host:opts.port (TLS when runtime_config::tls is set) and lists every
  /// registered tool and hosted agent in the directory. Returns the bound
  /// port. Throws std::invalid_argument for bad options and
  /// std::runtime_error when the port cannot be bound.
  uint16_t listen(node_options opts);

  /// Joins a cluster through a seed node; returns the seed's name once every
  /// member it named has been greeted. A runtime that has not listened joins
  /// as a client named `client_name` (default "client-PID") that hosts
  /// nothing and is reached over its own connections. Throws
  /// std::runtime_error naming the address when the seed cannot be reached
  /// or refuses (a taken name, a certificate it does not trust).
  std::string connect(const std::string& host, uint16_t port,
                      const std::string& client_name = "");

  /// This runtime's node name; empty before listen() or connect().
  std::string node_name() const;

  /// Every member of the cluster as this node knows it, itself first.
  /// Throws std::logic_error before listen() or connect().
  std::vector<node_info> members();

  /// Calls `fn` (on an actor thread: keep it short) with every membership
  /// change. Lasts until shutdown.
  void on_cluster_event(std::function<void(cluster_event)> fn);

  /// Lists an agent (or team) this node hosts in the directory under `name`,
  /// with capabilities look-ups can select it by.
  void host(const std::string& name, runnable_actor agent,
            std::vector<std::string> capabilities = {});

  /// Lists every registered tool in the directory again (listen() and host()
  /// do it; call it after adding tools later).
  void announce();

  /// Spawns an agent on a member node. Its model is resolved there, its tools
  /// there or anywhere in the cluster; its spans go to this runtime's tracer,
  /// its spending to this runtime's budget, its approvals to this runtime's
  /// gate. It stops when this runtime shuts down or leaves. Throws
  /// std::invalid_argument naming the node and what is wrong.
  runnable_actor spawn_on(const std::string& node, agent_spec spec);

  /// One agent spread over several nodes ("*" = every member that listens):
  /// each run goes to the least busy replica, and the runs a lost node held
  /// are sent again to a survivor with the same run identity, so their tool
  /// calls keep their idempotency keys. Throws like spawn_on.
  runnable_actor spawn_replicated(agent_spec spec,
                                  std::vector<std::string> nodes);

  /// Agents listed under a name (or, with an empty name, a capability)
  /// anywhere in the cluster, this node's first.
  std::vector<located_agent> find_agents(const std::string& name,
                                         const std::string& capability = "");

  /// Stops every actor the runtime spawned (their waiting callers get a
  /// cancelled result), then the pools and the actor system. Idempotent. Call
  /// it from the thread that owns the runtime, never from a callback, a trace
  /// listener or a tool body. Afterwards run() and submit() give failed
  /// results and the other calls throw std::logic_error.
  void shutdown();

  /// How many actor addresses this runtime keeps for shutdown() to stop:
  /// those it spawned or adopted, less ended ones, which it drops whenever
  /// the list has doubled (a server spawns a swarm's actors for every run).
  size_t tracked_actors() const;

private:
  /// Keeps track of an actor so shutdown() can stop it.
  void own(const caf::actor_addr& addr);

  /// own() with mtx_ held: drops the addresses of ended actors whenever the
  /// list has doubled since it was last pruned (an address keeps an ended
  /// actor's memory), then adds `addr`.
  void track(const caf::actor_addr& addr);

  /// Throws std::logic_error after shutdown().
  void ensure_running(const char* what) const;

  /// Checks a spec and resolves its model and tools (may load a script file);
  /// tools not registered here come from the directory, when there is one
  /// (else from members() once this runtime is in a cluster).
  agent_links resolve(agent_spec& spec,
                      const std::vector<node_info>* directory = nullptr);

  /// Spawns an agent a peer asked for (the node actor's host_agent_fn).
  runnable_actor host_remote_agent(const remote_agent_args& args,
                                   const std::vector<node_info>& directory);

  /// The directory entries of this node's tools and agents.
  std::vector<tool_listing> tool_listings();

  /// The node actor; throws std::logic_error naming `what` when there is none.
  caf::actor node_actor(const char* what) const;

  /// Starts the node actor (listen() and a client's connect()); one that is
  /// not `ready` refuses greetings until it learns its address.
  void start_node(node_options opts, std::string address, bool ready);

  /// Puts the configured limiter (if any) in front of a model.
  model_actor limit_model(const std::string& name, model_actor model);

  /// The scripted or HTTP model of a name behind its limiter, without its
  /// fallback chain and cache (made once per name).
  model_actor endpoint(const std::string& name);

  /// The model of a name behind the store's journal (once per name); the
  /// model itself without a store.
  model_actor journaled(const std::string& name, model_actor model);

  runtime_config cfg_;
  tool_registry tools_;
  std::unique_ptr<caf::actor_system_config> sys_cfg_;
  std::unique_ptr<caf::actor_system> sys_;
  std::shared_ptr<blocking_pool> blocking_;
  std::unique_ptr<io_pool> io_;
  tracer_actor tracer_;
  budget_actor budget_;
  ledger_actor ledger_;
  store_actor store_;
  approval_gate_actor approvals_;
  std::shared_ptr<const price_table> prices_;
  std::shared_ptr<const troupe::policy> policy_;
  mutable std::mutex mtx_;
  std::map<std::string, model_actor> models_;
  /// Limited endpoints by name (members of fallback chains among them).
  std::map<std::string, model_actor> endpoints_;
  /// Models behind the journal, by name.
  std::map<std::string, model_actor> journaled_;
  std::shared_ptr<http_client> http_;
  std::map<std::string, tool_actor> adapters_;
  /// Breakers by tool name and version ("name@1.0.0").
  std::map<std::string, breaker_actor> breakers_;
  std::vector<caf::actor_addr> owned_;
  /// owned_'s size at which track() next drops ended actors.
  size_t prune_at_ = 64;
  bool stopped_ = false;
  caf::actor node_;
  node_options node_opts_;
  /// Agents this node lists in the directory, by name.
  std::map<std::string, agent_listing> hosted_;
};


} // namespace troupe

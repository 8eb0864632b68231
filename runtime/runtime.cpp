#include "runtime/runtime.hpp"

#include <algorithm>
#include <optional>
#include <thread>

#include <stdexcept>

#include <caf/actor_control_block.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "actors/http_model.hpp"
#include "actors/journaled_model.hpp"
#include "actors/model_gateway.hpp"
#include "actors/scripted_model.hpp"
#include "actors/tool_adapter.hpp"
#include "messages/errors.hpp"
#include "messages/type_ids.hpp"
#include "runtime/blocking_pool.hpp"
#include "runtime/clock.hpp"
#include "runtime/io_pool.hpp"

namespace troupe {


runtime::runtime(runtime_config cfg) : cfg_(std::move(cfg)) {
  sys_cfg_ = std::make_unique<caf::actor_system_config>();
  register_messages(*sys_cfg_);
  // CAF's own default is at least four threads, which on a small machine
  // spends its time stealing and yielding rather than running actors.
  auto threads = cfg_.scheduler_threads;
  if (threads == 0)
    threads = std::max(1u, std::thread::hardware_concurrency());
  sys_cfg_->set("scheduler.max-threads", threads);
  if (cfg_.scheduler_policy != "stealing" && cfg_.scheduler_policy != "sharing")
    throw std::invalid_argument("runtime_config.scheduler_policy must be "
                                "'stealing' or 'sharing', got '"
                                + cfg_.scheduler_policy + "'");
  sys_cfg_->set("scheduler.policy", caf::atom_from_string(cfg_.scheduler_policy));
  // CAF's own console logging would bypass spdlog.
  sys_cfg_->set("logger.console-verbosity", caf::atom("quiet"));
  if (cfg_.load_middleman)
    sys_cfg_->load<caf::io::middleman>();
  if (cfg_.tls.enabled()) {
    if (!cfg_.load_middleman)
      throw std::invalid_argument(
        "runtime_config: cluster TLS needs load_middleman");
    // A bad file would otherwise end the process at the first connection.
    validate(cfg_.tls);
    sys_cfg_->load<caf::openssl::manager>();
    sys_cfg_->openssl_certificate = cfg_.tls.certificate;
    sys_cfg_->openssl_key = cfg_.tls.key;
    sys_cfg_->openssl_cafile = cfg_.tls.ca_file;
    sys_cfg_->openssl_passphrase = cfg_.tls.passphrase;
  }
  sys_ = std::make_unique<caf::actor_system>(*sys_cfg_);
  blocking_ = std::make_shared<blocking_pool>(cfg_.blocking_threads);
  io_ = std::make_unique<io_pool>(cfg_.io_threads);
  // Without a sink there is nothing to trace: no tracer, and agents then
  // skip span bookkeeping altogether.
  if (!cfg_.trace_path.empty() || !cfg_.trace_listeners.empty()) {
    tracer_config tc;
    tc.jsonl_path = cfg_.trace_path;
    tc.listeners = cfg_.trace_listeners;
    try {
      tracer_ = spawn_tracer(*sys_, std::move(tc));
    } catch (...) {
      shutdown();
      throw;
    }
    own(tracer_.address());
  }
  try {
    budget_ = spawn_budget(*sys_, cfg_.budget, tracer_);
    if (!cfg_.policy.rules.empty()
        || cfg_.policy.default_decision != policy_decision::allow) {
      auto rules = cfg_.policy;
      compile(rules);
      policy_ = std::make_shared<const troupe::policy>(std::move(rules));
    }
  } catch (...) {
    shutdown();
    throw;
  }
  own(budget_.address());
  if (cfg_.store) {
    store_ = spawn_store_actor(*sys_, cfg_.store, cfg_.store_events);
    own(store_.address());
    ledger_ = store_;
  } else {
    ledger_ = spawn_ledger(*sys_, cfg_.ledger);
    own(ledger_.address());
  }
  approvals_ = spawn_approval_gate(*sys_, cfg_.approvals, tracer_);
  own(approvals_.address());
  prices_ = std::make_shared<const price_table>(cfg_.prices);
}

model_actor runtime::limit_model(const std::string& name, model_actor model) {
  auto i = cfg_.model_limits.find(name);
  if (i == cfg_.model_limits.end() || !i->second.any())
    return model;
  auto limited = spawn_model_limiter(*sys_, name, i->second, std::move(model),
                                     tracer_);
  own(limited.address());
  return limited;
}

runtime::~runtime() {
  shutdown();
}

void runtime::track(const caf::actor_addr& addr) {
  if (owned_.size() >= prune_at_) {
    // Read the strong count rather than upgrading the address: an upgrade
    // could end up destroying the actor here, under mtx_.
    owned_.erase(std::remove_if(owned_.begin(), owned_.end(),
                                [](const caf::actor_addr& a) {
                                  auto* ctrl = a.get();
                                  return ctrl == nullptr
                                         || ctrl->strong_refs.load() == 0;
                                }),
                 owned_.end());
    prune_at_ = std::max<size_t>(64, 2 * owned_.size());
  }
  owned_.push_back(addr);
}

size_t runtime::tracked_actors() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return owned_.size();
}

void runtime::own(const caf::actor_addr& addr) {
  std::unique_lock<std::mutex> lock{mtx_};
  if (!stopped_) {
    track(addr);
    return;
  }
  lock.unlock();
  // Spawned while shutting down: stop it at once, or the system would wait
  // for it forever.
  if (auto ptr = caf::actor_cast<caf::actor>(addr))
    caf::anon_send_exit(ptr, caf::exit_reason::user_shutdown);
}

void runtime::ensure_running(const char* what) const {
  std::lock_guard<std::mutex> guard{mtx_};
  if (stopped_)
    throw std::logic_error(std::string{what}
                           + ": the runtime has been shut down");
}

void runtime::add_model(const std::string& name, model_actor model) {
  if (name.empty())
    throw std::invalid_argument("add_model: the model name must not be empty");
  if (!model)
    throw std::invalid_argument("add_model: model '" + name
                                + "' has no actor");
  model = limit_model(name, std::move(model));
  std::lock_guard<std::mutex> guard{mtx_};
  models_.insert_or_assign(name, std::move(model));
}

model_actor runtime::endpoint(const std::string& name) {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    auto i = endpoints_.find(name);
    if (i != endpoints_.end())
      return i->second;
  }
  auto [kind, rest] = split_model_name(name);
  model_actor actor;
  if (kind == "scripted") {
    if (rest.empty())
      throw std::invalid_argument("model '" + name
                                  + "': scripted: needs a script file path");
    std::shared_ptr<const model_script> script;
    try {
      script = model_script::load(rest);
    } catch (const std::exception& ex) {
      throw std::invalid_argument(ex.what());
    }
    actor = spawn_scripted_model(*sys_, std::move(script));
  } else if (!kind.empty()) {
    auto s = cfg_.models.find(name);
    auto cfg = http_model_from(name, s == cfg_.models.end() ? model_settings{}
                                                            : s->second);
    actor = spawn_http_model(*sys_, std::move(cfg), http(), tracer_);
  } else {
    throw std::invalid_argument(
      "unknown model '" + name
      + "': register it with add_model, or name it scripted:FILE, "
        "openai:MODEL_ID or anthropic:MODEL_ID");
  }
  own(actor.address());
  actor = limit_model(name, std::move(actor));
  std::lock_guard<std::mutex> guard{mtx_};
  // Another thread may have made the same endpoint meanwhile; keep the first.
  auto [i, added] = endpoints_.emplace(name, actor);
  if (!added)
    caf::anon_send_exit(actor, caf::exit_reason::user_shutdown);
  return i->second;
}

model_actor runtime::model(const std::string& name) {
  ensure_running("model");
  {
    std::lock_guard<std::mutex> guard{mtx_};
    auto i = models_.find(name);
    if (i != models_.end())
      return i->second;
  }
  auto front = endpoint(name);
  auto s = cfg_.models.find(name);
  if (s != cfg_.models.end()) {
    const auto& settings = s->second;
    if (!settings.fallback.empty()) {
      std::vector<fallback_member> chain{{name, front}};
      for (const auto& next : settings.fallback) {
        if (next == name)
          throw std::invalid_argument("model '" + name
                                      + "': its fallback chain names itself");
        try {
          // A member is asked as itself, not through its own chain.
          chain.push_back({next, endpoint(next)});
        } catch (const std::invalid_argument& ex) {
          throw std::invalid_argument("model '" + name + "': fallback '"
                                      + next + "': " + ex.what());
        }
      }
      front = spawn_model_fallback(*sys_, name, std::move(chain),
                                   std::chrono::minutes{10}, tracer_);
      own(front.address());
    }
    if (settings.cache) {
      front = spawn_model_cache(*sys_, name, settings.cache_config,
                                std::move(front), tracer_);
      own(front.address());
    }
  }
  std::lock_guard<std::mutex> guard{mtx_};
  auto [i, added] = models_.emplace(name, front);
  if (!added && front != i->second && s != cfg_.models.end())
    caf::anon_send_exit(front, caf::exit_reason::user_shutdown);
  return i->second;
}

std::shared_ptr<http_client> runtime::http() {
  std::lock_guard<std::mutex> guard{mtx_};
  if (stopped_)
    throw std::logic_error("http: the runtime has been shut down");
  if (!http_)
    http_ = std::make_shared<http_client>(*io_, cfg_.http);
  return http_;
}

tool_actor runtime::tool(const std::string& name, const std::string& version) {
  ensure_running("tool");
  auto def = tools_.find(name, version);
  if (!def && !node_name().empty())
    if (auto found = find_tool(members(), name, version))
      return found->tool.actor;
  if (!def)
    throw std::invalid_argument(
      "unknown tool '" + name + (version.empty() ? "" : "@" + version) + "'");
  auto key = def->definition.name + "@" + def->definition.version;
  std::lock_guard<std::mutex> guard{mtx_};
  if (stopped_)
    throw std::logic_error("tool: the runtime has been shut down");
  auto i = adapters_.find(key);
  if (i != adapters_.end())
    return i->second;
  // The guards stack in front of the adapter: retrier -> breaker -> limiter.
  const auto& guards = def->definition.guards;
  tool_actor front = spawn_tool_adapter(
    *sys_, def, blocking_,
    def->definition.read_only ? ledger_actor{} : ledger_);
  track(front.address());
  if (guards.limits.any()) {
    front = spawn_tool_limiter(*sys_, name, guards.limits, front, tracer_);
    track(front.address());
  }
  if (guards.breaker.failure_threshold > 0) {
    auto breaker = spawn_breaker(*sys_, name, guards.breaker, front, tracer_);
    track(breaker.address());
    breakers_.emplace(key, breaker);
    front = breaker;
  }
  if (guards.retry.max_retries > 0) {
    front = spawn_retrier(*sys_, name, guards.retry, front, tracer_);
    track(front.address());
  }
  adapters_.emplace(key, front);
  return front;
}

agent_links runtime::resolve(agent_spec& spec,
                             const std::vector<node_info>* directory) {
  validate(spec);
  if (!cfg_.model_override.empty()) {
    spec.model = cfg_.model_override;
    if (!spec.confidence.alternative_model.empty())
      spec.confidence.alternative_model = cfg_.model_override;
  }
  if (spec.model.empty())
    spec.model = cfg_.default_model;
  if (spec.model.empty())
    throw std::invalid_argument("agent '" + spec.name
                                + "': no model (set agent_spec::model or "
                                  "runtime_config::default_model)");
  agent_links links;
  try {
    links.model = journaled(spec.model, model(spec.model));
  } catch (const std::invalid_argument& ex) {
    throw std::invalid_argument("agent '" + spec.name + "': " + ex.what());
  }
  std::optional<std::vector<node_info>> fetched;
  for (const auto& name : spec.tools) {
    auto def = tools_.find(name);
    if (!def) {
      // Hosted by another node of the cluster, when this runtime is in one.
      if (!directory && node_name().empty())
        throw std::invalid_argument("agent '" + spec.name + "': unknown tool '"
                                    + name + "'");
      if (!directory) {
        fetched = members();
        directory = &*fetched;
      }
      auto found = find_tool(*directory, name);
      if (!found)
        throw std::invalid_argument("agent '" + spec.name + "': unknown tool '"
                                    + name + "' (registered here: none of "
                                      "that name; hosted in the cluster: no)");
      agent_tool t;
      t.spec = found->tool.spec;
      t.actor = found->tool.actor;
      t.timeout = std::chrono::milliseconds{found->tool.call_timeout_ms};
      t.idempotency.scope = idempotency_scope_from(found->tool.idempotency_scope);
      t.idempotency.fields = found->tool.idempotency_fields;
      links.tools.push_back(std::move(t));
      continue;
    }
    agent_tool t;
    t.spec = def->spec();
    t.actor = tool(name, def->definition.version);
    t.timeout = call_budget(def->definition);
    t.idempotency = def->definition.idempotency;
    links.tools.push_back(std::move(t));
  }
  links.tracer = tracer();
  links.budget = budget_;
  links.prices = prices_;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    links.rules = policy_;
  }
  links.approvals = approvals_;
  links.store = store_;
  if (spec.confidence.enabled && !spec.confidence.alternative_model.empty()) {
    try {
      links.alternative = journaled(spec.confidence.alternative_model,
                                    model(spec.confidence.alternative_model));
    } catch (const std::invalid_argument& ex) {
      throw std::invalid_argument("agent '" + spec.name
                                  + "': alternative model: " + ex.what());
    }
  }
  return links;
}

runnable_actor runtime::spawn_agent(agent_spec spec) {
  ensure_running("spawn_agent");
  auto links = resolve(spec);
  auto handle = troupe::spawn_agent(*sys_, std::move(spec), std::move(links));
  own(handle.address());
  return handle;
}

runnable_actor runtime::spawn_supervised_agent(agent_spec spec,
                                               supervision_options opts) {
  ensure_running("spawn_supervised_agent");
  // Resolved once here, so restarts only spawn (nothing blocks the supervisor).
  auto links = resolve(spec);
  auto name = spec.name;
  auto factory = [spec, links](caf::actor_system& sys) {
    return caf::actor_cast<caf::actor>(troupe::spawn_agent(sys, spec, links));
  };
  auto front = troupe::spawn_supervised_agent(*sys_, std::move(name),
                                              std::move(factory), opts,
                                              links.tracer);
  own(front.address());
  return front;
}

void log_to_stderr(const std::string& level) {
  auto logger = spdlog::get("troupe");
  if (!logger)
    logger = spdlog::stderr_color_mt("troupe");
  spdlog::set_default_logger(std::move(logger));
  spdlog::set_level(spdlog::level::from_str(level));
}

run_task runtime::make_task(std::string goal, const run_options& opts) const {
  run_task task;
  task.ref.run_id = opts.run_id.empty() ? "run-" + random_hex(8) : opts.run_id;
  task.ref.trace_id = new_trace_id();
  task.ref.principal = opts.principal;
  task.ref.priority = opts.priority;
  task.goal = std::move(goal);
  task.budget = opts.budget;
  if (task.budget.deadline_ms <= 0)
    task.budget.deadline_ms = now_ms() + opts.timeout.count();
  task.max_steps = opts.max_steps;
  task.context = opts.context;
  return task;
}

namespace {

/// How long a caller waits for a run: when the run's deadline is the
/// caller's timeout (make_task), a little longer, so the run's own answer
/// (halted at its deadline, naming what was done) wins the race against the
/// caller's "got no result".
std::chrono::milliseconds caller_wait(const run_options& opts) {
  constexpr std::chrono::milliseconds grace{2000};
  return opts.budget.deadline_ms > 0 ? opts.timeout : opts.timeout + grace;
}

} // namespace

run_result runtime::run(const runnable_actor& target, std::string goal,
                        const run_options& opts) {
  return run_task_blocking(target, make_task(std::move(goal), opts),
                           caller_wait(opts));
}

run_result runtime::run_task_blocking(const runnable_actor& target,
                                      run_task task,
                                      std::chrono::milliseconds timeout) {
  if (!target)
    return failed_result(task, "run: the target actor handle is empty");
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (stopped_)
      return failed_result(task, "run: the runtime has been shut down");
  }
  run_result out;
  caf::scoped_actor self{*sys_};
  self->request(target, timeout, task)
    .receive([&](run_result& r) { out = std::move(r); },
             [&](caf::error& err) {
               out = failed_result(task, "run " + task.ref.run_id
                                           + " got no result: "
                                           + error_text(err));
             });
  return out;
}

void runtime::submit(const runnable_actor& target, run_task task,
                     std::chrono::milliseconds timeout, run_callback done) {
  if (!target) {
    done(failed_result(task, "submit: the target actor handle is empty"));
    return;
  }
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (stopped_) {
      done(failed_result(task, "submit: the runtime has been shut down"));
      return;
    }
  }
  // A waiter that answers exactly once: with the result, the request's error,
  // or the target's death (which a promise lost in a crash would not report).
  sys_->spawn([target, task, timeout, done](caf::event_based_actor* self) {
    auto answered = std::make_shared<bool>(false);
    auto answer = [self, answered, done](run_result r) {
      if (*answered)
        return;
      *answered = true;
      done(std::move(r));
      self->quit();
    };
    self->monitor(target);
    self->set_down_handler([answer, task](caf::down_msg& msg) {
      answer(failed_result(task, "run " + task.ref.run_id
                                   + ": the target stopped: "
                                   + error_text(msg.reason)));
    });
    self->request(target, timeout, task)
      .then([answer](run_result& r) { answer(std::move(r)); },
            [answer, task](caf::error& err) {
              answer(failed_result(task, "run " + task.ref.run_id
                                           + " got no result: "
                                           + error_text(err)));
            });
  });
}

std::future<run_result> runtime::submit(const runnable_actor& target,
                                        std::string goal,
                                        const run_options& opts) {
  auto promise = std::make_shared<std::promise<run_result>>();
  auto future = promise->get_future();
  submit(target, make_task(std::move(goal), opts), caller_wait(opts),
         [promise](run_result r) { promise->set_value(std::move(r)); });
  return future;
}

budget_actor runtime::budget() const {
  return budget_;
}

budget_snapshot runtime::budget_usage(const std::string& account) {
  ensure_running("budget_usage");
  budget_snapshot out;
  caf::scoped_actor self{*sys_};
  self->request(budget_, std::chrono::seconds{30}, bg_query_atom::value,
                account)
    .receive([&](budget_snapshot& s) { out = std::move(s); },
             [&](caf::error& err) {
               throw std::runtime_error("budget_usage: " + error_text(err));
             });
  return out;
}

approval_gate_actor runtime::approvals() const {
  return approvals_;
}

std::vector<approval_request> runtime::pending_approvals() {
  ensure_running("pending_approvals");
  std::vector<approval_request> out;
  caf::scoped_actor self{*sys_};
  self->request(approvals_, std::chrono::seconds{30}, apr_list_atom::value)
    .receive([&](std::vector<approval_request>& xs) { out = std::move(xs); },
             [&](caf::error& err) {
               throw std::runtime_error("pending_approvals: "
                                        + error_text(err));
             });
  return out;
}

approval_request runtime::decide(const std::string& request_id,
                                 approval_verdict verdict,
                                 const std::string& who,
                                 const std::string& note) {
  ensure_running("decide");
  approval_decision d{request_id, verdict, who, note, 0};
  approval_request out;
  caf::scoped_actor self{*sys_};
  self->request(approvals_, std::chrono::seconds{30}, apr_decide_atom::value,
                std::move(d))
    .receive([&](approval_request& r) { out = std::move(r); },
             [&](caf::error& err) {
               throw std::invalid_argument(error_text(err));
             });
  return out;
}

void runtime::on_approval_request(std::function<void(approval_request)> fn) {
  ensure_running("on_approval_request");
  auto watcher = sys_->spawn([fn = std::move(fn)](caf::event_based_actor*) {
    return caf::behavior{[fn](approval_request& req) { fn(std::move(req)); }};
  });
  own(watcher.address());
  caf::anon_send(approvals_, apr_watch_atom::value, watcher);
}

std::string runtime::breaker_state(const std::string& tool) {
  ensure_running("breaker_state");
  breaker_actor breaker;
  {
    auto def = tools_.find(tool);
    std::lock_guard<std::mutex> guard{mtx_};
    if (def) {
      auto i = breakers_.find(def->definition.name + "@"
                              + def->definition.version);
      if (i != breakers_.end())
        breaker = i->second;
    }
  }
  if (!breaker)
    return "none";
  std::string out;
  caf::scoped_actor self{*sys_};
  self->request(breaker, std::chrono::seconds{30}, br_state_atom::value)
    .receive([&](std::string& state) { out = std::move(state); },
             [&](caf::error& err) { out = "unknown: " + error_text(err); });
  return out;
}

ledger_actor runtime::ledger() const {
  return ledger_;
}

store_actor runtime::store() const {
  return store_;
}

model_actor runtime::journaled(const std::string& name, model_actor model) {
  if (!store_)
    return model;
  model_actor made;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    auto& entry = journaled_[name];
    if (entry)
      return entry;
    entry = made = spawn_journaled_model(*sys_, std::move(model), store_,
                                         tracer_);
  }
  own(made.address()); // locks mtx_ itself
  return made;
}

void runtime::set_policy(troupe::policy p) {
  compile(p);
  auto shared = std::make_shared<const troupe::policy>(std::move(p));
  std::lock_guard<std::mutex> guard{mtx_};
  policy_ = std::move(shared);
}

void runtime::flush_trace() {
  auto t = tracer();
  if (!t || !sys_)
    return;
  caf::scoped_actor self{*sys_};
  self->request(t, std::chrono::seconds{30}, tr_flush_atom::value)
    .receive([](bool) {},
             [](caf::error& err) {
               spdlog::warn("trace flush failed: {}", error_text(err));
             });
}

tracer_actor runtime::tracer() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return tracer_;
}

caf::actor_system& runtime::system() {
  return *sys_;
}

io_pool& runtime::io() {
  return *io_;
}

std::shared_ptr<blocking_pool> runtime::blocking() {
  return blocking_;
}

void runtime::shutdown() {
  std::vector<caf::actor_addr> owned;
  caf::actor leaving;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (stopped_)
      return;
    leaving = node_;
    stopped_ = true;
    owned.swap(owned_);
    models_.clear();
    endpoints_.clear();
    adapters_.clear();
  }
  // The other members hear a goodbye rather than a lost connection.
  if (leaving) {
    caf::scoped_actor self{*sys_};
    self->request(leaving, std::chrono::seconds{2}, cl_leave_atom::value)
      .receive([](bool) {}, [](caf::error&) {});
  }
  // HTTP requests in flight complete with "client stopped" now, before the
  // actors waiting for them go.
  if (http_)
    http_->stop();
  // Everything but the tracer first (agents answer their waiting callers as
  // they stop); then the tracer is flushed, so it writes every record sent so
  // far, and stopped.
  auto tracer_addr = tracer_ ? tracer_.address() : caf::actor_addr{};
  for (auto i = owned.rbegin(); i != owned.rend(); ++i)
    if (*i != tracer_addr)
      if (auto ptr = caf::actor_cast<caf::actor>(*i))
        caf::anon_send_exit(ptr, caf::exit_reason::user_shutdown);
  if (auto t = tracer()) {
    flush_trace();
    caf::anon_send_exit(t, caf::exit_reason::user_shutdown);
    std::lock_guard<std::mutex> guard{mtx_};
    tracer_ = nullptr;
  }
  {
    // A detached actor's thread (the store's) ends only once no handle to
    // it is left, and the actor system waits for that thread.
    std::lock_guard<std::mutex> guard{mtx_};
    journaled_.clear();
    store_ = nullptr;
    ledger_ = nullptr;
  }
  if (blocking_)
    blocking_->stop(cfg_.shutdown_grace);
  if (io_)
    io_->stop();
  // The actor system's destructor waits for every actor to finish.
  sys_.reset();
  sys_cfg_.reset();
  // The HTTP models held the client too; it goes before its io_context.
  std::lock_guard<std::mutex> guard{mtx_};
  http_.reset();
}

} // namespace troupe

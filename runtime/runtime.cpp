#include "runtime/runtime.hpp"

#include <algorithm>
#include <thread>

#include <stdexcept>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <spdlog/spdlog.h>

#include "actors/scripted_model.hpp"
#include "actors/tool_adapter.hpp"
#include "messages/errors.hpp"
#include "messages/type_ids.hpp"
#include "runtime/blocking_pool.hpp"
#include "runtime/clock.hpp"
#include "runtime/io_pool.hpp"

namespace troupe {

namespace {

constexpr const char* scripted_prefix = "scripted:";

} // namespace

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
}

runtime::~runtime() {
  shutdown();
}

void runtime::own(const caf::actor_addr& addr) {
  std::unique_lock<std::mutex> lock{mtx_};
  if (!stopped_) {
    owned_.push_back(addr);
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
  std::lock_guard<std::mutex> guard{mtx_};
  models_.insert_or_assign(name, std::move(model));
}

model_actor runtime::model(const std::string& name) {
  ensure_running("model");
  {
    std::lock_guard<std::mutex> guard{mtx_};
    auto i = models_.find(name);
    if (i != models_.end())
      return i->second;
  }
  if (name.rfind(scripted_prefix, 0) != 0)
    throw std::invalid_argument(
      "unknown model '" + name
      + "': register it with add_model or name a script as scripted:FILE");
  auto path = name.substr(std::char_traits<char>::length(scripted_prefix));
  if (path.empty())
    throw std::invalid_argument("model '" + name
                                + "': scripted: needs a script file path");
  std::shared_ptr<const model_script> script;
  try {
    script = model_script::load(path);
  } catch (const std::exception& ex) {
    throw std::invalid_argument(ex.what());
  }
  auto actor = spawn_scripted_model(*sys_, std::move(script));
  own(actor.address());
  std::lock_guard<std::mutex> guard{mtx_};
  // Another thread may have loaded the same script meanwhile; keep the first.
  auto [i, added] = models_.emplace(name, actor);
  if (!added)
    caf::anon_send_exit(actor, caf::exit_reason::user_shutdown);
  return i->second;
}

tool_actor runtime::tool(const std::string& name, const std::string& version) {
  ensure_running("tool");
  auto def = tools_.find(name, version);
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
  auto adapter = spawn_tool_adapter(*sys_, def, blocking_);
  owned_.push_back(adapter.address());
  adapters_.emplace(key, adapter);
  return adapter;
}

agent_links runtime::resolve(agent_spec& spec) {
  validate(spec);
  if (spec.model.empty())
    spec.model = cfg_.default_model;
  if (spec.model.empty())
    throw std::invalid_argument("agent '" + spec.name
                                + "': no model (set agent_spec::model or "
                                  "runtime_config::default_model)");
  agent_links links;
  try {
    links.model = model(spec.model);
  } catch (const std::invalid_argument& ex) {
    throw std::invalid_argument("agent '" + spec.name + "': " + ex.what());
  }
  for (const auto& name : spec.tools) {
    auto def = tools_.find(name);
    if (!def)
      throw std::invalid_argument("agent '" + spec.name + "': unknown tool '"
                                  + name + "'");
    agent_tool t;
    t.spec = def->spec();
    t.actor = tool(name, def->definition.version);
    t.timeout = def->definition.timeout;
    links.tools.push_back(std::move(t));
  }
  links.tracer = tracer();
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

run_task runtime::make_task(std::string goal, const run_options& opts) const {
  run_task task;
  task.ref.run_id = opts.run_id.empty() ? "run-" + random_hex(8) : opts.run_id;
  task.ref.trace_id = new_trace_id();
  task.ref.principal = opts.principal;
  task.goal = std::move(goal);
  task.budget = opts.budget;
  if (task.budget.deadline_ms <= 0)
    task.budget.deadline_ms = now_ms() + opts.timeout.count();
  task.max_steps = opts.max_steps;
  task.context = opts.context;
  return task;
}

run_result runtime::run(const runnable_actor& target, std::string goal,
                        const run_options& opts) {
  return run_task_blocking(target, make_task(std::move(goal), opts),
                           opts.timeout);
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
  submit(target, make_task(std::move(goal), opts), opts.timeout,
         [promise](run_result r) { promise->set_value(std::move(r)); });
  return future;
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
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (stopped_)
      return;
    stopped_ = true;
    owned.swap(owned_);
    models_.clear();
    adapters_.clear();
  }
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
  if (blocking_)
    blocking_->stop(cfg_.shutdown_grace);
  if (io_)
    io_->stop();
  // The actor system's destructor waits for every actor to finish.
  sys_.reset();
  sys_cfg_.reset();
}

} // namespace troupe

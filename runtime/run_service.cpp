#include "runtime/run_service.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <regex>
#include <set>
#include <thread>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <spdlog/spdlog.h>

#include "actors/store_actor.hpp"
#include "messages/errors.hpp"
#include "runtime/clock.hpp"
#include "runtime/model_config.hpp"
#include "runtime/runtime.hpp"
#include "runtime/swarm.hpp"

namespace troupe {

namespace {

const std::set<std::string> submission_fields{
  "swarm",     "goal",    "principal",  "priority", "budget",
  "max_steps", "context", "timeout_ms", "run_id"};

const std::set<std::string> budget_fields{"max_steps", "max_input_tokens",
                                          "max_output_tokens", "max_cost_usd",
                                          "deadline_ms"};

/// A JSON integer field in [lo, hi], named in errors by `where`.
int64_t int_field(const json& doc, const char* key, const std::string& where,
                  int64_t lo, int64_t hi) {
  const auto& v = doc.at(key);
  if (!v.is_number_integer())
    throw std::invalid_argument(where + key + " must be an integer, got "
                                + v.type_name());
  auto x = v.get<int64_t>();
  if (x < lo || x > hi)
    throw std::invalid_argument(where + key + " must be from "
                                + std::to_string(lo) + " to "
                                + std::to_string(hi) + ", got "
                                + std::to_string(x));
  return x;
}

std::string string_field(const json& doc, const char* key, size_t max_len) {
  const auto& v = doc.at(key);
  if (!v.is_string())
    throw std::invalid_argument(std::string{key} + " must be a string, got "
                                + v.type_name());
  auto s = v.get<std::string>();
  if (s.size() > max_len)
    throw std::invalid_argument(std::string{key} + " is longer than "
                                + std::to_string(max_len) + " characters");
  return s;
}

void reject_unknown(const json& doc, const std::set<std::string>& known,
                    const std::string& where) {
  for (const auto& item : doc.items())
    if (known.count(item.key()) == 0) {
      std::string list;
      for (const auto& k : known)
        list += (list.empty() ? "" : ", ") + k;
      throw std::invalid_argument("unknown field '" + where + item.key()
                                  + "' (known: " + list + ")");
    }
}

bool valid_run_id(const std::string& id) {
  static const std::regex pattern{"[A-Za-z0-9._-]{1,64}"};
  return std::regex_match(id, pattern);
}

/// The name a swarm is offered under: its "name", else its file name
/// without ".swarm.json".
std::string offered_name(const swarm_definition& def) {
  auto name = def.name;
  const std::string suffix = ".swarm";
  if (name.size() > suffix.size()
      && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
    name.resize(name.size() - suffix.size());
  return name;
}

/// The submission as submission_from_json reads it back (defaults left out).
json submission_to_json(const run_submission& sub) {
  json doc{{"swarm", sub.swarm},
           {"goal", sub.goal},
           {"principal", sub.principal},
           {"priority", sub.priority}};
  json budget = json::object();
  const auto& b = sub.budget;
  if (b.max_steps > 0)
    budget["max_steps"] = b.max_steps;
  if (b.max_input_tokens > 0)
    budget["max_input_tokens"] = b.max_input_tokens;
  if (b.max_output_tokens > 0)
    budget["max_output_tokens"] = b.max_output_tokens;
  if (b.max_cost_usd > 0)
    budget["max_cost_usd"] = b.max_cost_usd;
  if (b.deadline_ms > 0)
    budget["deadline_ms"] = b.deadline_ms;
  if (!budget.empty())
    doc["budget"] = std::move(budget);
  if (sub.max_steps > 0)
    doc["max_steps"] = sub.max_steps;
  if (sub.timeout_ms > 0)
    doc["timeout_ms"] = sub.timeout_ms;
  if (!sub.context.is_null())
    doc["context"] = sub.context;
  return doc;
}

} // namespace

run_submission submission_from_json(const json& doc) {
  if (!doc.is_object())
    throw std::invalid_argument("the run must be a JSON object, got "
                                + std::string{doc.type_name()});
  reject_unknown(doc, submission_fields, "");
  run_submission sub;
  if (!doc.contains("swarm"))
    throw std::invalid_argument("swarm is missing: name the swarm to run");
  if (!doc.contains("goal"))
    throw std::invalid_argument("goal is missing: say what the run should do");
  sub.swarm = string_field(doc, "swarm", 200);
  sub.goal = string_field(doc, "goal", 100000);
  if (sub.goal.find_first_not_of(" \t\r\n") == std::string::npos)
    throw std::invalid_argument("goal is empty");
  if (doc.contains("principal"))
    sub.principal = string_field(doc, "principal", 200);
  if (doc.contains("priority"))
    sub.priority = static_cast<int32_t>(
      int_field(doc, "priority", "", -1000000, 1000000));
  if (doc.contains("max_steps"))
    sub.max_steps = static_cast<int32_t>(
      int_field(doc, "max_steps", "", 0, 100000));
  if (doc.contains("timeout_ms"))
    sub.timeout_ms = int_field(doc, "timeout_ms", "", 1, 7LL * 24 * 3600 * 1000);
  if (doc.contains("context"))
    sub.context = doc.at("context");
  if (doc.contains("run_id")) {
    sub.run_id = string_field(doc, "run_id", 64);
    if (!valid_run_id(sub.run_id))
      throw std::invalid_argument("run_id '" + sub.run_id
                                  + "' may only hold letters, digits, '.', "
                                    "'_' and '-' (1 to 64 of them)");
  }
  if (doc.contains("budget")) {
    const auto& b = doc.at("budget");
    if (!b.is_object())
      throw std::invalid_argument("budget must be an object, got "
                                  + std::string{b.type_name()});
    reject_unknown(b, budget_fields, "budget.");
    constexpr int64_t big = int64_t{1} << 52;
    if (b.contains("max_steps"))
      sub.budget.max_steps = int_field(b, "max_steps", "budget.", 0, big);
    if (b.contains("max_input_tokens"))
      sub.budget.max_input_tokens = int_field(b, "max_input_tokens", "budget.",
                                              0, big);
    if (b.contains("max_output_tokens"))
      sub.budget.max_output_tokens = int_field(b, "max_output_tokens",
                                               "budget.", 0, big);
    if (b.contains("deadline_ms"))
      sub.budget.deadline_ms = int_field(b, "deadline_ms", "budget.", 0, big);
    if (b.contains("max_cost_usd")) {
      const auto& v = b.at("max_cost_usd");
      if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 1e9)
        throw std::invalid_argument(
          "budget.max_cost_usd must be a number from 0 to 1e9");
      sub.budget.max_cost_usd = v.get<double>();
    }
  }
  return sub;
}

json run_to_json(const stored_run& run, bool with_result) {
  json doc{{"id", run.id},
           {"swarm", run.swarm},
           {"goal", run.goal},
           {"principal", run.principal},
           {"status", run.status},
           {"answer", run.answer},
           {"error", run.error},
           {"usage",
            {{"input_tokens", run.input_tokens},
             {"output_tokens", run.output_tokens}}},
           {"cost_usd", nusd_to_usd(run.cost_nusd)},
           {"steps", run.steps},
           {"attempts", run.attempts},
           {"trace_id", run.trace_id},
           {"created_ms", run.created_ms},
           {"started_ms", run.started_ms},
           {"ended_ms", run.ended_ms}};
  if (with_result)
    doc["result"] = run.result;
  return doc;
}

json approval_to_json(const approval_request& req) {
  return json{{"id", req.request_id},
              {"run_id", req.ref.run_id},
              {"agent", req.agent},
              {"action", req.action},
              {"args", req.args.value},
              {"reason", req.reason},
              {"created_ms", req.created_ms},
              {"expires_ms", req.created_ms + req.ttl_ms}};
}

namespace {

/// Each limit of `a` and `b` that is set (non-zero), the smaller of two.
budget_limits narrowest(const budget_limits& a, const budget_limits& b) {
  auto pick = [](auto x, auto y) {
    if (x <= 0)
      return y;
    if (y <= 0)
      return x;
    return std::min(x, y);
  };
  budget_limits out;
  out.max_steps = pick(a.max_steps, b.max_steps);
  out.max_input_tokens = pick(a.max_input_tokens, b.max_input_tokens);
  out.max_output_tokens = pick(a.max_output_tokens, b.max_output_tokens);
  out.max_cost_usd = pick(a.max_cost_usd, b.max_cost_usd);
  out.deadline_ms = pick(a.deadline_ms, b.deadline_ms);
  return out;
}

} // namespace

// -- the service --------------------------------------------------------------

struct run_service::impl : std::enable_shared_from_this<impl> {
  /// One offered swarm and the runtime that runs it.
  struct slot {
    swarm_entry entry;
    swarm_definition def;
    /// The swarm file's budget, which bounds each of its runs here (in
    /// `troupe run` it bounds the one run the process makes).
    budget_limits run_budget;
    std::unique_ptr<runtime> rt;
    /// The runtime's store actor (set before any run starts).
    store_actor events;
  };

  /// A run this process is running.
  struct live_run {
    slot* where = nullptr;
    swarm_instance actors;
    bool cancelling = false;
    std::string cancelled_by;
    /// Its end is recorded (it leaves `active` once its actors are stopped):
    /// no longer counted as running.
    bool ended = false;
  };

  struct subscriber {
    std::string run_id;
    int64_t last = 0;
    event_fn fn;
    /// Its stored events have been delivered; until then new ones wait.
    bool ready = false;
    std::vector<std::pair<int64_t, json>> pending;
  };

  run_service_options opts;
  std::shared_ptr<store> db;
  std::map<std::string, std::unique_ptr<slot>> slots;

  mutable std::mutex mtx;
  std::condition_variable changed;
  std::deque<std::string> queue;
  std::map<std::string, live_run> active;
  /// Trace id -> run id, for the runs running here.
  std::map<std::string, std::string> by_trace;
  bool stopping = false;

  /// Work for the service thread (run ends, starts), in order.
  std::deque<std::function<void()>> jobs;
  std::condition_variable jobs_cv;
  std::thread worker;
  int64_t last_compaction_ms = 0;

  std::mutex sub_mtx;
  std::map<uint64_t, subscriber> subs;
  uint64_t next_token = 1;

  // -- events ----------------------------------------------------------------

  void emit(slot& s, const std::string& run_id, json data) {
    if (s.events)
      caf::anon_send(s.events, st_event_atom::value, run_id,
                     json_value{std::move(data)});
  }

  /// From the store actor's thread: fans an appended event out.
  void on_event(const std::string& run_id, int64_t seq, const json& data) {
    std::lock_guard<std::mutex> guard{sub_mtx};
    for (auto& [token, sub] : subs) {
      if (sub.run_id != run_id)
        continue;
      if (!sub.ready) {
        sub.pending.emplace_back(seq, data);
      } else if (seq > sub.last) {
        sub.last = seq;
        sub.fn(seq, data);
      }
    }
  }

  /// From a tracer's thread: a record of a run running here.
  void on_trace(slot& s, const json& rec) {
    auto type = rec.value("type", "");
    if (type != "span" && type != "event" && type != "span_start")
      return;
    std::string run_id;
    {
      std::lock_guard<std::mutex> guard{mtx};
      auto i = by_trace.find(rec.value("trace_id", ""));
      if (i == by_trace.end())
        return;
      run_id = i->second;
    }
    emit(s, run_id, json{{"type", "trace"}, {"record", rec}});
  }

  // -- the service thread ----------------------------------------------------

  void post(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> guard{mtx};
      if (stopping)
        return;
      jobs.push_back(std::move(job));
    }
    jobs_cv.notify_one();
  }

  void work() {
    std::unique_lock<std::mutex> lock{mtx};
    for (;;) {
      auto every = opts.compact_every;
      if (every.count() > 0)
        jobs_cv.wait_for(lock, every,
                         [this] { return stopping || !jobs.empty(); });
      else
        jobs_cv.wait(lock, [this] { return stopping || !jobs.empty(); });
      if (stopping)
        return;
      if (jobs.empty()) {
        lock.unlock();
        compact();
        lock.lock();
        continue;
      }
      auto job = std::move(jobs.front());
      jobs.pop_front();
      lock.unlock();
      try {
        job();
      } catch (const std::exception& ex) {
        spdlog::error("run service: {}", ex.what());
      }
      lock.lock();
    }
  }

  void compact() {
    try {
      auto stats = db->compact(now_ms());
      if (stats.runs_removed + stats.checkpoints_removed > 0)
        spdlog::info("run service: compacted the store: {} checkpoint(s) and "
                     "{} old run(s) removed",
                     stats.checkpoints_removed, stats.runs_removed);
    } catch (const std::exception& ex) {
      spdlog::error("run service: compaction failed: {}", ex.what());
    }
  }

  // -- runs ------------------------------------------------------------------

  /// The record of run `id`, which has not ended. Throws not_found_error or
  /// conflict_error.
  stored_run unfinished_run(const std::string& id) {
    auto rec = db->get_run(id);
    if (!rec)
      throw not_found_error("no run '" + id + "'");
    if (is_finished_status(rec->status))
      throw conflict_error("run '" + id + "' has already ended ("
                           + rec->status + ")");
    return std::move(*rec);
  }

  void status_changed(const stored_run& run, const std::string& from) {
    if (opts.on_status) {
      try {
        opts.on_status(run, from);
      } catch (const std::exception& ex) {
        spdlog::warn("run service: on_status: {}", ex.what());
      }
    }
  }

  /// Starts queued runs while there is room. Called with `mtx` unlocked.
  void start_more() {
    for (;;) {
      std::string id;
      {
        std::lock_guard<std::mutex> guard{mtx};
        if (stopping || queue.empty()
            || static_cast<int32_t>(active.size()) >= opts.max_concurrent_runs)
          return;
        id = queue.front();
        queue.pop_front();
        active[id]; // holds its place while it starts
      }
      start(id);
    }
  }

  /// Ends a run here that never got going.
  void fail_to_start(stored_run& rec, const std::string& why) {
    spdlog::error("run service: run {}: {}", rec.id, why);
    auto from = rec.status;
    rec.status = "failed";
    rec.error = why;
    rec.ended_ms = now_ms();
    db->put_run(rec);
    {
      std::lock_guard<std::mutex> guard{mtx};
      active.erase(rec.id);
    }
    status_changed(rec, from);
    auto i = slots.find(rec.swarm);
    if (i != slots.end())
      emit(*i->second, rec.id,
           json{{"type", "status"}, {"status", "failed"}, {"error", why}});
    changed.notify_all();
  }

  void start(const std::string& id) {
    auto found = db->get_run(id);
    if (!found) {
      std::lock_guard<std::mutex> guard{mtx};
      active.erase(id);
      return;
    }
    auto rec = std::move(*found);
    if (is_finished_status(rec.status)) {
      // Cancelled while it waited for room.
      std::lock_guard<std::mutex> guard{mtx};
      active.erase(id);
      return;
    }
    auto si = slots.find(rec.swarm);
    if (si == slots.end()) {
      fail_to_start(rec, "swarm '" + rec.swarm + "' is not served here");
      return;
    }
    auto& s = *si->second;
    run_submission sub;
    try {
      sub = submission_from_json(rec.request);
    } catch (const std::exception& ex) {
      fail_to_start(rec, std::string{"its stored request is unreadable: "}
                           + ex.what());
      return;
    }
    auto from = rec.status;
    rec.status = "running";
    rec.attempts += 1;
    if (rec.started_ms == 0)
      rec.started_ms = now_ms();
    db->put_run(rec);
    {
      std::lock_guard<std::mutex> guard{mtx};
      by_trace[rec.trace_id] = id;
    }
    status_changed(rec, from);
    emit(s, id, json{{"type", "status"}, {"status", "running"},
                     {"attempt", rec.attempts}});
    if (rec.attempts > 1)
      spdlog::info("run service: resuming run {} (attempt {})", id,
                   rec.attempts);
    swarm_instance actors;
    try {
      actors = instantiate(*s.rt, s.def);
    } catch (const std::exception& ex) {
      fail_to_start(rec, std::string{"cannot start its swarm: "} + ex.what());
      return;
    }
    run_options ro;
    ro.principal = sub.principal;
    ro.priority = sub.priority;
    ro.budget = narrowest(sub.budget, s.run_budget);
    ro.max_steps = sub.max_steps;
    ro.context = sub.context;
    ro.timeout = sub.timeout_ms > 0 ? std::chrono::milliseconds{sub.timeout_ms}
                                    : opts.run_timeout;
    ro.run_id = id;
    auto task = s.rt->make_task(rec.goal, ro);
    task.ref.trace_id = rec.trace_id;
    auto entry = actors.entry;
    bool cancelled = false;
    {
      std::lock_guard<std::mutex> guard{mtx};
      auto& live = active[id];
      live.where = &s;
      live.actors = actors;
      cancelled = live.cancelling;
    }
    if (cancelled) // cancel() came while it was starting
      stop_actors(actors);
    std::weak_ptr<impl> weak = shared_from_this();
    s.rt->submit(entry, std::move(task), ro.timeout,
                 [weak, id](run_result result) {
                   // On an actor thread: the rest happens on ours.
                   if (auto self = weak.lock())
                     self->post([self, id, r = std::move(result)]() mutable {
                       self->finished(id, std::move(r));
                     });
                 });
  }

  /// Stops a run's agents and teams.
  static void stop_actors(const swarm_instance& actors) {
    for (const auto& [name, a] : actors.teams)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    for (const auto& [name, a] : actors.agents)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  }

  void finished(const std::string& id, run_result result) {
    live_run live;
    {
      std::lock_guard<std::mutex> guard{mtx};
      auto i = active.find(id);
      if (i == active.end() || stopping)
        return; // shutting down: the run stays unfinished and resumes later
      live = std::move(i->second);
    }
    auto& s = *live.where;
    // Every trace record of the run reaches its events before the final
    // status does (streams end at the final status), and is stored before
    // the record says the run ended: whoever waits for the end and then
    // reads the run's trace gets all of it.
    s.rt->flush_trace();
    if (s.events) {
      caf::scoped_actor barrier{s.rt->system()};
      barrier->request(s.events, std::chrono::seconds{30}, st_sync_atom::value)
        .receive([](bool) {},
                 [&id](caf::error& err) {
                   spdlog::warn("run service: run {}: the store did not "
                                "confirm its trace events: {}",
                                id, error_text(err));
                 });
    }
    auto found = db->get_run(id);
    if (!found)
      return;
    auto rec = std::move(*found);
    auto from = rec.status;
    // A run that completed before the cancel reached it stays complete.
    bool cancelled = live.cancelling && result.status != run_status::complete;
    rec.status = cancelled ? "cancelled" : to_string(result.status);
    rec.answer = result.answer;
    rec.error = cancelled ? "cancelled by " + live.cancelled_by : result.error;
    rec.input_tokens = result.usage.input_tokens;
    rec.output_tokens = result.usage.output_tokens;
    rec.cost_nusd = result.cost_nusd;
    rec.steps = static_cast<int64_t>(result.steps.size());
    rec.ended_ms = now_ms();
    rec.result = json(result);
    // The record and the compaction of its checkpoints in one transaction.
    try {
      db->finish_run(rec);
    } catch (const std::exception& ex) {
      spdlog::warn("run service: run {}: recording its end with compaction "
                   "failed ({}); recording it alone",
                   id, ex.what());
      db->put_run(rec);
    }
    // Counted before it is announced: a client that saw the final status
    // finds it in the metrics too.
    {
      std::lock_guard<std::mutex> guard{mtx};
      if (auto i = active.find(id); i != active.end())
        i->second.ended = true;
    }
    status_changed(rec, from);
    emit(s, id,
         json{{"type", "status"},
              {"status", rec.status},
              {"answer", rec.answer},
              {"error", rec.error},
              {"usage",
               {{"input_tokens", rec.input_tokens},
                {"output_tokens", rec.output_tokens}}},
              {"cost_usd", nusd_to_usd(rec.cost_nusd)}});
    stop_actors(live.actors);
    {
      std::lock_guard<std::mutex> guard{mtx};
      active.erase(id);
      by_trace.erase(rec.trace_id);
    }
    changed.notify_all();
    start_more();
  }

  void enqueue(const std::string& id, bool front) {
    {
      std::lock_guard<std::mutex> guard{mtx};
      if (front)
        queue.push_front(id);
      else
        queue.push_back(id);
    }
    post([self = shared_from_this()] { self->start_more(); });
  }

  void stop() {
    {
      std::lock_guard<std::mutex> guard{mtx};
      if (stopping)
        return;
      stopping = true;
    }
    jobs_cv.notify_all();
    changed.notify_all();
    if (worker.joinable())
      worker.join();
    // Runs still going stay "running" in the store: the next service on
    // this store resumes them.
    for (auto& [name, s] : slots) {
      // The store actor's thread ends only once every handle to it is gone.
      s->events = nullptr;
      if (s->rt)
        s->rt->shutdown();
    }
    std::lock_guard<std::mutex> guard{sub_mtx};
    subs.clear();
  }
};

run_service::run_service(std::vector<std::string> swarm_paths,
                         run_service_options opts)
  : impl_(std::make_shared<impl>()) {
  auto& d = *impl_;
  if (opts.max_concurrent_runs < 1)
    throw std::invalid_argument("max_concurrent_runs must be at least 1, got "
                                + std::to_string(opts.max_concurrent_runs));
  if (swarm_paths.empty())
    throw std::invalid_argument("no swarm to serve: name at least one file");
  d.opts = std::move(opts);
  std::vector<std::unique_ptr<impl::slot>> loaded;
  for (const auto& path : swarm_paths) {
    auto s = std::make_unique<impl::slot>();
    s->def = load_swarm(path);
    if (s->def.entry.empty())
      throw std::invalid_argument(path + ": it has no agents to run");
    s->entry.name = offered_name(s->def);
    // Absolute: a run resumed from another folder finds its swarm again.
    s->entry.path = std::filesystem::absolute(path).lexically_normal().string();
    s->entry.description = s->def.description;
    s->entry.entry = s->def.entry;
    if (d.slots.count(s->entry.name) > 0)
      throw std::invalid_argument("two swarms are named '" + s->entry.name
                                  + "' (" + d.slots[s->entry.name]->entry.path
                                  + " and " + path + ")");
    d.slots[s->entry.name] = std::move(s);
  }
  d.db = std::make_shared<store>(d.opts.store);
  std::weak_ptr<impl> weak = impl_;
  try {
    for (auto& [name, s] : d.slots) {
      runtime_config cfg;
      configure(cfg, s->def);
      // A server makes many runs of a swarm: its budget is each run's, not
      // one for all of them (a hook below may still set a global one).
      s->run_budget = cfg.budget.global;
      cfg.budget.global = {};
      cfg.model_override = model_override_from_env();
      cfg.load_middleman = false;
      cfg.store = d.db;
      cfg.store_events = [weak](const std::string& run_id, int64_t seq,
                                const json& data) {
        if (auto self = weak.lock())
          self->on_event(run_id, seq, data);
      };
      auto* raw = s.get();
      cfg.trace_listeners.push_back([weak, raw](const json& rec) {
        if (auto self = weak.lock())
          self->on_trace(*raw, rec);
      });
      if (d.opts.configure)
        d.opts.configure(cfg, s->def);
      s->rt = std::make_unique<runtime>(cfg);
      s->events = s->rt->store();
      s->rt->on_approval_request([weak, raw](approval_request req) {
        if (auto self = weak.lock())
          self->emit(*raw, req.ref.run_id,
                     json{{"type", "approval"},
                          {"request", approval_to_json(req)}});
      });
      if (d.opts.setup)
        d.opts.setup(*s->rt, s->def);
    }
  } catch (...) {
    d.stop();
    throw;
  }
  d.compact();
  d.last_compaction_ms = now_ms();
  d.worker = std::thread{[self = impl_] { self->work(); }};
  if (d.opts.resume_on_start)
    resume_unfinished();
}

run_service::~run_service() {
  shutdown();
}

std::vector<swarm_entry> run_service::swarms() const {
  std::vector<swarm_entry> out;
  for (const auto& [name, s] : impl_->slots)
    out.push_back(s->entry);
  return out;
}

stored_run run_service::submit(run_submission sub) {
  auto& d = *impl_;
  if (sub.goal.find_first_not_of(" \t\r\n") == std::string::npos)
    throw std::invalid_argument("goal is empty");
  auto si = d.slots.find(sub.swarm);
  if (si == d.slots.end()) {
    std::string known;
    for (const auto& [name, s] : d.slots)
      known += (known.empty() ? "" : ", ") + name;
    throw std::invalid_argument("unknown swarm '" + sub.swarm
                                + "' (served here: " + known + ")");
  }
  {
    std::lock_guard<std::mutex> guard{d.mtx};
    if (d.stopping)
      throw std::runtime_error("the run service is shutting down");
  }
  if (sub.run_id.empty()) {
    sub.run_id = "run-" + random_hex(8);
  } else {
    if (!valid_run_id(sub.run_id))
      throw std::invalid_argument("run_id '" + sub.run_id
                                  + "' may only hold letters, digits, '.', "
                                    "'_' and '-' (1 to 64 of them)");
    if (d.db->get_run(sub.run_id))
      throw conflict_error("run '" + sub.run_id + "' exists already");
  }
  stored_run rec;
  rec.id = sub.run_id;
  rec.status = "queued";
  rec.swarm = sub.swarm;
  rec.swarm_path = si->second->entry.path;
  rec.goal = sub.goal;
  rec.principal = sub.principal;
  rec.request = submission_to_json(sub);
  rec.trace_id = new_trace_id();
  rec.created_ms = now_ms();
  d.db->put_run(rec);
  d.status_changed(rec, "");
  d.emit(*si->second, rec.id, json{{"type", "status"}, {"status", "queued"}});
  d.enqueue(rec.id, false);
  return rec;
}

std::optional<stored_run> run_service::get(const std::string& id) {
  return impl_->db->get_run(id);
}

run_page run_service::list(const std::string& status, int64_t limit,
                           const std::string& cursor) {
  return impl_->db->list_runs(status, limit, cursor);
}

stored_run run_service::cancel(const std::string& id, const std::string& who) {
  auto& d = *impl_;
  auto rec = d.unfinished_run(id);
  swarm_instance to_stop;
  bool was_queued = false;
  {
    std::lock_guard<std::mutex> guard{d.mtx};
    auto q = std::find(d.queue.begin(), d.queue.end(), id);
    if (q != d.queue.end()) {
      d.queue.erase(q);
      was_queued = true;
    } else {
      auto i = d.active.find(id);
      if (i == d.active.end())
        throw conflict_error("run '" + id + "' is " + rec.status
                             + " but not here: a service on this store "
                               "resumes it");
      if (i->second.cancelling)
        return rec;
      i->second.cancelling = true;
      i->second.cancelled_by = who;
      to_stop = i->second.actors;
    }
  }
  if (!was_queued) {
    // A run still starting has no actors yet: start() stops them.
    impl::stop_actors(to_stop);
    return rec;
  }
  {
    auto from = rec.status;
    rec.status = "cancelled";
    rec.error = "cancelled by " + who + " before it started";
    rec.ended_ms = now_ms();
    d.db->put_run(rec);
    d.status_changed(rec, from);
    auto si = d.slots.find(rec.swarm);
    if (si != d.slots.end())
      d.emit(*si->second, id,
             json{{"type", "status"}, {"status", "cancelled"},
                  {"error", rec.error}});
    d.changed.notify_all();
  }
  return rec;
}

stored_run run_service::resume(const std::string& id) {
  auto& d = *impl_;
  auto rec = d.unfinished_run(id);
  {
    std::lock_guard<std::mutex> guard{d.mtx};
    if (d.active.count(id) > 0)
      throw conflict_error("run '" + id + "' is running here already");
    auto q = std::find(d.queue.begin(), d.queue.end(), id);
    if (q != d.queue.end())
      d.queue.erase(q);
  }
  d.enqueue(id, true);
  return rec;
}

std::vector<std::string> run_service::resume_unfinished() {
  auto& d = *impl_;
  std::vector<std::string> ids;
  for (const auto& rec : d.db->unfinished_runs()) {
    {
      std::lock_guard<std::mutex> guard{d.mtx};
      if (d.active.count(rec.id) > 0
          || std::find(d.queue.begin(), d.queue.end(), rec.id)
               != d.queue.end())
        continue;
    }
    ids.push_back(rec.id);
    d.enqueue(rec.id, false);
  }
  if (!ids.empty())
    spdlog::info("run service: resuming {} unfinished run(s)", ids.size());
  return ids;
}

stored_run run_service::wait(const std::string& id,
                             std::chrono::milliseconds timeout) {
  auto& d = *impl_;
  auto until = std::chrono::steady_clock::now() + timeout;
  std::unique_lock<std::mutex> lock{d.mtx};
  for (;;) {
    lock.unlock();
    auto rec = d.db->get_run(id);
    lock.lock();
    if (!rec)
      throw not_found_error("no run '" + id + "'");
    if (is_finished_status(rec->status) || d.stopping
        || std::chrono::steady_clock::now() >= until)
      return *rec;
    // Woken by every run that ends; a bounded wait as well, for a run that
    // another process (sharing the store) finishes.
    d.changed.wait_until(lock, std::min(until, std::chrono::steady_clock::now()
                                                 + std::chrono::seconds{1}));
  }
}

std::vector<json> run_service::trace(const std::string& id) {
  auto& d = *impl_;
  if (!d.db->get_run(id))
    throw not_found_error("no run '" + id + "'");
  std::vector<json> records;
  int64_t after = 0;
  for (;;) {
    auto batch = d.db->events_after(id, after, 1000);
    if (batch.empty())
      break;
    for (auto& ev : batch) {
      after = ev.seq;
      if (ev.data.value("type", "") != "trace")
        continue;
      auto& rec = ev.data["record"];
      if (rec.value("type", "") == "span_start")
        continue;
      records.push_back(std::move(rec));
    }
  }
  return records;
}

uint64_t run_service::subscribe(const std::string& run_id, int64_t after,
                                event_fn fn) {
  auto& d = *impl_;
  if (!d.db->get_run(run_id))
    throw not_found_error("no run '" + run_id + "'");
  uint64_t token;
  {
    std::lock_guard<std::mutex> guard{d.sub_mtx};
    token = d.next_token++;
    auto& sub = d.subs[token];
    sub.run_id = run_id;
    sub.last = after;
    sub.fn = std::move(fn);
  }
  // Events appended from now on wait in `pending` while the stored ones are
  // read; both are then delivered in order, none twice.
  int64_t from = after;
  for (;;) {
    auto batch = d.db->events_after(run_id, from, 1000);
    if (batch.empty())
      break;
    from = batch.back().seq;
    std::lock_guard<std::mutex> guard{d.sub_mtx};
    auto i = d.subs.find(token);
    if (i == d.subs.end())
      return token;
    for (auto& ev : batch)
      if (ev.seq > i->second.last) {
        i->second.last = ev.seq;
        i->second.fn(ev.seq, ev.data);
      }
  }
  std::lock_guard<std::mutex> guard{d.sub_mtx};
  auto i = d.subs.find(token);
  if (i == d.subs.end())
    return token;
  auto& sub = i->second;
  for (auto& [seq, data] : sub.pending)
    if (seq > sub.last) {
      sub.last = seq;
      sub.fn(seq, data);
    }
  sub.pending.clear();
  sub.ready = true;
  return token;
}

void run_service::unsubscribe(uint64_t token) {
  std::lock_guard<std::mutex> guard{impl_->sub_mtx};
  impl_->subs.erase(token);
}

std::vector<approval_request> run_service::pending_approvals() {
  std::vector<approval_request> all;
  for (auto& [name, s] : impl_->slots) {
    auto some = s->rt->pending_approvals();
    all.insert(all.end(), some.begin(), some.end());
  }
  std::stable_sort(all.begin(), all.end(),
                   [](const auto& a, const auto& b) {
                     return a.created_ms < b.created_ms;
                   });
  return all;
}

approval_request run_service::decide(const std::string& request_id,
                                     approval_verdict verdict,
                                     const std::string& who,
                                     const std::string& note) {
  for (auto& [name, s] : impl_->slots) {
    auto pending = s->rt->pending_approvals();
    for (const auto& req : pending)
      if (req.request_id == request_id) {
        try {
          return s->rt->decide(request_id, verdict, who, note);
        } catch (const std::invalid_argument& ex) {
          // Decided or expired in between.
          throw not_found_error(ex.what());
        }
      }
  }
  throw not_found_error("no approval request '" + request_id
                        + "' is pending");
}

int64_t run_service::queued() const {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  return static_cast<int64_t>(impl_->queue.size());
}

int64_t run_service::running() const {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  return static_cast<int64_t>(
    std::count_if(impl_->active.begin(), impl_->active.end(),
                  [](const auto& run) { return !run.second.ended; }));
}

store& run_service::db() {
  return *impl_->db;
}

std::vector<std::pair<std::string, runtime*>> run_service::runtimes() {
  std::vector<std::pair<std::string, runtime*>> out;
  for (auto& [name, s] : impl_->slots)
    out.emplace_back(name, s->rt.get());
  return out;
}

void run_service::shutdown() {
  if (impl_)
    impl_->stop();
}

} // namespace troupe

#include "supervisors/supervisor.hpp"

#include <algorithm>
#include <deque>
#include <map>
#include <stdexcept>

#include <caf/actor_system.hpp>
#include <caf/exit_reason.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

#include "actors/span_recorder.hpp"
#include "messages/errors.hpp"
#include "runtime/clock.hpp"

namespace troupe {

namespace {

/// Starts the children of a pending restart (internal to the supervisor).
using sup_restart_atom = caf::atom_constant<caf::atom("sup_rstrt")>;

using supervisor_impl
  = supervisor_actor::extend<caf::reacts_to<sup_restart_atom, uint64_t>>;

const char* to_string(restart_strategy x) {
  switch (x) {
    case restart_strategy::one_for_one:
      return "one_for_one";
    case restart_strategy::one_for_all:
      return "one_for_all";
    case restart_strategy::rest_for_one:
      return "rest_for_one";
  }
  return "unknown";
}

struct child_slot {
  child_spec spec;
  caf::actor current;
  int64_t restarts = 0;
};

struct supervisor_state {
  static inline const char* name = "troupe.supervisor";

  supervisor_config cfg;
  std::vector<child_slot> children;
  std::deque<std::chrono::steady_clock::time_point> recent;
  int64_t restarts = 0;
  int64_t retired = 0;
  span_recorder trace;
  std::string trace_id;
  std::string span_id;
  /// Callers waiting for a child being restarted, by child index.
  std::map<size_t, std::vector<caf::typed_response_promise<caf::actor>>>
    waiters;
  /// Restarts waiting for their backoff: ticket -> child indices.
  std::map<uint64_t, std::vector<size_t>> pending;
  uint64_t next_ticket = 1;
};

using self_ptr = supervisor_impl::stateful_pointer<supervisor_state>;

void event(self_ptr self, const char* name, json attrs) {
  auto& st = self->state;
  attrs["troupe.supervisor"] = st.cfg.name;
  st.trace.event(st.trace_id, st.span_id, name, [&] { return std::move(attrs); });
}

/// Starts (or restarts) one child and monitors it.
void start_child(self_ptr self, size_t index) {
  auto& child = self->state.children[index];
  child.current = child.spec.factory(self->system());
  if (!child.current)
    throw std::runtime_error("supervisor '" + self->state.cfg.name
                             + "': the factory of child '" + child.spec.name
                             + "' returned no actor");
  self->monitor(child.current);
  auto i = self->state.waiters.find(index);
  if (i != self->state.waiters.end()) {
    for (auto& rp : i->second)
      rp.deliver(child.current);
    self->state.waiters.erase(i);
  }
}

/// Fails every caller waiting for a child (`index`, or all when npos).
void fail_waiters(self_ptr self, size_t index, const std::string& why) {
  auto& waiters = self->state.waiters;
  for (auto i = waiters.begin(); i != waiters.end();) {
    if (index != std::string::npos && i->first != index) {
      ++i;
      continue;
    }
    for (auto& rp : i->second)
      rp.deliver(make_error(errc::unavailable, why));
    i = waiters.erase(i);
  }
}

/// Stops a child on purpose: no down message will reach us for it.
void stop_child(self_ptr self, child_slot& child, const caf::error& reason) {
  if (!child.current)
    return;
  self->demonitor(child.current);
  self->send_exit(child.current, reason);
  child.current = nullptr;
}

void stop_all(self_ptr self, const caf::error& reason) {
  for (auto i = self->state.children.rbegin(); i != self->state.children.rend();
       ++i)
    stop_child(self, *i, reason);
}

/// Ends the supervisor: the restart intensity was exceeded.
void give_up(self_ptr self, const child_slot& failed,
             const caf::error& reason) {
  auto& st = self->state;
  auto why = "supervisor '" + st.cfg.name + "' gave up: more than "
             + std::to_string(st.cfg.max_restarts) + " restart(s) within "
             + std::to_string(st.cfg.window.count()) + " ms; last, child '"
             + failed.spec.name + "' ended: " + error_text(reason);
  spdlog::error("{}", why);
  event(self, "supervisor.give_up",
        json{{"troupe.child", failed.spec.name}, {"troupe.reason", why}});
  stop_all(self, caf::exit_reason::user_shutdown);
  fail_waiters(self, std::string::npos, why);
  self->quit(make_error(errc::crashed, why));
}

void run_restart(self_ptr self, uint64_t ticket) {
  auto& st = self->state;
  auto i = st.pending.find(ticket);
  if (i == st.pending.end())
    return;
  auto indices = std::move(i->second);
  st.pending.erase(i);
  for (auto index : indices) {
    start_child(self, index);
    auto& child = st.children[index];
    ++child.restarts;
    event(self, "supervisor.restarted",
          json{{"troupe.child", child.spec.name},
               {"troupe.child.restarts", child.restarts}});
  }
}

void on_child_down(self_ptr self, caf::down_msg& msg) {
  auto& st = self->state;
  auto hit = std::find_if(st.children.begin(), st.children.end(),
                          [&](const child_slot& c) {
                            return c.current && c.current.address() == msg.source;
                          });
  if (hit == st.children.end())
    return; // a child we stopped on purpose, or not ours
  auto index = static_cast<size_t>(hit - st.children.begin());
  auto& child = *hit;
  child.current = nullptr;
  auto abnormal = is_abnormal(msg.reason);
  auto restart = child.spec.restart == restart_policy::permanent
                 || (child.spec.restart == restart_policy::transient && abnormal);
  if (!restart) {
    ++st.retired;
    fail_waiters(self, index, "child '" + child.spec.name + "' of supervisor '"
                                + st.cfg.name + "' ended and is not restarted");
    event(self, "supervisor.child_retired",
          json{{"troupe.child", child.spec.name},
               {"troupe.reason", error_text(msg.reason)}});
    return;
  }
  // Restart intensity.
  auto now = std::chrono::steady_clock::now();
  while (!st.recent.empty() && now - st.recent.front() > st.cfg.window)
    st.recent.pop_front();
  if (static_cast<int32_t>(st.recent.size()) >= st.cfg.max_restarts) {
    give_up(self, child, msg.reason);
    return;
  }
  st.recent.push_back(now);
  ++st.restarts;
  // Which children restart together.
  std::vector<size_t> indices;
  switch (st.cfg.strategy) {
    case restart_strategy::one_for_one:
      indices.push_back(index);
      break;
    case restart_strategy::one_for_all:
      for (size_t i = 0; i < st.children.size(); ++i)
        indices.push_back(i);
      break;
    case restart_strategy::rest_for_one:
      for (size_t i = index; i < st.children.size(); ++i)
        indices.push_back(i);
      break;
  }
  for (auto i : indices)
    stop_child(self, st.children[i], caf::exit_reason::user_shutdown);
  // Backoff: base * 2^(k-1) for the k-th restart in the window.
  auto delay = std::chrono::milliseconds{0};
  if (st.cfg.backoff_base.count() > 0) {
    auto shift = std::min<size_t>(st.recent.size() - 1, 20);
    delay = std::min(st.cfg.backoff_cap, st.cfg.backoff_base * (int64_t{1} << shift));
  }
  spdlog::debug("supervisor {}: child '{}' ended ({}); restarting {} child(ren) "
               "in {} ms",
               st.cfg.name, child.spec.name, error_text(msg.reason),
               indices.size(), delay.count());
  json names = json::array();
  for (auto i : indices)
    names.push_back(st.children[i].spec.name);
  event(self, "supervisor.restart",
        json{{"troupe.child", child.spec.name},
             {"troupe.reason", error_text(msg.reason)},
             {"troupe.strategy", to_string(st.cfg.strategy)},
             {"troupe.restarting", names},
             {"troupe.backoff_ms", delay.count()}});
  auto ticket = st.next_ticket++;
  st.pending.emplace(ticket, std::move(indices));
  if (delay.count() == 0)
    run_restart(self, ticket);
  else
    self->delayed_send(self, delay, sup_restart_atom::value, ticket);
}

supervisor_impl::behavior_type supervisor(self_ptr self, supervisor_config cfg,
                                          std::vector<child_spec> specs) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.trace = span_recorder{st.cfg.tracer};
  st.trace_id = new_trace_id();
  st.span_id = new_span_id();
  for (auto& spec : specs)
    st.children.push_back(child_slot{std::move(spec), nullptr, 0});
  self->set_down_handler([self](caf::down_msg& msg) { on_child_down(self, msg); });
  // Stopped by its parent: take the children along.
  self->set_exit_handler([self](caf::exit_msg& msg) {
    stop_all(self, msg.reason);
    fail_waiters(self, std::string::npos,
                 "supervisor '" + self->state.cfg.name + "' stopped");
    self->quit(msg.reason);
  });
  self->set_exception_handler([self](std::exception_ptr& eptr) -> caf::error {
    auto what = exception_text(eptr);
    stop_all(self, caf::exit_reason::user_shutdown);
    return make_error(errc::crashed, "supervisor '" + self->state.cfg.name
                                       + "' crashed: " + what);
  });
  for (size_t i = 0; i < st.children.size(); ++i)
    start_child(self, i);
  return {
    [self](sup_child_atom, const std::string& name) -> caf::result<caf::actor> {
      for (auto& child : self->state.children)
        if (child.spec.name == name) {
          if (!child.current)
            return make_error(errc::unavailable,
                              "child '" + name + "' of supervisor '"
                                + self->state.cfg.name
                                + "' is not running (restarting or retired)");
          return child.current;
        }
      return make_error(errc::invalid_input, "supervisor '"
                                               + self->state.cfg.name
                                               + "' has no child '" + name
                                               + "'");
    },
    [self](sup_await_atom, const std::string& name,
           const caf::actor_addr& stale) -> caf::result<caf::actor> {
      auto& st = self->state;
      for (size_t i = 0; i < st.children.size(); ++i) {
        auto& child = st.children[i];
        if (child.spec.name != name)
          continue;
        if (child.current && child.current.address() != stale)
          return child.current;
        if (child.current) {
          // The caller saw this incarnation die; its down message is on the
          // way and the restart will answer.
          auto rp = self->make_response_promise<caf::actor>();
          st.waiters[i].push_back(rp);
          return rp;
        }
        bool restarting = false;
        for (auto& kvp : st.pending)
          restarting |= std::find(kvp.second.begin(), kvp.second.end(), i)
                        != kvp.second.end();
        if (!restarting)
          return make_error(errc::unavailable,
                            "child '" + name + "' of supervisor '" + st.cfg.name
                              + "' ended and is not restarted");
        auto rp = self->make_response_promise<caf::actor>();
        st.waiters[i].push_back(rp);
        return rp;
      }
      return make_error(errc::invalid_input, "supervisor '" + st.cfg.name
                                               + "' has no child '" + name
                                               + "'");
    },
    [self](sup_stats_atom) {
      auto& st = self->state;
      supervisor_stats out;
      out.name = st.cfg.name;
      out.restarts = st.restarts;
      out.retired = st.retired;
      for (auto& child : st.children)
        out.children.push_back(
          {child.spec.name, child.restarts, static_cast<bool>(child.current)});
      return out;
    },
    [self](sup_restart_atom, uint64_t ticket) { run_restart(self, ticket); },
  };
}

} // namespace

bool is_abnormal(const caf::error& reason) {
  return reason && reason != caf::exit_reason::normal
         && reason != caf::exit_reason::user_shutdown;
}

supervisor_actor spawn_supervisor(caf::actor_system& sys, supervisor_config cfg,
                                  std::vector<child_spec> children) {
  auto fail = [&](const std::string& what) {
    throw std::invalid_argument("supervisor '" + cfg.name + "': " + what);
  };
  if (cfg.max_restarts < 0)
    fail("max_restarts must not be negative");
  if (cfg.window.count() <= 0)
    fail("the restart window must be positive");
  if (cfg.backoff_base.count() < 0 || cfg.backoff_cap < cfg.backoff_base)
    fail("backoff needs 0 <= base <= cap");
  std::vector<std::string> names;
  for (size_t i = 0; i < children.size(); ++i) {
    auto& c = children[i];
    if (c.name.empty())
      fail("child " + std::to_string(i) + " has no name");
    if (!c.factory)
      fail("child '" + c.name + "' has no factory");
    if (std::find(names.begin(), names.end(), c.name) != names.end())
      fail("child name '" + c.name + "' is used twice");
    names.push_back(c.name);
  }
  return sys.spawn(supervisor, std::move(cfg), std::move(children));
}

child_spec supervisor_child(std::string name, supervisor_config cfg,
                            std::vector<child_spec> children,
                            restart_policy restart) {
  cfg.name = name;
  child_spec spec;
  spec.name = std::move(name);
  spec.restart = restart;
  spec.factory = [cfg, children](caf::actor_system& sys) {
    return caf::actor_cast<caf::actor>(spawn_supervisor(sys, cfg, children));
  };
  return spec;
}

} // namespace troupe

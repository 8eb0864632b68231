#include "actors/model_gateway.hpp"

#include <algorithm>
#include <list>
#include <memory>
#include <stdexcept>
#include <unordered_map>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

#include "actors/span_recorder.hpp"
#include "messages/errors.hpp"
#include "runtime/clock.hpp"

namespace troupe {

namespace {

using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

/// How long to wait for a member: the request's deadline (plus a moment for
/// the member's own "deadline passed" answer to arrive), else `fallback`.
milliseconds member_wait(const chat_request& req, milliseconds fallback) {
  if (req.deadline_ms <= 0)
    return fallback;
  return milliseconds{std::max<int64_t>(req.deadline_ms - now_ms(), 0)}
         + milliseconds{1000};
}

// -- fallback -----------------------------------------------------------------

struct fallback_state {
  static inline const char* name = "troupe.model_fallback";
  std::string name_;
  std::vector<fallback_member> chain;
  milliseconds member_timeout{0};
  span_recorder trace;
};

using fallback_self = model_actor::stateful_pointer<fallback_state>;

/// What one request went through so far.
struct fallback_try {
  caf::typed_response_promise<chat_response> promise;
  chat_request req;
  std::string failures;
};

void ask_member(fallback_self self, std::shared_ptr<fallback_try> t,
                size_t index) {
  auto& st = self->state;
  const auto& member = st.chain[index];
  // A member gets its share of the time left, so a hanging one leaves the
  // next ones time to answer.
  auto req = t->req;
  auto members_left = static_cast<int64_t>(st.chain.size() - index);
  if (req.deadline_ms > 0 && members_left > 1) {
    auto now = now_ms();
    auto left = req.deadline_ms - now;
    if (left > 0)
      req.deadline_ms = now + left / members_left;
  }
  auto wait = member_wait(req, st.member_timeout);
  self->request(member.model, wait, std::move(req))
    .then([t](chat_response& resp) mutable { t->promise.deliver(std::move(resp)); },
          [self, t, index](caf::error& err) mutable {
            auto& st = self->state;
            const auto& failed = st.chain[index].name;
            auto why = error_sentence(err);
            t->failures += (t->failures.empty() ? "" : "; ") + failed + ": "
                           + why;
            bool passed = t->req.deadline_ms > 0
                          && now_ms() >= t->req.deadline_ms;
            if (index + 1 >= st.chain.size() || passed) {
              auto code = passed ? errc::timeout : errc::model_failed;
              t->promise.deliver(make_error(
                code, "model '" + st.name_ + "': "
                        + (passed ? "the deadline passed; " : "every model of "
                                                              "the fallback "
                                                              "chain failed: ")
                        + t->failures));
              return;
            }
            const auto& next = st.chain[index + 1].name;
            spdlog::warn("model '{}': {} failed ({}); falling back to {}",
                         st.name_, failed, why, next);
            st.trace.event(t->req.ref.trace_id, t->req.ref.span_id,
                           "model.fallback", [&] {
                             return json{{"troupe.model.failed", failed},
                                         {"troupe.model.next", next},
                                         {"error.type", why}};
                           });
            ask_member(self, std::move(t), index + 1);
          });
}

model_actor::behavior_type fallback(fallback_self self, std::string name,
                                    std::vector<fallback_member> chain,
                                    milliseconds member_timeout,
                                    tracer_actor tracer) {
  auto& st = self->state;
  st.name_ = std::move(name);
  st.chain = std::move(chain);
  st.member_timeout = member_timeout;
  st.trace = span_recorder{std::move(tracer)};
  return {
    [self](chat_request& req) -> caf::result<chat_response> {
      auto t = std::make_shared<fallback_try>();
      t->promise = self->make_response_promise<chat_response>();
      t->req = std::move(req);
      auto promise = t->promise;
      ask_member(self, std::move(t), 0);
      return promise;
    },
  };
}

// -- cache --------------------------------------------------------------------

struct cache_entry {
  chat_response response;
  steady::time_point expires;
  std::list<std::string>::iterator lru;
};

struct cache_state {
  static inline const char* name = "troupe.model_cache";
  std::string name_;
  model_cache_config cfg;
  model_actor inner;
  span_recorder trace;
  std::unordered_map<std::string, cache_entry> entries;
  /// Most recently used first.
  std::list<std::string> lru;
  /// Requests waiting for an identical one in flight, by key.
  std::unordered_map<std::string,
                     std::vector<caf::typed_response_promise<chat_response>>>
    in_flight;
};

using cache_self = model_actor::stateful_pointer<cache_state>;

/// A cached reply as a hit returns it: nothing was billed for it.
chat_response as_hit(chat_response r) {
  r.usage = token_usage{};
  return r;
}

void store(cache_state& st, const std::string& key, const chat_response& r) {
  if (st.cfg.max_entries == 0)
    return;
  auto i = st.entries.find(key);
  if (i != st.entries.end()) {
    st.lru.erase(i->second.lru);
    st.entries.erase(i);
  }
  while (st.entries.size() >= st.cfg.max_entries && !st.lru.empty()) {
    st.entries.erase(st.lru.back());
    st.lru.pop_back();
  }
  st.lru.push_front(key);
  st.entries.emplace(key, cache_entry{r, steady::now() + st.cfg.ttl,
                                      st.lru.begin()});
}

model_actor::behavior_type cache(cache_self self, std::string name,
                                 model_cache_config cfg, model_actor inner,
                                 tracer_actor tracer) {
  auto& st = self->state;
  st.name_ = std::move(name);
  st.cfg = cfg;
  st.inner = std::move(inner);
  st.trace = span_recorder{std::move(tracer)};
  return {
    [self](chat_request& req) -> caf::result<chat_response> {
      auto& st = self->state;
      auto key = model_cache_key(req);
      auto hit = [&](const char* how) {
        st.trace.event(req.ref.trace_id, req.ref.span_id, "model.cache_hit",
                       [&] {
                         return json{{"gen_ai.request.model", st.name_},
                                     {"troupe.cache.how", how}};
                       });
      };
      auto i = st.entries.find(key);
      if (i != st.entries.end()) {
        if (steady::now() < i->second.expires) {
          st.lru.splice(st.lru.begin(), st.lru, i->second.lru);
          hit("stored");
          return as_hit(i->second.response);
        }
        st.lru.erase(i->second.lru);
        st.entries.erase(i);
      }
      auto promise = self->make_response_promise<chat_response>();
      auto waiting = st.in_flight.find(key);
      if (waiting != st.in_flight.end()) {
        hit("shared");
        waiting->second.push_back(promise);
        return promise;
      }
      st.in_flight[key].push_back(promise);
      auto timeout = member_wait(req, std::chrono::minutes{10});
      self->request(st.inner, timeout, std::move(req))
        .then(
          [self, key](chat_response& resp) {
            auto& st = self->state;
            store(st, key, resp);
            auto waiters = std::move(st.in_flight[key]);
            st.in_flight.erase(key);
            for (size_t n = 0; n < waiters.size(); ++n)
              waiters[n].deliver(n == 0 ? resp : as_hit(resp));
          },
          [self, key](caf::error& err) {
            auto& st = self->state;
            auto waiters = std::move(st.in_flight[key]);
            st.in_flight.erase(key);
            for (auto& w : waiters)
              w.deliver(err);
          });
      return promise;
    },
  };
}

} // namespace

model_actor spawn_model_fallback(caf::actor_system& sys, std::string name,
                                 std::vector<fallback_member> chain,
                                 std::chrono::milliseconds member_timeout,
                                 tracer_actor tracer) {
  if (chain.empty())
    throw std::invalid_argument("model '" + name
                                + "': a fallback chain needs a model");
  for (const auto& m : chain)
    if (!m.model)
      throw std::invalid_argument("model '" + name + "': fallback member '"
                                  + m.name + "' is not an actor");
  return sys.spawn(fallback, std::move(name), std::move(chain), member_timeout,
                   std::move(tracer));
}

std::string model_cache_key(const chat_request& req) {
  json key{{"model", req.model},
           {"messages", req.messages},
           {"tools", req.tools},
           {"params", req.params.value}};
  // A scripted model answers by agent too: its replies are not shared.
  if (req.model.rfind("scripted:", 0) == 0)
    key["agent"] = req.agent;
  return key.dump(-1, ' ', false, json::error_handler_t::replace);
}

model_actor spawn_model_cache(caf::actor_system& sys, std::string name,
                              model_cache_config cfg, model_actor inner,
                              tracer_actor tracer) {
  if (!inner)
    throw std::invalid_argument("model '" + name + "': the cache needs a model");
  if (cfg.ttl.count() <= 0)
    throw std::invalid_argument("model '" + name + "': cache ttl must be > 0");
  return sys.spawn(cache, std::move(name), cfg, std::move(inner),
                   std::move(tracer));
}

} // namespace troupe

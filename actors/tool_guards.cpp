#include "actors/tool_guards.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

#include "actors/span_recorder.hpp"
#include "messages/errors.hpp"
#include "runtime/clock.hpp"

namespace troupe {

namespace {

/// The slowest rate a limiter takes: about one call a week.
constexpr double min_rate_per_sec = 2e-6;


using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

/// How long a guard waits for its inner actor beyond the call's deadline: the
/// inner actor answers a passed deadline itself, this is only its slack.
constexpr auto answer_grace = std::chrono::seconds{2};

/// How long a guard waits for its inner actor when the call has no deadline.
constexpr auto no_deadline_timeout = std::chrono::minutes{10};

/// The request timeout towards an inner actor for a call with `deadline_ms`.
milliseconds forward_timeout(int64_t deadline_ms) {
  if (deadline_ms <= 0)
    return no_deadline_timeout;
  return milliseconds{std::max<int64_t>(deadline_ms - now_ms(), 0)}
         + answer_grace;
}

int64_t elapsed_ms(steady::time_point since, steady::time_point now) {
  return std::chrono::duration_cast<milliseconds>(now - since).count();
}

bool contains(const std::vector<tool_error_kind>& kinds, tool_error_kind x) {
  return std::find(kinds.begin(), kinds.end(), x) != kinds.end();
}

std::string kind_name(tool_error_kind x) {
  return json(x).get<std::string>();
}

std::string plural(int64_t n, const std::string& word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

/// A failed result for `call` that never reached the tool.
tool_result refusal(const tool_call& call, tool_error_kind kind,
                    std::string message) {
  return failed_tool_result(call, kind, std::move(message), 0);
}

/// The result of a call whose inner actor did not answer (a request error):
/// timeout when the request timed out, transient otherwise.
tool_result no_answer(const std::string& call_id, const std::string& tool,
                      const caf::error& err) {
  tool_result r;
  r.call_id = call_id;
  r.name = tool;
  r.ok = false;
  auto kind = err == caf::sec::request_timeout ? tool_error_kind::timeout
                                               : tool_error_kind::transient;
  r.error = {kind, "tool '" + tool + "' did not answer: " + error_text(err)};
  r.attempts = 1;
  return r;
}

// -- retrier ------------------------------------------------------------------

/// A backoff has passed: run the next attempt of call `seq`.
using rt_retry_atom = caf::atom_constant<caf::atom("rt_retry")>;

using retrier_actor =
  tool_actor::extend<caf::reacts_to<rt_retry_atom, uint64_t>>;

/// One call the retrier runs.
struct retry_call {
  caf::typed_response_promise<tool_result> promise;
  tool_call call;
  /// The attempt running (1, 2, ...).
  int32_t attempt = 0;
  int64_t started_ns = 0;
  /// The backoff waited before the current attempt.
  int64_t backoff_ms = 0;
  std::vector<tool_attempt> log;
};

struct retrier_state {
  static inline const char* name = "troupe.tool_retrier";
  std::string tool;
  retry_policy policy;
  tool_actor inner;
  span_recorder trace;
  std::mt19937_64 rng{std::random_device{}()};
  /// By per-call sequence number.
  std::unordered_map<uint64_t, retry_call> calls;
  uint64_t next_seq = 1;
};

using retrier_self = retrier_actor::stateful_pointer<retrier_state>;

void on_attempt_done(retrier_self self, uint64_t seq, tool_result r);

void start_attempt(retrier_self self, uint64_t seq) {
  auto& st = self->state;
  auto i = st.calls.find(seq);
  if (i == st.calls.end())
    return;
  auto& rc = i->second;
  ++rc.attempt;
  rc.started_ns = now_ns();
  auto call = rc.call;
  auto timeout = forward_timeout(call.deadline_ms);
  if (st.policy.attempt_timeout.count() > 0) {
    timeout = st.policy.attempt_timeout;
    auto limit = now_ms() + timeout.count();
    call.deadline_ms = call.deadline_ms > 0
                         ? std::min(call.deadline_ms, limit)
                         : limit;
  }
  auto call_id = call.call_id;
  self->request(st.inner, timeout, std::move(call))
    .then(
      [self, seq](tool_result& r) { on_attempt_done(self, seq, std::move(r)); },
      [self, seq, call_id](caf::error& err) {
        on_attempt_done(self, seq, no_answer(call_id, self->state.tool, err));
      });
}

/// Answers call `seq` with `r`, its attempt count and log.
void finish(retrier_self self, uint64_t seq, tool_result r,
            const std::string& suffix) {
  auto& st = self->state;
  auto i = st.calls.find(seq);
  if (i == st.calls.end())
    return;
  auto& rc = i->second;
  r.attempts = rc.attempt;
  r.attempt_log = std::move(rc.log);
  r.error.message += suffix;
  rc.promise.deliver(std::move(r));
  st.calls.erase(i);
}

void on_attempt_done(retrier_self self, uint64_t seq, tool_result r) {
  auto& st = self->state;
  auto i = st.calls.find(seq);
  if (i == st.calls.end())
    return;
  auto& rc = i->second;
  auto outcome = tool_error_kind::none;
  if (!r.ok)
    outcome = r.error.kind == tool_error_kind::none ? tool_error_kind::permanent
                                                    : r.error.kind;
  rc.log.push_back(
    tool_attempt{rc.attempt, rc.started_ns, now_ns(), rc.backoff_ms, outcome});
  if (r.ok || !contains(st.policy.retry_on, outcome)) {
    auto suffix = !r.ok && rc.attempt > 1
                    ? " (after " + plural(rc.attempt, "attempt") + ")"
                    : std::string{};
    finish(self, seq, std::move(r), suffix);
    return;
  }
  auto gave_up = " (gave up after " + plural(rc.attempt, "attempt");
  if (rc.attempt > st.policy.max_retries) {
    spdlog::debug("tool '{}' call {}: {}; gave up after {}", st.tool,
                  rc.call.call_id, kind_name(outcome),
                  plural(rc.attempt, "attempt"));
    finish(self, seq, std::move(r), gave_up + ")");
    return;
  }
  auto next = rc.attempt + 1;
  std::uniform_real_distribution<double> unit{0.0, 1.0};
  auto delay = backoff_delay(st.policy, next, unit(st.rng));
  if (rc.call.deadline_ms > 0
      && now_ms() + delay.count() >= rc.call.deadline_ms) {
    finish(self, seq, std::move(r),
           gave_up + ": a backoff of " + std::to_string(delay.count())
             + " ms would pass the call's deadline)");
    return;
  }
  st.trace.event(rc.call.ref.trace_id, rc.call.ref.span_id, "tool.retry", [&] {
    return json{{"gen_ai.tool.name", st.tool},
                {"troupe.attempt", next},
                {"troupe.backoff_ms", delay.count()},
                {"error.type", kind_name(outcome)}};
  });
  spdlog::debug("tool '{}' call {}: {} on attempt {}; attempt {} in {} ms",
                st.tool, rc.call.call_id, kind_name(outcome), rc.attempt, next,
                delay.count());
  rc.backoff_ms = delay.count();
  if (delay.count() == 0)
    self->send(self, rt_retry_atom::value, seq);
  else
    self->delayed_send(self, delay, rt_retry_atom::value, seq);
}

retrier_actor::behavior_type retrier(retrier_self self, std::string tool,
                                     retry_policy policy, tool_actor inner,
                                     tracer_actor tracer) {
  auto& st = self->state;
  st.tool = std::move(tool);
  st.policy = std::move(policy);
  st.inner = std::move(inner);
  st.trace = span_recorder{std::move(tracer)};
  return {
    [self](tool_call& call) -> caf::result<tool_result> {
      auto& st = self->state;
      auto seq = st.next_seq++;
      auto promise = self->make_response_promise<tool_result>();
      retry_call rc;
      rc.promise = promise;
      rc.call = std::move(call);
      st.calls.emplace(seq, std::move(rc));
      start_attempt(self, seq);
      return promise;
    },
    [self](rt_retry_atom, uint64_t seq) { start_attempt(self, seq); },
  };
}

// -- breaker ------------------------------------------------------------------

/// What a result says about the tool's health.
enum class health { success, failure, neutral };

struct breaker_data {
  static inline const char* name = "troupe.tool_breaker";
  std::string tool;
  breaker_config cfg;
  tool_actor inner;
  span_recorder trace;
  breaker_state state = breaker_state::closed;
  /// Consecutive failures; a success resets it.
  int32_t failures = 0;
  /// Bumped on every transition: results of calls let through in an earlier
  /// state do not count.
  uint64_t epoch = 0;
  steady::time_point opened_at;
  /// The call that opened the circuit (for transitions no call causes).
  run_ref opener;
  int32_t probes_started = 0;
  int32_t probes_succeeded = 0;
};

using breaker_self = breaker_actor::stateful_pointer<breaker_data>;

/// A failure is a kind in trip_on; a call whose body never ran says nothing
/// (a limiter or another breaker refused it, the adapter rejected its
/// arguments, or the ledger answered it with a recorded result); anything
/// else means the tool answered.
health judge(const breaker_config& cfg, const tool_result& r) {
  if (r.replayed)
    return health::neutral;
  if (r.ok)
    return health::success;
  if (contains(cfg.trip_on, r.error.kind))
    return health::failure;
  if (r.error.kind == tool_error_kind::circuit_open
      || r.error.kind == tool_error_kind::rate_limited
      || r.error.kind == tool_error_kind::invalid_arguments
      || r.error.kind == tool_error_kind::denied)
    return health::neutral;
  return health::success;
}

void move_to(breaker_self self, breaker_state to, const run_ref& cause) {
  auto& st = self->state;
  auto from = st.state;
  if (from == to)
    return;
  st.trace.event(cause.trace_id, cause.span_id, "breaker.transition", [&] {
    return json{{"gen_ai.tool.name", st.tool},
                {"troupe.breaker.from", to_string(from)},
                {"troupe.breaker.to", to_string(to)},
                {"troupe.breaker.failures", st.failures}};
  });
  std::string why;
  switch (to) {
    case breaker_state::open:
      why = "after " + plural(st.failures, "consecutive failure")
            + "; cooling down for " + std::to_string(st.cfg.cooldown.count())
            + " ms";
      break;
    case breaker_state::half_open:
      why = "cool-down passed; letting "
            + plural(st.cfg.half_open_probes, "probe call") + " through";
      break;
    case breaker_state::closed:
      why = "probe calls succeeded";
      break;
  }
  spdlog::info("breaker of tool '{}': {} -> {}: {}", st.tool, to_string(from),
               to_string(to), why);
  st.state = to;
  ++st.epoch;
  st.probes_started = 0;
  st.probes_succeeded = 0;
  if (to == breaker_state::open) {
    st.opened_at = steady::now();
    st.opener = cause;
  } else if (to == breaker_state::closed) {
    st.failures = 0;
  }
}

/// An open circuit whose cool-down has passed is half-open.
void refresh(breaker_self self, const run_ref& cause) {
  auto& st = self->state;
  if (st.state == breaker_state::open
      && steady::now() - st.opened_at >= st.cfg.cooldown)
    move_to(self, breaker_state::half_open, cause);
}

void on_outcome(breaker_self self, uint64_t epoch, health h,
                const run_ref& cause) {
  auto& st = self->state;
  if (epoch != st.epoch)
    return;
  switch (st.state) {
    case breaker_state::closed:
      if (h == health::failure) {
        ++st.failures;
        if (st.cfg.failure_threshold > 0
            && st.failures >= st.cfg.failure_threshold)
          move_to(self, breaker_state::open, cause);
      } else if (h == health::success) {
        st.failures = 0;
      }
      break;
    case breaker_state::half_open:
      // Every call let through in this epoch is a probe.
      if (h == health::failure) {
        ++st.failures;
        move_to(self, breaker_state::open, cause);
      } else if (h == health::success) {
        if (++st.probes_succeeded >= st.cfg.half_open_probes)
          move_to(self, breaker_state::closed, cause);
      } else {
        --st.probes_started; // it did not probe: let another call try
      }
      break;
    case breaker_state::open:
      break; // unreachable: opening starts a new epoch
  }
}

caf::result<tool_result> fail_fast(breaker_self self, const tool_call& call) {
  auto& st = self->state;
  std::string why;
  if (st.state == breaker_state::open) {
    auto left = std::chrono::ceil<milliseconds>(
      st.cfg.cooldown - (steady::now() - st.opened_at));
    why = "circuit open for tool '" + st.tool + "': "
          + plural(st.failures, "consecutive failure") + ", retry after ~"
          + std::to_string(std::max<int64_t>(left.count(), 0)) + " ms";
  } else {
    why = "circuit half-open for tool '" + st.tool + "': "
          + plural(st.failures, "consecutive failure") + ", waiting for "
          + plural(st.probes_started - st.probes_succeeded, "probe call")
          + " to finish";
  }
  return refusal(call, tool_error_kind::circuit_open, std::move(why));
}

breaker_actor::behavior_type breaker(breaker_self self, std::string tool,
                                     breaker_config cfg, tool_actor inner,
                                     tracer_actor tracer) {
  auto& st = self->state;
  st.tool = std::move(tool);
  st.cfg = std::move(cfg);
  st.inner = std::move(inner);
  st.trace = span_recorder{std::move(tracer)};
  return {
    [self](tool_call& call) -> caf::result<tool_result> {
      auto& st = self->state;
      refresh(self, call.ref);
      if (st.state == breaker_state::open)
        return fail_fast(self, call);
      if (st.state == breaker_state::half_open) {
        if (st.probes_started >= st.cfg.half_open_probes)
          return fail_fast(self, call);
        ++st.probes_started;
      }
      auto promise = self->make_response_promise<tool_result>();
      auto epoch = st.epoch;
      auto timeout = forward_timeout(call.deadline_ms);
      auto ref = call.ref;
      auto call_id = call.call_id;
      self->request(st.inner, timeout, std::move(call))
        .then(
          [self, promise, epoch, ref](tool_result& r) mutable {
            on_outcome(self, epoch, judge(self->state.cfg, r), ref);
            promise.deliver(std::move(r));
          },
          [self, promise, epoch, ref, call_id](caf::error& err) mutable {
            auto r = no_answer(call_id, self->state.tool, err);
            on_outcome(self, epoch, judge(self->state.cfg, r), ref);
            promise.deliver(std::move(r));
          });
      return promise;
    },
    [self](br_state_atom) -> std::string {
      refresh(self, self->state.opener);
      return to_string(self->state.state);
    },
  };
}

// -- limiter ------------------------------------------------------------------

/// Admission control shared by the tool and model limiters: a token bucket,
/// a cap on running calls in all and per agent, and a queue of waiting calls
/// ordered by priority (higher first), then arrival.
class admission_queue {
public:
  admission_queue() = default;

  admission_queue(limiter_config cfg, steady::time_point now)
    : cfg_(std::move(cfg)),
      tokens_(std::max(cfg_.burst, int32_t{1})),
      model_tokens_(cfg_.tokens_per_minute),
      refilled_(now) {
    // nop
  }

  /// Queues call `id` (ids grow with arrival) that is expected to use
  /// `weight` model tokens (0 for a tool call).
  void push(uint64_t id, int32_t priority, std::string agent,
            double weight = 0) {
    slot_key key{priority, id};
    queue_.emplace(key, waiting_call{std::move(agent), weight});
    index_.emplace(id, key);
  }

  /// Removes a waiting call; false when it is not waiting.
  bool remove(uint64_t id) {
    auto i = index_.find(id);
    if (i == index_.end())
      return false;
    queue_.erase(i->second);
    index_.erase(i);
    return true;
  }

  bool waiting(uint64_t id) const {
    return index_.count(id) != 0;
  }

  size_t size() const {
    return queue_.size();
  }

  /// Takes the waiting calls that may run now, in priority and arrival
  /// order; a call held only by its agent's cap is skipped, not waited for.
  /// Each holds a slot until release().
  std::vector<uint64_t> admit(steady::time_point now) {
    refill(now);
    blocked_on_tokens_ = false;
    blocked_on_model_tokens_ = false;
    std::vector<uint64_t> out;
    for (auto i = queue_.begin(); i != queue_.end();) {
      if (cfg_.max_concurrent > 0 && running_ >= cfg_.max_concurrent)
        break;
      const auto& agent = i->second.agent;
      if (cfg_.max_concurrent_per_agent > 0
          && running_of(agent) >= cfg_.max_concurrent_per_agent) {
        ++i;
        continue;
      }
      if (cfg_.rate_per_sec > 0) {
        if (tokens_ < 1 - epsilon) {
          blocked_on_tokens_ = true;
          break;
        }
      }
      if (cfg_.tokens_per_minute > 0) {
        // A call larger than a whole minute's tokens goes when the bucket
        // is full, and leaves it in debt.
        auto need = std::min(i->second.weight, cfg_.tokens_per_minute);
        if (model_tokens_ < need - epsilon) {
          blocked_on_model_tokens_ = true;
          model_tokens_needed_ = need;
          break;
        }
        model_tokens_ -= i->second.weight;
      }
      if (cfg_.rate_per_sec > 0)
        tokens_ = std::max(tokens_ - 1, 0.0);
      ++running_;
      ++per_agent_[agent];
      out.push_back(i->first.id);
      index_.erase(i->first.id);
      i = queue_.erase(i);
    }
    return out;
  }

  /// Frees the slot of an admitted call of `agent` that was expected to use
  /// `weight` model tokens and used `used`: the difference goes back to the
  /// bucket (or is owed to it).
  void release(const std::string& agent, double weight = 0, double used = 0) {
    if (cfg_.tokens_per_minute > 0)
      model_tokens_ = std::min(model_tokens_ + weight - used,
                               cfg_.tokens_per_minute);
    running_ = std::max(running_ - 1, 0);
    auto i = per_agent_.find(agent);
    if (i != per_agent_.end() && --i->second <= 0)
      per_agent_.erase(i);
  }

  /// How long until the bucket holds a token, when the last admit() stopped
  /// for want of one.
  std::optional<std::chrono::microseconds>
  refill_in(steady::time_point now) const {
    double seconds = 0;
    if (blocked_on_tokens_)
      seconds = (1 - tokens_) / cfg_.rate_per_sec;
    else if (blocked_on_model_tokens_)
      seconds = (model_tokens_needed_ - model_tokens_)
                / (cfg_.tokens_per_minute / 60);
    else
      return std::nullopt;
    auto due = refilled_
               + std::chrono::duration_cast<steady::duration>(
                 std::chrono::duration<double>(std::max(seconds, 0.0)));
    auto left = std::chrono::ceil<std::chrono::microseconds>(due - now);
    return std::max(left, std::chrono::microseconds{1});
  }

  /// The limits that hold waiting call `id`, e.g. "rate 5/s, 2 of 2 running".
  std::string holding(uint64_t id, steady::time_point now) {
    refill(now);
    std::vector<std::string> parts;
    if (cfg_.rate_per_sec > 0 && tokens_ < 1 - epsilon) {
      std::ostringstream rate;
      rate << "rate " << cfg_.rate_per_sec << "/s";
      parts.push_back(rate.str());
    }
    if (cfg_.tokens_per_minute > 0 && blocked_on_model_tokens_
        && model_tokens_ < model_tokens_needed_ - epsilon) {
      std::ostringstream rate;
      rate << "tokens " << cfg_.tokens_per_minute << "/min";
      parts.push_back(rate.str());
    }
    if (cfg_.max_concurrent > 0 && running_ >= cfg_.max_concurrent)
      parts.push_back(std::to_string(running_) + " of "
                      + std::to_string(cfg_.max_concurrent) + " running");
    auto i = index_.find(id);
    if (i != index_.end() && cfg_.max_concurrent_per_agent > 0) {
      const auto& agent = queue_.at(i->second).agent;
      if (running_of(agent) >= cfg_.max_concurrent_per_agent)
        parts.push_back(std::to_string(running_of(agent)) + " of "
                        + std::to_string(cfg_.max_concurrent_per_agent)
                        + " running for agent '" + agent + "'");
    }
    if (parts.empty() && i != index_.end()) {
      auto ahead = std::distance(queue_.begin(), queue_.find(i->second));
      parts.push_back(plural(ahead, "call") + " ahead of it");
    }
    std::string out;
    for (auto& p : parts)
      out += (out.empty() ? "" : ", ") + p;
    return out;
  }

private:
  /// Tolerance for a bucket refilled to a whole token up to rounding.
  static constexpr double epsilon = 1e-9;

  /// Queue order: higher priority first, then arrival.
  struct slot_key {
    int32_t priority;
    uint64_t id;
    bool operator<(const slot_key& other) const {
      return priority != other.priority ? priority > other.priority
                                        : id < other.id;
    }
  };

  int32_t running_of(const std::string& agent) const {
    auto i = per_agent_.find(agent);
    return i == per_agent_.end() ? 0 : i->second;
  }

  void refill(steady::time_point now) {
    if (now <= refilled_)
      return;
    auto seconds = std::chrono::duration<double>(now - refilled_).count();
    if (cfg_.rate_per_sec > 0)
      tokens_ = std::min<double>(std::max(cfg_.burst, int32_t{1}),
                                 tokens_ + seconds * cfg_.rate_per_sec);
    if (cfg_.tokens_per_minute > 0)
      model_tokens_ = std::min(cfg_.tokens_per_minute,
                               model_tokens_
                                 + seconds * cfg_.tokens_per_minute / 60);
    refilled_ = now;
  }

  struct waiting_call {
    std::string agent;
    double weight = 0;
  };

  limiter_config cfg_;
  double tokens_ = 1;
  /// The tokens-per-minute bucket (may go below zero: a debt).
  double model_tokens_ = 0;
  steady::time_point refilled_;
  bool blocked_on_tokens_ = false;
  /// The last admit() stopped at a call the tokens-per-minute bucket holds,
  /// which needs this many tokens in it.
  bool blocked_on_model_tokens_ = false;
  double model_tokens_needed_ = 0;
  int32_t running_ = 0;
  std::unordered_map<std::string, int32_t> per_agent_;
  /// Waiting calls: key -> agent.
  std::map<slot_key, waiting_call> queue_;
  std::unordered_map<uint64_t, slot_key> index_;
};

/// A queued call's max_wait (or deadline) has passed.
using lm_expire_atom = caf::atom_constant<caf::atom("lm_expire")>;

/// The token bucket holds a token again.
using lm_refill_atom = caf::atom_constant<caf::atom("lm_refill")>;

template <class Handle>
using limiter_actor_t =
  typename Handle::template extend<caf::reacts_to<lm_expire_atom, uint64_t>,
                                   caf::reacts_to<lm_refill_atom>>;

/// The tool protocol as the limiter sees it.
struct tool_side {
  using handle = tool_actor;
  using call_type = tool_call;
  using result_type = tool_result;
  /// What a failed forward needs to build its result.
  using stub = std::pair<std::string, std::string>;
  static constexpr const char* what = "tool";
  static constexpr const char* name_attr = "gen_ai.tool.name";

  static const std::string& agent(const tool_call& x) {
    return x.agent;
  }
  static const run_ref& ref(const tool_call& x) {
    return x.ref;
  }
  static int64_t deadline_ms(const tool_call& x) {
    return x.deadline_ms;
  }
  static stub stub_of(const tool_call& x) {
    return {x.call_id, x.name};
  }
  static double weight(const tool_call&) {
    return 0;
  }
  static double used(const tool_result&) {
    return 0;
  }
  static void reject(caf::typed_response_promise<tool_result>& p,
                     const tool_call& x, std::string why) {
    p.deliver(refusal(x, tool_error_kind::rate_limited, std::move(why)));
  }
  static void fail(caf::typed_response_promise<tool_result>& p, const stub& x,
                   const caf::error& err) {
    p.deliver(no_answer(x.first, x.second, err));
  }
};

/// The model protocol as the limiter sees it.
struct model_side {
  using handle = model_actor;
  using call_type = chat_request;
  using result_type = chat_response;
  struct stub {};
  static constexpr const char* what = "model";
  static constexpr const char* name_attr = "gen_ai.request.model";

  static const std::string& agent(const chat_request& x) {
    return x.agent;
  }
  static const run_ref& ref(const chat_request& x) {
    return x.ref;
  }
  static int64_t deadline_ms(const chat_request& x) {
    return x.deadline_ms;
  }
  static stub stub_of(const chat_request&) {
    return {};
  }
  /// The tokens a call is expected to use: its text at four characters a
  /// token, plus the output it may produce (max_tokens when set).
  static double weight(const chat_request& x) {
    size_t chars = 0;
    for (const auto& m : x.messages) {
      chars += m.content.size();
      for (const auto& c : m.tool_calls)
        chars += c.name.size() + c.raw_arguments.size();
    }
    for (const auto& t : x.tools)
      chars += t.name.size() + t.description.size();
    double out = 0;
    const auto& p = x.params.value;
    for (const char* key : {"max_tokens", "max_completion_tokens"})
      if (p.is_object() && p.contains(key) && p[key].is_number())
        out = std::max(out, p[key].get<double>());
    return static_cast<double>(chars) / 4 + out;
  }
  static double used(const chat_response& r) {
    return static_cast<double>(r.usage.input_tokens + r.usage.output_tokens);
  }
  static void reject(caf::typed_response_promise<chat_response>& p,
                     const chat_request&, std::string why) {
    p.deliver(make_error(errc::refused, std::move(why)));
  }
  static void fail(caf::typed_response_promise<chat_response>& p, const stub&,
                   const caf::error& err) {
    p.deliver(err);
  }
};

template <class Side>
struct limiter_state {
  static inline const char* name = "troupe.limiter";

  /// A call not yet forwarded.
  struct waiter {
    caf::typed_response_promise<typename Side::result_type> promise;
    typename Side::call_type call;
    steady::time_point arrived;
    /// It did not run at once (its wait is traced).
    bool queued = false;
    /// Its timer is the call's deadline rather than max_wait.
    bool by_deadline = false;
  };

  std::string subject;
  limiter_config cfg;
  typename Side::handle inner;
  span_recorder trace;
  admission_queue queue;
  std::unordered_map<uint64_t, waiter> waiters;
  uint64_t next_id = 1;
  bool refill_scheduled = false;
};

template <class Side>
using limiter_self = typename limiter_actor_t<
  typename Side::handle>::template stateful_pointer<limiter_state<Side>>;

template <class Side>
void pump(limiter_self<Side> self);

template <class Side>
void forward(limiter_self<Side> self, uint64_t id) {
  auto& st = self->state;
  auto i = st.waiters.find(id);
  if (i == st.waiters.end())
    return;
  auto w = std::move(i->second);
  st.waiters.erase(i);
  if (w.queued) {
    const auto& ref = Side::ref(w.call);
    st.trace.event(ref.trace_id, ref.span_id, "limiter.wait", [&] {
      return json{{Side::name_attr, st.subject},
                  {"troupe.wait_ms", elapsed_ms(w.arrived, steady::now())},
                  {"troupe.priority", ref.priority}};
    });
  }
  auto agent = Side::agent(w.call);
  auto stub = Side::stub_of(w.call);
  auto weight = Side::weight(w.call);
  auto timeout = forward_timeout(Side::deadline_ms(w.call));
  self->request(st.inner, timeout, std::move(w.call))
    .then(
      [self, agent, weight, promise = w.promise](
        typename Side::result_type& r) mutable {
        self->state.queue.release(agent, weight, Side::used(r));
        promise.deliver(std::move(r));
        pump<Side>(self);
      },
      [self, agent, weight, stub, promise = w.promise](caf::error& err) mutable {
        // A call that failed is assumed to have used nothing.
        self->state.queue.release(agent, weight, 0);
        Side::fail(promise, stub, err);
        pump<Side>(self);
      });
}

/// Forwards every call that may run now; arms the refill timer when the
/// queue waits for a token.
template <class Side>
void pump(limiter_self<Side> self) {
  auto& st = self->state;
  auto now = steady::now();
  for (auto id : st.queue.admit(now))
    forward<Side>(self, id);
  if (st.refill_scheduled)
    return;
  if (auto wait = st.queue.refill_in(now)) {
    st.refill_scheduled = true;
    self->delayed_send(self, *wait, lm_refill_atom::value);
  }
}

template <class Side>
typename limiter_actor_t<typename Side::handle>::behavior_type
limiter(limiter_self<Side> self, std::string subject, limiter_config cfg,
        typename Side::handle inner, tracer_actor tracer) {
  auto& st = self->state;
  st.subject = std::move(subject);
  st.cfg = std::move(cfg);
  st.inner = std::move(inner);
  st.trace = span_recorder{std::move(tracer)};
  st.queue = admission_queue{st.cfg, steady::now()};
  return {
    [self](typename Side::call_type& call)
      -> caf::result<typename Side::result_type> {
      auto& st = self->state;
      auto id = st.next_id++;
      auto promise =
        self->template make_response_promise<typename Side::result_type>();
      auto now = steady::now();
      st.queue.push(id, Side::ref(call).priority, Side::agent(call),
                    Side::weight(call));
      auto& w = st.waiters[id];
      w.promise = promise;
      w.call = std::move(call);
      w.arrived = now;
      pump<Side>(self);
      if (!st.queue.waiting(id))
        return promise;
      // It waits.
      auto label = std::string{Side::what} + " '" + st.subject + "'";
      auto room = static_cast<size_t>(std::max(st.cfg.max_queue, 0));
      if (st.queue.size() > room) {
        auto why = label + " refused by the limiter: its queue is full ("
                   + std::to_string(st.cfg.max_queue) + " waiting; "
                   + st.queue.holding(id, now) + ")";
        st.queue.remove(id);
        spdlog::debug("{}", why);
        Side::reject(w.promise, w.call, std::move(why));
        st.waiters.erase(id);
        return promise;
      }
      w.queued = true;
      auto limit = st.cfg.max_wait;
      auto deadline = Side::deadline_ms(w.call);
      if (deadline > 0 && milliseconds{deadline - now_ms()} < limit) {
        limit = milliseconds{std::max<int64_t>(deadline - now_ms(), 0)};
        w.by_deadline = true;
      }
      self->delayed_send(self, limit, lm_expire_atom::value, id);
      return promise;
    },
    [self](lm_expire_atom, uint64_t id) {
      auto& st = self->state;
      auto i = st.waiters.find(id);
      if (i == st.waiters.end() || !st.queue.waiting(id))
        return; // admitted meanwhile
      auto now = steady::now();
      auto& w = i->second;
      auto why = std::string{Side::what} + " '" + st.subject + "' waited "
                 + std::to_string(elapsed_ms(w.arrived, now))
                 + " ms in the limiter queue (" + st.queue.holding(id, now)
                 + ") past its "
                 + (w.by_deadline ? std::string{"deadline"}
                                  : "max_wait of "
                                      + std::to_string(st.cfg.max_wait.count())
                                      + " ms");
      st.queue.remove(id);
      spdlog::debug("{}", why);
      Side::reject(w.promise, w.call, std::move(why));
      st.waiters.erase(i);
    },
    [self](lm_refill_atom) {
      self->state.refill_scheduled = false;
      pump<Side>(self);
    },
  };
}

// -- validation ---------------------------------------------------------------

[[noreturn]] void invalid(const std::string& tool, const std::string& what) {
  throw std::invalid_argument("tool '" + tool + "': " + what);
}

template <class T>
void require_non_negative(const std::string& tool, const char* field, T x) {
  if (x < 0) {
    std::ostringstream out;
    out << field << " must be >= 0, got " << x;
    invalid(tool, out.str());
  }
}

} // namespace

std::chrono::milliseconds backoff_delay(const retry_policy& policy,
                                        int32_t attempt, double unit) {
  if (attempt < 2)
    return milliseconds{0};
  auto base = std::max<int64_t>(policy.base.count(), 0);
  auto cap = std::max<int64_t>(policy.cap.count(), 0);
  int64_t n = attempt - 1; // retries so far, this one included
  switch (policy.backoff) {
    case backoff_kind::constant:
      return milliseconds{std::min(base, cap)};
    case backoff_kind::linear:
      if (base != 0 && n > cap / base)
        return milliseconds{cap};
      return milliseconds{std::min(base * n, cap)};
    case backoff_kind::exponential_jitter: {
      auto shift = n - 1;
      // base * 2^shift > cap exactly when base > floor(cap / 2^shift).
      int64_t ceiling = 0;
      if (base == 0)
        ceiling = 0;
      else if (shift >= 62 || base > (cap >> shift))
        ceiling = cap;
      else
        ceiling = base << shift;
      if (!(unit > 0)) // also NaN
        return milliseconds{0};
      auto scaled = std::floor(std::min(unit, 1.0)
                               * static_cast<double>(ceiling));
      if (scaled >= static_cast<double>(ceiling))
        return milliseconds{ceiling};
      return milliseconds{static_cast<int64_t>(scaled)};
    }
  }
  return milliseconds{0};
}

const char* to_string(breaker_state x) {
  switch (x) {
    case breaker_state::closed:
      return "closed";
    case breaker_state::open:
      return "open";
    case breaker_state::half_open:
      return "half_open";
  }
  return "unknown";
}

void validate(const tool_guards& guards, const std::string& tool) {
  const auto& r = guards.retry;
  require_non_negative(tool, "retry.max_retries", r.max_retries);
  require_non_negative(tool, "retry.base (ms)", r.base.count());
  require_non_negative(tool, "retry.cap (ms)", r.cap.count());
  require_non_negative(tool, "retry.attempt_timeout (ms)",
                       r.attempt_timeout.count());
  if (r.base > r.cap)
    invalid(tool, "retry.base (" + std::to_string(r.base.count())
                    + " ms) must not exceed retry.cap ("
                    + std::to_string(r.cap.count()) + " ms)");
  if (contains(r.retry_on, tool_error_kind::none))
    invalid(tool, "retry.retry_on must not list \"none\" (success)");
  const auto& b = guards.breaker;
  require_non_negative(tool, "breaker.failure_threshold", b.failure_threshold);
  require_non_negative(tool, "breaker.cooldown (ms)", b.cooldown.count());
  if (b.failure_threshold > 0 && b.half_open_probes < 1)
    invalid(tool, "breaker.half_open_probes must be >= 1, got "
                    + std::to_string(b.half_open_probes));
  if (b.failure_threshold > 0 && b.trip_on.empty())
    invalid(tool, "breaker.trip_on must name at least one error kind");
  if (contains(b.trip_on, tool_error_kind::none))
    invalid(tool, "breaker.trip_on must not list \"none\" (success)");
  const auto& l = guards.limits;
  if (!std::isfinite(l.rate_per_sec))
    invalid(tool, "limits.rate_per_sec must be a finite number");
  require_non_negative(tool, "limits.rate_per_sec", l.rate_per_sec);
  // Slower than one call a week is a mistake (and would overflow the timer
  // that waits for the next token).
  if (l.rate_per_sec > 0 && l.rate_per_sec < min_rate_per_sec)
    invalid(tool, "limits.rate_per_sec must be 0 (no limit) or at least "
                    "0.000002 (a call a week)");
  if (l.rate_per_sec > 0 && l.burst < 1)
    invalid(tool, "limits.burst must be >= 1 when limits.rate_per_sec is set, "
                  "got " + std::to_string(l.burst));
  require_non_negative(tool, "limits.max_concurrent", l.max_concurrent);
  require_non_negative(tool, "limits.max_concurrent_per_agent",
                       l.max_concurrent_per_agent);
  require_non_negative(tool, "limits.max_wait (ms)", l.max_wait.count());
  require_non_negative(tool, "limits.max_queue", l.max_queue);
  if (!std::isfinite(l.tokens_per_minute) || l.tokens_per_minute < 0)
    invalid(tool, "limits.tokens_per_minute must be a finite number >= 0");
}

tool_actor spawn_retrier(caf::actor_system& sys, std::string tool,
                         retry_policy policy, tool_actor inner,
                         tracer_actor tracer) {
  return sys.spawn(retrier, std::move(tool), std::move(policy),
                   std::move(inner), std::move(tracer));
}

breaker_actor spawn_breaker(caf::actor_system& sys, std::string tool,
                            breaker_config cfg, tool_actor inner,
                            tracer_actor tracer) {
  return sys.spawn(breaker, std::move(tool), std::move(cfg), std::move(inner),
                   std::move(tracer));
}

tool_actor spawn_tool_limiter(caf::actor_system& sys, std::string tool,
                              limiter_config cfg, tool_actor inner,
                              tracer_actor tracer) {
  return sys.spawn(limiter<tool_side>, std::move(tool), std::move(cfg),
                   std::move(inner), std::move(tracer));
}

model_actor spawn_model_limiter(caf::actor_system& sys, std::string model,
                                limiter_config cfg, model_actor inner,
                                tracer_actor tracer) {
  return sys.spawn(limiter<model_side>, std::move(model), std::move(cfg),
                   std::move(inner), std::move(tracer));
}

} // namespace troupe

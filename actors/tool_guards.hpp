#pragma once

// Guards around a tool adapter, each an actor that speaks the tool protocol,
// so they stack in front of the adapter like the layers of an onion:
//
//   agent -> retrier -> breaker -> limiter -> adapter (ledger, body)
//
// - The retrier runs a call again on the error kinds its policy names, with
//   backoff (constant, linear, or exponential with full jitter) between
//   attempts, each attempt under its own timeout. A retried call keeps its
//   idempotency key. Each attempt is recorded in tool_result::attempt_log and
//   traced ("tool.retry").
// - The breaker (one per tool: a bulkhead) counts consecutive failures. At the
//   threshold it opens: calls fail fast with circuit_open, without reaching
//   the tool. After the cool-down it lets `half_open_probes` calls through; if
//   they all succeed it closes, a failure re-opens it. Transitions are traced
//   ("breaker.transition") and logged. An error kind not in trip_on counts
//   as a success (a permanent "not found" is the tool answering), except
//   when the tool's body did not run: circuit_open and rate_limited from
//   further in, invalid_arguments (the adapter's schema check), denied, and a
//   result replayed from the idempotency ledger say nothing either way (a
//   half-open breaker lets another call probe instead). The cool-down needs no timer: the breaker
//   turns half-open when next asked (a call or br_state_atom) after it.
// - The limiter admits calls at a token-bucket rate and caps how many run at
//   once (in all, and per agent). Calls over a limit wait in a queue, higher
//   run_ref::priority first and FIFO within a priority; the wait is traced
//   ("limiter.wait"), and a call that waits past `max_wait` or its deadline
//   (or finds the queue full) fails as rate_limited with a message saying which limit held
//   it. The same limiter guards model endpoints (spawn_model_limiter), where
//   a refusal is an errc::refused error. A call held only by its agent's cap
//   does not hold up calls of other agents behind it. The limiter never
//   polls: when it waits for a token it sets one timer for when it is due.
//
// Guards never run tool code, never block and keep no state shared with
// another actor. A tool without a guard configuration has none in its path.

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <caf/atom.hpp>
#include <caf/fwd.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "messages/model.hpp"
#include "messages/tool.hpp"
#include "messages/trace.hpp"

namespace troupe {

/// How the wait between attempts grows.
enum class backoff_kind : uint8_t {
  /// Always `base`.
  constant,
  /// base * n before attempt n+1 (n = 1, 2, ...), capped.
  linear,
  /// Uniformly random in [0, min(cap, base * 2^(n-1))]: "full jitter".
  exponential_jitter,
};

/// Retries of one tool.
struct retry_policy {
  /// Attempts after the first; 0 = no retrier in the path.
  int32_t max_retries = 0;
  backoff_kind backoff = backoff_kind::exponential_jitter;
  std::chrono::milliseconds base{100};
  std::chrono::milliseconds cap{10000};
  /// Limit of one attempt; 0 = the tool's own timeout.
  std::chrono::milliseconds attempt_timeout{0};
  /// The error kinds worth another attempt.
  std::vector<tool_error_kind> retry_on{tool_error_kind::transient,
                                        tool_error_kind::timeout};
};

/// The wait before attempt `attempt` (2, 3, ...) under `policy`; `unit` is a
/// uniform random number in [0, 1) used by the jittered kind.
std::chrono::milliseconds backoff_delay(const retry_policy& policy,
                                        int32_t attempt, double unit);

/// The circuit breaker of one tool.
struct breaker_config {
  /// Consecutive failures that open the circuit; 0 = no breaker in the path.
  int32_t failure_threshold = 0;
  /// How long the circuit stays open before it lets probes through.
  std::chrono::milliseconds cooldown{30000};
  /// Calls let through while half-open; all must succeed to close.
  int32_t half_open_probes = 1;
  /// The error kinds that count as failures (a permanent "not found" is the
  /// tool working, not failing).
  std::vector<tool_error_kind> trip_on{tool_error_kind::transient,
                                       tool_error_kind::timeout};
};

/// The states of a breaker.
enum class breaker_state : uint8_t { closed, open, half_open };

/// "closed", "open", "half_open".
const char* to_string(breaker_state x);

/// Rate and concurrency limits of one tool or model endpoint.
struct limiter_config {
  /// Calls admitted per second on average; 0 = no rate limit.
  double rate_per_sec = 0;
  /// Calls that may be admitted at once after a quiet spell (>= 1).
  int32_t burst = 1;
  /// Calls running at once; 0 = no cap.
  int32_t max_concurrent = 0;
  /// Calls of one agent running at once; 0 = no cap.
  int32_t max_concurrent_per_agent = 0;
  /// How long a call may wait in the queue.
  std::chrono::milliseconds max_wait{30000};
  /// Calls that may wait at once; more fail at once as rate_limited.
  int32_t max_queue = 10000;
  /// Model endpoints: tokens (input and output) admitted per minute; 0 = no
  /// limit. A call takes its estimate (text / 4 + max_tokens) when admitted,
  /// and what it really used is settled when it returns.
  double tokens_per_minute = 0;

  /// Whether any limit is set (no limiter is put in the path otherwise).
  bool any() const {
    return rate_per_sec > 0 || max_concurrent > 0
           || max_concurrent_per_agent > 0 || tokens_per_minute > 0;
  }
};

/// Every guard of one tool.
struct tool_guards {
  retry_policy retry;
  breaker_config breaker;
  limiter_config limits;
};

/// Checks a guard configuration; throws std::invalid_argument naming the tool
/// and the bad field.
void validate(const tool_guards& guards, const std::string& tool);

/// Spawns a retrier in front of `inner`.
tool_actor spawn_retrier(caf::actor_system& sys, std::string tool,
                         retry_policy policy, tool_actor inner,
                         tracer_actor tracer = {});

/// Asks a breaker for its state: (br_state_atom) -> breaker_state as a string.
using br_state_atom = caf::atom_constant<caf::atom("br_state")>;

/// A breaker: a tool actor that also answers br_state_atom.
using breaker_actor = tool_actor::extend<
  caf::replies_to<br_state_atom>::with<std::string>>;

/// Spawns a breaker in front of `inner`.
breaker_actor spawn_breaker(caf::actor_system& sys, std::string tool,
                            breaker_config cfg, tool_actor inner,
                            tracer_actor tracer = {});

/// Spawns a limiter in front of a tool.
tool_actor spawn_tool_limiter(caf::actor_system& sys, std::string tool,
                              limiter_config cfg, tool_actor inner,
                              tracer_actor tracer = {});

/// Spawns a limiter in front of a model endpoint (the agent is
/// chat_request::agent).
model_actor spawn_model_limiter(caf::actor_system& sys, std::string model,
                                limiter_config cfg, model_actor inner,
                                tracer_actor tracer = {});

} // namespace troupe

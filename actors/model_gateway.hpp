#pragma once

// The model gateway: the actors between agents and model endpoints.
//
//   agent -> [cache] -> [fallback] -> [limiter] -> endpoint (actors/http_model.hpp)
//                                  \-> [limiter] -> backup endpoint -> ...
//
// - The fallback chain asks its members in order and answers with the first
//   reply; each member is a whole model (its own limiter, its own retries),
//   so a backup may be a different provider or the scripted model.
// - The response cache (opt-in) answers a request it has answered before,
//   keyed on the exact request the provider would see (model, messages,
//   tools, params), and lets identical requests in flight share one call.
//   A hit reports no token usage: nothing was billed for it.
// - Concurrency caps, the priority queue and token buckets for requests and
//   tokens per minute are the limiter's (actors/tool_guards.hpp).
// - Cost is the agent's: it prices chat_response::model (the member that
//   answered) from the price table and charges the run's budget.
//
// runtime::model() assembles these from a model's configuration
// (runtime/model_config.hpp); they can also be spawned by hand.

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include <caf/fwd.hpp>

#include "messages/model.hpp"
#include "messages/trace.hpp"

namespace troupe {

/// One model of a fallback chain.
struct fallback_member {
  std::string name;
  model_actor model;
};

/// Spawns a model that asks `chain` in order. A member that fails (an error,
/// or no answer within `member_timeout` or the request's deadline) passes the
/// request on to the next one, traced as "model.fallback"; when every member
/// failed the error names each member's failure. Throws std::invalid_argument
/// for an empty chain.
model_actor spawn_model_fallback(
  caf::actor_system& sys, std::string name, std::vector<fallback_member> chain,
  std::chrono::milliseconds member_timeout = std::chrono::minutes{10},
  tracer_actor tracer = {});

/// The response cache of one model.
struct model_cache_config {
  /// Responses kept; the least recently used goes first.
  size_t max_entries = 1024;
  /// How long a response stays valid.
  std::chrono::milliseconds ttl{std::chrono::hours{1}};
};

/// The key a request is cached under: a digest of its model, messages, tools
/// and params (not its run, agent or deadline).
std::string model_cache_key(const chat_request& req);

/// Spawns a cache in front of `inner`.
model_actor spawn_model_cache(caf::actor_system& sys, std::string name,
                              model_cache_config cfg, model_actor inner,
                              tracer_actor tracer = {});

} // namespace troupe

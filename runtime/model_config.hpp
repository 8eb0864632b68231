#pragma once

// How a model name becomes a model. A name says which kind of model it is:
//
//   scripted:FILE              the embedded scripted model (no network)
//   openai:MODEL_ID            an OpenAI-compatible Chat Completions endpoint
//   anthropic:MODEL_ID         an Anthropic Messages endpoint
//
// An HTTP model's key and base URL come from the environment
// (OPENAI_API_KEY, OPENAI_BASE_URL, ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL)
// unless its settings name others; keys are never written to traces or logs.
// Per-model settings (streaming, timeouts, retries, fallback chain, cache)
// live in runtime_config::models, rate limits in runtime_config::model_limits.
//
// TROUPE_MODEL, when set, is the one variable that moves every example (and
// `troupe run`) from its scripted model to a real endpoint:
//   TROUPE_MODEL=openai:gpt-4o-mini OPENAI_API_KEY=... troupe run swarm.json

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "actors/http_model.hpp"
#include "actors/model_gateway.hpp"

namespace troupe {

/// The settings of one model name (all optional).
struct model_settings {
  /// Overrides the base URL (else *_BASE_URL, else the provider's own).
  std::string base_url;
  /// The environment variable holding the key (else OPENAI_API_KEY or
  /// ANTHROPIC_API_KEY).
  std::string api_key_env;
  /// Ask for streamed replies; their increments are traced as model.delta.
  bool stream = false;
  std::chrono::milliseconds connect_timeout{std::chrono::seconds{10}};
  std::chrono::milliseconds request_timeout{std::chrono::seconds{120}};
  model_retry_policy retry;
  /// max_tokens when a request's params set none.
  int64_t default_max_tokens = 1024;
  /// Models asked in order when this one fails (any model names).
  std::vector<std::string> fallback;
  /// Answer identical requests from a cache.
  bool cache = false;
  model_cache_config cache_config;
};

/// A model name's kind and the rest: "openai:gpt-4o" -> {"openai", "gpt-4o"};
/// a name without a known prefix gives {"", name}.
std::pair<std::string, std::string> split_model_name(const std::string& name);

/// Whether `name` can name an environment variable: letters, digits and _,
/// not starting with a digit.
bool is_env_var_name(const std::string& name);

/// Reads an environment variable ("" when unset).
using env_reader = std::function<std::string(const std::string&)>;

/// The process environment.
std::string process_env(const std::string& name);

/// The endpoint of an "openai:" or "anthropic:" model name from its settings
/// and the environment. Throws std::invalid_argument naming the model (and
/// the variable, never its value) when the name is not an HTTP model, the
/// base URL is bad, or the provider's own endpoint is used without a key.
http_model_config http_model_from(const std::string& name,
                                  const model_settings& settings,
                                  const env_reader& env = process_env);

/// TROUPE_MODEL: the model that replaces every agent's own when set ("" when
/// unset); checked to be scripted:, openai: or anthropic:. Throws
/// std::invalid_argument otherwise.
std::string model_override_from_env(const env_reader& env = process_env);

} // namespace troupe

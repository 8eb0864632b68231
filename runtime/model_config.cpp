#include "runtime/model_config.hpp"

#include <algorithm>
#include <cctype>
#include <stdexcept>

namespace troupe {

namespace {

struct provider_defaults {
  model_provider provider;
  const char* prefix;
  const char* key_env;
  const char* url_env;
  const char* url;
};

constexpr provider_defaults providers[] = {
  {model_provider::openai, "openai", "OPENAI_API_KEY", "OPENAI_BASE_URL",
   "https://api.openai.com/v1"},
  {model_provider::anthropic, "anthropic", "ANTHROPIC_API_KEY",
   "ANTHROPIC_BASE_URL", "https://api.anthropic.com"},
};

const provider_defaults* find_provider(const std::string& prefix) {
  for (const auto& p : providers)
    if (prefix == p.prefix)
      return &p;
  return nullptr;
}

} // namespace

std::pair<std::string, std::string> split_model_name(const std::string& name) {
  auto colon = name.find(':');
  if (colon != std::string::npos) {
    auto prefix = name.substr(0, colon);
    if (prefix == "scripted" || find_provider(prefix) != nullptr)
      return {prefix, name.substr(colon + 1)};
  }
  return {"", name};
}

bool is_env_var_name(const std::string& name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0])))
    return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_';
  });
}

std::string process_env(const std::string& name) {
  const char* value = std::getenv(name.c_str());
  return value == nullptr ? std::string{} : std::string{value};
}

http_model_config http_model_from(const std::string& name,
                                  const model_settings& settings,
                                  const env_reader& env) {
  auto [prefix, id] = split_model_name(name);
  const auto* p = find_provider(prefix);
  if (p == nullptr)
    throw std::invalid_argument("model '" + name
                                + "' is not an HTTP model (name it "
                                  "openai:MODEL_ID or anthropic:MODEL_ID)");
  if (id.empty())
    throw std::invalid_argument("model '" + name + "': no model id after '"
                                + prefix + ":'");
  http_model_config cfg;
  cfg.provider = p->provider;
  cfg.name = name;
  cfg.model_id = id;
  cfg.base_url = settings.base_url;
  if (cfg.base_url.empty())
    cfg.base_url = env(p->url_env);
  bool own_endpoint = cfg.base_url.empty();
  if (own_endpoint)
    cfg.base_url = p->url;
  auto key_env = settings.api_key_env.empty() ? std::string{p->key_env}
                                              : settings.api_key_env;
  if (!is_env_var_name(key_env))
    // Never repeat it: it may be a key pasted in the wrong place.
    throw std::invalid_argument(
      "model '" + name + "': api_key_env must name an environment variable "
      "(letters, digits and _); put the key itself in that variable");
  cfg.api_key = env(key_env);
  if (cfg.api_key.empty() && own_endpoint)
    throw std::invalid_argument(
      "model '" + name + "': " + key_env + " is not set (it holds the API key "
      "for " + p->url + "; set " + p->url_env
      + " to use another OpenAI- or Anthropic-compatible server)");
  cfg.stream = settings.stream;
  cfg.connect_timeout = settings.connect_timeout;
  cfg.request_timeout = settings.request_timeout;
  cfg.retry = settings.retry;
  cfg.default_max_tokens = settings.default_max_tokens;
  validate(cfg);
  return cfg;
}

std::string model_override_from_env(const env_reader& env) {
  auto value = env("TROUPE_MODEL");
  if (value.empty())
    return value;
  auto [prefix, rest] = split_model_name(value);
  if (prefix.empty() || rest.empty())
    throw std::invalid_argument(
      "TROUPE_MODEL='" + value
      + "' is not a model name: use openai:MODEL_ID, anthropic:MODEL_ID or "
        "scripted:FILE");
  return value;
}

} // namespace troupe

#pragma once

// A model actor for one HTTP endpoint: OpenAI-compatible Chat Completions or
// Anthropic Messages. It encodes each chat_request (actors/model_codecs.hpp),
// sends it with the runtime's HTTP client on the I/O threads and answers when
// the reply is back, as a message: the actor never waits on a socket.
//
//   agent --chat_request--> http model --HTTP--> endpoint
//                              |  429 / 5xx / reset / cut stream:
//                              |  wait (backoff with full jitter, at least
//                              |  Retry-After) as a delayed message, resend
//
// Retries belong to the endpoint actor because only it sees the status and
// the Retry-After header; fallback to another model, the response cache and
// rate limits sit in front of it (actors/model_gateway.hpp, tool_guards.hpp).
//
// A streamed reply's increments go to the tracer as "model.delta" events on
// the request's span while they arrive, so a trace listener can follow a reply
// live; the answer is the reassembled whole.
//
// The API key goes into one request header and nowhere else: never into a
// log line, a trace attribute or an error text.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <caf/fwd.hpp>

#include "actors/model_codecs.hpp"
#include "messages/model.hpp"
#include "messages/trace.hpp"
#include "runtime/http_client.hpp"

namespace troupe {

/// When an endpoint's failed attempt is tried again.
struct model_retry_policy {
  /// Attempts after the first (on 408, 409, 429, 5xx, a transport error or a
  /// stream cut short); 0 = none.
  int32_t max_retries = 3;
  /// The wait before retry n is uniformly random in
  /// [0, min(cap, base * 2^(n-1))] ("full jitter"), and never shorter than
  /// the endpoint's Retry-After.
  std::chrono::milliseconds base{500};
  std::chrono::milliseconds cap{20000};
  /// A Retry-After longer than this is not waited for: the call fails at
  /// once (so a fallback model can answer instead).
  std::chrono::milliseconds max_retry_after{60000};
};

/// One HTTP model endpoint.
struct http_model_config {
  model_provider provider = model_provider::openai;
  /// The name agents use, e.g. "openai:gpt-4o-mini" (chat_response::model).
  std::string name;
  /// The provider's model id on the wire, e.g. "gpt-4o-mini".
  std::string model_id;
  /// E.g. "https://api.openai.com/v1" or "https://api.anthropic.com" (for
  /// anthropic, "/v1/messages" is appended, or "/messages" when it ends in
  /// "/v1").
  std::string base_url;
  /// Sent as "Authorization: Bearer" (openai) or "x-api-key" (anthropic);
  /// empty sends none (local servers).
  std::string api_key;
  /// Ask for streamed replies.
  bool stream = false;
  std::chrono::milliseconds connect_timeout{std::chrono::seconds{10}};
  /// Bound on one attempt (also cut to the request's deadline).
  std::chrono::milliseconds request_timeout{std::chrono::seconds{120}};
  model_retry_policy retry;
  /// max_tokens when a request's params set none (Anthropic requires one).
  int64_t default_max_tokens = 1024;
  /// Sent as "anthropic-version".
  std::string anthropic_version = "2023-06-01";
  /// Extra header fields (never logged).
  http_fields headers;
};

/// Checks a configuration; throws std::invalid_argument naming the model and
/// the bad field.
void validate(const http_model_config& cfg);

/// Whether a URL's authority carries user info ("user:password@host").
bool url_has_user_info(const std::string& url);

/// The URL requests of `cfg` go to.
std::string endpoint_url(const http_model_config& cfg);

/// A Retry-After value as a wait from now: delta-seconds ("2", "1.5") or an
/// HTTP-date; nullopt when it is neither. `now_unix_ms` is the current time.
std::optional<std::chrono::milliseconds>
parse_retry_after(const std::string& value, int64_t now_unix_ms);

/// Spawns the actor for one endpoint. `client` carries its requests; it must
/// outlive the actor's calls (the runtime stops it before its I/O threads).
model_actor spawn_http_model(caf::actor_system& sys, http_model_config cfg,
                             std::shared_ptr<http_client> client,
                             tracer_actor tracer = {});

} // namespace troupe

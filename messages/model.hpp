#pragma once

// The model protocol: agent -> model actor.
//   chat_request{messages, tools, model, params} -> chat_response{message, usage, finish_reason}
// A model actor replies with an error (caf::error) when it cannot produce a reply
// at all; a reply that is produced but malformed is the agent's to judge.

#include <cstdint>
#include <string>
#include <vector>

#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "messages/common.hpp"
#include "messages/json_value.hpp"

namespace troupe {

/// Author of a chat message.
enum class chat_role : uint8_t { system, user, assistant, tool };

TROUPE_JSON_ENUM(chat_role, {{chat_role::system, "system"},
                                         {chat_role::user, "user"},
                                         {chat_role::assistant, "assistant"},
                                         {chat_role::tool, "tool"}})

/// A tool call proposed by the model. Adapters parse the provider's argument
/// text; when it is not JSON, `parse_error` says why and `raw_arguments` keeps it.
struct model_tool_call {
  std::string id;
  std::string name;
  json_value arguments;
  std::string raw_arguments;
  std::string parse_error;
};
TROUPE_MESSAGE(model_tool_call, id, name, arguments, raw_arguments, parse_error)

/// One message of a conversation.
struct chat_message {
  chat_role role = chat_role::user;
  std::string content;
  /// Set on assistant messages that call tools.
  std::vector<model_tool_call> tool_calls;
  /// Set on tool messages: the call this message answers.
  std::string tool_call_id;
  /// Set on tool messages: the tool's name.
  std::string name;
};
TROUPE_MESSAGE(chat_message, role, content, tool_calls, tool_call_id, name)

/// A tool as the model sees it: name, purpose and JSON Schema of its arguments.
struct tool_spec {
  std::string name;
  std::string description;
  json_value parameters;
};
TROUPE_MESSAGE(tool_spec, name, description, parameters)

/// Asks a model for the next message of a conversation.
struct chat_request {
  run_ref ref;
  /// The agent asking; scripted models select rules by it.
  std::string agent;
  /// Model name as configured, e.g. "scripted:support.json" or "openai:gpt-4o-mini".
  std::string model;
  std::vector<chat_message> messages;
  std::vector<tool_spec> tools;
  /// Provider parameters (temperature, max_tokens, tool_choice...).
  json_value params;
  /// Unix ms after which nobody waits for the reply (0 = none): a limiter
  /// drops a call still queued then instead of spending tokens on it.
  int64_t deadline_ms = 0;
};
TROUPE_MESSAGE(chat_request, ref, agent, model, messages, tools, params,
               deadline_ms)

/// The model's reply: an assistant message (text, tool calls or both).
struct chat_response {
  chat_message message;
  token_usage usage;
  /// "stop", "tool_calls", "length", "error"...
  std::string finish_reason;
  /// The model that actually answered.
  std::string model;
  /// The reply came from the run's journal (actors/journaled_model.hpp): an
  /// earlier attempt of the run paid for it, perhaps in another process.
  bool replayed = false;
};
TROUPE_MESSAGE(chat_response, message, usage, finish_reason, model, replayed)

/// Any model endpoint: scripted, OpenAI-compatible, Anthropic.
using model_actor =
  caf::typed_actor<caf::replies_to<chat_request>::with<chat_response>>;

} // namespace troupe

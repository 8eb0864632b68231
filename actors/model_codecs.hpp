#pragma once

// The wire formats of the HTTP model providers, as pure functions with no I/O:
// a chat_request becomes a provider's JSON request body, and a provider's reply
// (a whole body, or server-sent events one at a time) becomes a chat_response.
// The HTTP model actor (actors/http_model.hpp) moves the bytes; these functions
// only translate, so both can be tested apart.
//
// - openai: Chat Completions (POST {base}/chat/completions), spoken by OpenAI,
//   vLLM, llama.cpp's server, Ollama and others.
// - anthropic: Messages (POST {base}/messages).
//
// A model's tool-call arguments arrive as text. They are parsed to JSON here;
// when the text is not JSON, model_tool_call::parse_error holds the parser's
// error and raw_arguments keeps the text, so the agent can show the model its
// mistake as an observation ("arguments for tool 'x' are not valid JSON: ...")
// instead of failing the run. JSON that is not an object is kept as parsed;
// the agent refuses it as arguments too.
//
// Decoding never throws: a body that is not what the provider documents is a
// caf::error (errc::model_failed) naming the provider and what was wrong.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <caf/expected.hpp>

#include "messages/json_value.hpp"
#include "messages/model.hpp"

namespace troupe {

struct sse_event;

/// Which wire format an endpoint speaks.
enum class model_provider : uint8_t { openai, anthropic };

/// "openai" or "anthropic".
const char* to_string(model_provider x);

/// One increment of a streamed reply, as a caller following it live sees it.
struct model_delta {
  enum class kind : uint8_t {
    /// `text` continues the assistant message's content.
    text,
    /// A tool call starts: `index`, `id` and `name` are set.
    tool_call,
    /// `text` continues the arguments of the tool call at `index`.
    tool_arguments,
  };
  kind what = kind::text;
  /// The tool call's position in the reply (0, 1, ...).
  int32_t index = 0;
  std::string id;
  std::string name;
  std::string text;
};

/// "text", "tool_call", "tool_arguments".
const char* to_string(model_delta::kind x);

/// Options the codecs need beyond the request.
struct model_wire_options {
  /// The provider's model id sent on the wire, e.g. "gpt-4o-mini" (the part
  /// of "openai:gpt-4o-mini" after the prefix).
  std::string model_id;
  /// Ask for a streamed reply.
  bool stream = false;
  /// max_tokens when the request's params set none (Anthropic requires one).
  int64_t default_max_tokens = 1024;
};

/// Reassembles a streamed reply from its server-sent events.
class model_stream_decoder {
public:
  virtual ~model_stream_decoder() = default;

  /// Takes one event; appends the deltas it carries to `out`. Returns an
  /// error (errc::model_failed) when the event is malformed or reports a
  /// provider error; the stream is then useless.
  virtual caf::error feed(const sse_event& ev, std::vector<model_delta>& out)
    = 0;

  /// Whether the provider has said the reply is complete ("[DONE]" for
  /// openai, "message_stop" for anthropic).
  virtual bool complete() const = 0;

  /// The whole reply once the stream has ended. An error (errc::model_failed)
  /// when the stream ended before the provider said it was complete (a cut
  /// stream), naming how much had arrived.
  virtual caf::expected<chat_response> finish() = 0;
};

namespace openai {

/// The Chat Completions request body for `req`. `req.params` are copied in
/// (temperature, max_tokens, tool_choice, ...); tools become JSON Schema
/// functions; tool messages carry tool_call_id; an assistant message's tool
/// calls carry their arguments as a JSON text. With `opts.stream`, also
/// "stream": true and "stream_options": {"include_usage": true}.
json encode_request(const chat_request& req, const model_wire_options& opts);

/// Decodes a Chat Completions response body (the first choice). `model` is
/// what chat_response::model is set to (the configured name, e.g.
/// "openai:gpt-4o-mini"). An error naming what is missing or malformed.
caf::expected<chat_response> decode_response(std::string_view body,
                                             const std::string& model);

/// A decoder for a streamed Chat Completions reply: content deltas, tool-call
/// deltas (id and name first, then argument fragments, by index), usage in the
/// last chunk, and "data: [DONE]". Some servers (llama.cpp, Ollama) never
/// send "[DONE]": finish() also accepts a stream that sent a finish_reason,
/// though complete() stays false.
std::unique_ptr<model_stream_decoder> make_stream_decoder(std::string model);

} // namespace openai

namespace anthropic {

/// The Messages request body for `req`: system messages go to "system"; tool
/// results become user "tool_result" blocks (consecutive ones merged into one
/// user message); assistant tool calls become "tool_use" blocks; tools carry
/// "input_schema"; max_tokens from params or `opts.default_max_tokens`.
/// params.tool_choice in OpenAI's form ("auto", "none", "required", or
/// {"type":"function","function":{"name":N}}) is translated.
json encode_request(const chat_request& req, const model_wire_options& opts);

/// Decodes a Messages response body: text blocks joined, tool_use blocks as
/// tool calls, usage, and stop_reason mapped to finish_reason ("end_turn" ->
/// "stop", "tool_use" -> "tool_calls", "max_tokens" -> "length").
caf::expected<chat_response> decode_response(std::string_view body,
                                             const std::string& model);

/// A decoder for a streamed Messages reply: message_start, content_block_start
/// / _delta (text_delta, input_json_delta) / _stop, message_delta (stop_reason,
/// usage), message_stop; "error" events and unknown events handled.
std::unique_ptr<model_stream_decoder> make_stream_decoder(std::string model);

} // namespace anthropic

/// The text of a provider's error body, e.g. {"error":{"message":"..."}} for
/// both providers; the body itself (cut to 300 bytes) otherwise.
std::string provider_error_text(std::string_view body);

} // namespace troupe

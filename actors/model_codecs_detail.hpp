#pragma once

// Pieces the two codecs (actors/openai_codec.cpp, actors/anthropic_codec.cpp)
// share, defined in actors/model_codecs.cpp; not for callers, who use
// actors/model_codecs.hpp.
//
// Both stream decoders keep the same state (the text so far, the tool calls
// by position, usage, how many events came) and the same rules: an event
// after an error returns that error again, events after the provider said
// the reply is complete are ignored, and every text or argument fragment is
// both kept and handed to the caller as a model_delta. stream_decoder_base
// holds that; each provider's decoder reads its own events in on_event.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "actors/model_codecs.hpp"
#include "messages/json_value.hpp"
#include "messages/model.hpp"

namespace troupe::detail {

/// An error (errc::model_failed) reading "`where`: `what`".
caf::error fail(const std::string& where, const std::string& what);

/// Sets `call.raw_arguments` to `text` and `call.arguments` to the JSON it
/// holds; blank text counts as {}. Text that is not JSON leaves arguments
/// null and sets parse_error to the parser's error; JSON that is not an
/// object is kept as parsed (the agent refuses both, naming the tool). The
/// scripted model parses its raw arguments with it too.
void parse_tool_arguments(model_tool_call& call, std::string text);

/// Parses `text` as a JSON object. An error (errc::model_failed) starting
/// with `where` (e.g. "openai reply") when it is not JSON, not an object, or a
/// provider's error report ({"error": ...}), with that report's text.
caf::expected<json> parse_object(std::string_view text,
                                 const std::string& where);

/// The non-negative integer at `obj[key]`; 0 when absent or not an integer.
int64_t count_at(const json& obj, const char* key);

/// The string at `obj[key]`; "" when absent or not a string.
std::string string_at(const json& obj, const char* key);

/// "/choices is an object, not an array" for `path`, holding `value`, where
/// `expected` ("an array") was expected.
std::string wrong_type(const std::string& path, const json& value,
                       const char* expected);

/// A tool's parameters as the JSON Schema sent to the provider: an empty
/// object schema when the tool declares none.
json parameters_schema(const tool_spec& tool);

/// The state and rules both stream decoders share; a provider's decoder
/// reads its events in on_event and builds its reply in on_finish.
class stream_decoder_base : public model_stream_decoder {
public:
  /// Counts the event; returns the first error again once one occurred and
  /// ignores events after the reply is complete; otherwise on_event, whose
  /// error is kept.
  caf::error feed(const sse_event& ev, std::vector<model_delta>& out) final;

  /// Whether on_event has set done_.
  bool complete() const final;

  /// The first error once one occurred; otherwise on_finish.
  caf::expected<chat_response> finish() final;

protected:
  /// A tool call as its fragments arrive.
  struct partial_call {
    std::string id;
    std::string name;
    /// The argument fragments so far.
    std::string arguments;
  };

  /// `model` is what chat_response::model is set to.
  explicit stream_decoder_base(std::string model);

  /// Reads one event (the `events_`-th) that came before any error and
  /// before the reply was complete.
  virtual caf::error on_event(const sse_event& ev,
                              std::vector<model_delta>& out)
    = 0;

  /// The whole reply, or the error for a cut stream, once the stream has
  /// ended without an error.
  virtual caf::expected<chat_response> on_finish() = 0;

  /// Keeps `piece` as more of the reply's text and emits it as a text delta;
  /// nothing when empty.
  void append_text(std::string piece, std::vector<model_delta>& out);

  /// Starts a tool call at the next position and emits a tool_call delta;
  /// returns the position.
  size_t start_call(const std::string& id, const std::string& name,
                    std::vector<model_delta>& out);

  /// Keeps `piece` as more of the arguments of the call at `slot` and emits a
  /// tool_arguments delta; nothing when empty.
  void append_arguments(size_t slot, std::string piece,
                        std::vector<model_delta>& out);

  /// "<provider> stream ended before <marker> after N events (<before>X chars
  /// of text, Y tool calls<after>)": the error for a cut stream.
  caf::error ended_early(const std::string& provider, const std::string& marker,
                         const std::string& before,
                         const std::string& after) const;

  /// The reply so far without its tool calls: model, usage, `finish_reason`
  /// and the assistant's text.
  chat_response reply(std::string finish_reason) const;

  std::string model_;
  std::string text_;
  std::vector<partial_call> calls_;
  token_usage usage_;
  /// The events fed so far, counting this one.
  size_t events_ = 0;
  /// The provider has said the reply is complete.
  bool done_ = false;
  /// The first error, returned by every later feed() and by finish().
  caf::error failed_;
};

} // namespace troupe::detail

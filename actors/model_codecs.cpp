#include "actors/model_codecs.hpp"
#include "actors/model_codecs_detail.hpp"

#include <algorithm>
#include <cctype>
#include <limits>
#include <optional>
#include <utility>

#include "messages/errors.hpp"

namespace troupe {

const char* to_string(model_provider x) {
  switch (x) {
    case model_provider::openai:
      return "openai";
    case model_provider::anthropic:
      return "anthropic";
  }
  return "unknown";
}

const char* to_string(model_delta::kind x) {
  switch (x) {
    case model_delta::kind::text:
      return "text";
    case model_delta::kind::tool_call:
      return "tool_call";
    case model_delta::kind::tool_arguments:
      return "tool_arguments";
  }
  return "unknown";
}

namespace {

constexpr size_t max_error_excerpt = 300;

/// nlohmann's exception text without its "[json.exception.parse_error.101] "
/// prefix.
std::string json_error_text(const json::exception& e) {
  std::string what = e.what();
  if (auto pos = what.find("] "); pos != std::string::npos)
    what.erase(0, pos + 2);
  return what;
}

/// The message of a provider's error report in a parsed body:
/// {"error": {"type": T, "message": M}} (both providers) as "T: M",
/// {"error": "text"}, or vLLM's {"object": "error", "message": M}.
std::optional<std::string> error_report(const json& body) {
  if (!body.is_object())
    return std::nullopt;
  auto err = body.find("error");
  if (err != body.end() && !err->is_null()) {
    if (err->is_string())
      return err->get<std::string>();
    if (err->is_object()) {
      std::string type;
      std::string message;
      if (auto t = err->find("type"); t != err->end() && t->is_string())
        type = t->get<std::string>();
      if (auto m = err->find("message"); m != err->end() && m->is_string())
        message = m->get<std::string>();
      if (message.empty())
        return safe_dump(*err);
      if (type.empty() || message.rfind(type, 0) == 0)
        return message;
      return type + ": " + message;
    }
    return safe_dump(*err);
  }
  auto object = body.find("object");
  auto message = body.find("message");
  if (object != body.end() && *object == "error" && message != body.end()
      && message->is_string())
    return message->get<std::string>();
  return std::nullopt;
}

/// "an object", "a string", ... for an error sentence.
std::string described(const json& value) {
  switch (value.type()) {
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "an array";
    case json::value_t::string:
      return "a string";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::null:
      return "null";
    default:
      return value.is_number() ? "a number" : value.type_name();
  }
}

/// At most max_error_excerpt bytes of `text`, not cutting a UTF-8 sequence.
std::string excerpt(std::string_view text) {
  if (text.size() <= max_error_excerpt)
    return std::string{text};
  auto cut = max_error_excerpt;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80)
    --cut;
  return std::string{text.substr(0, cut)} + "...";
}

} // namespace

std::string provider_error_text(std::string_view body) {
  if (body.empty())
    return "(empty body)";
  auto parsed = json::parse(body, nullptr, false);
  if (auto report = error_report(parsed))
    return *report;
  return excerpt(body);
}

namespace detail {

caf::error fail(const std::string& where, const std::string& what) {
  return make_error(errc::model_failed, where + ": " + what);
}

void parse_tool_arguments(model_tool_call& call, std::string text) {
  call.raw_arguments = std::move(text);
  call.arguments = json{};
  call.parse_error.clear();
  const auto& raw = call.raw_arguments;
  auto blank = std::all_of(raw.begin(), raw.end(), [](char c) {
    return std::isspace(static_cast<unsigned char>(c)) != 0;
  });
  if (blank) {
    call.arguments = json::object();
    return;
  }
  json parsed;
  try {
    parsed = json::parse(raw);
  } catch (const json::exception& e) {
    // The JSON error alone: the agent's observation says which tool's
    // arguments it is about ("arguments for tool 'x' are not valid JSON: ").
    call.parse_error = json_error_text(e);
    return;
  }
  // Valid JSON that is not an object (an array, a number) is kept as it is:
  // the agent tells the model that arguments must be an object.
  call.arguments = std::move(parsed);
}

caf::expected<json> parse_object(std::string_view text,
                                 const std::string& where) {
  json parsed;
  try {
    parsed = json::parse(text);
  } catch (const json::exception& e) {
    return make_error(errc::model_failed,
                      where + ": the body is not JSON (" + json_error_text(e)
                        + "): " + excerpt(text));
  }
  if (auto report = error_report(parsed))
    return make_error(errc::model_failed,
                      where + ": the provider reported an error: " + *report);
  if (!parsed.is_object())
    return make_error(errc::model_failed,
                      where + ": the body is " + described(parsed)
                        + ", not an object");
  return parsed;
}

std::string string_at(const json& obj, const char* key) {
  if (!obj.is_object())
    return {};
  auto i = obj.find(key);
  return i != obj.end() && i->is_string() ? i->get<std::string>()
                                          : std::string{};
}

std::string wrong_type(const std::string& path, const json& value,
                       const char* expected) {
  return path + " is " + described(value) + ", not " + expected;
}

int64_t count_at(const json& obj, const char* key) {
  if (!obj.is_object())
    return 0;
  auto i = obj.find(key);
  if (i == obj.end())
    return 0;
  if (i->is_number_unsigned())
    return static_cast<int64_t>(
      std::min<uint64_t>(i->get<uint64_t>(),
                         std::numeric_limits<int64_t>::max()));
  if (i->is_number_integer())
    return std::max<int64_t>(i->get<int64_t>(), 0);
  return 0;
}

json parameters_schema(const tool_spec& tool) {
  return tool.parameters.value.is_object()
           ? tool.parameters.value
           : json{{"type", "object"}, {"properties", json::object()}};
}

stream_decoder_base::stream_decoder_base(std::string model)
  : model_(std::move(model)) {
}

caf::error stream_decoder_base::feed(const sse_event& ev,
                                     std::vector<model_delta>& out) {
  ++events_;
  if (failed_)
    return failed_;
  if (done_)
    return caf::none;
  if (auto err = on_event(ev, out))
    return failed_ = std::move(err);
  return caf::none;
}

bool stream_decoder_base::complete() const {
  return done_;
}

caf::expected<chat_response> stream_decoder_base::finish() {
  if (failed_)
    return failed_;
  return on_finish();
}

void stream_decoder_base::append_text(std::string piece,
                                      std::vector<model_delta>& out) {
  if (piece.empty())
    return;
  text_ += piece;
  model_delta d;
  d.what = model_delta::kind::text;
  d.text = std::move(piece);
  out.push_back(std::move(d));
}

size_t stream_decoder_base::start_call(const std::string& id,
                                       const std::string& name,
                                       std::vector<model_delta>& out) {
  auto slot = calls_.size();
  calls_.push_back(partial_call{id, name, {}});
  model_delta d;
  d.what = model_delta::kind::tool_call;
  d.index = static_cast<int32_t>(slot);
  d.id = id;
  d.name = name;
  out.push_back(std::move(d));
  return slot;
}

void stream_decoder_base::append_arguments(size_t slot, std::string piece,
                                           std::vector<model_delta>& out) {
  if (piece.empty())
    return;
  calls_[slot].arguments += piece;
  model_delta d;
  d.what = model_delta::kind::tool_arguments;
  d.index = static_cast<int32_t>(slot);
  d.text = std::move(piece);
  out.push_back(std::move(d));
}

caf::error stream_decoder_base::ended_early(const std::string& provider,
                                            const std::string& marker,
                                            const std::string& before,
                                            const std::string& after) const {
  return make_error(errc::model_failed,
                    provider + " stream ended before " + marker + " after "
                      + std::to_string(events_) + " events (" + before
                      + std::to_string(text_.size()) + " chars of text, "
                      + std::to_string(calls_.size()) + " tool calls" + after
                      + ")");
}

chat_response stream_decoder_base::reply(std::string finish_reason) const {
  chat_response resp;
  resp.model = model_;
  resp.usage = usage_;
  resp.finish_reason = std::move(finish_reason);
  resp.message.role = chat_role::assistant;
  resp.message.content = text_;
  return resp;
}

} // namespace detail

} // namespace troupe

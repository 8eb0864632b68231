#include "actors/model_codecs.hpp"
#include "actors/model_codecs_detail.hpp"

#include <map>
#include <utility>

#include "messages/errors.hpp"
#include "runtime/sse_parser.hpp"

namespace troupe::anthropic {

namespace {

using detail::fail;
using detail::string_at;
using detail::wrong_type;

/// The integer at `obj[key]`, when there is one.
bool integer_at(const json& obj, const char* key, int64_t& out) {
  if (!obj.is_object())
    return false;
  auto i = obj.find(key);
  if (i == obj.end() || !i->is_number_integer())
    return false;
  out = i->get<int64_t>();
  return true;
}

/// Input tokens of a usage object: prompt-cache writes and reads are input
/// too, counted apart by the API.
int64_t input_tokens(const json& usage) {
  return detail::count_at(usage, "input_tokens")
         + detail::count_at(usage, "cache_creation_input_tokens")
         + detail::count_at(usage, "cache_read_input_tokens");
}

/// Anthropic's stop_reason in the OpenAI words chat_response uses.
std::string finish_reason(const std::string& stop_reason) {
  if (stop_reason == "end_turn" || stop_reason == "stop_sequence")
    return "stop";
  if (stop_reason == "tool_use")
    return "tool_calls";
  if (stop_reason == "max_tokens")
    return "length";
  return stop_reason;
}

/// OpenAI's tool_choice ("auto", "none", "required",
/// {"type":"function","function":{"name":N}}) in Anthropic's form; anything
/// else, such as a choice already in Anthropic's form, passes through.
json translate_tool_choice(const json& choice) {
  if (choice == "auto")
    return {{"type", "auto"}};
  if (choice == "required" || choice == "any")
    return {{"type", "any"}};
  if (choice == "none")
    return {{"type", "none"}};
  if (string_at(choice, "type") == "function") {
    auto fn = choice.find("function");
    auto name = fn != choice.end() ? string_at(*fn, "name") : std::string{};
    return {{"type", "tool"}, {"name", name}};
  }
  return choice;
}

/// Content as a list of blocks: a string becomes one text block (none when
/// empty, which the API rejects).
json as_blocks(json content) {
  if (content.is_array())
    return content;
  auto blocks = json::array();
  if (content.is_string() && !content.get_ref<const std::string&>().empty())
    blocks.push_back({{"type", "text"}, {"text", std::move(content)}});
  return blocks;
}

/// Appends a turn, merged into the previous one when that has the same role:
/// the API wants user and assistant turns to alternate.
void append_turn(json& messages, const char* role, json content) {
  // The API refuses empty text turns (an empty reply at max_tokens, say):
  // leave them out; the turns around them merge if they share a role.
  if (content.is_string() && content.get_ref<const std::string&>().empty())
    return;
  if (!messages.empty() && messages.back()["role"] == role) {
    auto& prev = messages.back()["content"];
    prev = as_blocks(std::move(prev));
    for (auto& block : as_blocks(std::move(content)))
      prev.push_back(std::move(block));
    return;
  }
  messages.push_back({{"role", role}, {"content", std::move(content)}});
}

json encode_tool_use(const model_tool_call& call) {
  const auto& args = call.arguments.value;
  return {{"type", "tool_use"},
          {"id", call.id},
          {"name", call.name},
          {"input", args.is_object() ? args : json::object()}};
}

json encode_tool(const tool_spec& tool) {
  json out{{"name", tool.name}};
  if (!tool.description.empty())
    out["description"] = tool.description;
  out["input_schema"] = detail::parameters_schema(tool);
  return out;
}

/// Reassembles a streamed Messages reply.
class stream_decoder : public detail::stream_decoder_base {
public:
  explicit stream_decoder(std::string model)
    : stream_decoder_base(std::move(model)) {
  }

private:
  /// A content block by its index: text, a tool_use at `call` in calls_, or
  /// a kind that is not part of the reply (thinking, server_tool_use...).
  struct block {
    enum class kind : uint8_t { text, tool, other };
    kind what = kind::other;
    size_t call = 0;
  };

  caf::error on_event(const sse_event& ev,
                      std::vector<model_delta>& out) override {
    auto name = ev.event;
    if (name.empty()) {
      // Every event names itself; without the field, the data's "type" says.
      auto data = json::parse(ev.data, nullptr, false);
      name = string_at(data, "type");
    }
    last_event_ = name.empty() ? std::string{"(unnamed)"} : name;
    if (name == "message_stop") {
      done_ = true;
      return caf::none;
    }
    if (name != "message_start" && name != "content_block_start"
        && name != "content_block_delta" && name != "content_block_stop"
        && name != "message_delta" && name != "error")
      return caf::none; // ping, and events newer than this decoder
    auto where = "anthropic stream event " + std::to_string(events_) + " ("
                 + name + ")";
    auto data = detail::parse_object(ev.data, where);
    if (!data)
      return data.error();
    return dispatch(name, *data, where, out);
  }

  caf::expected<chat_response> on_finish() override {
    if (!done_) {
      std::string before = started_ ? "" : "no message_start, ";
      if (events_ > 0)
        before += "the last " + last_event_ + ", ";
      std::string after;
      if (!stop_reason_.empty())
        after = ", stop_reason " + stop_reason_;
      return ended_early("anthropic", "message_stop", before, after);
    }
    auto resp = reply(finish_reason(stop_reason_));
    for (size_t i = 0; i < calls_.size(); ++i) {
      model_tool_call call;
      call.id = calls_[i].id;
      call.name = calls_[i].name;
      detail::parse_tool_arguments(call, calls_[i].arguments.empty()
                                           ? initial_inputs_[i]
                                           : calls_[i].arguments);
      resp.message.tool_calls.push_back(std::move(call));
    }
    return resp;
  }

  caf::error dispatch(const std::string& name, const json& data,
                      const std::string& where, std::vector<model_delta>& out) {
    if (name == "error")
      // parse_object reports {"error": ...}; an error event without one:
      return fail(where, "the provider reported an error: "
                           + provider_error_text(safe_dump(data)));
    if (name == "message_start")
      return on_message_start(data, where);
    if (name == "message_delta")
      return on_message_delta(data, where);
    int64_t index = 0;
    if (!integer_at(data, "index", index))
      return fail(where, "/index is missing");
    if (name == "content_block_start")
      return on_block_start(index, data, where, out);
    auto known = blocks_.find(index);
    if (known == blocks_.end())
      return fail(where, "block " + std::to_string(index) + " never started");
    if (name == "content_block_delta")
      return on_block_delta(known->second, data, where, out);
    return caf::none; // content_block_stop: the arguments parse in finish()
  }

  caf::error on_message_start(const json& data, const std::string& where) {
    auto msg = data.find("message");
    if (msg == data.end() || !msg->is_object())
      return fail(where, "/message is missing");
    started_ = true;
    if (auto usage = msg->find("usage");
        usage != msg->end() && usage->is_object()) {
      usage_.input_tokens = input_tokens(*usage);
      usage_.output_tokens = detail::count_at(*usage, "output_tokens");
    }
    return caf::none;
  }

  caf::error on_message_delta(const json& data, const std::string& where) {
    auto delta = data.find("delta");
    if (delta != data.end() && !delta->is_null() && !delta->is_object())
      return fail(where, wrong_type("/delta", *delta, "an object"));
    if (delta != data.end())
      if (auto reason = string_at(*delta, "stop_reason"); !reason.empty())
        stop_reason_ = std::move(reason);
    // The counts here are cumulative; newer API versions repeat the input.
    if (auto usage = data.find("usage");
        usage != data.end() && usage->is_object()) {
      if (usage->contains("output_tokens"))
        usage_.output_tokens = detail::count_at(*usage, "output_tokens");
      if (usage->contains("input_tokens"))
        usage_.input_tokens = input_tokens(*usage);
    }
    return caf::none;
  }

  caf::error on_block_start(int64_t index, const json& data,
                            const std::string& where,
                            std::vector<model_delta>& out) {
    auto content = data.find("content_block");
    if (content == data.end() || !content->is_object())
      return fail(where, "/content_block is missing");
    if (blocks_.count(index) > 0)
      return fail(where, "block " + std::to_string(index) + " started twice");
    auto type = string_at(*content, "type");
    if (type == "tool_use") {
      auto id = string_at(*content, "id");
      auto name = string_at(*content, "name");
      if (id.empty() || name.empty())
        return fail(where, "the tool_use block has no id or no name");
      std::string initial_input;
      if (auto input = content->find("input");
          input != content->end() && !input->empty())
        initial_input = safe_dump(*input);
      blocks_[index] = block{block::kind::tool, start_call(id, name, out)};
      initial_inputs_.push_back(std::move(initial_input));
      return caf::none;
    }
    if (type != "text") {
      blocks_[index] = block{};
      return caf::none;
    }
    blocks_[index] = block{block::kind::text, 0};
    append_text(string_at(*content, "text"), out);
    return caf::none;
  }

  caf::error on_block_delta(const block& blk, const json& data,
                            const std::string& where,
                            std::vector<model_delta>& out) {
    auto delta = data.find("delta");
    if (delta == data.end() || !delta->is_object())
      return fail(where, "/delta is missing");
    auto type = string_at(*delta, "type");
    if (type == "text_delta") {
      auto text = delta->find("text");
      if (text == delta->end() || !text->is_string())
        return fail(where, "/delta/text is missing");
      append_text(text->get<std::string>(), out);
    } else if (type == "input_json_delta") {
      if (blk.what == block::kind::text)
        return fail(where, "input_json_delta for a text block");
      if (blk.what == block::kind::other)
        return caf::none; // e.g. a server_tool_use's input
      auto partial = delta->find("partial_json");
      if (partial == delta->end() || !partial->is_string())
        return fail(where, "/delta/partial_json is missing");
      append_arguments(blk.call, partial->get<std::string>(), out);
    }
    // thinking_delta, signature_delta, citations_delta: not part of the
    // reply's message.
    return caf::none;
  }

  std::map<int64_t, block> blocks_;
  /// By position in calls_: content_block_start's input when not empty (the
  /// API sends {} there), the arguments when no input_json_delta came.
  std::vector<std::string> initial_inputs_;
  std::string stop_reason_;
  std::string last_event_;
  bool started_ = false;
};

} // namespace

json encode_request(const chat_request& req, const model_wire_options& opts) {
  auto body = json::object();
  const auto& params = req.params.value;
  // Parameters the Messages API takes pass; OpenAI's spellings of the same
  // translate; OpenAI-only ones (n, seed, response_format, ...) are left out,
  // since the API refuses unknown fields and a fallback chain may send one
  // agent's parameters to both providers.
  static const char* const passed[] = {"max_tokens", "temperature", "top_p",
                                       "top_k", "stop_sequences", "metadata",
                                       "thinking", "service_tier"};
  if (params.is_object()) {
    for (const char* key : passed)
      if (params.contains(key))
        body[key] = params[key];
    if (params.contains("tool_choice"))
      body["tool_choice"] = translate_tool_choice(params["tool_choice"]);
    if (!body.contains("max_tokens") && params.contains("max_completion_tokens"))
      body["max_tokens"] = params["max_completion_tokens"];
    if (!body.contains("stop_sequences") && params.contains("stop")) {
      const auto& stop = params["stop"];
      if (stop.is_string())
        body["stop_sequences"] = json::array({stop});
      else if (stop.is_array())
        body["stop_sequences"] = stop;
    }
    if (params.value("parallel_tool_calls", true) == false) {
      if (!body.contains("tool_choice"))
        body["tool_choice"] = {{"type", "auto"}};
      if (body["tool_choice"].is_object())
        body["tool_choice"]["disable_parallel_tool_use"] = true;
    }
  }
  body["model"] = opts.model_id;
  if (!body["max_tokens"].is_number_integer())
    body["max_tokens"] = opts.default_max_tokens;
  std::string system;
  bool has_system = false;
  auto messages = json::array();
  for (const auto& msg : req.messages) {
    switch (msg.role) {
      case chat_role::system:
        if (has_system)
          system += "\n\n";
        system += msg.content;
        has_system = true;
        break;
      case chat_role::user:
        append_turn(messages, "user", msg.content);
        break;
      case chat_role::assistant: {
        if (msg.tool_calls.empty()) {
          append_turn(messages, "assistant", msg.content);
          break;
        }
        auto blocks = as_blocks(msg.content);
        for (const auto& call : msg.tool_calls)
          blocks.push_back(encode_tool_use(call));
        append_turn(messages, "assistant", std::move(blocks));
        break;
      }
      case chat_role::tool:
        append_turn(messages, "user",
                    json::array({{{"type", "tool_result"},
                                  {"tool_use_id", msg.tool_call_id},
                                  {"content", msg.content}}}));
        break;
    }
  }
  if (has_system)
    body["system"] = std::move(system);
  body["messages"] = std::move(messages);
  if (!req.tools.empty()) {
    auto tools = json::array();
    for (const auto& tool : req.tools)
      tools.push_back(encode_tool(tool));
    body["tools"] = std::move(tools);
  }
  body["stream"] = opts.stream;
  return body;
}

caf::expected<chat_response> decode_response(std::string_view body,
                                             const std::string& model) {
  const std::string where = "anthropic reply";
  auto parsed = detail::parse_object(body, where);
  if (!parsed)
    return parsed.error();
  const auto& root = *parsed;
  auto content = root.find("content");
  if (content == root.end() || content->is_null())
    return fail(where, "/content is missing");
  if (!content->is_array())
    return fail(where, wrong_type("/content", *content, "an array"));
  chat_response resp;
  resp.model = model;
  resp.message.role = chat_role::assistant;
  for (size_t i = 0; i < content->size(); ++i) {
    const auto& block = (*content)[i];
    auto path = "/content/" + std::to_string(i);
    if (!block.is_object())
      return fail(where, wrong_type(path, block, "an object"));
    auto type = string_at(block, "type");
    if (type == "text") {
      auto text = block.find("text");
      if (text == block.end() || !text->is_string())
        return fail(where, path + "/text is missing");
      resp.message.content += text->get_ref<const std::string&>();
    } else if (type == "tool_use") {
      model_tool_call call;
      call.id = string_at(block, "id");
      call.name = string_at(block, "name");
      if (call.id.empty())
        return fail(where, path + "/id is missing");
      if (call.name.empty())
        return fail(where, path + "/name is missing");
      auto input = block.find("input");
      if (input == block.end() || input->is_null())
        detail::parse_tool_arguments(call, {});
      else
        detail::parse_tool_arguments(call, safe_dump(*input));
      resp.message.tool_calls.push_back(std::move(call));
    }
    // thinking and other blocks are not part of the reply's message.
  }
  resp.finish_reason = finish_reason(string_at(root, "stop_reason"));
  if (auto usage = root.find("usage");
      usage != root.end() && usage->is_object()) {
    resp.usage.input_tokens = input_tokens(*usage);
    resp.usage.output_tokens = detail::count_at(*usage, "output_tokens");
  }
  return resp;
}

std::unique_ptr<model_stream_decoder> make_stream_decoder(std::string model) {
  return std::make_unique<stream_decoder>(std::move(model));
}

} // namespace troupe::anthropic

#include "actors/model_codecs.hpp"
#include "actors/model_codecs_detail.hpp"

#include <map>
#include <utility>

#include "messages/errors.hpp"
#include "runtime/sse_parser.hpp"

namespace troupe::openai {

namespace {

using detail::fail;
using detail::string_at;
using detail::wrong_type;

std::string trim(std::string_view text) {
  auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos)
    return {};
  auto last = text.find_last_not_of(" \t\r\n");
  return std::string{text.substr(first, last - first + 1)};
}

/// The argument text sent back for a tool call the model made earlier: its
/// own text when that did not parse, so it sees what it wrote.
std::string argument_text(const model_tool_call& call) {
  const auto& args = call.arguments.value;
  if (args.is_null() || args.is_discarded())
    return call.raw_arguments.empty() ? std::string{"{}"}
                                      : call.raw_arguments;
  return safe_dump(args);
}

json encode_message(const chat_message& msg) {
  switch (msg.role) {
    case chat_role::system:
      return {{"role", "system"}, {"content", msg.content}};
    case chat_role::user:
      return {{"role", "user"}, {"content", msg.content}};
    case chat_role::assistant: {
      json out{{"role", "assistant"}};
      if (msg.tool_calls.empty()) {
        out["content"] = msg.content;
        return out;
      }
      out["content"] = msg.content.empty() ? json{} : json(msg.content);
      auto calls = json::array();
      for (const auto& call : msg.tool_calls)
        calls.push_back(
          {{"id", call.id},
           {"type", "function"},
           {"function",
            {{"name", call.name}, {"arguments", argument_text(call)}}}});
      out["tool_calls"] = std::move(calls);
      return out;
    }
    case chat_role::tool:
      // No "name": the API documents none on tool messages and some
      // compatible servers reject unknown keys.
      return {{"role", "tool"},
              {"tool_call_id", msg.tool_call_id},
              {"content", msg.content}};
  }
  return {{"role", "user"}, {"content", msg.content}};
}

json encode_tool(const tool_spec& tool) {
  json fn{{"name", tool.name}};
  if (!tool.description.empty())
    fn["description"] = tool.description;
  fn["parameters"] = detail::parameters_schema(tool);
  return {{"type", "function"}, {"function", std::move(fn)}};
}

/// Appends the text of a message's content to `out`: a string, null, or (as
/// some servers send) an array of {"type": "text", "text": ...} parts.
caf::error append_content(const json& content, const std::string& where,
                          const std::string& path, std::string& out) {
  if (content.is_null())
    return caf::none;
  if (content.is_string()) {
    out += content.get_ref<const std::string&>();
    return caf::none;
  }
  if (!content.is_array())
    return fail(where, wrong_type(path, content, "a string"));
  for (const auto& part : content) {
    auto text = part.is_object() ? part.find("text") : part.end();
    if (!part.is_object() || text == part.end() || !text->is_string())
      return fail(where, path + " has a part that is not a text part");
    out += text->get_ref<const std::string&>();
  }
  return caf::none;
}

/// The id a call gets when the server sent none (older llama.cpp servers):
/// the agent matches tool results to calls by id.
std::string fallback_id(size_t position) {
  return "call_" + std::to_string(position);
}

/// Sets a call's arguments from the "arguments" field of a tool call: a JSON
/// text as documented, or an object as some servers send.
void set_arguments(model_tool_call& call, const json* arguments) {
  if (arguments == nullptr || arguments->is_null())
    detail::parse_tool_arguments(call, {});
  else if (arguments->is_string())
    detail::parse_tool_arguments(call, arguments->get<std::string>());
  else
    detail::parse_tool_arguments(call, safe_dump(*arguments));
}

caf::expected<model_tool_call> decode_tool_call(const json& entry,
                                                const std::string& where,
                                                const std::string& path,
                                                size_t position) {
  if (!entry.is_object())
    return fail(where, wrong_type(path, entry, "an object"));
  auto fn = entry.find("function");
  if (fn == entry.end() || fn->is_null())
    return fail(where, path + "/function is missing");
  if (!fn->is_object())
    return fail(where, wrong_type(path + "/function", *fn, "an object"));
  model_tool_call call;
  call.name = string_at(*fn, "name");
  if (call.name.empty())
    return fail(where, path + "/function/name is missing");
  call.id = string_at(entry, "id");
  if (call.id.empty())
    call.id = fallback_id(position);
  auto args = fn->find("arguments");
  set_arguments(call, args == fn->end() ? nullptr : &*args);
  return call;
}

/// Reassembles a streamed Chat Completions reply.
class stream_decoder : public detail::stream_decoder_base {
public:
  explicit stream_decoder(std::string model)
    : stream_decoder_base(std::move(model)) {
  }

private:
  caf::error on_event(const sse_event& ev,
                      std::vector<model_delta>& out) override {
    auto data = trim(ev.data);
    if (data == "[DONE]") {
      done_ = true;
      return caf::none;
    }
    if (data.empty())
      return caf::none;
    auto where = "openai stream event " + std::to_string(events_);
    auto chunk = detail::parse_object(data, where);
    if (!chunk)
      return chunk.error();
    return on_chunk(*chunk, where, out);
  }

  caf::expected<chat_response> on_finish() override {
    // Some servers (llama.cpp, Ollama among them) end the stream without
    // "data: [DONE]". One that sent a finish_reason has said its reply is
    // whole, so it is accepted (complete() stays false); without either the
    // stream was cut.
    if (!done_ && finish_reason_.empty())
      return ended_early("openai", "[DONE]", "", "");
    auto resp = reply(finish_reason_);
    for (size_t i = 0; i < calls_.size(); ++i) {
      const auto& partial = calls_[i];
      if (partial.name.empty())
        return make_error(errc::model_failed,
                          "openai stream: tool call " + std::to_string(i)
                            + " never got a function name");
      model_tool_call call;
      call.id = partial.id.empty() ? fallback_id(i) : partial.id;
      call.name = partial.name;
      detail::parse_tool_arguments(call, partial.arguments);
      resp.message.tool_calls.push_back(std::move(call));
    }
    return resp;
  }

  caf::error on_chunk(const json& chunk, const std::string& where,
                      std::vector<model_delta>& out) {
    if (auto usage = chunk.find("usage");
        usage != chunk.end() && usage->is_object()) {
      usage_.input_tokens = detail::count_at(*usage, "prompt_tokens");
      usage_.output_tokens = detail::count_at(*usage, "completion_tokens");
    }
    auto choices = chunk.find("choices");
    if (choices == chunk.end() || choices->is_null())
      return caf::none;
    if (!choices->is_array())
      return fail(where, wrong_type("/choices", *choices, "an array"));
    for (size_t i = 0; i < choices->size(); ++i) {
      const auto& choice = (*choices)[i];
      auto path = "/choices/" + std::to_string(i);
      if (!choice.is_object())
        return fail(where, wrong_type(path, choice, "an object"));
      // Only the first choice is followed; with n > 1 choices interleave.
      if (auto index = choice.find("index");
          index != choice.end() && index->is_number_integer()
          && index->get<int64_t>() != 0)
        continue;
      if (auto reason = string_at(choice, "finish_reason"); !reason.empty())
        finish_reason_ = std::move(reason);
      auto delta = choice.find("delta");
      if (delta == choice.end() || delta->is_null())
        continue;
      if (!delta->is_object())
        return fail(where, wrong_type(path + "/delta", *delta, "an object"));
      if (auto content = delta->find("content"); content != delta->end()) {
        std::string piece;
        if (auto err = append_content(*content, where, path + "/delta/content",
                                      piece))
          return err;
        append_text(std::move(piece), out);
      }
      auto calls = delta->find("tool_calls");
      if (calls == delta->end() || calls->is_null())
        continue;
      if (!calls->is_array())
        return fail(where, wrong_type(path + "/delta/tool_calls", *calls,
                                      "an array"));
      for (size_t j = 0; j < calls->size(); ++j)
        if (auto err = on_tool_fragment(
              (*calls)[j], where,
              path + "/delta/tool_calls/" + std::to_string(j), out))
          return err;
    }
    return caf::none;
  }

  caf::error on_tool_fragment(const json& entry, const std::string& where,
                              const std::string& path,
                              std::vector<model_delta>& out) {
    if (!entry.is_object())
      return fail(where, wrong_type(path, entry, "an object"));
    const json* fn = nullptr;
    if (auto i = entry.find("function"); i != entry.end() && !i->is_null()) {
      if (!i->is_object())
        return fail(where, wrong_type(path + "/function", *i, "an object"));
      fn = &*i;
    }
    auto id = string_at(entry, "id");
    auto name = fn != nullptr ? string_at(*fn, "name") : std::string{};
    size_t slot = 0;
    auto index = entry.find("index");
    if (index != entry.end() && index->is_number_integer()) {
      auto key = index->get<int64_t>();
      auto known = slot_of_.find(key);
      // Some servers number parallel calls all 0 but give each its own id:
      // a new id at a known index starts a new call.
      if (known == slot_of_.end()
          || (!id.empty() && !calls_[known->second].id.empty()
              && calls_[known->second].id != id)) {
        slot = start_call(id, name, out);
        slot_of_[key] = slot;
      } else {
        slot = known->second;
      }
    } else if (!id.empty() || calls_.empty()) {
      // No index (not as documented): an id starts a call, and fragments
      // without one continue the last.
      slot = start_call(id, name, out);
    } else {
      slot = calls_.size() - 1;
    }
    auto& call = calls_[slot];
    if (call.id.empty())
      call.id = id;
    if (call.name.empty())
      call.name = name;
    if (fn == nullptr)
      return caf::none;
    auto args = fn->find("arguments");
    if (args == fn->end() || args->is_null())
      return caf::none;
    std::string piece;
    if (args->is_string())
      piece = args->get<std::string>();
    else if (args->is_object())
      piece = safe_dump(*args);
    else
      return fail(where, wrong_type(path + "/function/arguments", *args,
                                    "a string"));
    append_arguments(slot, std::move(piece), out);
    return caf::none;
  }

  /// The server's tool-call index -> position in calls_.
  std::map<int64_t, size_t> slot_of_;
  std::string finish_reason_;
};

} // namespace

json encode_request(const chat_request& req, const model_wire_options& opts) {
  auto body = json::object();
  const auto& params = req.params.value;
  if (params.is_object())
    for (auto i = params.begin(); i != params.end(); ++i)
      if (i.key() != "model" && i.key() != "messages" && i.key() != "stream")
        body[i.key()] = i.value();
  body["model"] = opts.model_id;
  auto messages = json::array();
  for (const auto& msg : req.messages)
    messages.push_back(encode_message(msg));
  body["messages"] = std::move(messages);
  if (!req.tools.empty()) {
    auto tools = json::array();
    for (const auto& tool : req.tools)
      tools.push_back(encode_tool(tool));
    body["tools"] = std::move(tools);
  }
  body["stream"] = opts.stream;
  if (opts.stream) {
    auto& stream_options = body["stream_options"];
    if (!stream_options.is_object())
      stream_options = json::object();
    stream_options["include_usage"] = true;
  } else {
    // OpenAI rejects stream_options on a request that does not stream.
    body.erase("stream_options");
  }
  return body;
}

caf::expected<chat_response> decode_response(std::string_view body,
                                             const std::string& model) {
  const std::string where = "openai reply";
  auto parsed = detail::parse_object(body, where);
  if (!parsed)
    return parsed.error();
  const auto& root = *parsed;
  auto choices = root.find("choices");
  if (choices == root.end() || choices->is_null())
    return fail(where, "/choices is missing");
  if (!choices->is_array())
    return fail(where, wrong_type("/choices", *choices, "an array"));
  if (choices->empty())
    return fail(where, "/choices is empty");
  const auto& choice = choices->front();
  if (!choice.is_object())
    return fail(where, wrong_type("/choices/0", choice, "an object"));
  auto msg = choice.find("message");
  if (msg == choice.end() || msg->is_null())
    return fail(where, "/choices/0/message is missing");
  if (!msg->is_object())
    return fail(where, wrong_type("/choices/0/message", *msg, "an object"));
  chat_response resp;
  resp.model = model;
  resp.message.role = chat_role::assistant;
  if (auto content = msg->find("content"); content != msg->end())
    if (auto err = append_content(*content, where, "/choices/0/message/content",
                                  resp.message.content))
      return err;
  if (auto calls = msg->find("tool_calls");
      calls != msg->end() && !calls->is_null()) {
    if (!calls->is_array())
      return fail(where, wrong_type("/choices/0/message/tool_calls", *calls,
                                    "an array"));
    for (size_t i = 0; i < calls->size(); ++i) {
      auto call = decode_tool_call(
        (*calls)[i], where,
        "/choices/0/message/tool_calls/" + std::to_string(i), i);
      if (!call)
        return call.error();
      resp.message.tool_calls.push_back(std::move(*call));
    }
  }
  if (auto reason = choice.find("finish_reason");
      reason != choice.end() && !reason->is_null()) {
    if (!reason->is_string())
      return fail(where, wrong_type("/choices/0/finish_reason", *reason,
                                    "a string"));
    resp.finish_reason = reason->get<std::string>();
  }
  if (auto usage = root.find("usage");
      usage != root.end() && usage->is_object()) {
    resp.usage.input_tokens = detail::count_at(*usage, "prompt_tokens");
    resp.usage.output_tokens = detail::count_at(*usage, "completion_tokens");
  }
  return resp;
}

std::unique_ptr<model_stream_decoder> make_stream_decoder(std::string model) {
  return std::make_unique<stream_decoder>(std::move(model));
}

} // namespace troupe::openai

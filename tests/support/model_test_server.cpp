#include "support/model_test_server.hpp"

#include <algorithm>
#include <cctype>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <exception>
#include <initializer_list>
#include <mutex>
#include <variant>

namespace troupe::test {

namespace {

using std::chrono::milliseconds;

const std::string openai_api = "openai";
const std::string anthropic_api = "anthropic";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size()
         && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string find_header(
  const std::vector<std::pair<std::string, std::string>>& headers,
  const std::string& name) {
  auto wanted = lower(name);
  for (const auto& [key, value] : headers)
    if (lower(key) == wanted)
      return value;
  return {};
}

/// Splits `s` into pieces whose sizes cycle through `sizes`, never inside a
/// UTF-8 sequence (a piece may then be a little longer).
std::vector<std::string> split_pieces(const std::string& s,
                                      std::initializer_list<size_t> sizes) {
  std::vector<size_t> cycle(sizes);
  std::vector<std::string> out;
  size_t pos = 0;
  for (size_t k = 0; pos < s.size(); ++k) {
    auto end = std::min(s.size(), pos + cycle[k % cycle.size()]);
    while (end < s.size()
           && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80)
      ++end;
    out.push_back(s.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

/// IMF-fixdate (RFC 9110, section 5.6.7), rounded up to the second.
std::string http_date(std::chrono::system_clock::time_point t) {
  static const char* const days[] = {"Sun", "Mon", "Tue", "Wed",
                                     "Thu", "Fri", "Sat"};
  static const char* const months[] = {"Jan", "Feb", "Mar", "Apr",
                                       "May", "Jun", "Jul", "Aug",
                                       "Sep", "Oct", "Nov", "Dec"};
  auto secs = std::chrono::ceil<std::chrono::seconds>(t);
  auto tt = std::chrono::system_clock::to_time_t(secs);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%s, %02d %s %04d %02d:%02d:%02d GMT",
                days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
                tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

std::string default_message(int code) {
  switch (code) {
    case 400:
      return "invalid request";
    case 401:
      return "invalid API key";
    case 404:
      return "not found";
    case 429:
      return "rate limit exceeded";
    case 500:
      return "internal server error";
    case 503:
      return "service unavailable";
    case 529:
      return "overloaded";
    default:
      return "error " + std::to_string(code);
  }
}

/// {"error":{"message","type","param","code"}} as OpenAI sends it.
json openai_error(int status, const std::string& message) {
  std::string type = "invalid_request_error";
  json code = nullptr;
  if (status == 401) {
    code = "invalid_api_key";
  } else if (status == 404) {
    code = "unknown_url";
  } else if (status == 429) {
    type = "requests";
    code = "rate_limit_exceeded";
  } else if (status >= 500) {
    type = "server_error";
  }
  json err = json::object();
  err["message"] = message;
  err["type"] = type;
  err["param"] = nullptr;
  err["code"] = code;
  return json{{"error", err}};
}

/// {"type":"error","error":{"type","message"}} as Anthropic sends it.
json anthropic_error(int status, const std::string& message) {
  std::string type;
  switch (status) {
    case 401:
      type = "authentication_error";
      break;
    case 403:
      type = "permission_error";
      break;
    case 404:
      type = "not_found_error";
      break;
    case 413:
      type = "request_too_large";
      break;
    case 429:
      type = "rate_limit_error";
      break;
    case 529:
      type = "overloaded_error";
      break;
    default:
      type = status >= 500 ? "api_error" : "invalid_request_error";
  }
  json err = json::object();
  err["type"] = type;
  err["message"] = message;
  return json{{"type", "error"}, {"error", err}};
}

/// An error response in the shape of `api` (OpenAI's for an unknown path).
test_http_action error_action(const std::string& api, int status,
                              const std::string& message) {
  auto body = api == anthropic_api ? anthropic_error(status, message)
                                   : openai_error(status, message);
  auto a = test_http_action::reply(status, safe_dump(body));
  a.headers.emplace_back("Content-Type", "application/json");
  return a;
}

std::string openai_finish(const model_reply& r) {
  if (r.finish_reason.empty())
    return r.tool_calls.empty() ? "stop" : "tool_calls";
  if (r.finish_reason == "end_turn")
    return "stop";
  if (r.finish_reason == "tool_use")
    return "tool_calls";
  if (r.finish_reason == "max_tokens")
    return "length";
  return r.finish_reason;
}

std::string anthropic_stop(const model_reply& r) {
  if (r.finish_reason.empty())
    return r.tool_calls.empty() ? "end_turn" : "tool_use";
  if (r.finish_reason == "stop")
    return "end_turn";
  if (r.finish_reason == "tool_calls")
    return "tool_use";
  if (r.finish_reason == "length")
    return "max_tokens";
  return r.finish_reason;
}

/// What a rendering needs besides the reply.
struct render_context {
  std::string model;
  int64_t created = 0;
  size_t number = 0;
  bool include_usage = false;
};

std::string call_id(const model_reply_call& c, const std::string& prefix,
                    size_t number, size_t index) {
  if (!c.id.empty())
    return c.id;
  return prefix + std::to_string(number) + "_" + std::to_string(index);
}

json openai_body(const model_reply& r, const render_context& ctx) {
  json message = json::object();
  message["role"] = "assistant";
  if (r.text.empty() && !r.tool_calls.empty())
    message["content"] = nullptr;
  else
    message["content"] = r.text;
  if (!r.tool_calls.empty()) {
    json calls = json::array();
    for (size_t i = 0; i < r.tool_calls.size(); ++i) {
      const auto& c = r.tool_calls[i];
      calls.push_back(json{
        {"id", call_id(c, "call_test_", ctx.number, i)},
        {"type", "function"},
        {"function",
         json{{"name", c.name}, {"arguments", c.arguments_text()}}}});
    }
    message["tool_calls"] = std::move(calls);
  }
  json choice = json::object();
  choice["index"] = 0;
  choice["message"] = std::move(message);
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = openai_finish(r);
  json body = json::object();
  body["id"] = "chatcmpl-test-" + std::to_string(ctx.number);
  body["object"] = "chat.completion";
  body["created"] = ctx.created;
  body["model"] = ctx.model;
  body["choices"] = json::array({std::move(choice)});
  body["usage"] = json{{"prompt_tokens", r.input_tokens},
                       {"completion_tokens", r.output_tokens},
                       {"total_tokens", r.input_tokens + r.output_tokens}};
  return body;
}

std::vector<std::string> openai_events(const model_reply& r,
                                       const render_context& ctx) {
  auto id = "chatcmpl-test-" + std::to_string(ctx.number);
  auto frame = [&](json choices, json usage) {
    json c = json::object();
    c["id"] = id;
    c["object"] = "chat.completion.chunk";
    c["created"] = ctx.created;
    c["model"] = ctx.model;
    c["choices"] = std::move(choices);
    if (ctx.include_usage)
      c["usage"] = std::move(usage);
    return "data: " + safe_dump(c) + "\n\n";
  };
  auto chunk = [&](json delta, json finish) {
    json choice = json::object();
    choice["index"] = 0;
    choice["delta"] = std::move(delta);
    choice["logprobs"] = nullptr;
    choice["finish_reason"] = std::move(finish);
    return frame(json::array({std::move(choice)}), nullptr);
  };
  std::vector<std::string> events;
  events.push_back(chunk(json{{"role", "assistant"}}, nullptr));
  for (auto& piece : split_pieces(r.text, {6, 8, 7}))
    events.push_back(chunk(json{{"content", piece}}, nullptr));
  for (size_t i = 0; i < r.tool_calls.size(); ++i) {
    const auto& c = r.tool_calls[i];
    json head = json::object();
    head["index"] = i;
    head["id"] = call_id(c, "call_test_", ctx.number, i);
    head["type"] = "function";
    head["function"] = json{{"name", c.name}, {"arguments", ""}};
    events.push_back(
      chunk(json{{"tool_calls", json::array({std::move(head)})}}, nullptr));
    for (auto& piece : split_pieces(c.arguments_text(), {3, 5, 4})) {
      json part = json::object();
      part["index"] = i;
      part["function"] = json{{"arguments", piece}};
      events.push_back(
        chunk(json{{"tool_calls", json::array({std::move(part)})}}, nullptr));
    }
  }
  events.push_back(chunk(json::object(), openai_finish(r)));
  if (ctx.include_usage)
    events.push_back(
      frame(json::array(),
            json{{"prompt_tokens", r.input_tokens},
                 {"completion_tokens", r.output_tokens},
                 {"total_tokens", r.input_tokens + r.output_tokens}}));
  events.push_back("data: [DONE]\n\n");
  return events;
}

/// The `input` object of a non-streamed tool_use block.
json anthropic_input(const model_reply_call& c) {
  if (!c.raw_arguments)
    return c.arguments;
  auto parsed = json::parse(*c.raw_arguments, nullptr, false);
  if (!parsed.is_discarded() && parsed.is_object())
    return parsed;
  return *c.raw_arguments;
}

bool has_text_block(const model_reply& r) {
  return !r.text.empty() || r.tool_calls.empty();
}

json anthropic_body(const model_reply& r, const render_context& ctx) {
  json content = json::array();
  if (has_text_block(r))
    content.push_back(json{{"type", "text"}, {"text", r.text}});
  for (size_t i = 0; i < r.tool_calls.size(); ++i) {
    const auto& c = r.tool_calls[i];
    content.push_back(json{{"type", "tool_use"},
                           {"id", call_id(c, "toolu_test_", ctx.number, i)},
                           {"name", c.name},
                           {"input", anthropic_input(c)}});
  }
  json body = json::object();
  body["id"] = "msg_test_" + std::to_string(ctx.number);
  body["type"] = "message";
  body["role"] = "assistant";
  body["model"] = ctx.model;
  body["content"] = std::move(content);
  body["stop_reason"] = anthropic_stop(r);
  body["stop_sequence"] = nullptr;
  body["usage"] = json{{"input_tokens", r.input_tokens},
                       {"output_tokens", r.output_tokens}};
  return body;
}

std::string anthropic_event(const std::string& name, const json& data) {
  return "event: " + name + "\ndata: " + safe_dump(data) + "\n\n";
}

std::vector<std::string> anthropic_events(const model_reply& r,
                                          const render_context& ctx) {
  std::vector<std::string> events;
  json message = json::object();
  message["id"] = "msg_test_" + std::to_string(ctx.number);
  message["type"] = "message";
  message["role"] = "assistant";
  message["model"] = ctx.model;
  message["content"] = json::array();
  message["stop_reason"] = nullptr;
  message["stop_sequence"] = nullptr;
  message["usage"] = json{{"input_tokens", r.input_tokens},
                          {"output_tokens", 1}};
  events.push_back(anthropic_event(
    "message_start", json{{"type", "message_start"}, {"message", message}}));
  events.push_back(anthropic_event("ping", json{{"type", "ping"}}));
  size_t index = 0;
  auto block_stop = [&] {
    events.push_back(anthropic_event(
      "content_block_stop",
      json{{"type", "content_block_stop"}, {"index", index}}));
    ++index;
  };
  auto block_delta = [&](json delta) {
    events.push_back(anthropic_event("content_block_delta",
                                     json{{"type", "content_block_delta"},
                                          {"index", index},
                                          {"delta", std::move(delta)}}));
  };
  auto block_start = [&](json block) {
    events.push_back(anthropic_event("content_block_start",
                                     json{{"type", "content_block_start"},
                                          {"index", index},
                                          {"content_block", std::move(block)}}));
  };
  if (has_text_block(r)) {
    block_start(json{{"type", "text"}, {"text", ""}});
    for (auto& piece : split_pieces(r.text, {6, 8, 7}))
      block_delta(json{{"type", "text_delta"}, {"text", piece}});
    block_stop();
  }
  for (size_t i = 0; i < r.tool_calls.size(); ++i) {
    const auto& c = r.tool_calls[i];
    block_start(json{{"type", "tool_use"},
                     {"id", call_id(c, "toolu_test_", ctx.number, i)},
                     {"name", c.name},
                     {"input", json::object()}});
    for (auto& piece : split_pieces(c.arguments_text(), {3, 5, 4}))
      block_delta(json{{"type", "input_json_delta"}, {"partial_json", piece}});
    block_stop();
  }
  json delta = json::object();
  delta["stop_reason"] = anthropic_stop(r);
  delta["stop_sequence"] = nullptr;
  events.push_back(anthropic_event(
    "message_delta", json{{"type", "message_delta"},
                          {"delta", std::move(delta)},
                          {"usage", json{{"output_tokens", r.output_tokens}}}}));
  events.push_back(
    anthropic_event("message_stop", json{{"type", "message_stop"}}));
  return events;
}

/// A 200 whose content does not parse, in the framing the request asked for.
test_http_action malformed_action(const std::string& api, bool stream,
                                  const std::string& body) {
  if (!stream) {
    auto a = test_http_action::reply(
      200, body.empty() ? R"({"id":"broken","choices":[{"message":)" : body);
    a.headers.emplace_back("Content-Type", "application/json");
    return a;
  }
  if (!body.empty())
    return test_http_action::sse({body});
  if (api == anthropic_api)
    return test_http_action::sse(
      {"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\n\n",
       "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"});
  return test_http_action::sse(
    {"data: {\"id\":\"broken\",\"choices\":[{\"delta\":\n\n", "data: [DONE]\n\n"});
}

/// The first `after` events whole, then half of the next, then a close.
test_http_action cut_events(std::vector<std::string> events, size_t after) {
  auto n = std::min(after, events.size() - 1);
  std::vector<std::string> sent(events.begin(),
                                events.begin() + static_cast<long>(n));
  sent.push_back(events[n].substr(0, events[n].size() / 2));
  return test_http_action::sse(std::move(sent), true);
}

/// A JSON body sent chunked, cut after `after` 16-byte pieces.
test_http_action cut_body(const std::string& body, size_t after) {
  test_http_action a;
  a.what = test_http_action::kind::stream;
  a.headers.emplace_back("Content-Type", "application/json");
  std::vector<std::string> pieces;
  for (size_t pos = 0; pos < body.size(); pos += 16)
    pieces.push_back(body.substr(pos, 16));
  auto n = std::min(after, pieces.size() - 1);
  a.chunks.assign(pieces.begin(), pieces.begin() + static_cast<long>(n));
  a.cut = true;
  return a;
}

int64_t system_ms_now() {
  return std::chrono::duration_cast<milliseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

bool flag(const json& body, const char* key) {
  auto it = body.find(key);
  return it != body.end() && it->is_boolean() && it->get<bool>();
}

} // namespace

// -- model_reply_call, model_reply, model_fault --------------------------------

model_reply_call model_reply_call::make(std::string name, json arguments,
                                        std::string id) {
  model_reply_call c;
  c.id = std::move(id);
  c.name = std::move(name);
  c.arguments = std::move(arguments);
  return c;
}

model_reply_call model_reply_call::raw(std::string name, std::string raw,
                                       std::string id) {
  model_reply_call c;
  c.id = std::move(id);
  c.name = std::move(name);
  c.raw_arguments = std::move(raw);
  return c;
}

std::string model_reply_call::arguments_text() const {
  return raw_arguments ? *raw_arguments : safe_dump(arguments);
}

model_reply model_reply::say(std::string text) {
  model_reply r;
  r.text = std::move(text);
  return r;
}

model_reply model_reply::call(std::string name, json arguments, std::string id,
                              std::string text) {
  model_reply r;
  r.text = std::move(text);
  r.tool_calls.push_back(
    model_reply_call::make(std::move(name), std::move(arguments), std::move(id)));
  return r;
}

model_fault model_fault::rate_limited(std::chrono::seconds retry_after) {
  auto f = status(429);
  f.headers.emplace_back("Retry-After", std::to_string(retry_after.count()));
  return f;
}

model_fault
model_fault::rate_limited_until(std::chrono::system_clock::time_point until) {
  auto f = status(429);
  f.headers.emplace_back("Retry-After", http_date(until));
  return f;
}

model_fault model_fault::status(int code, std::string message) {
  model_fault f;
  f.what = kind::status;
  f.code = code;
  f.message = message.empty() ? default_message(code) : std::move(message);
  return f;
}

model_fault model_fault::slow(std::chrono::milliseconds delay) {
  model_fault f;
  f.what = kind::slow;
  f.delay = delay;
  return f;
}

model_fault model_fault::malformed(std::string body) {
  model_fault f;
  f.what = kind::malformed;
  f.body = std::move(body);
  return f;
}

model_fault model_fault::cut_stream(size_t after_chunks) {
  model_fault f;
  f.what = kind::cut_stream;
  f.after_chunks = after_chunks;
  return f;
}

model_fault model_fault::reset() {
  model_fault f;
  f.what = kind::reset;
  return f;
}

model_fault model_fault::hang() {
  model_fault f;
  f.what = kind::hang;
  return f;
}

bool model_fault::is_modifier() const noexcept {
  return what == kind::slow || what == kind::cut_stream;
}

std::string to_string(model_outcome x) {
  switch (x) {
    case model_outcome::replied:
      return "replied";
    case model_outcome::error:
      return "error";
    case model_outcome::malformed:
      return "malformed";
    case model_outcome::cut:
      return "cut";
    case model_outcome::reset:
      return "reset";
    case model_outcome::hang:
      return "hang";
  }
  return "unknown";
}

std::string recorded_model_request::header(const std::string& name) const {
  return find_header(headers, name);
}

// -- the server ------------------------------------------------------------------

struct model_test_server::state {
  explicit state(model_test_server_options o) : opts(std::move(o)) {
  }

  /// Maps one request to an action and records both; server thread.
  test_http_action handle(const test_http_request& req);

  /// The action for a request that passed the checks; fills `rec`.
  test_http_action answer(recorded_model_request& rec);

  /// 401 when the API key is configured and the request does not carry it.
  bool authorized(const recorded_model_request& rec) const;

  const model_test_server_options opts;
  mutable std::mutex mtx;
  mutable std::condition_variable arrived;
  std::deque<std::variant<model_reply, model_fault>> queue;
  model_responder responder;
  std::vector<recorded_model_request> log;
  size_t answered = 0;
};

bool model_test_server::state::authorized(
  const recorded_model_request& rec) const {
  if (opts.api_key.empty())
    return true;
  if (rec.api == openai_api)
    return rec.header("Authorization") == "Bearer " + opts.api_key;
  return rec.header("x-api-key") == opts.api_key
         && !rec.header("anthropic-version").empty();
}

test_http_action
model_test_server::state::handle(const test_http_request& req) {
  recorded_model_request rec;
  rec.arrived = std::chrono::steady_clock::now();
  rec.arrived_system_ms = system_ms_now();
  rec.method = req.method;
  rec.path = req.target;
  rec.headers = req.headers;
  rec.raw_body = req.body;
  rec.connection = req.connection;
  rec.sequence = req.sequence;
  auto path = req.target.substr(0, req.target.find('?'));
  if (req.method == "POST" && ends_with(path, "/chat/completions"))
    rec.api = openai_api;
  else if (req.method == "POST" && ends_with(path, "/messages"))
    rec.api = anthropic_api;
  auto parsed = json::parse(req.body, nullptr, false);
  if (!parsed.is_discarded())
    rec.body = std::move(parsed);
  rec.stream = rec.body.is_object() && flag(rec.body, "stream");

  test_http_action action;
  if (rec.api.empty()) {
    action = error_action(rec.api, 404,
                          "no route for " + req.method + " " + req.target);
    rec.outcome = model_outcome::error;
    rec.status = 404;
    rec.note = "404 unknown path";
  } else if (!authorized(rec)) {
    action = error_action(rec.api, 401, default_message(401));
    rec.outcome = model_outcome::error;
    rec.status = 401;
    rec.note = "401 unauthorized";
  } else if (!rec.body.is_object()) {
    action = error_action(rec.api, 400, "the request body is not a JSON object");
    rec.outcome = model_outcome::error;
    rec.status = 400;
    rec.note = "400 body not a JSON object";
  } else {
    action = answer(rec);
  }
  {
    std::lock_guard<std::mutex> guard{mtx};
    log.push_back(std::move(rec));
  }
  arrived.notify_all();
  return action;
}

test_http_action model_test_server::state::answer(recorded_model_request& rec) {
  std::optional<model_reply> reply;
  std::optional<model_fault> fault;
  std::optional<size_t> cut;
  milliseconds delay{0};
  model_responder compute;
  size_t number = 0;
  {
    std::lock_guard<std::mutex> guard{mtx};
    number = ++answered;
    while (!queue.empty() && !reply && !fault) {
      auto entry = std::move(queue.front());
      queue.pop_front();
      if (auto* r = std::get_if<model_reply>(&entry)) {
        reply = std::move(*r);
        continue;
      }
      auto& f = std::get<model_fault>(entry);
      if (f.what == model_fault::kind::slow)
        delay += f.delay;
      else if (f.what == model_fault::kind::cut_stream)
        cut = f.after_chunks;
      else
        fault = std::move(f);
    }
    if (!reply && !fault)
      compute = responder;
  }
  rec.delay = delay;
  auto with_delay = [delay](test_http_action a) {
    a.delay = delay;
    return a;
  };
  auto fail = [&](int status, const std::string& message,
                  const std::string& note) {
    rec.outcome = model_outcome::error;
    rec.status = status;
    rec.note = note;
    return with_delay(error_action(rec.api, status, message));
  };

  if (fault) {
    switch (fault->what) {
      case model_fault::kind::status: {
        auto a = fail(fault->code, fault->message,
                      std::to_string(fault->code) + " " + fault->message);
        for (auto& h : fault->headers)
          a.headers.push_back(h);
        return a;
      }
      case model_fault::kind::malformed:
        rec.outcome = model_outcome::malformed;
        rec.status = 200;
        rec.note = "malformed";
        return with_delay(malformed_action(rec.api, rec.stream, fault->body));
      case model_fault::kind::reset:
        rec.outcome = model_outcome::reset;
        rec.note = "reset";
        return with_delay(test_http_action::reset_connection());
      case model_fault::kind::hang:
        rec.outcome = model_outcome::hang;
        rec.note = "hang";
        return test_http_action::never();
      case model_fault::kind::slow:
      case model_fault::kind::cut_stream:
        break; // modifiers never end up here
    }
  }

  if (!reply) {
    if (!compute)
      return fail(500, "no scripted reply",
                  "500 no scripted reply (queue empty, no responder)");
    try {
      reply = compute(rec.body, rec.api);
    } catch (const std::exception& e) {
      return fail(500, std::string{"the responder threw: "} + e.what(),
                  "500 responder threw");
    }
  }

  render_context ctx;
  ctx.number = number;
  ctx.created = system_ms_now() / 1000;
  if (!reply->model.empty())
    ctx.model = reply->model;
  else if (auto it = rec.body.find("model");
           it != rec.body.end() && it->is_string())
    ctx.model = it->get<std::string>();
  else
    ctx.model = opts.model;
  if (auto it = rec.body.find("stream_options");
      it != rec.body.end() && it->is_object())
    ctx.include_usage = flag(*it, "include_usage");

  rec.status = 200;
  rec.outcome = cut ? model_outcome::cut : model_outcome::replied;
  rec.note = cut ? "cut after " + std::to_string(*cut)
                 : (rec.stream ? "stream" : "reply");
  if (rec.stream) {
    auto events = rec.api == anthropic_api ? anthropic_events(*reply, ctx)
                                           : openai_events(*reply, ctx);
    auto a = cut ? cut_events(std::move(events), *cut)
                 : test_http_action::sse(std::move(events));
    a.chunk_delay = opts.chunk_delay;
    return with_delay(std::move(a));
  }
  auto body = safe_dump(rec.api == anthropic_api ? anthropic_body(*reply, ctx)
                                                 : openai_body(*reply, ctx));
  if (cut)
    return with_delay(cut_body(body, *cut));
  auto a = test_http_action::reply(200, std::move(body));
  a.headers.emplace_back("Content-Type", "application/json");
  return with_delay(std::move(a));
}

model_test_server::model_test_server(model_test_server_options opts)
  : state_(std::make_shared<state>(std::move(opts))),
    server_([st = state_](const test_http_request& r) {
      return st->handle(r);
    }) {
}

model_test_server::~model_test_server() {
  stop();
}

std::string model_test_server::base_url() const {
  return server_.url("/v1");
}

std::string model_test_server::url(const std::string& path) const {
  return server_.url(path);
}

uint16_t model_test_server::port() const noexcept {
  return server_.port();
}

void model_test_server::push(model_reply reply) {
  std::lock_guard<std::mutex> guard{state_->mtx};
  state_->queue.emplace_back(std::move(reply));
}

void model_test_server::push(model_fault fault) {
  std::lock_guard<std::mutex> guard{state_->mtx};
  state_->queue.emplace_back(std::move(fault));
}

void model_test_server::respond_with(model_responder responder) {
  std::lock_guard<std::mutex> guard{state_->mtx};
  state_->responder = std::move(responder);
}

size_t model_test_server::queued() const {
  std::lock_guard<std::mutex> guard{state_->mtx};
  return state_->queue.size();
}

std::vector<recorded_model_request> model_test_server::requests() const {
  std::lock_guard<std::mutex> guard{state_->mtx};
  return state_->log;
}

size_t model_test_server::request_count() const {
  std::lock_guard<std::mutex> guard{state_->mtx};
  return state_->log.size();
}

size_t model_test_server::connections() const noexcept {
  return server_.connections();
}

bool model_test_server::wait_for_requests(
  size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> guard{state_->mtx};
  return state_->arrived.wait_for(guard, timeout,
                                  [&] { return state_->log.size() >= n; });
}

void model_test_server::stop() {
  server_.stop();
}

} // namespace troupe::test

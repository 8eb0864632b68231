#include "runtime/otlp_exporter.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <limits>
#include <list>
#include <mutex>
#include <random>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <spdlog/spdlog.h>

#include "actors/http_model.hpp"
#include "actors/tool_guards.hpp"
#include "runtime/approvals.hpp"
#include "runtime/clock.hpp"
#include "runtime/http_client.hpp"

namespace troupe {

using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

namespace {

// --- encoding ----------------------------------------------------------------

/// OTLP span kinds (opentelemetry/proto/trace/v1/trace.proto).
constexpr int span_kind_internal = 1;
constexpr int span_kind_client = 3;

/// OTLP status codes.
constexpr int status_unset = 0;
constexpr int status_ok = 1;
constexpr int status_error = 2;

/// The record's `field` as a lowercase hex id of `digits` digits ("" allowed
/// when `optional`). Throws std::invalid_argument naming the field.
std::string hex_id(const json& rec, const char* field, size_t digits,
                   bool optional = false) {
  auto i = rec.find(field);
  if (i == rec.end() || i->is_null()) {
    if (optional)
      return {};
    throw std::invalid_argument(std::string{"missing "} + field);
  }
  if (!i->is_string())
    throw std::invalid_argument(std::string{field} + " is not a string");
  auto id = i->get<std::string>();
  if (optional && id.empty())
    return id;
  bool hex = id.size() == digits
             && std::all_of(id.begin(), id.end(), [](unsigned char c) {
                  return std::isxdigit(c);
                });
  if (!hex)
    throw std::invalid_argument(std::string{field} + " '" + id.substr(0, 40)
                                + "' is not " + std::to_string(digits)
                                + " hex digits");
  std::transform(id.begin(), id.end(), id.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  // All zeros is OTLP's "no id": a collector refuses the whole request.
  if (id.find_first_not_of('0') == std::string::npos) {
    if (optional)
      return {};
    throw std::invalid_argument(std::string{field} + " is all zeros");
  }
  return id;
}

/// The record's `field` as non-negative integer nanoseconds.
uint64_t time_field(const json& rec, const char* field) {
  auto i = rec.find(field);
  if (i == rec.end())
    throw std::invalid_argument(std::string{"missing "} + field);
  if (i->is_number_unsigned())
    return i->get<uint64_t>();
  if (i->is_number_integer() && i->get<int64_t>() >= 0)
    return static_cast<uint64_t>(i->get<int64_t>());
  throw std::invalid_argument(std::string{field}
                              + " is not a non-negative integer");
}

/// The record's `field` as a string ("" when absent or null).
std::string string_field(const json& rec, const char* field,
                         bool required = false) {
  auto i = rec.find(field);
  if (i == rec.end() || i->is_null()) {
    if (required)
      throw std::invalid_argument(std::string{"missing "} + field);
    return {};
  }
  if (!i->is_string())
    throw std::invalid_argument(std::string{field} + " is not a string");
  return i->get<std::string>();
}

/// `obj[field]` when it is a string, else "".
std::string string_or_empty(const json& obj, const char* field) {
  auto i = obj.find(field);
  return i != obj.end() && i->is_string() ? i->get<std::string>()
                                          : std::string{};
}

/// A JSON value as an OTLP AnyValue; nullopt for null (no value).
std::optional<json> any_value(const json& v) {
  switch (v.type()) {
    case json::value_t::string:
      return json{{"stringValue", v}};
    case json::value_t::boolean:
      return json{{"boolValue", v}};
    case json::value_t::number_integer:
      // int64 travels as a decimal string in the JSON encoding.
      return json{{"intValue", std::to_string(v.get<int64_t>())}};
    case json::value_t::number_unsigned: {
      auto u = v.get<uint64_t>();
      if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return json{{"intValue", std::to_string(u)}};
      return json{{"stringValue", std::to_string(u)}};
    }
    case json::value_t::number_float: {
      auto d = v.get<double>();
      if (std::isnan(d))
        return json{{"doubleValue", "NaN"}};
      if (std::isinf(d))
        return json{{"doubleValue", d > 0 ? "Infinity" : "-Infinity"}};
      return json{{"doubleValue", d}};
    }
    case json::value_t::array: {
      auto values = json::array();
      for (const auto& x : v)
        values.push_back(any_value(x).value_or(json::object()));
      return json{{"arrayValue", {{"values", std::move(values)}}}};
    }
    case json::value_t::object: {
      auto values = json::array();
      for (const auto& item : v.items())
        values.push_back(json{{"key", item.key()},
                              {"value", any_value(item.value())
                                          .value_or(json::object())}});
      return json{{"kvlistValue", {{"values", std::move(values)}}}};
    }
    default: // null, binary, discarded
      return std::nullopt;
  }
}

/// The record's attributes as an OTLP KeyValue list (null values left out).
json attributes_of(const json& rec) {
  auto out = json::array();
  auto i = rec.find("attributes");
  if (i == rec.end() || i->is_null())
    return out;
  if (!i->is_object())
    throw std::invalid_argument("attributes is not an object");
  for (const auto& item : i->items())
    if (auto value = any_value(item.value()))
      out.push_back(json{{"key", item.key()}, {"value", std::move(*value)}});
  return out;
}

json string_attribute(const std::string& key, const std::string& value) {
  return json{{"key", key}, {"value", {{"stringValue", value}}}};
}

/// CLIENT for calls that leave the agent (a model, a tool), INTERNAL else.
int span_kind_of(const json& rec, const std::string& name) {
  std::string op;
  auto attrs = rec.find("attributes");
  if (attrs != rec.end() && attrs->is_object()) {
    auto i = attrs->find("gen_ai.operation.name");
    if (i != attrs->end() && i->is_string())
      op = i->get<std::string>();
  }
  if (op.empty())
    op = name.substr(0, name.find(' '));
  static const std::unordered_set<std::string> client_ops{
    "chat", "execute_tool", "text_completion", "generate_content",
    "embeddings"};
  return client_ops.count(op) ? span_kind_client : span_kind_internal;
}

/// A "span" record as an OTLP Span (without events).
json encode_span(const json& rec) {
  auto name = string_field(rec, "name", true);
  auto status = string_field(rec, "status");
  auto message = string_field(rec, "status_message");
  json span{{"traceId", hex_id(rec, "trace_id", 32)},
            {"spanId", hex_id(rec, "span_id", 16)},
            {"name", name},
            {"kind", span_kind_of(rec, name)},
            {"startTimeUnixNano", std::to_string(time_field(rec, "start_ns"))},
            {"endTimeUnixNano", std::to_string(time_field(rec, "end_ns"))},
            {"attributes", attributes_of(rec)}};
  auto parent = hex_id(rec, "parent_span_id", 16, true);
  if (!parent.empty())
    span["parentSpanId"] = parent;
  json st{{"code", status == "ok"                        ? status_ok
                   : status.empty() || status == "unset" ? status_unset
                                                         : status_error}};
  if (st["code"] == status_error)
    st["message"] = message.empty() ? status : message;
  span["status"] = std::move(st);
  return span;
}

/// An "event" record, decoded.
struct decoded_event {
  std::string trace_id;
  std::string span_id;
  uint64_t time_ns = 0;
  /// The OTLP Span.Event.
  json otlp;
};

decoded_event decode_event(const json& rec) {
  decoded_event ev;
  ev.trace_id = hex_id(rec, "trace_id", 32);
  ev.span_id = hex_id(rec, "span_id", 16);
  ev.time_ns = time_field(rec, "time_ns");
  ev.otlp = json{{"timeUnixNano", std::to_string(ev.time_ns)},
                 {"name", string_field(rec, "name", true)},
                 {"attributes", attributes_of(rec)}};
  return ev;
}

/// Events of one span that are not (yet) sent with it.
struct event_group {
  std::string trace_id;
  std::string span_id;
  std::vector<decoded_event> events;
};

/// The span that carries `group`: a child of the span the events belong to.
json carrier_span(const event_group& group) {
  auto [first, last] = std::minmax_element(
    group.events.begin(), group.events.end(),
    [](const auto& a, const auto& b) { return a.time_ns < b.time_ns; });
  auto events = json::array();
  for (const auto& ev : group.events)
    events.push_back(ev.otlp);
  return json{{"traceId", group.trace_id},
              {"spanId", new_span_id()},
              {"parentSpanId", group.span_id},
              {"name", "troupe.events"},
              {"kind", span_kind_internal},
              {"startTimeUnixNano", std::to_string(first->time_ns)},
              {"endTimeUnixNano", std::to_string(last->time_ns)},
              {"attributes",
               json::array({string_attribute("troupe.events.span_id",
                                             group.span_id)})},
              {"events", std::move(events)},
              {"status", {{"code", status_unset}}}};
}

json export_request(const std::string& service_name, json spans) {
  json resource{{"attributes",
                 json::array({string_attribute("service.name", service_name),
                              string_attribute("telemetry.sdk.name", "troupe"),
                              string_attribute("telemetry.sdk.language",
                                               "cpp")})}};
  json scope_spans{{"scope", {{"name", "troupe"}}},
                   {"spans", std::move(spans)}};
  return json{{"resourceSpans",
               json::array({json{{"resource", std::move(resource)},
                                 {"scopeSpans", json::array({scope_spans})}}})}};
}

/// Turns batches of records into export requests, pairing events with their
/// spans across batches. Used by one thread.
class batch_encoder {
public:
  /// At most `max_held` events wait for their spans; the last `max_recent`
  /// span ids sent are remembered to recognise late events.
  batch_encoder(std::string service_name, size_t max_held, size_t max_recent)
    : service_name_(std::move(service_name)),
      max_held_(max_held),
      max_recent_(max_recent) {
  }

  /// One request's worth.
  struct output {
    /// The ExportTraceServiceRequest; null when there is nothing to send.
    json request;
    /// Span records in it (carriers not counted).
    size_t spans = 0;
    /// Event records in it (attached or carried).
    size_t events = 0;
    /// Records that could not be encoded, with why.
    std::vector<std::string> invalid;
  };

  /// Encodes `records`; with `release_all`, every waiting event goes out too.
  output encode(const std::vector<json>& records, bool release_all) {
    output out;
    auto spans = json::array();
    std::unordered_map<std::string, size_t> index; // span id -> spans[i]
    std::vector<decoded_event> events;
    for (const auto& rec : records) {
      try {
        auto type = string_field(rec, "type");
        if (type == "span") {
          auto span = encode_span(rec);
          auto id = span["spanId"].get<std::string>();
          index[id] = spans.size();
          spans.push_back(std::move(span));
        } else if (type == "event") {
          events.push_back(decode_event(rec));
        }
      } catch (const std::exception& ex) {
        out.invalid.push_back(std::string{ex.what()} + " in "
                              + safe_dump(rec).substr(0, 200));
      }
    }
    out.spans = spans.size();
    auto attach = [&](size_t at, decoded_event& ev) {
      spans[at]["events"].push_back(std::move(ev.otlp));
      ++out.events;
    };
    // Events that waited for a span of this batch come first: they are older.
    for (auto& [id, at] : index) {
      auto held = groups_.find(id);
      if (held == groups_.end())
        continue;
      for (auto& ev : held->second->events)
        attach(at, ev);
      held_ -= held->second->events.size();
      order_.erase(held->second);
      groups_.erase(held);
    }
    std::vector<event_group> carried;
    std::unordered_map<std::string, size_t> late; // span id -> carried[i]
    for (auto& ev : events) {
      if (auto i = index.find(ev.span_id); i != index.end()) {
        attach(i->second, ev);
      } else if (recent_set_.count(ev.span_id)) {
        auto [it, fresh] = late.emplace(ev.span_id, carried.size());
        if (fresh)
          carried.push_back(event_group{ev.trace_id, ev.span_id, {}});
        carried[it->second].events.push_back(std::move(ev));
      } else {
        hold(std::move(ev));
      }
    }
    while (held_ > max_held_ || (release_all && !order_.empty()))
      carried.push_back(release_oldest());
    for (auto& [id, at] : index)
      remember(id);
    for (auto& group : carried) {
      out.events += group.events.size();
      spans.push_back(carrier_span(group));
    }
    if (!spans.empty())
      out.request = export_request(service_name_, std::move(spans));
    return out;
  }

  /// Events waiting for their spans.
  size_t held() const noexcept {
    return held_;
  }

private:
  void hold(decoded_event ev) {
    auto i = groups_.find(ev.span_id);
    if (i == groups_.end()) {
      order_.push_back(event_group{ev.trace_id, ev.span_id, {}});
      i = groups_.emplace(ev.span_id, std::prev(order_.end())).first;
    }
    i->second->events.push_back(std::move(ev));
    ++held_;
  }

  event_group release_oldest() {
    auto group = std::move(order_.front());
    order_.pop_front();
    groups_.erase(group.span_id);
    held_ -= group.events.size();
    return group;
  }

  void remember(const std::string& id) {
    if (!recent_set_.insert(id).second)
      return;
    recent_.push_back(id);
    while (recent_.size() > max_recent_) {
      recent_set_.erase(recent_.front());
      recent_.pop_front();
    }
  }

  std::string service_name_;
  size_t max_held_;
  size_t max_recent_;
  /// Waiting groups, oldest first, and by span id.
  std::list<event_group> order_;
  std::unordered_map<std::string, std::list<event_group>::iterator> groups_;
  size_t held_ = 0;
  /// Span ids already sent, oldest first.
  std::deque<std::string> recent_;
  std::unordered_set<std::string> recent_set_;
};

// --- options -----------------------------------------------------------------

[[noreturn]] void bad_option(const std::string& what) {
  throw std::invalid_argument("otlp_options." + what);
}

bool has_control_chars(const std::string& s) {
  return std::any_of(s.begin(), s.end(), [](unsigned char c) {
    return c < 0x20 || c == 0x7f;
  });
}

/// True for https://; throws naming the endpoint when it is not a usable
/// http(s) URL.
bool check_endpoint(const std::string& url) {
  auto fail = [&url](const std::string& why) {
    bad_option("endpoint '" + url + "': " + why);
  };
  if (url.empty())
    bad_option("endpoint is empty (want e.g. http://127.0.0.1:4318/v1/traces)");
  if (has_control_chars(url) || url.find(' ') != std::string::npos)
    fail("contains spaces or control characters");
  auto lower = url.substr(0, 8);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  bool tls = lower.rfind("https://", 0) == 0;
  if (!tls && lower.rfind("http://", 0) != 0)
    fail("not an http:// or https:// URL");
  auto start = tls ? 8 : 7;
  auto end = url.find_first_of("/?#", start);
  auto authority = url.substr(start, end == std::string::npos
                                       ? std::string::npos
                                       : end - start);
  if (authority.find('@') != std::string::npos)
    fail("user info in the URL is not supported (use headers)");
  // parse_host_port wants a port: add the scheme's default when none is given.
  auto colon = authority.rfind(':');
  auto bracket = authority.rfind(']');
  if (colon == std::string::npos
      || (bracket != std::string::npos && colon < bracket))
    authority += tls ? ":443" : ":80";
  try {
    auto [host, port] = parse_host_port(authority);
    if (port == 0)
      fail("port 0");
  } catch (const std::invalid_argument& ex) {
    fail(ex.what());
  }
  return tls;
}

void validate(const otlp_options& o) {
  check_endpoint(o.endpoint);
  for (const auto& [name, value] : o.headers) {
    if (name.empty() || has_control_chars(name)
        || name.find_first_of(" :") != std::string::npos)
      bad_option("headers: bad header name '" + name + "'");
    if (has_control_chars(value))
      bad_option("headers: the value of '" + name
                 + "' contains control characters");
  }
  if (o.service_name.empty())
    bad_option("service_name is empty");
  if (o.max_queue == 0)
    bad_option("max_queue is 0");
  if (o.max_batch == 0)
    bad_option("max_batch is 0");
  if (o.flush_interval.count() <= 0)
    bad_option("flush_interval is not positive");
  if (o.max_attempts < 1)
    bad_option("max_attempts is " + std::to_string(o.max_attempts)
               + " (want at least 1)");
  if (o.initial_backoff.count() < 0)
    bad_option("initial_backoff is negative");
  if (o.max_backoff < o.initial_backoff)
    bad_option("max_backoff is shorter than initial_backoff");
  if (o.timeout.count() <= 0)
    bad_option("timeout is not positive");
  if (!o.ca_file.empty() && !std::ifstream{o.ca_file})
    bad_option("ca_file '" + o.ca_file + "' cannot be read");
}

// --- logging -----------------------------------------------------------------

/// At most one warning every `every`; the ones held back are counted into
/// the next.
class warn_limiter {
public:
  explicit warn_limiter(milliseconds every = std::chrono::seconds{10})
    : every_(every) {
  }

  void warn(const std::string& text) {
    auto now = steady::now();
    if (said_ && now < next_) {
      ++held_back_;
      return;
    }
    said_ = true;
    next_ = now + every_;
    if (held_back_ > 0)
      spdlog::warn("otlp exporter: {} ({} similar warning(s) held back)", text,
                   held_back_);
    else
      spdlog::warn("otlp exporter: {}", text);
    held_back_ = 0;
  }

private:
  milliseconds every_;
  steady::time_point next_;
  bool said_ = false;
  uint64_t held_back_ = 0;
};

/// What became of one batch.
enum class outcome { sent, rejected, exhausted, aborted };

http_client_options client_options(const otlp_options& o) {
  http_client_options co;
  // One sender, one request at a time: one connection to keep alive.
  co.max_idle_per_host = 1;
  co.ca_file = o.ca_file;
  return co;
}

/// What a 2xx answer's partialSuccess says.
struct partial_success {
  uint64_t rejected_spans = 0;
  std::string message;
};

/// The partialSuccess of a 2xx body; zero and empty when there is none or
/// the body is not JSON.
partial_success partial_success_of(const std::string& body) {
  partial_success out;
  auto doc = json::parse(body, nullptr, false);
  if (!doc.is_object())
    return out;
  auto ps = doc.find("partialSuccess");
  if (ps == doc.end() || !ps->is_object())
    return out;
  out.message = string_or_empty(*ps, "errorMessage");
  auto n = ps->find("rejectedSpans");
  if (n == ps->end())
    return out;
  // int64 comes as a decimal string in the JSON encoding; accept a number.
  if (n->is_number_unsigned())
    out.rejected_spans = n->get<uint64_t>();
  else if (n->is_number_integer())
    out.rejected_spans = static_cast<uint64_t>(
      std::max<int64_t>(n->get<int64_t>(), 0));
  else if (n->is_string()) {
    const auto& s = n->get_ref<const std::string&>();
    if (!s.empty() && s.size() < 20
        && std::all_of(s.begin(), s.end(),
                       [](unsigned char c) { return std::isdigit(c); }))
      out.rejected_spans = std::stoull(s);
  }
  return out;
}

} // namespace

// --- the exporter --------------------------------------------------------------

/// What the listener, the sender and the caller share.
struct otlp_exporter::state {
  explicit state(otlp_options o)
    : opts(std::move(o)),
      encoder(opts.service_name, opts.max_queue, opts.max_queue),
      client(ctx, client_options(opts)) {
    policy.max_retries = opts.max_attempts - 1;
    policy.backoff = backoff_kind::exponential_jitter;
    policy.base = opts.initial_backoff;
    policy.cap = opts.max_backoff;
    fields.emplace_back("Content-Type", "application/json");
    for (const auto& h : opts.headers)
      fields.emplace_back(h.first, h.second);
  }

  const otlp_options opts;
  retry_policy policy;
  http_fields fields;

  /// Serialises stop() calls.
  std::mutex stop_mtx;

  // Guarded by mtx.
  mutable std::mutex mtx;
  /// Wakes the sender: records, a flush, stop.
  std::condition_variable wake;
  /// Wakes flush() and stop(): a batch is done, the sender is gone.
  std::condition_variable progress;
  struct queued {
    json record;
    steady::time_point at;
  };
  std::deque<queued> queue;
  /// Records accepted and records settled (sent, dropped or held), in
  /// queue order: flush() waits for the second to reach the first.
  uint64_t accepted = 0;
  uint64_t settled = 0;
  /// The sender sends without waiting for flush_interval up to here.
  uint64_t flush_to = 0;
  bool stopping = false;
  bool aborted = false;
  bool exited = false;
  otlp_stats stats;

  // The sender's own.
  batch_encoder encoder;
  boost::asio::io_context ctx;
  http_client client;
  std::mt19937_64 rng{std::random_device{}()};
  warn_limiter warn_drop;
  warn_limiter warn_invalid;
  warn_limiter warn_queue;
  uint64_t queue_drops_told = 0;

  void enqueue(const json& record) {
    // Only what OTLP carries; span_start and other types are not ours.
    auto type = record.is_object() ? record.find("type") : record.end();
    if (!record.is_object() || type == record.end() || !type->is_string()
        || (*type != "span" && *type != "event"))
      return;
    // Copied before locking: the sender waits on the lock only for a push.
    queued item{record, steady::now()};
    std::unique_lock<std::mutex> lock{mtx};
    if (stopping) {
      ++stats.dropped_at_stop;
      return;
    }
    if (queue.size() >= opts.max_queue) {
      ++stats.dropped_queue_full;
      return;
    }
    queue.push_back(std::move(item));
    ++accepted;
    ++stats.enqueued;
    // The sender sleeps on an empty queue or until the oldest record is due:
    // it needs waking only for the first record and a full batch.
    bool wake_sender = queue.size() == 1 || queue.size() == opts.max_batch;
    lock.unlock();
    if (wake_sender)
      wake.notify_one();
  }

  /// One POST, run to completion on this thread.
  http_response post(const std::string& body) {
    http_request req;
    req.method = "POST";
    req.url = opts.endpoint;
    req.headers = fields;
    req.body = body;
    req.connect_timeout = opts.timeout;
    req.total_timeout = opts.timeout;
    std::optional<http_response> res;
    client.request(std::move(req), [&res](http_response r) {
      res = std::move(r);
    });
    // The client completes every request (a timeout, stop()), so this ends.
    auto busy = boost::asio::make_work_guard(ctx);
    while (!res)
      ctx.run_one();
    return std::move(*res);
  }

  static bool retryable(int status) {
    return status == 429 || status == 502 || status == 503 || status == 504;
  }

  void set_error(std::string why) {
    std::lock_guard<std::mutex> guard{mtx};
    stats.last_error = std::move(why);
  }

  /// Sends `body` with retries; counts retries and sent batches, records the
  /// last error, and returns how it ended (with the spans the collector
  /// rejected in a partial success).
  outcome send(const std::string& body, size_t records,
               partial_success& partial) {
    for (int attempt = 1;; ++attempt) {
      auto res = post(body);
      std::string error;
      std::optional<milliseconds> asked;
      if (res.ok() && res.status / 100 == 2) {
        partial = partial_success_of(res.body);
        if (partial.rejected_spans > 0 || !partial.message.empty())
          warn_drop.warn("the collector accepted a batch of "
                         + std::to_string(records) + " record(s) but rejected "
                         + std::to_string(partial.rejected_spans)
                         + " span(s): " + partial.message);
        std::lock_guard<std::mutex> guard{mtx};
        ++stats.batches_sent;
        return outcome::sent;
      }
      {
        std::lock_guard<std::mutex> guard{mtx};
        if (aborted)
          return outcome::aborted;
      }
      if (res.ok()) {
        error = "HTTP " + std::to_string(res.status) + " from "
                + opts.endpoint;
        if (!res.body.empty())
          error += ": " + res.body.substr(0, 300);
        if (!retryable(res.status)) {
          set_error(error);
          warn_drop.warn("batch of " + std::to_string(records)
                         + " record(s) refused, not retried: " + error);
          return outcome::rejected;
        }
        if (auto value = res.header("retry-after"))
          asked = parse_retry_after(*value, now_ms());
      } else {
        error = res.error;
      }
      set_error(error);
      if (attempt >= opts.max_attempts) {
        warn_drop.warn("batch of " + std::to_string(records)
                       + " record(s) dropped after "
                       + std::to_string(attempt) + " attempt(s): " + error);
        return outcome::exhausted;
      }
      std::uniform_real_distribution<double> unit{0.0, 1.0};
      auto wait = backoff_delay(policy, attempt + 1, unit(rng));
      if (asked)
        wait = std::max(wait, std::min(*asked, opts.max_backoff));
      spdlog::debug("otlp exporter: attempt {} failed ({}); retrying in {} ms",
                    attempt, error, wait.count());
      std::unique_lock<std::mutex> lock{mtx};
      if (wake.wait_for(lock, wait, [this] { return aborted; }))
        return outcome::aborted;
      ++stats.retries;
    }
  }

  /// Encodes and sends one batch (or, with `release_all`, also the events
  /// still waiting), and counts what became of it.
  void process(const std::vector<json>& batch, bool release_all) {
    auto out = encoder.encode(batch, release_all);
    if (!out.invalid.empty())
      warn_invalid.warn(std::to_string(out.invalid.size())
                        + " malformed record(s) dropped; the first: "
                        + out.invalid.front());
    outcome how = outcome::sent;
    partial_success partial;
    if (!out.request.is_null())
      how = send(safe_dump(out.request), out.spans + out.events, partial);
    std::lock_guard<std::mutex> guard{mtx};
    stats.dropped_invalid += out.invalid.size();
    if (!out.invalid.empty())
      stats.last_error = "malformed trace record: " + out.invalid.front();
    auto records = out.spans + out.events;
    switch (how) {
      case outcome::sent:
      {
        auto rejected = std::min<uint64_t>(partial.rejected_spans, out.spans);
        if (rejected > 0 || !partial.message.empty())
          stats.last_error = "the collector rejected "
                             + std::to_string(partial.rejected_spans)
                             + " span(s): " + partial.message;
        stats.rejected_spans += rejected;
        stats.exported_spans += out.spans - rejected;
        stats.exported_events += out.events;
        break;
      }
      case outcome::rejected:
        stats.dropped_rejected += records;
        break;
      case outcome::exhausted:
        stats.dropped_after_retries += records;
        break;
      case outcome::aborted:
        stats.dropped_at_stop += records;
        break;
    }
    stats.held_events = encoder.held();
    settled += batch.size();
  }

  /// The sender thread.
  void run() {
    std::unique_lock<std::mutex> lock{mtx};
    for (;;) {
      if (stats.dropped_queue_full > queue_drops_told) {
        auto n = stats.dropped_queue_full - queue_drops_told;
        queue_drops_told = stats.dropped_queue_full;
        warn_queue.warn(std::to_string(n) + " record(s) dropped: the queue of "
                        + std::to_string(opts.max_queue) + " is full");
      }
      if (aborted)
        break;
      if (queue.empty()) {
        if (stopping)
          break;
        wake.wait(lock);
        continue;
      }
      auto due = queue.front().at + opts.flush_interval;
      bool go = stopping || queue.size() >= opts.max_batch || flush_to > settled
                || steady::now() >= due;
      if (!go) {
        wake.wait_until(lock, due);
        continue;
      }
      std::vector<json> batch;
      auto n = std::min(queue.size(), opts.max_batch);
      batch.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(queue.front().record));
        queue.pop_front();
      }
      lock.unlock();
      process(batch, false);
      lock.lock();
      progress.notify_all();
    }
    if (!aborted) {
      // Drained: the events whose spans never came go out on carriers.
      lock.unlock();
      process({}, true);
      lock.lock();
    }
    // Whatever the bound cut off.
    stats.dropped_at_stop += queue.size() + encoder.held();
    settled += queue.size();
    queue.clear();
    stats.held_events = 0;
    exited = true;
    progress.notify_all();
  }
};

otlp_exporter::otlp_exporter(otlp_options opts) {
  validate(opts);
  state_ = std::make_shared<state>(std::move(opts));
  sender_ = std::thread{[st = state_] {
    try {
      st->run();
    } catch (const std::exception& ex) {
      // Nothing above throws by design; if it does, tell and let stop() end.
      spdlog::error("otlp exporter: sender failed: {}", ex.what());
      std::lock_guard<std::mutex> guard{st->mtx};
      st->exited = true;
      st->stopping = true;
      st->progress.notify_all();
    }
  }};
}

otlp_exporter::~otlp_exporter() {
  stop();
}

trace_listener otlp_exporter::listener() const {
  // The listener shares the state, so a tracer that outlives the exporter
  // still calls something valid (which then drops).
  return [st = state_](const json& record) { st->enqueue(record); };
}

bool otlp_exporter::flush(milliseconds timeout) {
  auto& st = *state_;
  std::unique_lock<std::mutex> lock{st.mtx};
  auto target = st.accepted;
  if (st.settled >= target)
    return true;
  st.flush_to = std::max(st.flush_to, target);
  st.wake.notify_one();
  return st.progress.wait_for(lock, timeout, [&] {
    return st.settled >= target || st.exited;
  }) && st.settled >= target;
}

void otlp_exporter::stop() {
  stop(state_->opts.timeout);
}

void otlp_exporter::stop(milliseconds bound) {
  auto& st = *state_;
  std::lock_guard<std::mutex> once{st.stop_mtx};
  {
    std::unique_lock<std::mutex> lock{st.mtx};
    if (!sender_.joinable())
      return;
    st.stopping = true;
    st.wake.notify_all();
    if (!st.progress.wait_for(lock, bound, [&] { return st.exited; })) {
      st.aborted = true;
      st.wake.notify_all();
      lock.unlock();
      // Completes the request in flight, if any, with "client stopped".
      st.client.stop();
    }
  }
  sender_.join();
}

otlp_stats otlp_exporter::stats() const {
  std::lock_guard<std::mutex> guard{state_->mtx};
  return state_->stats;
}

namespace detail {

json otlp_encode(const std::vector<json>& records,
                 const std::string& service_name) {
  batch_encoder encoder{service_name, records.size(), records.size()};
  auto out = encoder.encode(records, true);
  if (!out.invalid.empty())
    throw std::invalid_argument("malformed trace record: "
                                + out.invalid.front());
  return out.request.is_null() ? export_request(service_name, json::array())
                               : out.request;
}

} // namespace detail

} // namespace troupe

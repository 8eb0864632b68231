#include "actors/http_model.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <unordered_map>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

#include "actors/span_recorder.hpp"
#include "actors/tool_guards.hpp"
#include "messages/define.hpp"
#include "messages/errors.hpp"
#include "runtime/clock.hpp"
#include "runtime/sse_parser.hpp"

namespace troupe {

/// How one HTTP attempt ended (internal: I/O thread -> the actor).
struct http_model_outcome {
  uint64_t call = 0;
  /// The HTTP status; 0 when no response arrived.
  int32_t status = 0;
  /// A transport failure (connect, reset, timeout), or a decode failure of
  /// a 2xx reply, or a stream cut short; empty on success.
  std::string error;
  /// The failure may pass on another attempt (transport, cut stream).
  bool transient = false;
  /// The endpoint's Retry-After (or retry-after-ms) as a wait; -1 for none.
  int64_t retry_after_ms = -1;
  chat_response response;
};
TROUPE_MESSAGE(http_model_outcome, call, status, error, transient,
               retry_after_ms, response)

/// The wait before a retry is over (internal).
struct http_model_retry {
  uint64_t call = 0;
};
TROUPE_MESSAGE(http_model_retry, call)

namespace {

using std::chrono::milliseconds;

using http_model_actor = model_actor::extend<
  caf::reacts_to<http_model_outcome>, caf::reacts_to<http_model_retry>>;

/// A request in progress.
struct pending_call {
  caf::typed_response_promise<chat_response> promise;
  chat_request req;
  /// The encoded body, sent unchanged by every attempt.
  std::string body;
  int32_t attempt = 0;
  std::chrono::steady_clock::time_point started;
};

struct http_model_state {
  static inline const char* name = "troupe.http_model";
  http_model_config cfg;
  std::string url;
  /// The URL as errors name it: without its query, which may hold a key.
  std::string where;
  std::shared_ptr<http_client> client;
  tracer_actor tracer;
  span_recorder trace;
  std::unordered_map<uint64_t, pending_call> calls;
  uint64_t next_id = 1;
  std::minstd_rand rng{std::random_device{}()};
};

using http_model_self = http_model_actor::stateful_pointer<http_model_state>;

bool retryable_status(int32_t status) {
  return status == 408 || status == 409 || status == 429 || status >= 500;
}

std::string trim(std::string s) {
  auto blank = [](unsigned char c) { return std::isspace(c) != 0; };
  s.erase(s.begin(), std::find_if_not(s.begin(), s.end(), blank));
  s.erase(std::find_if_not(s.rbegin(), s.rend(), blank).base(), s.end());
  return s;
}

/// The wait a response asks for: retry-after-ms (OpenAI) wins over
/// Retry-After; -1 when it asks for none or says something unreadable.
int64_t requested_wait_ms(const http_response& resp) {
  if (auto ms = resp.header("retry-after-ms")) {
    try {
      size_t used = 0;
      auto value = std::stod(trim(*ms), &used);
      if (used == trim(*ms).size() && std::isfinite(value) && value >= 0)
        return static_cast<int64_t>(std::ceil(value));
    } catch (const std::exception&) {
      // fall through to Retry-After
    }
  }
  if (auto value = resp.header("retry-after"))
    if (auto wait = parse_retry_after(*value, now_ms()))
      return wait->count();
  return -1;
}

/// The request an attempt sends.
http_request make_http_request(const http_model_state& st,
                               const pending_call& call) {
  http_request req;
  req.method = "POST";
  req.url = st.url;
  req.body = call.body;
  req.stream = st.cfg.stream;
  req.connect_timeout = st.cfg.connect_timeout;
  req.total_timeout = st.cfg.request_timeout;
  if (call.req.deadline_ms > 0) {
    auto left = milliseconds{std::max<int64_t>(call.req.deadline_ms - now_ms(),
                                               1)};
    req.total_timeout = std::min(req.total_timeout, left);
  }
  req.headers.emplace_back("Content-Type", "application/json");
  if (st.cfg.stream)
    req.headers.emplace_back("Accept", "text/event-stream");
  if (st.cfg.provider == model_provider::openai) {
    if (!st.cfg.api_key.empty())
      req.headers.emplace_back("Authorization", "Bearer " + st.cfg.api_key);
  } else {
    if (!st.cfg.api_key.empty())
      req.headers.emplace_back("x-api-key", st.cfg.api_key);
    req.headers.emplace_back("anthropic-version", st.cfg.anthropic_version);
  }
  for (const auto& h : st.cfg.headers)
    req.headers.push_back(h);
  return req;
}

std::unique_ptr<model_stream_decoder> make_decoder(const http_model_config& c) {
  if (c.provider == model_provider::openai)
    return openai::make_stream_decoder(c.name);
  return anthropic::make_stream_decoder(c.name);
}

caf::expected<chat_response> decode_body(const http_model_config& c,
                                         const std::string& body) {
  if (c.provider == model_provider::openai)
    return openai::decode_response(body, c.name);
  return anthropic::decode_response(body, c.name);
}

json delta_attributes(const model_delta& d) {
  json out{{"troupe.delta.kind", to_string(d.what)},
           {"troupe.delta.index", d.index}};
  if (!d.id.empty())
    out["troupe.delta.id"] = d.id;
  if (!d.name.empty())
    out["troupe.delta.name"] = d.name;
  if (!d.text.empty())
    out["troupe.delta.text"] = d.text;
  return out;
}

/// `text` with every secret of `cfg` (its key, its extra header values)
/// replaced: a provider or a proxy may echo a key in an error body.
std::string redact(std::string text, const http_model_config& cfg) {
  auto hide = [&text](const std::string& secret) {
    if (secret.size() < 6)
      return;
    for (auto pos = text.find(secret); pos != std::string::npos;
         pos = text.find(secret, pos))
      text.replace(pos, secret.size(), "[redacted]");
  };
  hide(cfg.api_key);
  for (const auto& h : cfg.headers)
    hide(h.second);
  return text;
}

/// Whether a provider error reported inside a 200 stream may pass on
/// another attempt (the same overload as a 529 or 503 would).
bool transient_stream_error(const std::string& text) {
  for (const char* kind : {"overloaded", "rate_limit", "server_error",
                           "api_error", "timeout"})
    if (text.find(kind) != std::string::npos)
      return true;
  return false;
}

http_model_outcome judge_unredacted(const http_model_config& cfg, uint64_t id,
                                    http_response& resp,
                                    model_stream_decoder* decoder,
                                    const std::string& stream_error) {
  http_model_outcome out;
  out.call = id;
  out.status = resp.status;
  if (!resp.ok()) {
    out.error = resp.error;
    out.transient = !resp.permanent;
    return out;
  }
  if (resp.status < 200 || resp.status >= 300) {
    out.retry_after_ms = requested_wait_ms(resp);
    out.error = "HTTP " + std::to_string(resp.status) + ": "
                + provider_error_text(resp.body);
    return out;
  }
  if (decoder != nullptr) {
    if (!stream_error.empty()) {
      out.error = stream_error;
      out.transient = transient_stream_error(stream_error);
      return out;
    }
    auto r = decoder->finish();
    if (!r) {
      // A stream that stopped before the provider said it was complete:
      // the connection broke, another attempt may pass.
      out.error = error_sentence(r.error());
      out.transient = !decoder->complete();
      return out;
    }
    out.response = std::move(*r);
    return out;
  }
  auto r = decode_body(cfg, resp.body);
  if (!r) {
    out.error = error_sentence(r.error());
    return out;
  }
  out.response = std::move(*r);
  return out;
}

/// What a completed exchange means, computed on the I/O thread; no secret
/// of `cfg` survives in its error.
http_model_outcome judge(const http_model_config& cfg, uint64_t id,
                         http_response& resp, model_stream_decoder* decoder,
                         const std::string& stream_error) {
  auto out = judge_unredacted(cfg, id, resp, decoder, stream_error);
  if (!out.error.empty())
    out.error = redact(std::move(out.error), cfg);
  return out;
}

/// Sends one attempt of call `id`; its outcome comes back as a message.
void send_attempt(http_model_self self, uint64_t id) {
  auto& st = self->state;
  auto& call = st.calls.at(id);
  ++call.attempt;
  auto req = make_http_request(st, call);
  caf::actor_addr addr = self->address();
  auto deliver = [addr](http_model_outcome out) {
    if (auto hdl = caf::actor_cast<caf::actor>(addr))
      caf::anon_send(hdl, std::move(out));
  };
  const auto cfg = std::make_shared<const http_model_config>(st.cfg);
  if (!st.cfg.stream) {
    st.client->request(std::move(req),
                       [cfg, id, deliver](http_response resp) {
                         deliver(judge(*cfg, id, resp, nullptr, {}));
                       });
    return;
  }
  // Streamed: the decoder lives with the exchange; the client calls the
  // event callback and then the completion in order, never at once.
  struct stream_state {
    std::unique_ptr<model_stream_decoder> decoder;
    std::string error;
    std::vector<model_delta> deltas;
  };
  auto ss = std::make_shared<stream_state>();
  ss->decoder = make_decoder(st.cfg);
  // Callbacks may outlive the actor system on a stopped I/O context: they
  // hold the tracer weakly.
  caf::actor_addr tracer = st.tracer ? st.tracer.address() : caf::actor_addr{};
  auto ref = call.req.ref;
  st.client->request(
    std::move(req),
    [ss, tracer, ref](sse_event ev) {
      if (!ss->error.empty())
        return;
      ss->deltas.clear();
      if (auto err = ss->decoder->feed(ev, ss->deltas)) {
        ss->error = error_sentence(err);
        return;
      }
      if (ss->deltas.empty())
        return;
      span_recorder trace{caf::actor_cast<tracer_actor>(tracer)};
      for (const auto& d : ss->deltas)
        trace.event(ref.trace_id, ref.span_id, "model.delta",
                    [&] { return delta_attributes(d); });
    },
    [cfg, id, deliver, ss](http_response resp) {
      deliver(judge(*cfg, id, resp, ss->decoder.get(), ss->error));
    });
}

std::string attempts_text(int32_t n) {
  return n == 1 ? "1 attempt" : std::to_string(n) + " attempts";
}

void fail(http_model_self self, uint64_t id, errc code, std::string why) {
  auto& st = self->state;
  auto i = st.calls.find(id);
  if (i == st.calls.end())
    return;
  spdlog::warn("model '{}': {}", st.cfg.name, why);
  i->second.promise.deliver(make_error(code, std::move(why)));
  st.calls.erase(i);
}

void on_outcome(http_model_self self, http_model_outcome& out) {
  auto& st = self->state;
  auto i = st.calls.find(out.call);
  if (i == st.calls.end())
    return;
  auto& call = i->second;
  if (out.error.empty()) {
    if (out.response.model.empty())
      out.response.model = st.cfg.name;
    call.promise.deliver(std::move(out.response));
    st.calls.erase(i);
    return;
  }
  auto what = "model '" + st.cfg.name + "' (" + st.where + "): "
              + out.error;
  bool retryable = out.transient || retryable_status(out.status);
  if (!retryable || call.attempt > st.cfg.retry.max_retries) {
    if (retryable) {
      auto took = std::chrono::duration_cast<milliseconds>(
        std::chrono::steady_clock::now() - call.started);
      what += " (gave up after " + attempts_text(call.attempt) + " in "
              + std::to_string(took.count()) + " ms)";
    }
    fail(self, out.call, errc::model_failed, std::move(what));
    return;
  }
  auto retry = call.attempt + 1;
  retry_policy shape;
  shape.backoff = backoff_kind::exponential_jitter;
  shape.base = st.cfg.retry.base;
  shape.cap = st.cfg.retry.cap;
  std::uniform_real_distribution<double> unit{0.0, 1.0};
  auto wait = backoff_delay(shape, retry, unit(st.rng));
  if (out.retry_after_ms >= 0) {
    auto asked = milliseconds{out.retry_after_ms};
    if (asked > st.cfg.retry.max_retry_after) {
      fail(self, out.call, errc::model_failed,
           what + " (Retry-After of " + std::to_string(asked.count())
             + " ms exceeds max_retry_after of "
             + std::to_string(st.cfg.retry.max_retry_after.count())
             + " ms; not waiting)");
      return;
    }
    wait = std::max(wait, asked);
  }
  if (call.req.deadline_ms > 0
      && now_ms() + wait.count() >= call.req.deadline_ms) {
    fail(self, out.call, errc::timeout,
         what + " (a retry in " + std::to_string(wait.count())
           + " ms would pass the request's deadline)");
    return;
  }
  spdlog::info("model '{}': attempt {} failed ({}); retrying in {} ms",
               st.cfg.name, call.attempt, out.error, wait.count());
  st.trace.event(call.req.ref.trace_id, call.req.ref.span_id, "model.retry",
                 [&] {
                   json attrs{{"gen_ai.request.model", st.cfg.name},
                              {"troupe.attempt", call.attempt},
                              {"troupe.wait_ms", wait.count()},
                              {"error.type", out.error}};
                   if (out.status != 0)
                     attrs["http.response.status_code"] = out.status;
                   if (out.retry_after_ms >= 0)
                     attrs["troupe.retry_after_ms"] = out.retry_after_ms;
                   return attrs;
                 });
  self->delayed_send(self, wait, http_model_retry{out.call});
}

http_model_actor::behavior_type http_model(http_model_self self,
                                           http_model_config cfg,
                                           std::shared_ptr<http_client> client,
                                           tracer_actor tracer) {
  auto& st = self->state;
  st.url = endpoint_url(cfg);
  st.where = st.url.substr(0, st.url.find('?'));
  st.cfg = std::move(cfg);
  st.client = std::move(client);
  st.trace = span_recorder{tracer};
  st.tracer = std::move(tracer);
  return {
    [self](chat_request& req) -> caf::result<chat_response> {
      auto& st = self->state;
      model_wire_options opts;
      opts.model_id = st.cfg.model_id;
      opts.stream = st.cfg.stream;
      opts.default_max_tokens = st.cfg.default_max_tokens;
      // Invalid UTF-8 (a tool's output, say) is replaced, not refused.
      auto body = (st.cfg.provider == model_provider::openai
                     ? openai::encode_request(req, opts)
                     : anthropic::encode_request(req, opts))
                    .dump(-1, ' ', false, json::error_handler_t::replace);
      if (req.deadline_ms > 0 && req.deadline_ms <= now_ms())
        return make_error(errc::timeout, "model '" + st.cfg.name
                                           + "': the request's deadline "
                                             "passed before it was sent");
      auto id = st.next_id++;
      auto promise = self->make_response_promise<chat_response>();
      auto& call = st.calls[id];
      call.promise = promise;
      call.req = std::move(req);
      call.body = std::move(body);
      call.started = std::chrono::steady_clock::now();
      send_attempt(self, id);
      return promise;
    },
    [self](http_model_outcome& out) { on_outcome(self, out); },
    [self](http_model_retry& r) {
      if (self->state.calls.count(r.call) != 0)
        send_attempt(self, r.call);
    },
  };
}

/// Days from 1970-01-01 to a civil date (Howard Hinnant's algorithm).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

/// An HTTP date as unix ms, in any of the three forms RFC 9110 (5.6.7) says
/// a recipient accepts: IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), the
/// obsolete RFC 850 form ("Sunday, 06-Nov-94 08:49:37 GMT") and asctime's
/// ("Sun Nov  6 08:49:37 1994").
std::optional<int64_t> parse_http_date(const std::string& s) {
  static const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char wday[16] = {}, mon[4] = {}, zone[4] = {};
  int day = 0, year = 0, hh = 0, mm = 0, ss = 0;
  const char* text = s.c_str();
  if (std::sscanf(text, "%3s, %d %3s %d %d:%d:%d %3s", wday, &day, mon, &year,
                  &hh, &mm, &ss, zone)
      == 8) {
    // IMF-fixdate
  } else if (std::sscanf(text, "%15[A-Za-z], %d-%3s-%d %d:%d:%d %3s", wday,
                         &day, mon, &year, &hh, &mm, &ss, zone)
             == 8) {
    // RFC 850: a two-digit year more than 50 years ahead is in the past.
    if (year < 100)
      year += year < 70 ? 2000 : 1900;
  } else if (std::sscanf(text, "%3s %3s %d %d:%d:%d %d", wday, mon, &day, &hh,
                         &mm, &ss, &year)
             == 7) {
    std::strcpy(zone, "GMT"); // asctime: always GMT
  } else {
    return std::nullopt;
  }
  if (std::string{zone} != "GMT")
    return std::nullopt;
  unsigned m = 0;
  for (unsigned i = 0; i < 12; ++i)
    if (std::string{mon} == months[i])
      m = i + 1;
  if (m == 0 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60
      || year < 1970 || year > 9999 || hh < 0 || mm < 0 || ss < 0)
    return std::nullopt;
  auto days = days_from_civil(year, m, static_cast<unsigned>(day));
  return ((days * 24 + hh) * 60 + mm) * 60000 + int64_t{ss} * 1000;
}

} // namespace

void validate(const http_model_config& cfg) {
  auto bad = [&](const std::string& what) {
    throw std::invalid_argument("model '" + cfg.name + "': " + what);
  };
  if (cfg.name.empty())
    throw std::invalid_argument("an HTTP model needs a name");
  if (cfg.model_id.empty())
    bad("no model id (the part after \"openai:\" or \"anthropic:\")");
  if (cfg.base_url.rfind("http://", 0) != 0
      && cfg.base_url.rfind("https://", 0) != 0)
    bad("the base URL must start with http:// or https://");
  if (url_has_user_info(cfg.base_url))
    bad("the base URL must not carry user info (user:password@); give the "
        "key through the environment");
  auto authority = cfg.base_url.substr(cfg.base_url.find("//") + 2);
  if (authority.empty() || authority.find_first_of("/?#") == 0)
    bad("the base URL names no host");
  if (cfg.connect_timeout.count() <= 0 || cfg.request_timeout.count() <= 0)
    bad("connect_timeout and request_timeout must be > 0");
  const auto& r = cfg.retry;
  if (r.max_retries < 0 || r.max_retries > 100)
    bad("retry.max_retries must be in [0, 100], got "
        + std::to_string(r.max_retries));
  if (r.base.count() < 0 || r.cap.count() < 0 || r.base > r.cap)
    bad("retry.base and retry.cap must be >= 0 with base <= cap");
  if (r.max_retry_after.count() < 0)
    bad("retry.max_retry_after must be >= 0");
  if (cfg.default_max_tokens < 1)
    bad("default_max_tokens must be >= 1");
}

bool url_has_user_info(const std::string& url) {
  auto scheme_end = url.find("//");
  auto authority = url.substr(scheme_end == std::string::npos ? 0
                                                              : scheme_end + 2);
  authority = authority.substr(0, authority.find_first_of("/?#"));
  return authority.find('@') != std::string::npos;
}

std::string endpoint_url(const http_model_config& cfg) {
  auto base = cfg.base_url;
  while (!base.empty() && base.back() == '/')
    base.pop_back();
  if (cfg.provider == model_provider::openai)
    return base + "/chat/completions";
  auto ends_v1 = base.size() >= 3 && base.compare(base.size() - 3, 3, "/v1") == 0;
  return base + (ends_v1 ? "/messages" : "/v1/messages");
}

std::optional<std::chrono::milliseconds>
parse_retry_after(const std::string& value, int64_t now_unix_ms) {
  auto text = trim(value);
  if (text.empty())
    return std::nullopt;
  if (std::isdigit(static_cast<unsigned char>(text[0]))) {
    try {
      size_t used = 0;
      auto seconds = std::stod(text, &used);
      if (used != text.size() || std::isnan(seconds) || seconds < 0)
        return std::nullopt;
      // Longer than anyone waits (and than a timer holds): a week stands in,
      // which exceeds any max_retry_after.
      if (!std::isfinite(seconds) || seconds > 7 * 24 * 3600.0)
        return milliseconds{7LL * 24 * 3600 * 1000};
      return milliseconds{static_cast<int64_t>(std::ceil(seconds * 1000))};
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  auto at = parse_http_date(text);
  if (!at)
    return std::nullopt;
  return milliseconds{std::max<int64_t>(*at - now_unix_ms, 0)};
}

model_actor spawn_http_model(caf::actor_system& sys, http_model_config cfg,
                             std::shared_ptr<http_client> client,
                             tracer_actor tracer) {
  validate(cfg);
  if (!client)
    throw std::invalid_argument("model '" + cfg.name + "': no HTTP client");
  return sys.spawn(http_model, std::move(cfg), std::move(client),
                   std::move(tracer));
}

} // namespace troupe

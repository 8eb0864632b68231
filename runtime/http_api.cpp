#include "runtime/http_api.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <limits>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <utility>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include "messages/json_value.hpp"
#include "runtime/run_service.hpp"
#include "runtime/store.hpp"

namespace troupe {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

// -- small text helpers --------------------------------------------------------

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos)
    return {};
  auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

/// Client-supplied text made safe to quote in a message or a log line:
/// control and non-ASCII bytes become '?', and long text is cut.
std::string shown(const std::string& s, size_t max = 80) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    out += (c < 0x20 || c >= 0x7f) ? '?' : static_cast<char>(c);
  }
  if (s.size() > max)
    out += "...";
  return "'" + out + "'";
}

/// The text of a nlohmann exception without its "[json.exception...] " tag.
std::string json_reason(const std::exception& e) {
  std::string what = e.what();
  if (!what.empty() && what[0] == '[') {
    auto close = what.find("] ");
    if (close != std::string::npos)
      return what.substr(close + 2);
  }
  return what;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/// An HTTP error answered as {"error": {"status", "code", "message"}}.
class api_error : public std::runtime_error {
public:
  api_error(int status, const std::string& message,
            std::vector<std::pair<std::string, std::string>> headers = {})
    : std::runtime_error(message), status(status), headers(std::move(headers)) {
  }

  int status;
  std::vector<std::pair<std::string, std::string>> headers;
};

/// Percent-decodes a path segment or a query part (`plus`: '+' is a space).
std::string percent_decode(const std::string& s, bool plus) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%') {
      int hi = i + 2 < s.size() ? hex_value(s[i + 1]) : -1;
      int lo = i + 2 < s.size() ? hex_value(s[i + 2]) : -1;
      if (hi < 0 || lo < 0)
        throw api_error(400, "malformed percent-encoding in " + shown(s));
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (plus && s[i] == '+') {
      out += ' ';
    } else {
      out += s[i];
    }
  }
  return out;
}

const char* status_code_name(int status) {
  switch (status) {
    case 400: return "bad_request";
    case 401: return "unauthorized";
    case 403: return "forbidden";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 409: return "conflict";
    case 413: return "payload_too_large";
    case 415: return "unsupported_media_type";
    case 429: return "too_many_requests";
    case 431: return "header_too_large";
    case 500: return "internal";
    case 503: return "unavailable";
    default: return "error";
  }
}

json error_body(int status, const std::string& message) {
  return json{{"error",
               {{"status", status},
                {"code", status_code_name(status)},
                {"message", message}}}};
}

// -- auth file validation --------------------------------------------------------

[[noreturn]] void auth_fail(const std::string& source, const std::string& where,
                            const std::string& what) {
  throw std::invalid_argument(source + ": " + where + ": " + what);
}

bool is_known_role(const std::string& role) {
  return role == "viewer" || role == "operator" || role == "approver";
}

/// A positive number from an auth file's limits, or a failure naming it.
double limit_number(const json& v, const std::string& source,
                    const std::string& where, double min, double max,
                    bool integer) {
  if (!v.is_number() || (integer && !v.is_number_integer()
                         && !v.is_number_unsigned()))
    auth_fail(source, where,
              std::string{"must be "} + (integer ? "an integer" : "a number")
                + ", got " + safe_dump(v));
  auto d = v.get<double>();
  if (!std::isfinite(d) || d < min || d > max) {
    std::ostringstream range;
    range << "must be between " << min << " and " << max << ", got "
          << safe_dump(v);
    auth_fail(source, where, range.str());
  }
  return d;
}

// -- rate limits -----------------------------------------------------------------

/// Token buckets by key (a token's name or a client address), refilled at
/// `rate` per second up to `burst`.
class rate_limiter {
public:
  rate_limiter(double rate, double burst) : rate_(rate), burst_(burst) {
  }

  /// Takes one token from `key`'s bucket; nothing when there was one, else
  /// the seconds until there is (at least 1), for Retry-After.
  std::optional<int64_t> take(const std::string& key) {
    auto now = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> guard{mtx_};
    if (buckets_.size() >= max_keys)
      evict_full(now);
    auto it = buckets_.find(key);
    if (it == buckets_.end())
      it = buckets_.emplace(key, bucket{burst_, now}).first;
    auto& b = it->second;
    b.tokens = level(b, now);
    b.last = now;
    if (b.tokens >= 1.0) {
      b.tokens -= 1.0;
      return std::nullopt;
    }
    auto wait = std::ceil((1.0 - b.tokens) / rate_);
    return std::max<int64_t>(1, static_cast<int64_t>(
                                  std::min(wait, 86400.0)));
  }

private:
  struct bucket {
    double tokens;
    std::chrono::steady_clock::time_point last;
  };

  // A full bucket carries no information, so dropping it when the map grows
  // (many client addresses) keeps memory bounded without favouring anyone.
  static constexpr size_t max_keys = 10000;

  double level(const bucket& b, std::chrono::steady_clock::time_point now) const {
    std::chrono::duration<double> dt = now - b.last;
    return std::min(burst_, b.tokens + dt.count() * rate_);
  }

  void evict_full(std::chrono::steady_clock::time_point now) {
    for (auto it = buckets_.begin(); it != buckets_.end();)
      it = level(it->second, now) >= burst_ ? buckets_.erase(it) : std::next(it);
    // Still full of active keys: forget the lot rather than grow.
    if (buckets_.size() >= max_keys)
      buckets_.clear();
  }

  double rate_;
  double burst_;
  std::mutex mtx_;
  std::unordered_map<std::string, bucket> buckets_;
};

// -- routes ------------------------------------------------------------------------

enum class route_kind {
  healthz,
  metrics,
  asset,
  runs,
  run,
  run_events,
  run_trace,
  run_cancel,
  approvals,
  approval,
  swarms,
};

struct route_match {
  route_kind kind;
  /// The run or approval id (decoded), when the path has one.
  std::string id;
};

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  size_t pos = 1;
  while (pos <= path.size()) {
    auto next = path.find('/', pos);
    if (next == std::string::npos)
      next = path.size();
    parts.push_back(path.substr(pos, next - pos));
    pos = next + 1;
  }
  return parts;
}

std::optional<route_match> match_route(const std::string& path) {
  if (path == "/healthz")
    return route_match{route_kind::healthz, {}};
  if (path == "/metrics")
    return route_match{route_kind::metrics, {}};
  if (path == "/" || path.rfind("/assets/", 0) == 0)
    return route_match{route_kind::asset, {}};
  if (path.empty() || path[0] != '/')
    return std::nullopt;
  auto parts = split_path(path);
  if (parts.size() < 2 || parts[0] != "v1")
    return std::nullopt;
  if (parts[1] == "swarms" && parts.size() == 2)
    return route_match{route_kind::swarms, {}};
  if (parts[1] == "approvals") {
    if (parts.size() == 2)
      return route_match{route_kind::approvals, {}};
    if (parts.size() == 3 && !parts[2].empty())
      return route_match{route_kind::approval, percent_decode(parts[2], false)};
    return std::nullopt;
  }
  if (parts[1] == "runs") {
    if (parts.size() == 2)
      return route_match{route_kind::runs, {}};
    if (parts[2].empty())
      return std::nullopt;
    auto id = percent_decode(parts[2], false);
    if (parts.size() == 3)
      return route_match{route_kind::run, id};
    if (parts.size() == 4) {
      if (parts[3] == "events")
        return route_match{route_kind::run_events, id};
      if (parts[3] == "trace")
        return route_match{route_kind::run_trace, id};
      if (parts[3] == "cancel")
        return route_match{route_kind::run_cancel, id};
    }
  }
  return std::nullopt;
}

/// The methods a route answers, for Allow.
const char* allowed_methods(route_kind kind) {
  switch (kind) {
    case route_kind::runs: return "GET, POST";
    case route_kind::run_cancel:
    case route_kind::approval: return "POST";
    default: return "GET";
  }
}

/// The role `method` needs on `kind`: "" for none, nothing when the route
/// does not answer that method.
std::optional<std::string> role_for(route_kind kind, http::verb method) {
  bool get = method == http::verb::get;
  bool post = method == http::verb::post;
  switch (kind) {
    case route_kind::healthz:
    case route_kind::asset:
      return get ? std::optional<std::string>{""} : std::nullopt;
    case route_kind::runs:
      if (post)
        return std::string{"operator"};
      return get ? std::optional<std::string>{"viewer"} : std::nullopt;
    case route_kind::run_cancel:
      return post ? std::optional<std::string>{"operator"} : std::nullopt;
    case route_kind::approval:
      return post ? std::optional<std::string>{"approver"} : std::nullopt;
    default:
      return get ? std::optional<std::string>{"viewer"} : std::nullopt;
  }
}

// Ids reach the store and log lines: only what run ids are made of
// (run_submission: "[A-Za-z0-9._-]{1,64}"); approval ids ("apr-...") too.
void check_id(const std::string& id, const char* what, size_t max_len) {
  bool ok = !id.empty() && id.size() <= max_len
            && std::all_of(id.begin(), id.end(), [](unsigned char c) {
                 return std::isalnum(c) || c == '.' || c == '_' || c == '-';
               });
  if (!ok)
    throw api_error(400, std::string{"invalid "} + what + " id " + shown(id)
                           + ": expected 1 to " + std::to_string(max_len)
                           + " characters of A-Z a-z 0-9 . _ -");
}

using query_params = std::vector<std::pair<std::string, std::string>>;

query_params parse_query(const std::string& query) {
  query_params out;
  size_t pos = 0;
  while (pos < query.size()) {
    auto amp = query.find('&', pos);
    if (amp == std::string::npos)
      amp = query.size();
    auto part = query.substr(pos, amp - pos);
    pos = amp + 1;
    if (part.empty())
      continue;
    auto eq = part.find('=');
    auto key = percent_decode(part.substr(0, eq), true);
    auto value = eq == std::string::npos ? std::string{}
                                         : percent_decode(part.substr(eq + 1), true);
    for (const auto& [k, v] : out)
      if (k == key)
        throw api_error(400, "query parameter " + shown(key) + " given twice");
    out.emplace_back(std::move(key), std::move(value));
  }
  return out;
}

/// Checks that `params` holds only `known`, and returns the one named `key`.
void check_params(const query_params& params,
                  std::initializer_list<const char*> known) {
  for (const auto& [k, v] : params) {
    bool ok = std::any_of(known.begin(), known.end(),
                          [&k = k](const char* n) { return k == n; });
    if (!ok) {
      std::string list;
      for (auto n : known)
        list += (list.empty() ? "" : ", ") + std::string{n};
      throw api_error(400, "unknown query parameter " + shown(k)
                             + (list.empty() ? " (this route takes none)"
                                             : " (expected " + list + ")"));
    }
  }
}

std::optional<std::string> param(const query_params& params, const char* key) {
  for (const auto& [k, v] : params)
    if (k == key)
      return v;
  return std::nullopt;
}

/// A non-negative integer of at most 18 digits, or nothing.
std::optional<int64_t> parse_count(const std::string& text) {
  if (text.empty() || text.size() > 18
      || !std::all_of(text.begin(), text.end(),
                      [](unsigned char c) { return std::isdigit(c); }))
    return std::nullopt;
  return std::stoll(text);
}

bool is_final_status_event(const json& data) {
  if (!data.is_object() || !data.contains("type") || data["type"] != "status")
    return false;
  auto it = data.find("status");
  return it != data.end() && it->is_string()
         && is_finished_status(it->get<std::string>());
}

/// One server-sent event: `id: N`, `event: TYPE`, `data: JSON`.
std::string sse_frame(int64_t seq, const json& data) {
  std::string type = "message";
  if (data.is_object()) {
    auto it = data.find("type");
    if (it != data.end() && it->is_string())
      type = it->get<std::string>();
  }
  // A line break in the name would end the field early.
  for (auto& c : type)
    if (c == '\n' || c == '\r')
      c = ' ';
  return "id: " + std::to_string(seq) + "\nevent: " + type
         + "\ndata: " + safe_dump(data) + "\n\n";
}

class session;

} // namespace

// -- auth --------------------------------------------------------------------------

bool auth_token::has_role(const std::string& role) const {
  if (role.empty())
    return true;
  for (const auto& r : roles)
    if (r == role)
      return true;
  return role == "viewer" && !roles.empty();
}

auth_config auth_config::parse(const std::string& text,
                               const std::string& source) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(source + ": not valid JSON: " + json_reason(e));
  }
  if (!doc.is_object())
    auth_fail(source, "/", "must be a JSON object with \"tokens\"");
  for (const auto& [key, value] : doc.items())
    if (key != "tokens" && key != "limits")
      auth_fail(source, "/" + key, "unknown key (expected tokens, limits)");
  if (!doc.contains("tokens"))
    auth_fail(source, "/tokens", "is required");
  const auto& tokens = doc["tokens"];
  if (!tokens.is_array() || tokens.empty())
    auth_fail(source, "/tokens", "must be a non-empty array of tokens");
  auth_config cfg;
  for (size_t i = 0; i < tokens.size(); ++i) {
    auto where = "/tokens/" + std::to_string(i);
    const auto& entry = tokens[i];
    if (!entry.is_object())
      auth_fail(source, where, "must be an object {name, token, roles}");
    for (const auto& [key, value] : entry.items())
      if (key != "name" && key != "token" && key != "roles")
        auth_fail(source, where + "/" + key,
                  "unknown key (expected name, token, roles)");
    auth_token tok;
    if (!entry.contains("name") || !entry["name"].is_string()
        || entry["name"].get<std::string>().empty())
      auth_fail(source, where + "/name", "must be a non-empty string");
    tok.name = entry["name"].get<std::string>();
    if (tok.name.size() > 64
        || !std::all_of(tok.name.begin(), tok.name.end(), [](unsigned char c) {
             return c > 0x20 && c < 0x7f;
           }))
      auth_fail(source, where + "/name",
                "must be at most 64 printable ASCII characters without spaces");
    if (!entry.contains("token") || !entry["token"].is_string())
      auth_fail(source, where + "/token", "must be a string");
    tok.token = entry["token"].get<std::string>();
    if (tok.token.empty())
      auth_fail(source, where + "/token", "must not be empty");
    if (tok.token.size() < 16)
      auth_fail(source, where + "/token",
                "must be at least 16 characters, got "
                  + std::to_string(tok.token.size()));
    if (!std::all_of(tok.token.begin(), tok.token.end(), [](unsigned char c) {
          return c > 0x20 && c < 0x7f;
        }))
      auth_fail(source, where + "/token",
                "must be printable ASCII without spaces (it travels in an "
                "Authorization header)");
    if (!entry.contains("roles") || !entry["roles"].is_array()
        || entry["roles"].empty())
      auth_fail(source, where + "/roles",
                "must be a non-empty array of viewer, operator, approver");
    for (size_t r = 0; r < entry["roles"].size(); ++r) {
      const auto& role = entry["roles"][r];
      if (!role.is_string() || !is_known_role(role.get<std::string>()))
        auth_fail(source, where + "/roles/" + std::to_string(r),
                  "unknown role " + safe_dump(role)
                    + " (expected viewer, operator, approver)");
      tok.roles.push_back(role.get<std::string>());
    }
    for (size_t j = 0; j < cfg.tokens.size(); ++j) {
      if (cfg.tokens[j].token == tok.token)
        auth_fail(source, where + "/token",
                  "the same token as /tokens/" + std::to_string(j)
                    + " (each token must be unique)");
      if (cfg.tokens[j].name == tok.name)
        auth_fail(source, where + "/name",
                  "the name " + safe_dump(json(tok.name))
                    + " is used by /tokens/" + std::to_string(j) + " too");
    }
    cfg.tokens.push_back(std::move(tok));
  }
  if (doc.contains("limits")) {
    const auto& limits = doc["limits"];
    if (!limits.is_object())
      auth_fail(source, "/limits",
                "must be an object {max_body_bytes, requests_per_second, "
                "burst}");
    for (const auto& [key, value] : limits.items()) {
      auto where = "/limits/" + key;
      if (key == "max_body_bytes")
        cfg.limits.max_body_bytes = static_cast<size_t>(
          limit_number(value, source, where, 1, 1 << 30, true));
      else if (key == "requests_per_second")
        cfg.limits.requests_per_second =
          limit_number(value, source, where, 0.001, 1e6, false);
      else if (key == "burst")
        cfg.limits.burst = limit_number(value, source, where, 1, 1e6, false);
      else
        auth_fail(source, where,
                  "unknown key (expected max_body_bytes, requests_per_second, "
                  "burst)");
    }
  }
  return cfg;
}

auth_config auth_config::load(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  if (!in)
    throw std::invalid_argument(path + ": cannot read the auth file: "
                                + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return parse(text.str(), path);
}

const auth_token* auth_config::find(const std::string& bearer) const {
  // Every token is compared in full, so the time taken tells nothing about
  // how much of a guess was right.
  const auth_token* found = nullptr;
  for (const auto& tok : tokens) {
    unsigned diff = tok.token.size() == bearer.size() ? 0u : 1u;
    for (size_t i = 0; i < tok.token.size(); ++i)
      diff |= static_cast<unsigned char>(tok.token[i])
              ^ static_cast<unsigned char>(
                i < bearer.size() ? bearer[i] : '\0');
    if (diff == 0)
      found = &tok;
  }
  return found;
}

// -- the server ----------------------------------------------------------------------

struct http_api::impl {
  impl(run_service& s, http_api_options o, metrics_fn m, assets_fn a)
    : svc(s),
      opts(std::move(o)),
      metrics(std::move(m)),
      assets(std::move(a)),
      ioc(static_cast<int>(std::max<size_t>(1, opts.threads))) {
  }

  ~impl() {
    stop();
  }

  uint16_t start();
  void stop();
  void do_accept();
  void on_accept(beast::error_code ec, tcp::socket sock);
  void forget(session* s);

  run_service& svc;
  http_api_options opts;
  std::optional<auth_config> auth;
  metrics_fn metrics;
  assets_fn assets;
  std::unique_ptr<rate_limiter> limiter;

  mutable std::mutex mtx;
  std::unordered_map<session*, std::weak_ptr<session>> sessions;
  /// Notified whenever a session leaves `sessions`.
  mutable std::condition_variable closed;
  bool started = false;
  bool stopped = false;
  std::string address; // host:port, for logs
  std::vector<std::thread> threads;
  // Destroyed before the members above (sessions deregister as the handlers
  // holding them go), after the threads are joined.
  asio::io_context ioc;
  std::optional<tcp::acceptor> acceptor;
};

namespace {

/// The bridge from run_service::subscribe's callback (the store's thread) to
/// a session's strand. Closed under its mutex before the session goes, so a
/// late event never reaches a dead io_context.
struct sse_sink {
  std::mutex mtx;
  bool closed = false;
  bool overflowed = false;
  /// Events posted to the strand and not yet written.
  size_t queued = 0;
  size_t limit = 0;
};

class session : public std::enable_shared_from_this<session> {
public:
  using response = http::response<http::string_body>;

  session(tcp::socket sock, http_api::impl& srv)
    : stream_(std::move(sock)),
      srv_(srv),
      keep_alive_timer_(stream_.get_executor()),
      final_timer_(stream_.get_executor()) {
    beast::error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    peer_ = ec ? std::string{"unknown"} : ep.address().to_string();
  }

  ~session() {
    srv_.forget(this);
  }

  auto executor() {
    return stream_.get_executor();
  }

  /// Starts reading requests, or answers 503 when over the connection limit.
  void start(bool over_limit) {
    asio::dispatch(stream_.get_executor(),
                   [self = shared_from_this(), over_limit] {
                     if (over_limit) {
                       spdlog::warn("http api: {} connections open, refusing "
                                    "one from {}",
                                    self->srv_.opts.max_connections,
                                    self->peer_);
                       self->reply_error(503,
                                         "too many connections (the limit is "
                                           + std::to_string(
                                             self->srv_.opts.max_connections)
                                           + ")",
                                         {}, true);
                     } else {
                       self->do_read();
                     }
                   });
  }

  /// Closes the connection now (on the strand); an event stream
  /// unsubscribes. Idempotent.
  void close() {
    if (closed_)
      return;
    closed_ = true;
    keep_alive_timer_.cancel();
    final_timer_.cancel();
    end_subscription();
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
  }

private:
  // -- reading a request --------------------------------------------------------

  void do_read() {
    if (closed_)
      return;
    parser_.emplace();
    method_.clear();
    target_.clear();
    parser_->header_limit(16 * 1024);
    // The body limit is checked against Content-Length after the header, so
    // that a request is refused for its token before its size.
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    stream_.expires_after(srv_.opts.idle_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec,
                                                        size_t) {
                              self->on_read_header(ec);
                            });
  }

  void on_read_header(beast::error_code ec) {
    if (ec)
      return on_read_error(ec);
    auto& req = parser_->get();
    method_ = std::string{req.method_string()};
    target_ = std::string{req.target()};
    who_ = nullptr;
    try {
      decide_from_header();
    } catch (const api_error& e) {
      return reply_error(e.status, e.what(), e.headers, !parser_->is_done());
    }
    if (parser_->is_done())
      return handle();
    parser_->body_limit(srv_.opts.max_body_bytes);
    if (lower(std::string{req[http::field::expect]}) == "100-continue") {
      auto cont = std::make_shared<http::response<http::empty_body>>(
        http::status::continue_, req.version());
      stream_.expires_after(srv_.opts.idle_timeout);
      http::async_write(stream_, *cont,
                        [self = shared_from_this(), cont](beast::error_code ec,
                                                          size_t) {
                          if (ec)
                            return self->close();
                          self->read_body();
                        });
      return;
    }
    read_body();
  }

  void read_body() {
    stream_.expires_after(srv_.opts.idle_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       if (ec)
                         return self->on_read_error(ec);
                       self->handle();
                     });
  }

  void on_read_error(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == asio::error::eof
        || ec == beast::error::timeout || ec == asio::error::operation_aborted
        || ec == asio::error::connection_reset || closed_)
      return close();
    if (ec == http::error::body_limit)
      return reply_error(413, "request body is over the limit of "
                                + std::to_string(srv_.opts.max_body_bytes)
                                + " bytes",
                         {}, true);
    if (ec == http::error::header_limit)
      return reply_error(431, "request header is over 16384 bytes", {}, true);
    reply_error(400, "malformed HTTP request: " + ec.message(), {}, true);
  }

  /// Everything decided before the body is read: the route, the method, the
  /// rate limit, the token and its role, the body's type and size.
  void decide_from_header() {
    auto& req = parser_->get();
    auto q = target_.find('?');
    path_ = target_.substr(0, q);
    query_ = q == std::string::npos ? std::string{} : target_.substr(q + 1);
    auto route = match_route(path_);
    if (!route)
      throw api_error(404, "no route for " + shown(path_, 200));
    route_ = *route;
    auto role = role_for(route_.kind, req.method());
    if (!role)
      throw api_error(405,
                      "method " + shown(method_) + " is not allowed on "
                        + shown(path_, 200) + " (allowed: "
                        + allowed_methods(route_.kind) + ")",
                      {{"Allow", allowed_methods(route_.kind)}});
    std::string bearer;
    bool has_bearer = false;
    auto authz = trim(std::string{req[http::field::authorization]});
    if (authz.size() > 7 && lower(authz.substr(0, 7)) == "bearer ") {
      bearer = trim(authz.substr(7));
      has_bearer = true;
    }
    if (srv_.auth && has_bearer)
      who_ = srv_.auth->find(bearer);
    if (route_.kind != route_kind::healthz) {
      auto key = who_ != nullptr ? "token:" + who_->name : "ip:" + peer_;
      if (auto wait = srv_.limiter->take(key))
        throw api_error(429,
                        "too many requests from "
                          + (who_ != nullptr ? "token '" + who_->name + "'"
                                             : peer_)
                          + ": the limit is "
                          + std::to_string(srv_.opts.requests_per_second)
                          + " per second (burst "
                          + std::to_string(srv_.opts.burst)
                          + "); retry in " + std::to_string(*wait) + " s",
                        {{"Retry-After", std::to_string(*wait)}});
    }
    if (srv_.auth && !role->empty()) {
      if (!has_bearer)
        throw api_error(401,
                        "this route needs a bearer token (Authorization: "
                        "Bearer TOKEN)",
                        {{"WWW-Authenticate", "Bearer realm=\"troupe\""}});
      if (who_ == nullptr)
        throw api_error(401, "unknown bearer token",
                        {{"WWW-Authenticate",
                          "Bearer realm=\"troupe\", error=\"invalid_token\""}});
      if (!who_->has_role(*role)) {
        std::string roles;
        for (const auto& r : who_->roles)
          roles += (roles.empty() ? "" : ", ") + r;
        throw api_error(403, method_ + " " + path_ + " needs the " + *role
                               + " role; token '" + who_->name + "' has "
                               + roles);
      }
    }
    bool has_body = parser_->chunked()
                    || (parser_->content_length()
                        && *parser_->content_length() > 0);
    if (has_body && req.method() == http::verb::post) {
      auto type = lower(trim(std::string{req[http::field::content_type]}));
      auto semi = type.find(';');
      if (trim(type.substr(0, semi)) != "application/json")
        throw api_error(415, "Content-Type must be application/json, got "
                               + (type.empty() ? std::string{"none"}
                                               : shown(type)));
    }
    if (parser_->content_length()
        && *parser_->content_length() > srv_.opts.max_body_bytes)
      throw api_error(413, "request body of "
                             + std::to_string(*parser_->content_length())
                             + " bytes is over the limit of "
                             + std::to_string(srv_.opts.max_body_bytes)
                             + " bytes");
  }

  // -- answering ------------------------------------------------------------------

  /// The request is whole: run its route and answer.
  void handle() {
    auto& req = parser_->get();
    keep_alive_ = req.keep_alive();
    try {
      dispatch();
    } catch (const api_error& e) {
      reply_error(e.status, e.what(), e.headers);
    } catch (const std::invalid_argument& e) {
      reply_error(400, e.what());
    } catch (const not_found_error& e) {
      reply_error(404, e.what());
    } catch (const conflict_error& e) {
      reply_error(409, e.what());
    } catch (const std::exception& e) {
      spdlog::error("http api: {} {} failed: {}", method_, shown(target_, 200),
                    e.what());
      reply_error(500, "internal error (the server's log has the details)");
    }
  }

  std::string who_name() const {
    return who_ != nullptr ? who_->name : "api";
  }

  /// The body as a JSON object; `required` false lets it be empty (null).
  json body_json(bool required) {
    const auto& body = parser_->get().body();
    if (body.empty()) {
      if (required)
        throw api_error(400, "request body: expected a JSON object");
      return nullptr;
    }
    json doc;
    try {
      doc = json::parse(body);
    } catch (const json::parse_error& e) {
      throw api_error(400, "malformed JSON in the request body: "
                             + json_reason(e));
    }
    if (!doc.is_object())
      throw api_error(400, "request body: expected a JSON object, got "
                             + std::string{doc.type_name()});
    return doc;
  }

  void dispatch() {
    auto& svc = srv_.svc;
    auto params = parse_query(query_);
    switch (route_.kind) {
      case route_kind::healthz:
        return reply(200, json{{"status", "ok"},
                               {"runs",
                                {{"queued", svc.queued()},
                                 {"running", svc.running()}}}});
      case route_kind::metrics: {
        if (!srv_.metrics)
          throw api_error(404, "metrics are not enabled on this server");
        return reply_text(200, "text/plain; version=0.0.4; charset=utf-8",
                          srv_.metrics());
      }
      case route_kind::asset: {
        bool traversal = path_.find("..") != std::string::npos
                         || path_.find('\\') != std::string::npos
                         || path_.find("//") != std::string::npos;
        std::optional<asset> file;
        if (!traversal && srv_.assets)
          file = srv_.assets(path_);
        if (!file)
          throw api_error(404, "no such file: " + shown(path_, 200));
        return reply_text(200, file->content_type, std::move(file->body));
      }
      case route_kind::swarms: {
        check_params(params, {});
        json list = json::array();
        for (const auto& s : svc.swarms())
          list.push_back({{"name", s.name},
                          {"description", s.description},
                          {"entry", s.entry}});
        return reply(200, json{{"swarms", std::move(list)}});
      }
      case route_kind::runs:
        return parser_->get().method() == http::verb::post ? submit()
                                                           : list(params);
      case route_kind::run: {
        check_id(route_.id, "run", 64);
        auto run = svc.get(route_.id);
        if (!run)
          throw api_error(404, "no run " + shown(route_.id));
        return reply(200, run_to_json(*run, is_finished_status(run->status)));
      }
      case route_kind::run_trace: {
        check_id(route_.id, "run", 64);
        auto run = svc.get(route_.id);
        if (!run)
          throw api_error(404, "no run " + shown(route_.id));
        json records = json::array();
        for (auto& rec : svc.trace(route_.id))
          records.push_back(std::move(rec));
        return reply(200, json{{"run_id", run->id},
                               {"trace_id", run->trace_id},
                               {"records", std::move(records)}});
      }
      case route_kind::run_cancel: {
        check_id(route_.id, "run", 64);
        body_json(false);
        auto run = svc.cancel(route_.id, who_name());
        return reply(202, run_to_json(run, is_finished_status(run.status)));
      }
      case route_kind::run_events:
        return events(params);
      case route_kind::approvals: {
        check_params(params, {});
        json list = json::array();
        for (const auto& r : svc.pending_approvals())
          list.push_back(approval_to_json(r));
        return reply(200, json{{"approvals", std::move(list)}});
      }
      case route_kind::approval:
        return decide();
    }
  }

  void submit() {
    auto doc = body_json(true);
    auto sub = submission_from_json(doc);
    // Who the run acts for: the caller's token unless the body says.
    if (!doc.contains("principal") && who_ != nullptr)
      sub.principal = who_->name;
    auto run = srv_.svc.submit(std::move(sub));
    spdlog::info("http api: run {} of {} submitted by {}", run.id, run.swarm,
                 who_name());
    reply(202, run_to_json(run), {{"Location", "/v1/runs/" + run.id}});
  }

  void list(const query_params& params) {
    check_params(params, {"status", "limit", "cursor"});
    auto status = param(params, "status").value_or("");
    static const char* statuses[] = {"queued",    "running", "complete",
                                     "max_steps", "failed",  "halted",
                                     "cancelled"};
    if (!status.empty()
        && std::none_of(std::begin(statuses), std::end(statuses),
                        [&](const char* s) { return status == s; }))
      throw api_error(400, "status: unknown status " + shown(status)
                             + " (expected queued, running, complete, "
                               "max_steps, failed, halted or cancelled)");
    int64_t limit = 50;
    if (auto text = param(params, "limit")) {
      auto n = parse_count(*text);
      if (!n || *n < 1 || *n > 1000)
        throw api_error(400, "limit: expected an integer from 1 to 1000, got "
                               + shown(*text));
      limit = *n;
    }
    auto cursor = param(params, "cursor").value_or("");
    auto page = srv_.svc.list(status, limit, cursor);
    json runs = json::array();
    for (const auto& r : page.runs)
      runs.push_back(run_to_json(r));
    reply(200, json{{"runs", std::move(runs)},
                    {"next_cursor", page.next_cursor.empty()
                                      ? json(nullptr)
                                      : json(page.next_cursor)},
                    {"total", page.total}});
  }

  void decide() {
    check_id(route_.id, "approval", 128);
    auto doc = body_json(true);
    for (const auto& [key, value] : doc.items())
      if (key != "decision" && key != "note")
        throw api_error(400, "unknown field " + shown(key)
                               + " (expected decision, note)");
    auto it = doc.find("decision");
    if (it == doc.end() || !it->is_string()
        || (*it != "approve" && *it != "deny"))
      throw api_error(400, "decision: expected \"approve\" or \"deny\""
                             + std::string{it == doc.end()
                                             ? " (missing)"
                                             : ", got " + safe_dump(*it)});
    std::string note;
    if (auto n = doc.find("note"); n != doc.end()) {
      if (!n->is_string())
        throw api_error(400, "note: expected a string, got "
                               + std::string{n->type_name()});
      note = n->get<std::string>();
    }
    auto verdict = *it == "approve" ? approval_verdict::approve
                                    : approval_verdict::deny;
    auto req = srv_.svc.decide(route_.id, verdict, who_name(), note);
    spdlog::info("http api: approval {} {} by {}", route_.id,
                 verdict == approval_verdict::approve ? "approved" : "denied",
                 who_name());
    reply(200, approval_to_json(req));
  }

  void reply(int status, const json& body,
             const std::vector<std::pair<std::string, std::string>>& headers = {},
             bool close_after = false) {
    reply_text(status, "application/json", safe_dump(body), headers,
               close_after);
  }

  void reply_error(int status, const std::string& message,
                   const std::vector<std::pair<std::string, std::string>>& headers
                   = {},
                   bool close_after = false) {
    if (status >= 500)
      spdlog::warn("http api: {} {} from {} -> {}: {}", method_,
                   shown(target_, 200), peer_, status, message);
    else
      spdlog::debug("http api: {} {} from {} -> {}: {}", method_,
                    shown(target_, 200), peer_, status, message);
    reply(status, error_body(status, message), headers, close_after);
  }

  void reply_text(int status, const std::string& content_type, std::string body,
                  const std::vector<std::pair<std::string, std::string>>& headers
                  = {},
                  bool close_after = false) {
    if (closed_)
      return;
    unsigned version = parser_ ? parser_->get().version() : 11;
    auto res = std::make_shared<response>(static_cast<http::status>(status),
                                          version);
    res->set(http::field::server, "troupe");
    res->set(http::field::content_type, content_type);
    res->set(http::field::cache_control, "no-store");
    for (const auto& [k, v] : headers)
      res->set(k, v);
    res->body() = std::move(body);
    bool close = close_after || !keep_alive_ready();
    // A body left unread would be taken for the next request: close instead.
    bool unread_body = parser_ && !parser_->is_done();
    close = close || unread_body;
    res->keep_alive(!close);
    res->prepare_payload();
    spdlog::debug("http api: {} {} -> {}", method_, shown(target_, 200),
                  status);
    stream_.expires_after(srv_.opts.idle_timeout);
    http::async_write(stream_, *res,
                      [self = shared_from_this(), res, close,
                       unread_body](beast::error_code ec, size_t) {
                        if (ec)
                          return self->close();
                        if (!close)
                          return self->do_read();
                        if (unread_body)
                          return self->linger();
                        beast::error_code ignored;
                        self->stream_.socket().shutdown(
                          tcp::socket::shutdown_send, ignored);
                        self->close();
                      });
  }

  bool keep_alive_ready() const {
    return parser_ && parser_->is_header_done() && parser_->get().keep_alive()
           && keep_alive_;
  }

  /// After an answer sent before the body was read: says it is done sending,
  /// then reads and drops what the client still sends (up to a bound) so
  /// that closing does not reset the connection before the client has read
  /// the answer.
  void linger() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    drained_ = 0;
    drain();
  }

  void drain() {
    stream_.expires_after(std::min<std::chrono::seconds>(
      srv_.opts.idle_timeout, std::chrono::seconds{5}));
    stream_.async_read_some(
      asio::buffer(scratch_),
      [self = shared_from_this()](beast::error_code ec, size_t n) {
        self->drained_ += n;
        if (ec || self->drained_ > linger_limit)
          return self->close();
        self->drain();
      });
  }

  // -- server-sent events ------------------------------------------------------------

  void events(const query_params& params) {
    check_params(params, {"after"});
    check_id(route_.id, "run", 64);
    int64_t after = 0;
    auto& req = parser_->get();
    auto last_id = trim(std::string{req["Last-Event-ID"]});
    // A browser reconnecting keeps the URL (?after=) and sends the newer
    // Last-Event-ID: the header wins.
    if (!last_id.empty()) {
      auto n = parse_count(last_id);
      if (!n)
        throw api_error(400, "Last-Event-ID: expected a non-negative integer, "
                             "got " + shown(last_id));
      after = *n;
    } else if (auto text = param(params, "after")) {
      auto n = parse_count(*text);
      if (!n)
        throw api_error(400, "after: expected a non-negative integer, got "
                               + shown(*text));
      after = *n;
    }
    auto run = srv_.svc.get(route_.id);
    if (!run)
      throw api_error(404, "no run " + shown(route_.id));
    // A run that had ended before we subscribed has all its events stored:
    // once they are replayed there is nothing to wait for.
    bool ended = is_finished_status(run->status);
    sink_ = std::make_shared<sse_sink>();
    sink_->limit = srv_.opts.sse_queue_limit;
    std::weak_ptr<session> weak = shared_from_this();
    auto sink = sink_;
    auto ex = stream_.get_executor();
    sub_ = srv_.svc.subscribe(route_.id, after,
                              [sink, weak, ex](int64_t seq, const json& data) {
                                post_event(sink, weak, ex, seq, data);
                              });
    subscribed_ = true;
    spdlog::debug("http api: {} follows the events of run {} after {}", peer_,
                  route_.id, after);
    if (ended) {
      // The record says finished a moment before the final status event is
      // stored (it travels through the store's thread), so a replay may
      // lack it yet: it then comes live. Only a client that has seen it
      // already (its Last-Event-ID) has nothing left to wait for.
      bool seen_final = false;
      if (after > 0) {
        try {
          auto ev = srv_.svc.db().events_after(route_.id, after - 1, 1);
          seen_final = !ev.empty() && ev[0].seq == after
                       && is_final_status_event(ev[0].data);
        } catch (const std::exception& e) {
          spdlog::debug("http api: reading event {} of run {}: {}", after,
                        route_.id, e.what());
        }
      }
      asio::post(ex, [self = shared_from_this(), seen_final] {
        self->on_replayed(seen_final);
      });
    }
    auto res = std::make_shared<http::response<http::empty_body>>(
      http::status::ok, req.version());
    res->set(http::field::server, "troupe");
    res->set(http::field::content_type, "text/event-stream");
    res->set(http::field::cache_control, "no-cache");
    // Proxies (nginx) would otherwise hold events back.
    res->set("X-Accel-Buffering", "no");
    res->chunked(true);
    res->keep_alive(false);
    auto sr = std::make_shared<http::response_serializer<http::empty_body>>(*res);
    writing_ = true;
    stream_.expires_after(srv_.opts.idle_timeout);
    http::async_write_header(
      stream_, *sr,
      [self = shared_from_this(), res, sr](beast::error_code ec, size_t) {
        self->writing_ = false;
        if (ec)
          return self->close();
        self->streaming_ = true;
        // Reads now only notice the client leaving; each write sets its own
        // deadline (a read is pending, so expires_after touches writes only).
        self->stream_.expires_never();
        self->watch_for_close();
        self->arm_keep_alive();
        self->write_next();
      });
  }

  /// On the store's thread: hands one event to the session's strand, or ends
  /// the stream when the client is too far behind.
  static void post_event(const std::shared_ptr<sse_sink>& sink,
                         const std::weak_ptr<session>& weak,
                         const beast::tcp_stream::executor_type& ex,
                         int64_t seq, const json& data) {
    std::lock_guard<std::mutex> guard{sink->mtx};
    if (sink->closed || sink->overflowed)
      return;
    if (sink->queued >= sink->limit) {
      sink->overflowed = true;
      asio::post(ex, [weak] {
        if (auto self = weak.lock())
          self->on_overflow();
      });
      return;
    }
    ++sink->queued;
    asio::post(ex, [weak, seq, data] {
      if (auto self = weak.lock())
        self->on_event(seq, data);
    });
  }

  void on_event(int64_t seq, const json& data) {
    if (closed_ || ending_) {
      release_one();
      return;
    }
    frames_.push_back({sse_frame(seq, data), true});
    if (is_final_status_event(data))
      ending_ = true;
    write_next();
  }

  /// A finished run's stored events are all posted (subscribe replays
  /// before it returns). Ends the stream when its final status is among them
  /// or the client saw it before; otherwise waits (bounded) for it to come.
  void on_replayed(bool seen_final) {
    if (closed_ || ending_)
      return;
    if (seen_final) {
      ending_ = true;
      return write_next();
    }
    final_timer_.expires_after(final_grace);
    final_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || self->closed_ || self->ending_)
        return;
      spdlog::debug("http api: run {} has ended, but no final status event "
                    "came within {} s; ending its stream",
                    self->route_.id, final_grace.count());
      self->ending_ = true;
      self->write_next();
    });
  }

  void on_overflow() {
    spdlog::warn("http api: the event stream of run {} to {} fell {} events "
                 "behind; ending it (the client resumes with Last-Event-ID)",
                 route_.id, peer_, srv_.opts.sse_queue_limit);
    ending_ = true;
    write_next();
  }

  void release_one() {
    std::lock_guard<std::mutex> guard{sink_->mtx};
    if (sink_->queued > 0)
      --sink_->queued;
  }

  void write_next() {
    if (closed_ || writing_ || !streaming_)
      return;
    if (frames_.empty()) {
      if (ending_)
        finish_stream();
      return;
    }
    writing_ = true;
    current_ = std::move(frames_.front());
    frames_.pop_front();
    stream_.expires_after(srv_.opts.idle_timeout);
    asio::async_write(stream_, http::make_chunk(asio::buffer(current_.text)),
                      [self = shared_from_this()](beast::error_code ec,
                                                  size_t) {
                        self->writing_ = false;
                        if (self->current_.event)
                          self->release_one();
                        if (ec) {
                          spdlog::debug("http api: event stream to {} ended: {}",
                                        self->peer_, ec.message());
                          return self->close();
                        }
                        self->arm_keep_alive();
                        self->write_next();
                      });
  }

  void finish_stream() {
    writing_ = true;
    end_subscription();
    stream_.expires_after(srv_.opts.idle_timeout);
    asio::async_write(stream_, http::make_chunk_last(),
                      [self = shared_from_this()](beast::error_code, size_t) {
                        self->writing_ = false;
                        beast::error_code ignored;
                        self->stream_.socket().shutdown(
                          tcp::socket::shutdown_send, ignored);
                        self->close();
                      });
  }

  /// A read that completes only when the client closes (or sends bytes,
  /// which an event stream ignores).
  void watch_for_close() {
    stream_.async_read_some(asio::buffer(scratch_),
                            [self = shared_from_this()](beast::error_code ec,
                                                        size_t) {
                              if (ec)
                                return self->close();
                              self->watch_for_close();
                            });
  }

  void arm_keep_alive() {
    if (closed_)
      return;
    keep_alive_timer_.expires_after(srv_.opts.keep_alive_interval);
    keep_alive_timer_.async_wait(
      [self = shared_from_this()](beast::error_code ec) {
        if (ec || self->closed_ || self->writing_ || !self->frames_.empty())
          return;
        self->frames_.push_back({": keep-alive\n\n", false});
        self->write_next();
      });
  }

  void end_subscription() {
    if (sink_) {
      std::lock_guard<std::mutex> guard{sink_->mtx};
      sink_->closed = true;
    }
    if (subscribed_) {
      subscribed_ = false;
      try {
        srv_.svc.unsubscribe(sub_);
      } catch (const std::exception& e) {
        spdlog::warn("http api: unsubscribe from run {} failed: {}", route_.id,
                     e.what());
      }
    }
  }

  struct frame {
    std::string text;
    /// An event (counted in the sink's queue), not a keep-alive comment.
    bool event = false;
  };

  static constexpr size_t linger_limit = 64 * 1024 * 1024;
  /// How long a stream of a finished run waits for a final status event
  /// that is not stored yet (milliseconds, normally).
  static constexpr std::chrono::seconds final_grace{5};

  beast::tcp_stream stream_;
  http_api::impl& srv_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::string peer_;
  std::string method_;
  std::string target_;
  std::string path_;
  std::string query_;
  route_match route_{route_kind::healthz, {}};
  const auth_token* who_ = nullptr;
  bool keep_alive_ = true;
  bool closed_ = false;
  std::array<char, 4096> scratch_{};
  size_t drained_ = 0;
  // Event streams.
  asio::steady_timer keep_alive_timer_;
  asio::steady_timer final_timer_;
  std::shared_ptr<sse_sink> sink_;
  uint64_t sub_ = 0;
  bool subscribed_ = false;
  bool streaming_ = false;
  bool writing_ = false;
  bool ending_ = false;
  std::deque<frame> frames_;
  frame current_;
};

bool is_loopback(const asio::ip::address& addr) {
  if (addr.is_v6() && addr.to_v6().is_v4_mapped())
    return asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6())
      .is_loopback();
  return addr.is_loopback();
}

} // namespace

uint16_t http_api::impl::start() {
  std::lock_guard<std::mutex> guard{mtx};
  if (started || stopped)
    throw std::logic_error("http api: start() called twice");
  std::string host = opts.host == "localhost" ? "127.0.0.1" : opts.host;
  beast::error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec)
    throw std::invalid_argument("listen host '" + opts.host
                                + "' is not an IP address (or localhost)");
  if (!auth && !is_loopback(addr))
    throw std::invalid_argument(
      "refusing to listen on " + opts.host
      + " without an auth file: an open API is served on loopback addresses "
        "only (give --auth FILE, or listen on 127.0.0.1)");
  address = opts.host + ":" + std::to_string(opts.port);
  tcp::endpoint ep{addr, opts.port};
  acceptor.emplace(asio::make_strand(ioc));
  auto fail = [&](const char* step) {
    auto msg = "cannot listen on " + address + ": " + step + ": "
               + ec.message();
    acceptor.reset();
    throw std::runtime_error(msg);
  };
  acceptor->open(ep.protocol(), ec);
  if (ec)
    fail("open");
  acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (ec)
    fail("set_option");
  acceptor->bind(ep, ec);
  if (ec)
    fail("bind");
  acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    fail("listen");
  auto port = acceptor->local_endpoint(ec).port();
  address = opts.host + ":" + std::to_string(port);
  started = true;
  do_accept();
  for (size_t i = 0; i < std::max<size_t>(1, opts.threads); ++i)
    threads.emplace_back([this] {
      for (;;) {
        try {
          ioc.run();
          return;
        } catch (const std::exception& e) {
          spdlog::error("http api: a handler threw: {}", e.what());
        }
      }
    });
  spdlog::info("http api: listening on {}{}", address,
               auth ? "" : " (no auth file: every route is open)");
  return port;
}

void http_api::impl::do_accept() {
  acceptor->async_accept(asio::make_strand(ioc),
                         [this](beast::error_code ec, tcp::socket sock) {
                           on_accept(ec, std::move(sock));
                         });
}

void http_api::impl::on_accept(beast::error_code ec, tcp::socket sock) {
  if (ec == asio::error::operation_aborted || !acceptor->is_open())
    return;
  if (ec) {
    spdlog::warn("http api: accept on {} failed: {}", address, ec.message());
  } else {
    std::shared_ptr<session> s;
    size_t open = 0;
    {
      std::lock_guard<std::mutex> guard{mtx};
      if (stopped) {
        beast::error_code ignored;
        sock.close(ignored);
        return;
      }
      s = std::make_shared<session>(std::move(sock), *this);
      sessions.emplace(s.get(), s);
      open = sessions.size();
    }
    s->start(open > opts.max_connections);
  }
  do_accept();
}

void http_api::impl::forget(session* s) {
  {
    std::lock_guard<std::mutex> guard{mtx};
    sessions.erase(s);
  }
  closed.notify_all();
}

void http_api::impl::stop() {
  std::vector<std::shared_ptr<session>> live;
  {
    std::lock_guard<std::mutex> guard{mtx};
    if (stopped)
      return;
    stopped = true;
    if (!started)
      return;
    for (auto& [ptr, weak] : sessions)
      if (auto s = weak.lock())
        live.push_back(std::move(s));
  }
  asio::post(acceptor->get_executor(), [this] {
    beast::error_code ignored;
    acceptor->close(ignored);
  });
  for (auto& s : live)
    asio::post(s->executor(), [s] { s->close(); });
  live.clear();
  // With the acceptor and every socket closed, each pending operation
  // completes (aborted), nothing starts another, and run() returns.
  for (auto& t : threads) {
    if (t.get_id() == std::this_thread::get_id()) {
      spdlog::error("http api: stop() called from the server's own thread; "
                    "not waiting for it");
      t.detach();
    } else if (t.joinable()) {
      t.join();
    }
  }
  threads.clear();
  spdlog::info("http api: stopped listening on {}", address);
}

http_api::http_api(run_service& svc, http_api_options opts,
                   metrics_fn metrics_text, assets_fn assets) {
  auto check = [](bool ok, const std::string& what) {
    if (!ok)
      throw std::invalid_argument("http api options: " + what);
  };
  std::optional<auth_config> auth;
  if (!opts.auth_file.empty()) {
    auth = auth_config::load(opts.auth_file);
    if (auth->limits.max_body_bytes)
      opts.max_body_bytes = *auth->limits.max_body_bytes;
    if (auth->limits.requests_per_second)
      opts.requests_per_second = *auth->limits.requests_per_second;
    if (auth->limits.burst)
      opts.burst = *auth->limits.burst;
  }
  check(opts.max_body_bytes > 0, "max_body_bytes must be at least 1");
  check(std::isfinite(opts.requests_per_second) && opts.requests_per_second > 0,
        "requests_per_second must be a positive number");
  check(std::isfinite(opts.burst) && opts.burst >= 1,
        "burst must be at least 1");
  check(opts.threads >= 1 && opts.threads <= 64,
        "threads must be between 1 and 64");
  check(opts.idle_timeout.count() >= 1, "idle_timeout must be at least 1 s");
  check(opts.max_connections >= 1, "max_connections must be at least 1");
  check(opts.keep_alive_interval.count() >= 1,
        "keep_alive_interval must be at least 1 ms");
  check(opts.sse_queue_limit >= 1, "sse_queue_limit must be at least 1");
  impl_ = std::make_shared<impl>(svc, std::move(opts), std::move(metrics_text),
                                 std::move(assets));
  impl_->auth = std::move(auth);
  impl_->limiter = std::make_unique<rate_limiter>(
    impl_->opts.requests_per_second, impl_->opts.burst);
}

http_api::~http_api() {
  stop();
}

uint16_t http_api::start() {
  return impl_->start();
}

void http_api::stop() {
  impl_->stop();
}

const http_api_options& http_api::options() const noexcept {
  return impl_->opts;
}

size_t http_api::connections() const {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  return impl_->sessions.size();
}

bool http_api::wait_connections(size_t at_most,
                                std::chrono::milliseconds limit) const {
  std::unique_lock<std::mutex> lock{impl_->mtx};
  return impl_->closed.wait_for(lock, limit, [this, at_most] {
    return impl_->sessions.size() <= at_most;
  });
}

} // namespace troupe

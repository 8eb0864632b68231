#include "runtime/http_client.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <exception>
#include <mutex>
#include <unordered_map>

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <spdlog/spdlog.h>

#include "runtime/io_pool.hpp"

namespace troupe {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using std::chrono::milliseconds;
using strand_type = asio::strand<asio::io_context::executor_type>;

namespace {

bool iequals(const std::string& a, const std::string& b) {
  return a.size() == b.size()
         && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
              return std::tolower(static_cast<unsigned char>(x))
                     == std::tolower(static_cast<unsigned char>(y));
            });
}

/// The parts of an absolute http(s) URL the client needs.
struct parsed_url {
  bool tls = false;
  std::string host; // without brackets for IPv6 literals
  std::string port;
  std::string target;

  std::string authority() const {
    return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":"
           + port;
  }
};

/// Parses `url`, or returns an error text.
std::string parse_url(const std::string& url, parsed_url& out) {
  auto lower = url.substr(0, 8);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  size_t pos = 0;
  if (lower.rfind("http://", 0) == 0) {
    out.tls = false;
    pos = 7;
  } else if (lower.rfind("https://", 0) == 0) {
    out.tls = true;
    pos = 8;
  } else {
    return "unsupported URL (want http:// or https://)";
  }
  auto end = url.find_first_of("/?#", pos);
  auto authority = url.substr(pos, end == std::string::npos ? std::string::npos
                                                            : end - pos);
  if (authority.find('@') != std::string::npos)
    return "URL user info is not supported";
  std::string port;
  if (!authority.empty() && authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string::npos)
      return "bad IPv6 literal in URL";
    out.host = authority.substr(1, close - 1);
    auto rest = authority.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':')
        return "bad authority in URL";
      port = rest.substr(1);
    }
  } else {
    auto colon = authority.rfind(':');
    out.host = authority.substr(0, colon);
    if (colon != std::string::npos)
      port = authority.substr(colon + 1);
  }
  if (out.host.empty())
    return "URL has no host";
  if (port.empty())
    port = out.tls ? "443" : "80";
  if (port.size() > 5
      || !std::all_of(port.begin(), port.end(),
                      [](unsigned char c) { return std::isdigit(c); })
      || std::stoi(port) == 0 || std::stoi(port) > 65535)
    return "bad port in URL";
  out.port = port;
  out.target = end == std::string::npos ? "/" : url.substr(end);
  if (auto hash = out.target.find('#'); hash != std::string::npos)
    out.target.erase(hash);
  if (out.target.empty() || out.target.front() != '/')
    out.target.insert(0, "/");
  return {};
}

/// Calls a user callback; an exception from it is logged, never thrown into
/// the I/O thread.
template <class F, class... Ts>
void invoke_user(const char* what, F& f, Ts&&... xs) {
  if (!f)
    return;
  try {
    f(std::forward<Ts>(xs)...);
  } catch (const std::exception& ex) {
    spdlog::error("http client: {} callback threw: {}", what, ex.what());
  } catch (...) {
    spdlog::error("http client: {} callback threw a non-standard exception",
                  what);
  }
}

} // namespace

std::optional<std::string> http_response::header(const std::string& name) const {
  for (const auto& [key, value] : headers)
    if (iequals(key, name))
      return value;
  return std::nullopt;
}

namespace detail {

/// One socket (plain or TLS) and its read buffer, bound to a strand.
struct http_connection {
  http_connection(strand_type strand, ssl::context* tls_ctx, std::string key)
    : strand(std::move(strand)), key(std::move(key)) {
    if (tls_ctx)
      tls.emplace(this->strand, *tls_ctx);
    else
      plain.emplace(this->strand);
  }

  beast::tcp_stream& lowest() {
    return tls ? beast::get_lowest_layer(*tls) : *plain;
  }

  template <class F>
  void with_stream(F&& f) {
    if (tls)
      f(*tls);
    else
      f(*plain);
  }

  /// Closes the socket (pending operations end with operation_aborted).
  /// Call on the strand.
  void close() {
    beast::error_code ec;
    lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
    lowest().close();
  }

  strand_type strand;
  std::string key;
  std::optional<beast::tcp_stream> plain;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls;
  beast::flat_buffer buffer;
};

class http_exchange;

/// What the client and its sessions share; outlives the client object.
struct http_client_core {
  http_client_core(asio::io_context& ctx, http_client_options opts)
    : ctx(ctx), opts(std::move(opts)) {
    beast::error_code ec;
    tls_ctx.set_default_verify_paths(ec);
    if (ec)
      spdlog::debug("http client: no system CA store: {}", ec.message());
    if (!this->opts.ca_file.empty()) {
      tls_ctx.load_verify_file(this->opts.ca_file, ec);
      if (ec)
        tls_error = "cannot load CA file " + this->opts.ca_file + ": "
                    + ec.message();
    }
    tls_ctx.set_verify_mode(this->opts.verify_peer ? ssl::verify_peer
                                                   : ssl::verify_none);
  }

  /// Takes an idle connection for `key`, if any.
  std::shared_ptr<http_connection> take_idle(const std::string& key);

  /// Pools `conn` for reuse, or closes it. Call on the connection's strand.
  void release(std::shared_ptr<http_connection> conn);

  void forget(http_exchange* ex) {
    std::lock_guard<std::mutex> guard{mtx};
    in_flight.erase(ex);
  }

  asio::io_context& ctx;
  http_client_options opts;
  ssl::context tls_ctx{ssl::context::tls_client};
  std::string tls_error;

  mutable std::mutex mtx;
  bool stopped = false;
  std::unordered_map<std::string, std::vector<std::shared_ptr<http_connection>>>
    idle;
  std::unordered_map<http_exchange*, std::shared_ptr<http_exchange>> in_flight;
};

std::shared_ptr<http_connection>
http_client_core::take_idle(const std::string& key) {
  auto i = idle.find(key);
  if (i == idle.end() || i->second.empty())
    return nullptr;
  auto conn = std::move(i->second.back());
  i->second.pop_back();
  return conn;
}

void http_client_core::release(std::shared_ptr<http_connection> conn) {
  {
    std::lock_guard<std::mutex> guard{mtx};
    auto& list = idle[conn->key];
    if (!stopped && conn->buffer.size() == 0
        && list.size() < opts.max_idle_per_host) {
      list.push_back(std::move(conn));
      return;
    }
  }
  conn->close();
}

/// One request from start to completion: the session whose steps run on the
/// strand of the connection it uses.
class http_exchange : public std::enable_shared_from_this<http_exchange> {
public:
  http_exchange(std::shared_ptr<http_client_core> core, http_request req,
                parsed_url url, http_client::event_callback on_event,
                http_client::completion done, strand_type strand,
                std::shared_ptr<http_connection> reused)
    : core_(std::move(core)),
      req_(std::move(req)),
      url_(std::move(url)),
      on_event_(std::move(on_event)),
      done_(std::move(done)),
      strand_(std::move(strand)),
      conn_(std::move(reused)),
      resolver_(strand_),
      resolve_timer_(strand_),
      deadline_(std::chrono::steady_clock::now() + req_.total_timeout) {
  }

  const strand_type& strand() const noexcept {
    return strand_;
  }

  /// Starts the exchange. Runs on the strand.
  void start() {
    if (finished_)
      return;
    attempts_ = 1;
    if (url_.tls && !core_->tls_error.empty()) {
      resp_.permanent = true;
      return complete_error(core_->tls_error);
    }
    if (conn_) {
      reused_ = true;
      send();
    } else {
      connect_fresh();
    }
  }

  /// Completes with `why` and closes the connection. Runs on the strand.
  void abort(const std::string& why) {
    if (finished_)
      return;
    if (conn_)
      conn_->close();
    resp_.permanent = true;
    complete_error(why + " (request to " + url_.authority() + " cancelled)");
  }

private:
  using self = http_exchange;

  milliseconds remaining() const {
    return std::chrono::duration_cast<milliseconds>(
      deadline_ - std::chrono::steady_clock::now());
  }

  /// Arms the stream's timer for the next operation, capped by `cap`; false
  /// (and the request failed) when the total time is already spent.
  bool arm(const char* step, std::optional<milliseconds> cap = std::nullopt) {
    auto left = remaining();
    if (left.count() <= 0) {
      fail_timeout(step, "total timeout "
                           + std::to_string(req_.total_timeout.count()) + " ms");
      return false;
    }
    if (cap && *cap < left) {
      timeout_what_ = "connect timeout " + std::to_string(cap->count()) + " ms";
      conn_->lowest().expires_after(*cap);
    } else {
      timeout_what_ = "total timeout " + std::to_string(req_.total_timeout.count())
                      + " ms";
      conn_->lowest().expires_after(left);
    }
    return true;
  }

  void connect_fresh() {
    conn_ = std::make_shared<http_connection>(
      strand_, url_.tls ? &core_->tls_ctx : nullptr, key());
    reused_ = false;
    auto left = remaining();
    if (left.count() <= 0)
      return fail_timeout("resolve", "total timeout");
    auto cap = std::min(left, req_.connect_timeout);
    resolve_timer_.expires_after(cap);
    resolve_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec && self->resolving_) {
        self->resolve_timed_out_ = true;
        self->resolver_.cancel();
      }
    });
    resolving_ = true;
    resolver_.async_resolve(url_.host, url_.port,
                            beast::bind_front_handler(&self::on_resolve,
                                                      shared_from_this()));
  }

  void on_resolve(beast::error_code ec, tcp::resolver::results_type results) {
    resolving_ = false;
    resolve_timer_.cancel();
    if (finished_)
      return;
    if (resolve_timed_out_)
      return fail_timeout("resolve", "connect timeout "
                                       + std::to_string(
                                         req_.connect_timeout.count())
                                       + " ms");
    if (ec)
      return fail(ec, "resolve");
    if (!arm("connect", req_.connect_timeout))
      return;
    conn_->lowest().async_connect(results,
                                  beast::bind_front_handler(&self::on_connect,
                                                            shared_from_this()));
  }

  void on_connect(beast::error_code ec, const tcp::endpoint&) {
    if (finished_)
      return;
    if (ec)
      return fail(ec, "connect");
    // A request is written whole; small writes (TLS records) must not wait
    // for the peer's delayed ACK.
    beast::error_code ignored;
    conn_->lowest().socket().set_option(tcp::no_delay{true}, ignored);
    if (!conn_->tls)
      return send();
    auto& stream = *conn_->tls;
    beast::error_code addr_ec;
    asio::ip::make_address(url_.host, addr_ec);
    if (addr_ec // SNI carries host names only, never IP literals
        && !SSL_set_tlsext_host_name(stream.native_handle(), url_.host.c_str()))
      return fail(beast::error_code(static_cast<int>(::ERR_get_error()),
                                    asio::error::get_ssl_category()),
                  "TLS SNI");
    if (core_->opts.verify_peer)
      stream.set_verify_callback(ssl::host_name_verification(url_.host));
    if (!arm("TLS handshake"))
      return;
    stream.async_handshake(ssl::stream_base::client,
                           beast::bind_front_handler(&self::on_handshake,
                                                     shared_from_this()));
  }

  void on_handshake(beast::error_code ec) {
    if (finished_)
      return;
    if (ec)
      return fail(ec, "TLS handshake");
    send();
  }

  void send() {
    request_ = {};
    auto verb = http::string_to_verb(req_.method);
    if (verb == http::verb::unknown)
      request_.method_string(req_.method);
    else
      request_.method(verb);
    request_.target(url_.target);
    request_.version(11);
    bool default_port = url_.port == (url_.tls ? "443" : "80");
    auto host = url_.host.find(':') != std::string::npos ? "[" + url_.host + "]"
                                                         : url_.host;
    request_.set(http::field::host,
                 default_port ? host : host + ":" + url_.port);
    request_.set(http::field::user_agent, "troupe");
    for (const auto& [name, value] : req_.headers)
      request_.set(name, value);
    request_.body() = req_.body;
    request_.keep_alive(true);
    request_.prepare_payload();
    header_parser_.emplace();
    header_parser_->body_limit(core_->opts.body_limit);
    header_parser_->skip(verb == http::verb::head);
    if (!arm("write"))
      return;
    conn_->with_stream([this](auto& stream) {
      http::async_write(stream, request_,
                        beast::bind_front_handler(&self::on_write,
                                                  shared_from_this()));
    });
  }

  /// A reused idle connection that failed before any response byte: the
  /// server closed it while it sat in the pool.
  bool stale(beast::error_code ec) const {
    if (!reused_ || attempts_ > 1 || conn_->buffer.size() > 0
        || (header_parser_ && header_parser_->got_some()))
      return false;
    return ec == http::error::end_of_stream || ec == asio::error::eof
           || ec == asio::error::connection_reset
           || ec == asio::error::broken_pipe
           || ec == asio::error::connection_aborted
           || ec == http::error::partial_message;
  }

  void retry(beast::error_code ec, const char* step) {
    spdlog::debug("http client: pooled connection to {} was closed ({} : {}); "
                  "retrying on a new one",
                  url_.authority(), step, ec.message());
    conn_->close();
    conn_->buffer.consume(conn_->buffer.size());
    attempts_ = 2;
    connect_fresh();
  }

  void on_write(beast::error_code ec, size_t) {
    if (finished_)
      return;
    if (ec)
      return stale(ec) ? retry(ec, "write") : fail(ec, "write");
    if (!arm("read"))
      return;
    conn_->with_stream([this](auto& stream) {
      http::async_read_header(stream, conn_->buffer, *header_parser_,
                              beast::bind_front_handler(&self::on_read_header,
                                                        shared_from_this()));
    });
  }

  void on_read_header(beast::error_code ec, size_t) {
    if (finished_)
      return;
    if (ec)
      return stale(ec) ? retry(ec, "read") : fail(ec, "read");
    const auto& head = header_parser_->get();
    resp_.status = static_cast<int>(head.result_int());
    for (const auto& field : head)
      resp_.headers.emplace_back(std::string{field.name_string()},
                                 std::string{field.value()});
    if (req_.stream && resp_.status / 100 == 2) {
      stream_parser_.emplace(std::move(*header_parser_));
      return read_stream_some();
    }
    body_parser_.emplace(std::move(*header_parser_));
    if (body_parser_->is_done())
      return on_read({}, 0);
    if (!arm("read"))
      return;
    conn_->with_stream([this](auto& stream) {
      http::async_read(stream, conn_->buffer, *body_parser_,
                       beast::bind_front_handler(&self::on_read,
                                                 shared_from_this()));
    });
  }

  void on_read(beast::error_code ec, size_t) {
    if (finished_)
      return;
    if (ec)
      return fail(ec, "read");
    resp_.body = std::move(body_parser_->get().body());
    finish(body_parser_->keep_alive());
  }

  void read_stream_some() {
    auto& body = stream_parser_->get().body();
    body.data = chunk_.data();
    body.size = chunk_.size();
    if (!arm("read"))
      return;
    conn_->with_stream([this](auto& stream) {
      http::async_read_some(stream, conn_->buffer, *stream_parser_,
                            beast::bind_front_handler(&self::on_stream_read,
                                                      shared_from_this()));
    });
  }

  void on_stream_read(beast::error_code ec, size_t) {
    if (finished_)
      return;
    if (ec == http::error::need_buffer)
      ec = {};
    auto got = chunk_.size() - stream_parser_->get().body().size;
    if (got > 0)
      sse_.feed(std::string_view{chunk_.data(), got}, [this](sse_event ev) {
        invoke_user("event", on_event_, std::move(ev));
      });
    if (finished_) // an event callback may have stopped the client
      return;
    if (ec) {
      sse_.finish();
      return fail(ec, "read (event stream)");
    }
    if (stream_parser_->is_done()) {
      sse_.finish();
      return finish(stream_parser_->keep_alive());
    }
    read_stream_some();
  }

  void finish(bool keep_alive) {
    conn_->lowest().expires_never();
    auto conn = std::move(conn_);
    if (keep_alive)
      core_->release(std::move(conn));
    else
      conn->close();
    spdlog::debug("http client: {} {} -> {} ({} attempt(s))", req_.method,
                  url_.authority(), resp_.status, attempts_);
    complete();
  }

  void fail_timeout(const char* step, const std::string& which) {
    if (conn_)
      conn_->close();
    complete_error(std::string{step} + " " + url_.authority() + " timed out ("
                   + which + ")");
  }

  void fail(beast::error_code ec, const char* step) {
    if (ec == beast::error::timeout)
      return fail_timeout(step, timeout_what_);
    if (conn_)
      conn_->close();
    std::string why = ec.message();
    if (ec == http::error::end_of_stream || ec == asio::error::eof)
      why = "connection closed by the server";
    else if (ec == http::error::partial_message)
      why = "connection closed mid-response (partial message)";
    complete_error(std::string{step} + " " + url_.authority()
                   + " failed: " + why);
  }

  void complete_error(std::string why) {
    if (finished_)
      return;
    spdlog::debug("http client: {} {} failed: {}", req_.method,
                  url_.authority(), why);
    resp_.error = std::move(why);
    complete();
  }

  void complete() {
    if (finished_)
      return;
    finished_ = true;
    resolving_ = false;
    resolver_.cancel();
    resolve_timer_.cancel();
    resp_.attempts = attempts_;
    core_->forget(this);
    auto done = std::move(done_);
    on_event_ = nullptr;
    invoke_user("completion", done, std::move(resp_));
  }

  std::string key() const {
    return (url_.tls ? "https://" : "http://") + url_.authority();
  }

  std::shared_ptr<http_client_core> core_;
  http_request req_;
  parsed_url url_;
  http_client::event_callback on_event_;
  http_client::completion done_;
  strand_type strand_;
  std::shared_ptr<http_connection> conn_;
  tcp::resolver resolver_;
  asio::steady_timer resolve_timer_;
  std::chrono::steady_clock::time_point deadline_;
  http::request<http::string_body> request_;
  std::optional<http::response_parser<http::empty_body>> header_parser_;
  std::optional<http::response_parser<http::string_body>> body_parser_;
  std::optional<http::response_parser<http::buffer_body>> stream_parser_;
  std::array<char, 8192> chunk_;
  sse_parser sse_;
  http_response resp_;
  std::string timeout_what_;
  int attempts_ = 0;
  bool reused_ = false;
  bool resolving_ = false;
  bool resolve_timed_out_ = false;
  bool finished_ = false;
};

} // namespace detail

http_client::http_client(io_pool& pool, http_client_options opts)
  : http_client(pool.context(), std::move(opts)) {
}

http_client::http_client(asio::io_context& ctx, http_client_options opts)
  : core_(std::make_shared<detail::http_client_core>(ctx, std::move(opts))) {
}

http_client::~http_client() {
  stop();
}

void http_client::request(http_request req, completion done) {
  request(std::move(req), nullptr, std::move(done));
}

void http_client::request(http_request req, event_callback on_event,
                          completion done) {
  auto fail_now = [this, &done](std::string why) {
    asio::post(core_->ctx, [done = std::move(done), why = std::move(why)] {
      http_response resp;
      resp.error = why;
      resp.permanent = true;
      invoke_user("completion", done, std::move(resp));
    });
  };
  parsed_url url;
  if (auto err = parse_url(req.url, url); !err.empty())
    return fail_now(err);
  auto key = (url.tls ? "https://" : "http://") + url.authority();
  std::shared_ptr<detail::http_exchange> ex;
  {
    std::lock_guard<std::mutex> guard{core_->mtx};
    if (core_->stopped)
      return fail_now("client stopped (request to " + url.authority()
                      + " refused)");
    auto conn = core_->take_idle(key);
    auto strand = conn ? conn->strand : asio::make_strand(core_->ctx);
    ex = std::make_shared<detail::http_exchange>(
      core_, std::move(req), std::move(url), std::move(on_event),
      std::move(done), std::move(strand), std::move(conn));
    core_->in_flight.emplace(ex.get(), ex);
  }
  asio::post(ex->strand(), [ex] { ex->start(); });
}

void http_client::stop() {
  decltype(core_->idle) idle;
  decltype(core_->in_flight) in_flight;
  {
    std::lock_guard<std::mutex> guard{core_->mtx};
    core_->stopped = true;
    idle.swap(core_->idle);
    in_flight.swap(core_->in_flight);
  }
  for (auto& [key, conns] : idle)
    for (auto& conn : conns)
      asio::post(conn->strand, [conn] { conn->close(); });
  for (auto& [ptr, ex] : in_flight)
    asio::post(ex->strand(), [ex] { ex->abort("client stopped"); });
}

size_t http_client::idle_connections() const {
  std::lock_guard<std::mutex> guard{core_->mtx};
  size_t n = 0;
  for (const auto& [key, conns] : core_->idle)
    n += conns.size();
  return n;
}

} // namespace troupe

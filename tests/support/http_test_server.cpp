#include "support/http_test_server.hpp"

#include <algorithm>
#include <cctype>
#include <future>
#include <list>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace troupe::test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

std::string test_http_request::header(const std::string& name) const {
  auto lower = [](std::string s) {
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    return s;
  };
  for (const auto& [key, value] : headers)
    if (lower(key) == lower(name))
      return value;
  return {};
}

test_http_action test_http_action::reply(int status, std::string body) {
  test_http_action a;
  a.status = status;
  a.body = std::move(body);
  return a;
}

test_http_action test_http_action::sse(std::vector<std::string> chunks,
                                       bool cut) {
  test_http_action a;
  a.what = kind::stream;
  a.chunks = std::move(chunks);
  a.cut = cut;
  a.headers.emplace_back("Content-Type", "text/event-stream");
  return a;
}

test_http_action test_http_action::reset_connection() {
  test_http_action a;
  a.what = kind::reset;
  return a;
}

test_http_action test_http_action::raw(std::string bytes) {
  test_http_action a;
  a.what = kind::malformed;
  a.body = std::move(bytes);
  return a;
}

test_http_action test_http_action::never() {
  test_http_action a;
  a.what = kind::hang;
  return a;
}

namespace {

class server_session;

} // namespace

struct http_test_server::impl {
  explicit impl(test_http_handler h) : handler(std::move(h)) {
  }

  asio::io_context ctx;
  tcp::acceptor acceptor{ctx};
  std::thread thread;
  test_http_handler handler;
  uint16_t port = 0;
  std::atomic<size_t> connections{0};
  std::atomic<size_t> requests{0};
  // Touched on the server thread only; kept until stop() so that a hanging
  // connection stays open.
  std::list<std::shared_ptr<server_session>> sessions;
  bool stopped = false;
};

namespace {

class server_session : public std::enable_shared_from_this<server_session> {
public:
  server_session(tcp::socket sock, http_test_server::impl& srv, size_t id)
    : sock_(std::move(sock)), timer_(sock_.get_executor()), srv_(srv), id_(id) {
  }

  void read() {
    request_ = {};
    http::async_read(sock_, buffer_, request_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->on_read(ec);
                     });
  }

  void close() {
    beast::error_code ec;
    timer_.cancel();
    sock_.shutdown(tcp::socket::shutdown_both, ec);
    sock_.close(ec);
  }

private:
  void on_read(beast::error_code ec) {
    if (ec || srv_.stopped)
      return close();
    ++srv_.requests;
    test_http_request r;
    r.method = std::string{request_.method_string()};
    r.target = std::string{request_.target()};
    for (const auto& f : request_)
      r.headers.emplace_back(std::string{f.name_string()},
                             std::string{f.value()});
    r.body = request_.body();
    r.connection = id_;
    r.sequence = ++sequence_;
    action_ = srv_.handler(r);
    keep_alive_ = request_.keep_alive() && !action_.close;
    if (action_.delay.count() > 0) {
      timer_.expires_after(action_.delay);
      timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
        if (!ec)
          self->act();
      });
    } else {
      act();
    }
  }

  void act() {
    using kind = test_http_action::kind;
    switch (action_.what) {
      case kind::respond: {
        auto res = std::make_shared<http::response<http::string_body>>(
          static_cast<http::status>(action_.status), 11);
        for (const auto& [k, v] : action_.headers)
          res->set(k, v);
        res->body() = action_.body;
        res->keep_alive(keep_alive_);
        res->prepare_payload();
        http::async_write(sock_, *res,
                          [self = shared_from_this(), res](beast::error_code ec,
                                                           size_t) {
                            self->after_response(ec);
                          });
        return;
      }
      case kind::stream: {
        std::string head = "HTTP/1.1 " + std::to_string(action_.status)
                           + " OK\r\n";
        for (const auto& [k, v] : action_.headers)
          head += k + ": " + v + "\r\n";
        head += "Transfer-Encoding: chunked\r\n";
        if (!keep_alive_)
          head += "Connection: close\r\n";
        head += "\r\n";
        next_chunk_ = 0;
        return write_raw(std::move(head), [](server_session& s) {
          s.write_chunk();
        });
      }
      case kind::reset: {
        beast::error_code ec;
        sock_.set_option(asio::socket_base::linger(true, 0), ec);
        sock_.close(ec);
        return;
      }
      case kind::malformed:
        return write_raw(action_.body, [](server_session& s) { s.close(); });
      case kind::hang:
        return;
    }
  }

  void write_chunk() {
    if (next_chunk_ == action_.chunks.size()) {
      if (action_.cut)
        return close();
      return write_raw("0\r\n\r\n", [](server_session& s) {
        s.after_response({});
      });
    }
    auto delay = next_chunk_ > 0 ? action_.chunk_delay
                                 : std::chrono::milliseconds{0};
    const auto& data = action_.chunks[next_chunk_++];
    char size[32];
    std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
    auto chunk = std::string{size} + data + "\r\n";
    auto write = [self = shared_from_this(), chunk = std::move(chunk)] {
      self->write_raw(chunk, [](server_session& s) { s.write_chunk(); });
    };
    if (delay.count() == 0)
      return write();
    timer_.expires_after(delay);
    timer_.async_wait([write](beast::error_code ec) {
      if (!ec)
        write();
    });
  }

  template <class Next>
  void write_raw(std::string bytes, Next next) {
    auto buf = std::make_shared<std::string>(std::move(bytes));
    asio::async_write(sock_, asio::buffer(*buf),
                      [self = shared_from_this(), buf, next](
                        beast::error_code ec, size_t) {
                        if (ec)
                          return self->close();
                        next(*self);
                      });
  }

  void after_response(beast::error_code ec) {
    if (ec || !keep_alive_ || action_.close_silently || srv_.stopped)
      return close();
    read();
  }

  tcp::socket sock_;
  asio::steady_timer timer_;
  http_test_server::impl& srv_;
  size_t id_;
  size_t sequence_ = 0;
  beast::flat_buffer buffer_;
  http::request<http::string_body> request_;
  test_http_action action_;
  size_t next_chunk_ = 0;
  bool keep_alive_ = true;
};

void accept(const std::shared_ptr<http_test_server::impl>& srv) {
  srv->acceptor.async_accept([srv](beast::error_code ec, tcp::socket sock) {
    if (ec || srv->stopped)
      return;
    // Each SSE event is its own write: without this, Nagle's algorithm and
    // the client's delayed ACK hold every second one back ~40 ms.
    beast::error_code ignored;
    sock.set_option(tcp::no_delay{true}, ignored);
    auto id = ++srv->connections;
    auto session = std::make_shared<server_session>(std::move(sock), *srv, id);
    srv->sessions.push_back(session);
    session->read();
    accept(srv);
  });
}

} // namespace

http_test_server::http_test_server(test_http_handler handler)
  : impl_(std::make_shared<impl>(std::move(handler))) {
  tcp::endpoint ep{asio::ip::make_address("127.0.0.1"), 0};
  impl_->acceptor.open(ep.protocol());
  impl_->acceptor.set_option(asio::socket_base::reuse_address(true));
  impl_->acceptor.bind(ep);
  impl_->acceptor.listen();
  impl_->port = impl_->acceptor.local_endpoint().port();
  accept(impl_);
  impl_->thread = std::thread{[srv = impl_] { srv->ctx.run(); }};
}

http_test_server::~http_test_server() {
  stop();
}

uint16_t http_test_server::port() const noexcept {
  return impl_->port;
}

std::string http_test_server::url(const std::string& path) const {
  return "http://127.0.0.1:" + std::to_string(impl_->port) + path;
}

size_t http_test_server::connections() const noexcept {
  return impl_->connections.load();
}

size_t http_test_server::requests() const noexcept {
  return impl_->requests.load();
}

void http_test_server::stop() {
  if (!impl_->thread.joinable())
    return;
  std::promise<void> closed;
  asio::post(impl_->ctx, [srv = impl_, &closed] {
    srv->stopped = true;
    beast::error_code ec;
    srv->acceptor.close(ec);
    for (auto& s : srv->sessions)
      s->close();
    srv->sessions.clear();
    closed.set_value();
  });
  closed.get_future().wait_for(std::chrono::seconds{5});
  impl_->ctx.stop();
  impl_->thread.join();
}

} // namespace troupe::test

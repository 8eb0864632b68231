#include "support/tls_once_server.hpp"

#include <atomic>
#include <thread>
#include <utility>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "support/process.hpp"

namespace troupe::test {

localhost_certificate make_localhost_certificate(const std::string& dir) {
  localhost_certificate out;
  out.cert = dir + "/cert.pem";
  out.key = dir + "/key.pem";
  auto gen = run_command(
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    " -days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost"
    " -keyout " + shell_quote(out.key) + " -out " + shell_quote(out.cert));
  if (gen.exit_code != 0)
    out.error = "openssl exited " + std::to_string(gen.exit_code) + ": "
                + gen.err;
  return out;
}

struct tls_once_server::impl {
  impl(const std::string& cert, const std::string& key, std::string answer)
    : answer(std::move(answer)) {
    namespace ssl = boost::asio::ssl;
    tls.use_certificate_chain_file(cert);
    tls.use_private_key_file(key, ssl::context::pem);
    boost::asio::ip::tcp::endpoint ep{
      boost::asio::ip::make_address("127.0.0.1"), 0};
    acceptor.open(ep.protocol());
    acceptor.bind(ep);
    acceptor.listen();
    port = acceptor.local_endpoint().port();
  }

  void serve() {
    namespace ssl = boost::asio::ssl;
    namespace http = boost::beast::http;
    tls_exchange ex;
    auto failed = [this, &ex](const char* step,
                              const boost::system::error_code& ec) {
      ex.outcome = std::string{step} + ": " + ec.message();
      done.set_value(std::move(ex));
    };
    boost::system::error_code ec;
    boost::asio::ip::tcp::socket sock{ctx};
    acceptor.accept(sock, ec);
    accepted = true;
    if (ec)
      return failed("accept", ec);
    ssl::stream<boost::asio::ip::tcp::socket> stream{std::move(sock), tls};
    stream.handshake(ssl::stream_base::server, ec);
    if (ec)
      return failed("handshake", ec);
    boost::beast::flat_buffer buf;
    http::request<http::string_body> req;
    http::read(stream, buf, req, ec);
    if (ec)
      return failed("read", ec);
    ex.host = std::string{req[http::field::host]};
    ex.body = req.body();
    http::response<http::string_body> res{http::status::ok, 11};
    res.body() = answer;
    res.keep_alive(false);
    res.prepare_payload();
    http::write(stream, res, ec);
    if (ec)
      return failed("write", ec);
    ex.outcome = "served";
    done.set_value(std::move(ex));
  }

  std::string answer;
  boost::asio::io_context ctx;
  boost::asio::ssl::context tls{boost::asio::ssl::context::tls_server};
  boost::asio::ip::tcp::acceptor acceptor{ctx};
  uint16_t port = 0;
  std::atomic<bool> accepted{false};
  std::promise<tls_exchange> done;
  std::thread thread;
};

tls_once_server::tls_once_server(const std::string& cert,
                                 const std::string& key, std::string answer)
  : impl_(std::make_unique<impl>(cert, key, std::move(answer))) {
  impl_->thread = std::thread{[p = impl_.get()] { p->serve(); }};
}

tls_once_server::~tls_once_server() {
  if (!impl_->accepted) {
    // No client came (a test that failed early): a connection of our own
    // ends the blocking accept, and the handshake fails at once.
    boost::asio::io_context ctx;
    boost::asio::ip::tcp::socket sock{ctx};
    boost::system::error_code ec;
    sock.connect({boost::asio::ip::make_address("127.0.0.1"), impl_->port},
                 ec);
    sock.close(ec);
  }
  impl_->thread.join();
}

uint16_t tls_once_server::port() const {
  return impl_->port;
}

std::future<tls_exchange> tls_once_server::exchange() {
  return impl_->done.get_future();
}

} // namespace troupe::test

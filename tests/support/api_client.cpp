#include "support/api_client.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <functional>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace troupe::test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return s;
}

/// Runs `ioc` until its work is done or `deadline`; on the deadline cancels
/// the socket's operations, lets them finish, and returns false.
bool run_until(asio::io_context& ioc, tcp::socket& sock,
               clock_type::time_point deadline) {
  ioc.restart();
  auto now = clock_type::now();
  if (now < deadline)
    ioc.run_for(deadline - now);
  if (ioc.stopped())
    return true;
  beast::error_code ignored;
  sock.cancel(ignored);
  ioc.restart();
  ioc.run();
  return false;
}

bool connect(asio::io_context& ioc, tcp::socket& sock, uint16_t port,
             clock_type::time_point deadline, std::string& error) {
  beast::error_code ec;
  tcp::endpoint ep{asio::ip::make_address("127.0.0.1"), port};
  sock.async_connect(ep, [&](beast::error_code e) { ec = e; });
  if (!run_until(ioc, sock, deadline)) {
    error = "connect: timeout";
    return false;
  }
  if (ec) {
    error = "connect: " + ec.message();
    return false;
  }
  return true;
}

http::request<http::string_body> make_request(uint16_t port,
                                              const api_request& r) {
  http::request<http::string_body> req;
  req.version(11);
  req.method_string(r.method);
  req.target(r.target);
  req.set(http::field::host, "127.0.0.1:" + std::to_string(port));
  if (!r.token.empty())
    req.set(http::field::authorization, "Bearer " + r.token);
  bool has_type = false;
  for (const auto& [k, v] : r.headers) {
    req.set(k, v);
    has_type = has_type || lower(k) == "content-type";
  }
  if (!r.body.empty() && !has_type)
    req.set(http::field::content_type, r.content_type.empty()
                                         ? std::string{"application/json"}
                                         : r.content_type);
  req.body() = r.body;
  if (!r.body.empty() || r.method == "POST")
    req.prepare_payload();
  return req;
}

template <class Fields>
std::vector<std::pair<std::string, std::string>> copy_headers(const Fields& f) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& field : f)
    out.emplace_back(std::string{field.name_string()},
                     std::string{field.value()});
  return out;
}

std::string find_header(
  const std::vector<std::pair<std::string, std::string>>& headers,
  const std::string& name) {
  for (const auto& [k, v] : headers)
    if (lower(k) == lower(name))
      return v;
  return {};
}

sse_frame parse_frame(const std::string& block) {
  sse_frame f;
  size_t pos = 0;
  while (pos <= block.size()) {
    auto nl = block.find('\n', pos);
    if (nl == std::string::npos)
      nl = block.size();
    auto line = block.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.empty())
      continue;
    auto colon = line.find(':');
    auto field = line.substr(0, colon);
    auto value = colon == std::string::npos ? std::string{}
                                            : line.substr(colon + 1);
    if (!value.empty() && value[0] == ' ')
      value.erase(0, 1);
    if (field.empty())
      f.comment = value;
    else if (field == "id")
      f.id = value;
    else if (field == "event")
      f.event = value;
    else if (field == "data")
      f.data += (f.data.empty() ? "" : "\n") + value;
  }
  return f;
}

} // namespace

std::string api_response::header(const std::string& name) const {
  return find_header(headers, name);
}

nlohmann::json api_response::json() const {
  return nlohmann::json::parse(body, nullptr, false);
}

api_response api_call(uint16_t port, const api_request& r,
                      std::chrono::milliseconds limit) {
  api_response out;
  auto deadline = clock_type::now() + limit;
  asio::io_context ioc;
  tcp::socket sock{ioc};
  if (!connect(ioc, sock, port, deadline, out.error))
    return out;
  auto req = make_request(port, r);
  // Write and read at once: a server that answers early (413) and stops
  // reading must not leave this client stuck in its write.
  beast::flat_buffer buf;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 * 1024 * 1024);
  beast::error_code wec, rec;
  bool read_done = false;
  http::async_write(sock, req, [&](beast::error_code e, size_t) { wec = e; });
  http::async_read(sock, buf, parser, [&](beast::error_code e, size_t) {
    rec = e;
    read_done = true;
  });
  if (!run_until(ioc, sock, deadline) && !read_done) {
    out.error = "timeout";
    return out;
  }
  if (rec) {
    out.error = "read: " + rec.message()
                + (wec ? " (write: " + wec.message() + ")" : "");
    return out;
  }
  auto& res = parser.get();
  out.status = static_cast<int>(res.result_int());
  out.headers = copy_headers(res);
  out.body = res.body();
  return out;
}

api_request events_request(const std::string& run_id,
                           const std::string& token) {
  api_request req;
  req.target = "/v1/runs/" + run_id + "/events";
  req.token = token;
  return req;
}

api_response api_get(uint16_t port, const std::string& target,
                     const std::string& token) {
  api_request r;
  r.target = target;
  r.token = token;
  return api_call(port, r);
}

api_response api_post(uint16_t port, const std::string& target,
                      const nlohmann::json& body, const std::string& token) {
  api_request r;
  r.method = "POST";
  r.target = target;
  r.token = token;
  r.body = body.dump();
  return api_call(port, r);
}

std::string api_raw(uint16_t port, const std::string& bytes,
                    std::chrono::milliseconds limit) {
  auto deadline = clock_type::now() + limit;
  asio::io_context ioc;
  tcp::socket sock{ioc};
  std::string error;
  if (!connect(ioc, sock, port, deadline, error))
    return error;
  std::string received;
  std::array<char, 4096> chunk{};
  std::function<void()> read_more = [&] {
    sock.async_read_some(asio::buffer(chunk), [&](beast::error_code e, size_t n) {
      received.append(chunk.data(), n);
      if (!e)
        read_more();
    });
  };
  asio::async_write(sock, asio::buffer(bytes), [](beast::error_code, size_t) {});
  read_more();
  run_until(ioc, sock, deadline);
  return received;
}

struct sse_stream::impl {
  asio::io_context ioc;
  tcp::socket sock{ioc};
  beast::flat_buffer buf;
  http::response_parser<http::string_body> parser;
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string error_body;
  size_t consumed = 0;
  bool ended = false;
};

sse_stream::sse_stream(uint16_t port, const api_request& r,
                       std::chrono::milliseconds limit)
  : impl_(std::make_unique<impl>()) {
  auto deadline = clock_type::now() + limit;
  std::string error;
  if (!connect(impl_->ioc, impl_->sock, port, deadline, error)) {
    impl_->ended = true;
    impl_->error_body = error;
    return;
  }
  auto req = make_request(port, r);
  beast::error_code ec;
  http::async_write(impl_->sock, req,
                    [&](beast::error_code e, size_t) { ec = e; });
  if (!run_until(impl_->ioc, impl_->sock, deadline) || ec) {
    impl_->ended = true;
    impl_->error_body = "write failed";
    return;
  }
  impl_->parser.body_limit(256 * 1024 * 1024);
  http::async_read_header(impl_->sock, impl_->buf, impl_->parser,
                          [&](beast::error_code e, size_t) { ec = e; });
  if (!run_until(impl_->ioc, impl_->sock, deadline) || ec) {
    impl_->ended = true;
    impl_->error_body = "reading the header failed";
    return;
  }
  auto& res = impl_->parser.get();
  impl_->status = static_cast<int>(res.result_int());
  impl_->headers = copy_headers(res);
  if (impl_->status != 200) {
    http::async_read(impl_->sock, impl_->buf, impl_->parser,
                     [&](beast::error_code e, size_t) { ec = e; });
    run_until(impl_->ioc, impl_->sock, deadline);
    impl_->error_body = impl_->parser.get().body();
    impl_->ended = true;
  }
}

sse_stream::~sse_stream() {
  close();
}

int sse_stream::status() const {
  return impl_->status;
}

std::string sse_stream::header(const std::string& name) const {
  return find_header(impl_->headers, name);
}

const std::string& sse_stream::error_body() const {
  return impl_->error_body;
}

bool sse_stream::ended() const {
  auto& body = impl_->parser.get().body();
  return impl_->ended && body.find("\n\n", impl_->consumed) == std::string::npos;
}

std::optional<sse_frame> sse_stream::next(std::chrono::milliseconds limit) {
  auto deadline = clock_type::now() + limit;
  for (;;) {
    auto& body = impl_->parser.get().body();
    auto end = body.find("\n\n", impl_->consumed);
    if (end != std::string::npos) {
      auto block = body.substr(impl_->consumed, end - impl_->consumed);
      impl_->consumed = end + 2;
      return parse_frame(block);
    }
    if (impl_->ended || impl_->status != 200)
      return std::nullopt;
    if (impl_->parser.is_done()) {
      impl_->ended = true;
      continue;
    }
    beast::error_code ec;
    http::async_read_some(impl_->sock, impl_->buf, impl_->parser,
                          [&](beast::error_code e, size_t) { ec = e; });
    if (!run_until(impl_->ioc, impl_->sock, deadline))
      return std::nullopt;
    if (ec && ec != http::error::need_buffer)
      impl_->ended = true;
  }
}

std::vector<sse_frame> sse_stream::rest(std::chrono::milliseconds limit) {
  auto deadline = clock_type::now() + limit;
  std::vector<sse_frame> out;
  while (clock_type::now() < deadline) {
    auto f = next(std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - clock_type::now()));
    if (!f)
      break;
    if (!f->is_comment())
      out.push_back(std::move(*f));
  }
  return out;
}

void sse_stream::close() {
  beast::error_code ignored;
  impl_->sock.shutdown(tcp::socket::shutdown_both, ignored);
  impl_->sock.close(ignored);
}

} // namespace troupe::test

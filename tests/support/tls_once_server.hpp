#pragma once

// TLS on loopback for tests of HTTPS clients: a self-signed certificate for
// "localhost" made by openssl, and a server that takes one connection on its
// own thread (handshake, one request, a 200 answer, close) and says how the
// exchange went.

#include <cstdint>
#include <future>
#include <memory>
#include <string>

namespace troupe::test {

/// cert.pem and key.pem for "localhost"; `error` says why openssl could not
/// make them (the files are then missing).
struct localhost_certificate {
  std::string cert;
  std::string key;
  std::string error;
};

/// Makes a one-day EC certificate for DNS:localhost in `dir`.
localhost_certificate make_localhost_certificate(const std::string& dir);

/// What the server saw of its one exchange.
struct tls_exchange {
  /// "served", or the step that failed and why ("handshake: ...").
  std::string outcome;
  /// The request's Host header and body (empty unless it was read).
  std::string host;
  std::string body;
};

/// Listens on 127.0.0.1 (an ephemeral port) with `cert` and `key`, serves one
/// connection, and answers its request 200 with `answer`.
class tls_once_server {
public:
  tls_once_server(const std::string& cert, const std::string& key,
                  std::string answer = "{}");

  /// Waits for the one connection's exchange to end.
  ~tls_once_server();

  tls_once_server(const tls_once_server&) = delete;
  tls_once_server& operator=(const tls_once_server&) = delete;

  uint16_t port() const;

  /// Ready once the exchange has ended, well or not (call once).
  std::future<tls_exchange> exchange();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace troupe::test

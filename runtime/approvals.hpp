#pragma once

// The approval gate across processes: a run publishes its gate on a TCP port
// with CAF's middleman, and the CLI (`troupe approvals ...`) or a test reaches
// it with an approval_client.
//
//   troupe run --approvals 127.0.0.1:4343    publish_approval_gate(sys, gate..)
//   troupe approvals list | approve | deny    approval_client{sys, host, port}
//
// Both sides need the middleman loaded and every troupe message registered
// (register_messages) on their actor system. The client blocks its caller
// (scoped_actor requests with a finite timeout): it is for the public API edge,
// never for use inside an actor; its failures are exceptions.

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <caf/fwd.hpp>

#include "messages/approval.hpp"

namespace troupe {

/// Where approvals are served when nothing else says: TROUPE_APPROVALS, else
/// this.
constexpr const char* default_approvals_address = "127.0.0.1:4343";

/// Splits "HOST:PORT" (or "[IPv6]:PORT"). Throws std::invalid_argument naming
/// the text when the host is empty or the port is not a number from 0 to 65535.
std::pair<std::string, uint16_t> parse_host_port(const std::string& text);

/// Publishes `gate` on `host`:`port` (0 = any free port) and returns the port
/// it is bound to. Throws std::runtime_error naming host:port and CAF's reason
/// when the system has no middleman or the port cannot be bound.
uint16_t publish_approval_gate(caf::actor_system& sys,
                               const approval_gate_actor& gate,
                               const std::string& host, uint16_t port);

/// A blocking client of a published approval gate (for the CLI and tests).
class approval_client {
public:
  /// Connects to the gate at host:port; every call, connecting included,
  /// waits at most `timeout`. Throws std::runtime_error ("cannot reach the
  /// approval gate at host:port: ...") when there is none.
  approval_client(caf::actor_system& sys, std::string host, uint16_t port,
                  std::chrono::milliseconds timeout = std::chrono::seconds{10});

  /// The pending requests, oldest first. Throws std::runtime_error when the
  /// gate does not answer.
  std::vector<approval_request> list();

  /// Approves or denies a pending request; returns the request decided.
  /// Throws std::runtime_error with the gate's reason when it refuses (no
  /// such pending request, verdict expired) or does not answer.
  approval_request decide(const std::string& id, approval_verdict verdict,
                          const std::string& who, const std::string& note);

  /// The gate's proxy handle.
  const approval_gate_actor& gate() const noexcept {
    return gate_;
  }

  /// "host:port", as given.
  const std::string& address() const noexcept {
    return address_;
  }

private:
  caf::actor_system& sys_;
  std::string address_;
  std::chrono::milliseconds timeout_;
  approval_gate_actor gate_;
};

} // namespace troupe

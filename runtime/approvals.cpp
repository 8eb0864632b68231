#include "runtime/approvals.hpp"

#include <cctype>
#include <set>
#include <stdexcept>

#include <caf/actor_cast.hpp>
#include <caf/actor_system.hpp>
#include <caf/atom.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/middleman_actor.hpp>
#include <caf/node_id.hpp>
#include <caf/scoped_actor.hpp>

#include "messages/errors.hpp"

namespace troupe {

namespace {

[[noreturn]] void bad_address(const std::string& text) {
  throw std::invalid_argument("approvals address '" + text
                              + "' must be HOST:PORT with a port from 0 to "
                                "65535");
}

std::string join(const std::string& host, uint16_t port) {
  auto bracket = host.find(':') != std::string::npos;
  return (bracket ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

} // namespace

std::pair<std::string, uint16_t> parse_host_port(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos)
    bad_address(text);
  auto host = text.substr(0, colon);
  auto port_text = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  else if (host.find_first_of("[]:") != std::string::npos)
    bad_address(text); // an IPv6 address needs brackets
  if (host.empty() || port_text.empty() || port_text.size() > 5)
    bad_address(text);
  unsigned long port = 0;
  for (auto c : port_text) {
    if (!std::isdigit(static_cast<unsigned char>(c)))
      bad_address(text);
    port = port * 10 + static_cast<unsigned long>(c - '0');
  }
  if (port > 65535)
    bad_address(text);
  return {host, static_cast<uint16_t>(port)};
}

uint16_t publish_approval_gate(caf::actor_system& sys,
                               const approval_gate_actor& gate,
                               const std::string& host, uint16_t port) {
  auto where = join(host, port);
  if (!sys.has_middleman())
    throw std::runtime_error("cannot serve approvals on " + where
                             + ": the actor system has no middleman loaded");
  if (!gate)
    throw std::runtime_error("cannot serve approvals on " + where
                             + ": no approval gate");
  auto bound = sys.middleman().publish(gate, port, host.c_str(), true);
  if (!bound)
    throw std::runtime_error("cannot serve approvals on " + where + ": "
                             + error_text(bound.error()));
  return *bound;
}

approval_client::approval_client(caf::actor_system& sys, std::string host,
                                 uint16_t port,
                                 std::chrono::milliseconds timeout)
  : sys_(sys), address_(join(host, port)), timeout_(timeout) {
  auto fail = [&](const std::string& why) {
    throw std::runtime_error("cannot reach the approval gate at " + address_
                             + ": " + why);
  };
  if (!sys_.has_middleman())
    fail("the actor system has no middleman loaded");
  // caf::io::remote_actor would wait for the connection without a limit; the
  // middleman actor's request takes ours.
  auto expected_ifs = sys_.message_types<approval_gate_actor>();
  // Handlers only note the outcome: throwing through a blocking receive is
  // best left to the caller's side of it.
  std::string why;
  caf::scoped_actor self{sys_};
  self
    ->request(sys_.middleman().actor_handle(), timeout_,
              caf::connect_atom::value, std::move(host), port)
    .receive(
      [&](caf::node_id&, caf::strong_actor_ptr& ptr,
          std::set<std::string>& ifs) {
        if (!ptr)
          why = "no actor is published there";
        else if (!sys_.assignable(ifs, expected_ifs))
          why = "the actor published there is not an approval gate";
        else
          gate_ = caf::actor_cast<approval_gate_actor>(std::move(ptr));
      },
      [&](caf::error& err) { why = error_text(err); });
  if (!gate_)
    fail(why.empty() ? "no answer" : why);
}

std::vector<approval_request> approval_client::list() {
  std::vector<approval_request> out;
  caf::error failed;
  caf::scoped_actor self{sys_};
  self->request(gate_, timeout_, apr_list_atom::value)
    .receive([&](std::vector<approval_request>& xs) { out = std::move(xs); },
             [&](caf::error& err) { failed = std::move(err); });
  if (failed)
    throw std::runtime_error("listing the approvals at " + address_
                             + " failed: " + error_text(failed));
  return out;
}

approval_request approval_client::decide(const std::string& id,
                                         approval_verdict verdict,
                                         const std::string& who,
                                         const std::string& note) {
  approval_decision d{id, verdict, who, note, 0};
  approval_request out;
  caf::error failed;
  caf::scoped_actor self{sys_};
  self->request(gate_, timeout_, apr_decide_atom::value, std::move(d))
    .receive([&](approval_request& r) { out = std::move(r); },
             [&](caf::error& err) { failed = std::move(err); });
  if (failed)
    throw std::runtime_error(error_text(failed));
  return out;
}

} // namespace troupe

#include "runtime/cluster.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>

#include <caf/actor_system.hpp>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/io/middleman_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_response_promise.hpp>
#include <spdlog/spdlog.h>

#include "messages/errors.hpp"
#include "runtime/approvals.hpp"
#include "runtime/clock.hpp"

namespace troupe {

void validate(const cluster_tls& tls) {
  auto fail = [](const std::string& what) {
    throw std::invalid_argument("cluster TLS: " + what);
  };
  auto check = [&](const std::string& path, const char* what) {
    if (path.empty())
      fail(std::string{what} + " is not set (TLS needs a certificate, its "
                               "key and the cluster's CA file)");
    std::error_code ec;
    std::ifstream in{path};
    if (!in || !std::filesystem::is_regular_file(path, ec))
      fail(std::string{"cannot read "} + what + " '" + path
           + "' (no such file, or not a regular file)");
  };
  check(tls.certificate, "the certificate");
  check(tls.key, "the key");
  check(tls.ca_file, "the CA file");
  // CAF reads these files only when a connection starts, and a bad one then
  // ends the process: load them once here, with the same calls.
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx{
    SSL_CTX_new(TLS_method()), &SSL_CTX_free};
  if (!ctx)
    fail("cannot make an OpenSSL context");
  auto openssl_error = [] {
    auto code = ERR_get_error();
    ERR_clear_error();
    if (code == 0)
      return std::string{"unknown error"};
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    return std::string{buf};
  };
  ERR_clear_error();
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), tls.certificate.c_str())
      != 1)
    fail("the certificate '" + tls.certificate
         + "' is not a PEM certificate: " + openssl_error());
  auto pass = tls.passphrase;
  SSL_CTX_set_default_passwd_cb_userdata(ctx.get(), &pass);
  SSL_CTX_set_default_passwd_cb(
    ctx.get(), [](char* buf, int size, int, void* user) -> int {
      const auto& p = *static_cast<std::string*>(user);
      auto n = std::min(static_cast<int>(p.size()), size);
      std::copy_n(p.data(), n, buf);
      return n;
    });
  ERR_clear_error();
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), tls.key.c_str(), SSL_FILETYPE_PEM)
      != 1)
    fail("cannot load the key '" + tls.key
         + "' (not a PEM key, or a wrong passphrase): " + openssl_error());
  if (SSL_CTX_check_private_key(ctx.get()) != 1)
    fail("the key '" + tls.key + "' does not belong to the certificate '"
         + tls.certificate + "'");
  ERR_clear_error();
  if (SSL_CTX_load_verify_locations(ctx.get(), tls.ca_file.c_str(), nullptr)
      != 1)
    fail("the CA file '" + tls.ca_file + "' holds no PEM certificate: "
         + openssl_error());
  // Peers check this node's certificate against the same CA: one the CA did
  // not sign would fail every handshake with nothing but a disconnect.
  std::unique_ptr<X509_STORE_CTX, decltype(&X509_STORE_CTX_free)> chain{
    X509_STORE_CTX_new(), &X509_STORE_CTX_free};
  if (!chain
      || X509_STORE_CTX_init(chain.get(), SSL_CTX_get_cert_store(ctx.get()),
                             SSL_CTX_get0_certificate(ctx.get()), nullptr)
           != 1)
    fail("cannot check the certificate '" + tls.certificate + "'");
  if (X509_verify_cert(chain.get()) != 1)
    fail("the certificate '" + tls.certificate
         + "' is not signed by the CA in '" + tls.ca_file + "': "
         + X509_verify_cert_error_string(
           X509_STORE_CTX_get_error(chain.get())));
  ERR_clear_error();
}

namespace {

using beat_tick_atom = caf::atom_constant<caf::atom("cl_tick")>;

struct peer {
  node_info info;
  std::chrono::steady_clock::time_point last_heard;
};

struct node_state {
  static inline const char* name = "troupe.node";

  node_actor_config cfg;
  /// Members by name (not this node).
  std::map<std::string, peer> peers;
  std::vector<caf::actor> sinks;
  /// Agents spawned for a peer, stopped when it leaves or fails.
  std::map<std::string, std::vector<caf::actor>> guests;
  bool leaving = false;
};

using node_self = caf::stateful_actor<node_state>;

std::vector<node_info> directory(const node_state& st) {
  std::vector<node_info> out;
  out.reserve(st.peers.size() + 1);
  out.push_back(st.cfg.self);
  for (const auto& [name, p] : st.peers)
    out.push_back(p.info);
  return out;
}

void emit(node_self* self, cluster_event_kind kind, const std::string& node,
          std::string detail = {}) {
  cluster_event ev{kind, node, std::move(detail), now_ns()};
  if (kind == cluster_event_kind::failed)
    spdlog::warn("node {}: peer {} failed: {}", self->state.cfg.self.name, node,
                 ev.detail);
  else
    spdlog::info("node {}: peer {} {}{}", self->state.cfg.self.name, node,
                 to_string(kind), ev.detail.empty() ? "" : ": " + ev.detail);
  for (const auto& sink : self->state.sinks)
    self->send(sink, ev);
}

/// Forgets a member and stops the agents spawned for it.
void drop_peer(node_self* self, const std::string& name,
               cluster_event_kind kind, std::string detail) {
  auto& st = self->state;
  auto i = st.peers.find(name);
  if (i == st.peers.end())
    return;
  if (i->second.info.node)
    self->demonitor(i->second.info.node);
  st.peers.erase(i);
  if (auto g = st.guests.find(name); g != st.guests.end()) {
    for (const auto& guest : g->second)
      self->send_exit(guest, caf::exit_reason::remote_link_unreachable);
    st.guests.erase(g);
  }
  emit(self, kind, name, std::move(detail));
}

/// Adds or refreshes a member from its info; returns whether it is new.
bool add_peer(node_self* self, node_info info) {
  auto& st = self->state;
  auto now = std::chrono::steady_clock::now();
  auto i = st.peers.find(info.name);
  if (i != st.peers.end()) {
    if (info.version > i->second.info.version) {
      i->second.info = std::move(info);
      i->second.last_heard = now;
      emit(self, cluster_event_kind::updated, i->first);
    }
    return false;
  }
  auto name = info.name;
  if (info.node)
    self->monitor(info.node);
  st.peers.emplace(name, peer{std::move(info), now});
  emit(self, cluster_event_kind::joined, name);
  return true;
}

/// Whether a greeting under this name may be accepted.
std::string name_conflict(const node_state& st, const node_info& info) {
  if (info.name.empty())
    return "a node without a name cannot join";
  if (info.name == st.cfg.self.name)
    return "node name '" + info.name + "' is taken by the node it greeted";
  auto i = st.peers.find(info.name);
  if (i != st.peers.end() && i->second.info.node != info.node)
    return "node name '" + info.name + "' is already taken in the cluster";
  return {};
}

/// Dials `address`, greets the node there and calls `done` with an empty
/// string and the node's directory, or with what went wrong.
template <class Done>
void greet(node_self* self, const std::string& host, uint16_t port,
           Done on_done) {
  // Shared: the handlers below are const, the callback may be mutable.
  auto done_ptr = std::make_shared<Done>(std::move(on_done));
  auto done = [done_ptr](std::string why, std::vector<node_info> infos) {
    (*done_ptr)(why, std::move(infos));
  };
  auto timeout = self->state.cfg.connect_timeout;
  auto where = host + ":" + std::to_string(port);
  self
    ->request(self->state.cfg.connector, timeout, caf::connect_atom::value,
              host, port)
    .then(
      [self, done, timeout, where](caf::node_id&, caf::strong_actor_ptr& ptr,
                                   std::set<std::string>&) {
        if (!ptr) {
          done("nothing is published at " + where, std::vector<node_info>{});
          return;
        }
        auto peer = caf::actor_cast<caf::actor>(ptr);
        self
          ->request(peer, timeout, cl_hello_atom::value, self->state.cfg.self)
          .then(
            [done](std::vector<node_info>& infos) {
              done(std::string{}, std::move(infos));
            },
            [done, where](caf::error& err) {
              done("the node at " + where + " refused the greeting: "
                     + error_text(err),
                   std::vector<node_info>{});
            });
      },
      [done, where](caf::error& err) {
        done("cannot connect to " + where + ": " + error_text(err),
             std::vector<node_info>{});
      });
}


/// One join in progress: the members still being greeted.
struct join_state {
  caf::typed_response_promise<std::string> promise;
  std::string seed;
  std::set<std::string> attempted;
  size_t pending = 0;
  bool done = false;

  /// Answers the join once nothing is pending any more.
  void settle() {
    if (!done && pending == 0) {
      done = true;
      promise.deliver(seed);
    }
  }
};

/// Greets every member of `infos` this node does not know yet (and, through
/// their answers, the members they know).
void greet_members(node_self* self, const std::shared_ptr<join_state>& join,
                   std::vector<node_info> infos) {
  auto& st = self->state;
  for (auto& info : infos) {
    if (info.name == st.cfg.self.name || st.peers.count(info.name) != 0
        || !join->attempted.insert(info.name).second)
      continue;
    std::pair<std::string, uint16_t> where;
    try {
      if (!info.address.empty())
        where = parse_host_port(info.address);
    } catch (const std::invalid_argument&) {
      spdlog::warn("node {}: member {} names a bad address '{}'",
                   st.cfg.self.name, info.name, info.address);
    }
    if (where.second == 0) {
      // A client: reachable only through its own connection.
      add_peer(self, std::move(info));
      continue;
    }
    if (st.leaving)
      continue;
    ++join->pending;
    auto name = info.name;
    greet(self, where.first, where.second,
          [self, join, name](const std::string& why,
                             std::vector<node_info> theirs) {
            --join->pending;
            if (!why.empty()) {
              spdlog::warn("node {}: cannot greet member {}: {}",
                           self->state.cfg.self.name, name, why);
            } else if (!theirs.empty() && theirs.front().name == name) {
              add_peer(self, theirs.front());
              greet_members(self, join, std::move(theirs));
            }
            join->settle();
          });
  }
}

caf::behavior node_actor(node_self* self, node_actor_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  if (st.cfg.self.started_ns == 0)
    st.cfg.self.started_ns = now_ns();
  st.cfg.self.node = caf::actor_cast<caf::actor>(self);
  self->set_down_handler([self](caf::down_msg& msg) {
    auto& st = self->state;
    for (const auto& [name, p] : st.peers)
      if (p.info.node && p.info.node.address() == msg.source) {
        auto who = name;
        drop_peer(self, who, cluster_event_kind::failed,
                  "connection lost: " + error_text(msg.reason));
        return;
      }
    // A guest agent that stopped.
    for (auto& [origin, guests] : st.guests)
      guests.erase(std::remove_if(guests.begin(), guests.end(),
                                  [&](const caf::actor& a) {
                                    return a.address() == msg.source;
                                  }),
                   guests.end());
    // A sink that stopped.
    auto& sinks = st.sinks;
    sinks.erase(std::remove_if(sinks.begin(), sinks.end(),
                               [&](const caf::actor& a) {
                                 return a.address() == msg.source;
                               }),
                sinks.end());
  });
  self->send(self, beat_tick_atom::value);
  return {
    // -- from peers ----------------------------------------------------------
    [self](cl_hello_atom, node_info& info) -> caf::result<std::vector<node_info>> {
      auto& st = self->state;
      if (st.leaving)
        return make_error(errc::unavailable, "node '" + st.cfg.self.name
                                             + "' is leaving the cluster");
      if (!st.cfg.ready)
        return make_error(errc::unavailable, "node '" + st.cfg.self.name
                                             + "' is starting; try again");
      if (auto why = name_conflict(st, info); !why.empty()) {
        spdlog::warn("node {}: refused a greeting: {}", st.cfg.self.name, why);
        return make_error(errc::invalid_input, why);
      }
      add_peer(self, std::move(info));
      return directory(st);
    },
    [self](cl_beat_atom, const std::string& name, uint64_t) {
      auto& st = self->state;
      if (auto i = st.peers.find(name); i != st.peers.end()) {
        i->second.last_heard = std::chrono::steady_clock::now();
        return;
      }
      // A member this node gave up on (silent for too long, e.g. stopped or
      // cut off) is alive again: greet it, so the mesh heals.
      auto sender = caf::actor_cast<caf::actor>(self->current_sender());
      if (!sender || st.leaving)
        return;
      self
        ->request(sender, st.cfg.connect_timeout, cl_hello_atom::value,
                  st.cfg.self)
        .then(
          [self, name](std::vector<node_info>& infos) {
            if (!infos.empty() && infos.front().name == name)
              add_peer(self, std::move(infos.front()));
          },
          [self, name](caf::error& err) {
            spdlog::warn("node {}: cannot greet {} again: {}",
                         self->state.cfg.self.name, name, error_text(err));
          });
    },
    [self](cl_update_atom, node_info& info) {
      auto& st = self->state;
      if (st.peers.count(info.name) != 0)
        add_peer(self, std::move(info));
    },
    [self](cl_leave_atom, const std::string& name) {
      drop_peer(self, name, cluster_event_kind::left, "it left the cluster");
    },
    [self](cl_spawn_atom, remote_agent_args& args) -> caf::result<caf::actor> {
      auto& st = self->state;
      if (!st.cfg.host_agent)
        return make_error(errc::invalid_input,
                          "node '" + st.cfg.self.name + "' hosts no agents");
      try {
        auto agent = caf::actor_cast<caf::actor>(
          st.cfg.host_agent(args, directory(st)));
        if (!args.origin.empty()) {
          self->monitor(agent);
          st.guests[args.origin].push_back(agent);
        }
        return agent;
      } catch (const std::exception& ex) {
        spdlog::warn("node {}: cannot spawn an agent for {}: {}",
                     st.cfg.self.name, args.origin, ex.what());
        return make_error(errc::invalid_input, "node '" + st.cfg.self.name
                                                 + "': " + ex.what());
      }
    },
    // -- from this node's runtime -------------------------------------------
    [self](cl_join_atom, const std::string& host,
           uint16_t port) -> caf::result<std::string> {
      auto rp = self->make_response_promise<std::string>();
      greet(self, host, port,
            [self, rp](const std::string& why,
                       std::vector<node_info> infos) mutable {
              if (!why.empty() || infos.empty()) {
                rp.deliver(make_error(errc::unavailable,
                                      why.empty() ? "empty greeting" : why));
                return;
              }
              auto& st = self->state;
              auto seed = infos.front().name;
              if (auto c = name_conflict(st, infos.front()); !c.empty()) {
                rp.deliver(make_error(errc::invalid_input, c));
                return;
              }
              add_peer(self, infos.front());
              // The others are dialled directly, so that no member's traffic
              // runs through the seed (which may fail on its own); members
              // they name in turn are greeted too, so two joins through
              // different seeds at once still end in one mesh.
              auto join = std::make_shared<join_state>();
              join->promise = rp;
              join->seed = seed;
              join->attempted.insert(seed);
              greet_members(self, join, std::move(infos));
              join->settle();
            });
      return rp;
    },
    [self](cl_members_atom) { return directory(self->state); },
    [self](cl_address_atom, std::string& address) {
      self->state.cfg.self.address = std::move(address);
      self->state.cfg.ready = true;
    },
    [self](cl_publish_atom, std::vector<agent_listing>& agents,
           std::vector<tool_listing>& tools) {
      auto& st = self->state;
      st.cfg.self.agents = std::move(agents);
      st.cfg.self.tools = std::move(tools);
      ++st.cfg.self.version;
      for (const auto& [name, p] : st.peers)
        if (p.info.node)
          self->send(p.info.node, cl_update_atom::value, st.cfg.self);
      return true;
    },
    [self](cl_subscribe_atom, caf::actor& sink) {
      self->monitor(sink);
      self->state.sinks.push_back(std::move(sink));
    },
    [self](cl_leave_atom) {
      auto& st = self->state;
      st.leaving = true;
      for (const auto& [name, p] : st.peers)
        if (p.info.node)
          self->send(p.info.node, cl_leave_atom::value, st.cfg.self.name);
      return true;
    },
    [self](beat_tick_atom) {
      auto& st = self->state;
      auto now = std::chrono::steady_clock::now();
      std::vector<std::string> silent;
      for (const auto& [name, p] : st.peers) {
        if (now - p.last_heard > st.cfg.options.heartbeat_timeout)
          silent.push_back(name);
        else if (p.info.node && !st.leaving)
          self->send(p.info.node, cl_beat_atom::value, st.cfg.self.name,
                     st.cfg.self.version);
      }
      for (const auto& name : silent)
        drop_peer(self, name, cluster_event_kind::failed,
                  "no heartbeat for "
                    + std::to_string(st.cfg.options.heartbeat_timeout.count())
                    + " ms");
      self->delayed_send(self, st.cfg.options.heartbeat_interval,
                         beat_tick_atom::value);
    },
  };
}

} // namespace

caf::actor spawn_node_actor(caf::actor_system& sys, node_actor_config cfg) {
  if (cfg.options.name.empty())
    throw std::invalid_argument("node: the name must not be empty");
  if (cfg.options.heartbeat_interval.count() <= 0
      || cfg.options.heartbeat_timeout <= cfg.options.heartbeat_interval)
    throw std::invalid_argument(
      "node '" + cfg.options.name
      + "': the heartbeat timeout must be longer than its interval (> 0)");
  if (!cfg.connector)
    throw std::invalid_argument("node '" + cfg.options.name
                                + "': no middleman to dial peers with");
  return sys.spawn(node_actor, std::move(cfg));
}

std::vector<located_agent> find_agents(const std::vector<node_info>& directory,
                                       const std::string& name,
                                       const std::string& capability) {
  std::vector<located_agent> out;
  for (const auto& node : directory)
    for (const auto& a : node.agents) {
      bool match = !name.empty()
                     ? a.name == name
                     : std::find(a.capabilities.begin(), a.capabilities.end(),
                                 capability)
                         != a.capabilities.end();
      if (match)
        out.push_back({node.name, a});
    }
  return out;
}

std::string member_names(const std::vector<node_info>& directory) {
  std::string out;
  for (const auto& n : directory)
    out += (out.empty() ? "" : ", ") + n.name;
  return out;
}

std::vector<located_tool> find_tools(const std::vector<node_info>& directory,
                                     const std::string& capability) {
  std::vector<located_tool> out;
  for (const auto& node : directory)
    for (const auto& t : node.tools)
      if (std::find(t.capabilities.begin(), t.capabilities.end(), capability)
          != t.capabilities.end())
        out.push_back({node.name, t});
  return out;
}

std::optional<located_tool> find_tool(const std::vector<node_info>& directory,
                                      const std::string& name,
                                      const std::string& version) {
  for (const auto& node : directory)
    for (const auto& t : node.tools)
      if (t.spec.name == name && (version.empty() || t.version == version))
        return located_tool{node.name, t};
  return std::nullopt;
}

} // namespace troupe

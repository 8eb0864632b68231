#pragma once

// Nodes and clusters. A node is a runtime whose node actor is published on a
// port (CAF's middleman; TLS through caf_openssl when configured). Nodes join
// a cluster through a seed and then greet every member directly, so the
// cluster is a full mesh:
//
//   joiner --connect + (cl_hello, its info)--> seed
//   seed   --every node it knows, itself first--> joiner
//   joiner --connect + (cl_hello, its info)--> each member it did not know
//
// Each member keeps the others' node_info (where they listen, their
// capabilities, the handles of the agents and tools they host): that is the
// directory, and look-ups by name or capability read it without a round trip.
// Members send heartbeats; a member whose connection breaks (CAF's down
// message) or that is silent past the heartbeat timeout has failed. Joins,
// updates, leaves and failures are cluster_events to subscribers.
//
// Agents another node asks for are spawned by the node actor from a
// remote_agent_args (cl_spawn_atom); they stop when that node leaves or fails.

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include "messages/cluster.hpp"

namespace troupe {

/// TLS between nodes (caf_openssl). A node with TLS accepts only peers whose
/// certificate is signed by `ca_file`, and presents its own.
struct cluster_tls {
  /// PEM files: this node's certificate and private key, the cluster's CA.
  std::string certificate;
  std::string key;
  std::string ca_file;
  /// For an encrypted key; empty for none.
  std::string passphrase;

  bool enabled() const noexcept {
    return !certificate.empty() || !key.empty() || !ca_file.empty();
  }
};

/// Checks that the three files are named and readable; throws
/// std::invalid_argument naming the missing one.
void validate(const cluster_tls& tls);

/// How a node listens and watches its peers.
struct node_options {
  /// Unique in the cluster; required.
  std::string name;
  /// Interface and port to listen on; port 0 picks a free one.
  std::string host = "0.0.0.0";
  uint16_t port = 0;
  /// host:port other nodes dial to reach this one; empty = `host` (or
  /// 127.0.0.1 when host is 0.0.0.0) and the bound port.
  std::string advertise;
  /// What the node offers beyond its agents and tools ("gpu", "eu-west"...).
  std::vector<std::string> capabilities;
  /// How often heartbeats go out, and how long a silent peer is trusted.
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds heartbeat_timeout{3000};
  /// Where to look for a scripted model's file that is not at the path the
  /// asking node named (the same file name in this folder); empty = nowhere.
  std::string script_dir;
};

/// Whoever receives cluster_events.
using cluster_sink = caf::typed_actor<caf::reacts_to<cluster_event>>;

// Local messages to a node actor (from its own runtime):
//   (cl_join_atom, host, port)        -> std::string   joins through a seed;
//                                       the reply (the seed's name) comes once
//                                       every member it named was greeted
//   (cl_members_atom)                 -> std::vector<node_info>  self first
//   (cl_publish_atom, std::vector<agent_listing>, std::vector<tool_listing>)
//                                     -> bool  replaces this node's listing
//   (cl_subscribe_atom, caf::actor)   cluster_events go to the actor
//   (cl_leave_atom)                   -> bool  says goodbye to every member
// From any node:
//   (cl_spawn_atom, remote_agent_args) -> caf::actor (a runnable_actor)
using cl_join_atom = caf::atom_constant<caf::atom("cl_join")>;
using cl_members_atom = caf::atom_constant<caf::atom("cl_members")>;
using cl_publish_atom = caf::atom_constant<caf::atom("cl_publish")>;
using cl_subscribe_atom = caf::atom_constant<caf::atom("cl_sub")>;
using cl_spawn_atom = caf::atom_constant<caf::atom("cl_spawn")>;
/// (cl_address_atom, host:port): where peers dial this node, once bound.
using cl_address_atom = caf::atom_constant<caf::atom("cl_addr")>;

/// Spawns an agent a peer asked for; gets the current directory (for tools
/// hosted elsewhere). Throws std::invalid_argument naming what is wrong.
using host_agent_fn = std::function<runnable_actor(
  const remote_agent_args&, const std::vector<node_info>& directory)>;

/// What a node actor needs.
struct node_actor_config {
  node_options options;
  /// This node's entry as others will see it (name, address, capabilities).
  node_info self;
  /// The middleman actor that dials peers (plain or TLS).
  caf::actor connector;
  /// Spawns agents peers ask for; without one such requests are refused.
  host_agent_fn host_agent;
  /// How long dialling and greeting one peer may take.
  std::chrono::milliseconds connect_timeout{std::chrono::seconds{10}};
  /// False for a node that still has to learn its address (published on
  /// port 0): greetings are refused until cl_address_atom arrives.
  bool ready = true;
};

/// Spawns a node actor (not yet published: see runtime::listen).
caf::actor spawn_node_actor(caf::actor_system& sys, node_actor_config cfg);

/// The node of the cluster that hosts an agent or a tool.
struct located_agent {
  std::string node;
  agent_listing agent;
};
struct located_tool {
  std::string node;
  tool_listing tool;
};

/// Every agent listed under `name` (or, when `name` is empty, with
/// `capability`), local node first.
std::vector<located_agent> find_agents(const std::vector<node_info>& directory,
                                       const std::string& name,
                                       const std::string& capability = "");

/// The members' names, "a, b, c", in the directory's order.
std::string member_names(const std::vector<node_info>& directory);

/// Every tool with `capability`, on every node, local node first.
std::vector<located_tool> find_tools(const std::vector<node_info>& directory,
                                     const std::string& capability);

/// The tool of that name (and version, when given): on the first node of the
/// directory that lists it. Empty when none does.
std::optional<located_tool> find_tool(const std::vector<node_info>& directory,
                                      const std::string& name,
                                      const std::string& version = "");

} // namespace troupe

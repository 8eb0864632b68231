// The cluster part of the runtime facade (runtime/runtime.hpp): listening,
// joining, the directory, and agents on other nodes.

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <stdexcept>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/openssl/publish.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <spdlog/spdlog.h>

#include "messages/errors.hpp"
#include "runtime/replicated_agent.hpp"
#include "runtime/runtime.hpp"

namespace troupe {

namespace {

/// How long the facade waits for its node actor or a peer.
constexpr auto node_timeout = std::chrono::seconds{30};

/// How long a join may take: the seed dialled and greeted, then each member
/// it names (a dial and a greeting each take at most the node actor's
/// connect timeout, 10 s), with a margin.
constexpr auto join_timeout = std::chrono::seconds{60};

/// Waits for one reply of the node actor (or a peer's).
template <class T, class... Ts>
T ask_within(caf::actor_system& sys, std::chrono::seconds timeout,
             const caf::actor& dest, const std::string& what, Ts&&... xs) {
  caf::scoped_actor self{sys};
  std::optional<T> out;
  std::string failure;
  self->request(dest, timeout, std::forward<Ts>(xs)...)
    .receive([&](T& x) { out = std::move(x); },
             [&](caf::error& err) { failure = error_text(err); });
  if (!out)
    throw std::runtime_error(what + ": " + failure);
  return std::move(*out);
}

template <class T, class... Ts>
T ask(caf::actor_system& sys, const caf::actor& dest, const std::string& what,
      Ts&&... xs) {
  return ask_within<T>(sys, node_timeout, dest, what, std::forward<Ts>(xs)...);
}


} // namespace

caf::actor runtime::node_actor(const char* what) const {
  std::lock_guard<std::mutex> guard{mtx_};
  if (stopped_)
    throw std::logic_error(std::string{what}
                           + ": the runtime has been shut down");
  if (!node_)
    throw std::logic_error(std::string{what}
                           + ": this runtime is not in a cluster (call "
                             "listen() or connect() first)");
  return node_;
}

std::string runtime::node_name() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return node_ ? node_opts_.name : std::string{};
}

void runtime::start_node(node_options opts, std::string address, bool ready) {
  node_actor_config nc;
  nc.ready = ready;
  nc.options = opts;
  nc.self.name = opts.name;
  nc.self.address = std::move(address);
  nc.self.capabilities = opts.capabilities;
  nc.connector = cfg_.tls.enabled()
                   ? caf::actor_cast<caf::actor>(
                       sys_->openssl_manager().actor_handle())
                   : caf::actor_cast<caf::actor>(
                       sys_->middleman().actor_handle());
  nc.host_agent = [this](const remote_agent_args& args,
                         const std::vector<node_info>& dir) {
    return host_remote_agent(args, dir);
  };
  auto actor = spawn_node_actor(*sys_, std::move(nc));
  std::lock_guard<std::mutex> guard{mtx_};
  node_ = actor;
  node_opts_ = std::move(opts);
  owned_.push_back(actor.address());
}

uint16_t runtime::listen(node_options opts) {
  ensure_running("listen");
  if (!cfg_.load_middleman)
    throw std::invalid_argument("listen: runtime_config::load_middleman is off");
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (node_)
      throw std::logic_error("listen: this runtime is a node already ('"
                             + node_opts_.name + "')");
  }
  if (opts.name.empty())
    throw std::invalid_argument("listen: the node needs a name");
  auto where = opts.host + ":" + std::to_string(opts.port);
  // The port is known only once bound (port 0 picks one), so the node actor
  // starts without its address and refuses greetings until it learns it.
  start_node(opts, "", false);
  auto node = node_actor("listen");
  auto res = cfg_.tls.enabled()
               ? caf::openssl::publish(node, opts.port, opts.host.c_str(), true)
               : sys_->middleman().publish(node, opts.port, opts.host.c_str(),
                                           true);
  if (!res) {
    caf::anon_send_exit(node, caf::exit_reason::user_shutdown);
    std::lock_guard<std::mutex> guard{mtx_};
    node_ = nullptr;
    throw std::runtime_error("cannot listen on " + where + ": "
                             + error_text(res.error()));
  }
  auto bound = *res;
  auto advertise = opts.advertise;
  if (advertise.empty()) {
    auto host = opts.host == "0.0.0.0" || opts.host.empty() ? "127.0.0.1"
                                                            : opts.host;
    if (host.find(':') != std::string::npos)
      host = "[" + host + "]";
    advertise = host + ":" + std::to_string(bound);
  }
  // The address goes out with the node's first listing (announce).
  caf::anon_send(node, cl_address_atom::value, advertise);
  spdlog::info("node {}: listening on {}:{} (peers dial {}){}", opts.name,
               opts.host, bound, advertise,
               cfg_.tls.enabled() ? " with TLS" : "");
  announce();
  return bound;
}

std::string runtime::connect(const std::string& host, uint16_t port,
                             const std::string& client_name) {
  ensure_running("connect");
  if (!cfg_.load_middleman)
    throw std::invalid_argument(
      "connect: runtime_config::load_middleman is off");
  bool is_node = false;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    is_node = static_cast<bool>(node_);
  }
  if (!is_node) {
    node_options opts;
    opts.name = client_name.empty()
                  ? "client-" + std::to_string(::getpid())
                  : client_name;
    start_node(std::move(opts), "", true);
  }
  auto node = node_actor("connect");
  auto where = host + ":" + std::to_string(port);
  return ask_within<std::string>(*sys_, join_timeout, node,
                                 "cannot join the cluster at " + where,
                                 cl_join_atom::value, host, port);
}

std::vector<node_info> runtime::members() {
  auto node = node_actor("members");
  return ask<std::vector<node_info>>(*sys_, node, "members",
                                     cl_members_atom::value);
}

void runtime::on_cluster_event(std::function<void(cluster_event)> fn) {
  auto node = node_actor("on_cluster_event");
  auto sink = sys_->spawn([fn = std::move(fn)]() -> caf::behavior {
    return {[fn](const cluster_event& ev) { fn(ev); }};
  });
  own(sink.address());
  caf::anon_send(node, cl_subscribe_atom::value, sink);
}

std::vector<tool_listing> runtime::tool_listings() {
  std::vector<tool_listing> out;
  for (const auto& def : tools_.all()) {
    const auto& d = def->definition;
    tool_listing t;
    t.spec = def->spec();
    t.version = d.version;
    t.actor = tool(d.name, d.version);
    t.call_timeout_ms = call_budget(d).count();
    t.idempotency_scope = to_string(d.idempotency.scope);
    t.idempotency_fields = d.idempotency.fields;
    t.read_only = d.read_only;
    t.capabilities = d.capabilities;
    out.push_back(std::move(t));
  }
  return out;
}

void runtime::announce() {
  auto node = node_actor("announce");
  auto tools = tool_listings();
  std::vector<agent_listing> agents;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    for (const auto& [name, a] : hosted_)
      agents.push_back(a);
  }
  ask<bool>(*sys_, node, "announce", cl_publish_atom::value, std::move(agents),
            std::move(tools));
}

void runtime::host(const std::string& name, runnable_actor agent,
                   std::vector<std::string> capabilities) {
  if (name.empty())
    throw std::invalid_argument("host: the agent needs a name");
  if (!agent)
    throw std::invalid_argument("host: agent '" + name + "' has no actor");
  {
    std::lock_guard<std::mutex> guard{mtx_};
    hosted_[name] = agent_listing{name, std::move(capabilities),
                                  std::move(agent)};
  }
  announce();
}

std::vector<located_agent> runtime::find_agents(const std::string& name,
                                                const std::string& capability) {
  return troupe::find_agents(members(), name, capability);
}

runnable_actor runtime::host_remote_agent(const remote_agent_args& args,
                                          const std::vector<node_info>& dir) {
  auto spec = agent_spec_from_json(args.spec.value);
  spec.node = node_opts_.name;
  // A scripted model's file at another path on this machine: the same file
  // name in this node's script folder.
  auto [kind, rest] = split_model_name(spec.model);
  if (kind == "scripted" && !rest.empty() && !node_opts_.script_dir.empty()
      && !std::filesystem::exists(rest)) {
    auto local = std::filesystem::path{node_opts_.script_dir}
                 / std::filesystem::path{rest}.filename();
    if (std::filesystem::exists(local))
      spec.model = "scripted:" + local.string();
  }
  auto links = resolve(spec, &dir);
  if (args.tracer)
    links.tracer = caf::actor_cast<tracer_actor>(args.tracer);
  if (args.budget)
    links.budget = caf::actor_cast<budget_actor>(args.budget);
  if (args.approvals)
    links.approvals = caf::actor_cast<approval_gate_actor>(args.approvals);
  spdlog::info("node {}: hosting agent {} for {}", node_opts_.name, spec.name,
               args.origin);
  auto handle = troupe::spawn_agent(*sys_, std::move(spec), std::move(links));
  own(handle.address());
  return handle;
}

runnable_actor runtime::spawn_on(const std::string& node, agent_spec spec) {
  auto self_node = node_actor("spawn_on");
  validate(spec);
  auto dir = members();
  auto target = std::find_if(dir.begin(), dir.end(),
                             [&](const node_info& n) { return n.name == node; });
  if (target == dir.end())
    throw std::invalid_argument("spawn_on: agent '" + spec.name
                                + "': no node '" + node
                                + "' in the cluster (members: "
                                + member_names(dir) + ")");
  for (const auto& tool : spec.tools)
    if (!find_tool(dir, tool))
      throw std::invalid_argument("spawn_on: agent '" + spec.name
                                  + "': tool '" + tool
                                  + "' is hosted by no node of the cluster");
  if (target == dir.begin()) { // this node
    spec.node = target->name;
    return spawn_agent(std::move(spec));
  }
  if (!cfg_.model_override.empty())
    spec.model = cfg_.model_override;
  remote_agent_args args;
  args.spec = json_value{agent_spec_to_json(spec)};
  args.tracer = caf::actor_cast<caf::actor>(tracer());
  args.budget = caf::actor_cast<caf::actor>(budget_);
  args.approvals = caf::actor_cast<caf::actor>(approvals_);
  args.origin = node_name();
  auto handle = caf::actor_cast<runnable_actor>(ask<caf::actor>(
    *sys_, target->node,
    "spawn_on: node '" + node + "' cannot host agent '" + spec.name + "'",
    cl_spawn_atom::value, std::move(args)));
  own(handle.address());
  return handle;
}

runnable_actor runtime::spawn_replicated(agent_spec spec,
                                         std::vector<std::string> nodes) {
  auto self_node = node_actor("spawn_replicated");
  if (nodes.empty())
    throw std::invalid_argument("spawn_replicated: agent '" + spec.name
                                + "': no nodes named");
  if (std::find(nodes.begin(), nodes.end(), "*") != nodes.end()) {
    nodes.clear();
    for (const auto& n : members())
      if (!n.address.empty())
        nodes.push_back(n.name);
    if (nodes.empty())
      throw std::invalid_argument("spawn_replicated: agent '" + spec.name
                                  + "': the cluster has no listening node");
  }
  replicated_config rc;
  rc.name = spec.name;
  rc.node = self_node;
  rc.tracer = tracer();
  std::set<std::string> seen;
  for (const auto& n : nodes) {
    if (!seen.insert(n).second)
      throw std::invalid_argument("spawn_replicated: agent '" + spec.name
                                  + "': node '" + n + "' is named twice");
    rc.replicas.push_back({n, spawn_on(n, spec)});
  }
  auto handle = spawn_replicated_agent(*sys_, std::move(rc));
  own(handle.address());
  return handle;
}

} // namespace troupe

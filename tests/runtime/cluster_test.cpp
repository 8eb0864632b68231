// The cluster API of the runtime facade: three runtimes in one process, each
// with its own actor system and middleman, talking over loopback sockets
// (the node processes of the CLI are tested in cluster_cli_test.cpp).

#include <catch2/catch.hpp>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <caf/scoped_actor.hpp>

#include "messages/errors.hpp"
#include "runtime/runtime.hpp"
#include "support/temp_dir.hpp"
#include "support/test_models.hpp"

using namespace troupe;
using namespace troupe::test;

namespace {

runtime_config node_config() {
  runtime_config cfg;
  cfg.scheduler_threads = 2;
  return cfg;
}

node_options loopback(const std::string& name) {
  node_options opts;
  opts.name = name;
  opts.host = "127.0.0.1";
  opts.port = 0;
  return opts;
}

/// A tool that counts the calls it ran, on the node that hosts it.
tool_definition echo_tool(std::shared_ptr<std::atomic<int>> runs) {
  tool_definition def;
  def.name = "echo";
  def.description = "Echoes its text.";
  def.parameters = json{{"type", "object"},
                        {"properties", {{"text", {{"type", "string"}}}}},
                        {"required", {"text"}}};
  def.capabilities = {"text"};
  def.fn = [runs](const json& args, const tool_context&) {
    ++*runs;
    return json{{"echo", args.at("text")}};
  };
  return def;
}

/// Collects cluster events; wait_for blocks until one matches.
struct event_log {
  std::mutex mtx;
  std::condition_variable cv;
  std::vector<cluster_event> events;

  std::function<void(cluster_event)> sink() {
    return [this](cluster_event ev) {
      std::lock_guard<std::mutex> guard{mtx};
      events.push_back(std::move(ev));
      cv.notify_all();
    };
  }

  bool wait_for(cluster_event_kind kind, const std::string& node) {
    std::unique_lock<std::mutex> lock{mtx};
    return cv.wait_for(lock, std::chrono::seconds{20}, [&] {
      for (const auto& ev : events)
        if (ev.kind == kind && ev.node == node)
          return true;
      return false;
    });
  }
};

std::set<std::string> names_of(const std::vector<node_info>& dir) {
  std::set<std::string> out;
  for (const auto& n : dir)
    out.insert(n.name);
  return out;
}

/// A seed node "alpha" hosting the echo tool, a node "beta" that joins it,
/// and a client "gamma" that only submits work.
struct three_runtimes {
  std::shared_ptr<std::atomic<int>> echo_runs =
    std::make_shared<std::atomic<int>>(0);
  runtime alpha{node_config()};
  runtime beta{node_config()};
  runtime gamma{node_config()};
  uint16_t alpha_port = 0;

  three_runtimes() {
    alpha.tools().add(echo_tool(echo_runs));
    alpha_port = alpha.listen(loopback("alpha"));
    beta.listen(loopback("beta"));
    REQUIRE(beta.connect("127.0.0.1", alpha_port) == "alpha");
    REQUIRE(gamma.connect("127.0.0.1", alpha_port, "gamma") == "alpha");
  }
};

} // namespace

TEST_CASE("nodes that join through a seed all know each other",
          "[cluster]") {
  three_runtimes c;
  // gamma learnt beta from alpha's reply and greeted it directly.
  CHECK(names_of(c.gamma.members())
        == std::set<std::string>{"alpha", "beta", "gamma"});
  auto dir = c.gamma.members();
  CHECK(dir.front().name == "gamma");
  CHECK(dir.front().address.empty()); // a client is reached over its own link
  // alpha and beta each heard gamma's greeting.
  CHECK(names_of(c.alpha.members())
        == std::set<std::string>{"alpha", "beta", "gamma"});
  CHECK(names_of(c.beta.members())
        == std::set<std::string>{"alpha", "beta", "gamma"});
  // The directory names where a listening node is dialled, and its tools.
  auto alpha = std::find_if(dir.begin(), dir.end(),
                            [](const node_info& n) { return n.name == "alpha"; });
  REQUIRE(alpha != dir.end());
  CHECK(alpha->address == "127.0.0.1:" + std::to_string(c.alpha_port));
  REQUIRE(alpha->tools.size() == 1);
  CHECK(alpha->tools[0].spec.name == "echo");
  // Look-ups by capability span the cluster.
  auto by_capability = find_tools(dir, "text");
  REQUIRE(by_capability.size() == 1);
  CHECK(by_capability[0].node == "alpha");
  CHECK(by_capability[0].tool.actor == alpha->tools[0].actor);
  CHECK(find_tools(dir, "nothing").empty());
  CHECK(c.gamma.node_name() == "gamma");
}

TEST_CASE("a tool hosted on another node is called through the directory",
          "[cluster]") {
  three_runtimes c;
  auto echo = c.gamma.tool("echo");
  REQUIRE(echo);
  CHECK(echo.node() == c.alpha.system().node());
  caf::scoped_actor self{c.gamma.system()};
  tool_call call;
  call.call_id = "c-1";
  call.name = "echo";
  call.args = json_value{json{{"text", "über the wire"}}};
  call.idempotency_key = "echo:k1";
  for (int i = 0; i < 2; ++i) {
    bool answered = false;
    self->request(echo, std::chrono::seconds{10}, call)
      .receive(
        [&](const tool_result& r) {
          answered = true;
          CHECK(r.ok);
          CHECK(r.content.value == json{{"echo", "über the wire"}});
        },
        [&](const caf::error& err) { FAIL_CHECK(error_text(err)); });
    CHECK(answered);
  }
  // The second call had the same idempotency key: alpha's ledger answered.
  CHECK(c.echo_runs->load() == 1);
}

TEST_CASE("an agent spawned on another node runs there with tools from a "
          "third and traces to the caller",
          "[cluster]") {
  std::mutex mtx;
  std::vector<json> records;
  auto cfg = node_config();
  cfg.trace_listeners.push_back([&](const json& rec) {
    std::lock_guard<std::mutex> guard{mtx};
    records.push_back(rec);
  });
  auto runs = std::make_shared<std::atomic<int>>(0);
  runtime alpha{node_config()};
  runtime beta{node_config()};
  runtime gamma{cfg};
  alpha.tools().add(echo_tool(runs));
  auto port = alpha.listen(loopback("alpha"));
  beta.listen(loopback("beta"));
  beta.connect("127.0.0.1", port);
  gamma.connect("127.0.0.1", port, "gamma");
  // beta's model: call echo, then answer with what it echoed.
  auto log = std::make_shared<model_log>();
  beta.add_model("relay", spawn_recording_model(
                            beta.system(), log, [](const chat_request& req) {
                              if (step_of(req) == 1)
                                return call_tools(
                                  {proposed("echo", {{"text", "hello"}})});
                              return answer("relayed: "
                                            + req.messages.back().content);
                            }));
  agent_spec spec;
  spec.name = "relay";
  spec.model = "relay";
  spec.tools = {"echo"};
  auto agent = gamma.spawn_on("beta", spec);
  REQUIRE(agent);
  CHECK(agent.node() == beta.system().node());
  auto result = gamma.run(agent, "say hello");
  CHECK(result.status == run_status::complete);
  CHECK(result.agent == "relay@beta");
  CHECK(result.answer.find("hello") != std::string::npos);
  CHECK(runs->load() == 1); // the tool ran on alpha
  // The model on beta was asked under the agent's own name.
  REQUIRE(!log->snapshot().empty());
  CHECK(log->snapshot().front().agent == "relay");
  gamma.flush_trace();
  std::lock_guard<std::mutex> guard{mtx};
  bool agent_span = false;
  for (const auto& rec : records)
    if (rec.value("name", "") == "invoke_agent relay@beta")
      agent_span = true;
  CHECK(agent_span);
}

TEST_CASE("cluster calls that cannot work fail with errors naming what",
          "[cluster]") {
  three_runtimes c;
  agent_spec spec;
  spec.name = "lost";
  spec.model = "relay";
  try {
    c.gamma.spawn_on("nowhere", spec);
    FAIL("spawn_on an unknown node must throw");
  } catch (const std::invalid_argument& ex) {
    std::string what = ex.what();
    CHECK(what.find("no node 'nowhere'") != std::string::npos);
    CHECK(what.find("alpha") != std::string::npos);
  }
  spec.tools = {"no_such_tool"};
  try {
    c.gamma.spawn_on("beta", spec);
    FAIL("an unhosted tool must be refused");
  } catch (const std::invalid_argument& ex) {
    CHECK(std::string{ex.what()}.find("'no_such_tool' is hosted by no node")
          != std::string::npos);
  }
  // beta has no model "relay": the error comes back from beta itself.
  spec.tools.clear();
  try {
    c.gamma.spawn_on("beta", spec);
    FAIL("an unknown model on the host must be refused");
  } catch (const std::runtime_error& ex) {
    std::string what = ex.what();
    CHECK(what.find("node 'beta'") != std::string::npos);
    CHECK(what.find("unknown model 'relay'") != std::string::npos);
  }
  // A second node under a taken name is refused by the seed.
  runtime twin{node_config()};
  twin.listen(loopback("beta"));
  try {
    twin.connect("127.0.0.1", c.alpha_port);
    FAIL("a taken name must be refused");
  } catch (const std::runtime_error& ex) {
    CHECK(std::string{ex.what()}.find("'beta' is already taken")
          != std::string::npos);
  }
  // Nothing listens there.
  runtime lonely{node_config()};
  auto closed = [] {
    runtime probe{node_config()};
    return probe.listen(loopback("probe"));
  }();
  try {
    lonely.connect("127.0.0.1", closed);
    FAIL("connecting to a closed port must throw");
  } catch (const std::runtime_error& ex) {
    CHECK(std::string{ex.what()}.find("127.0.0.1:" + std::to_string(closed))
          != std::string::npos);
  }
  // Outside a cluster.
  CHECK_THROWS_AS(lonely.spawn_on("alpha", spec), std::logic_error);
}

TEST_CASE("a node that leaves is an event on the others", "[cluster]") {
  event_log seen;
  runtime alpha{node_config()};
  auto port = alpha.listen(loopback("alpha"));
  alpha.on_cluster_event(seen.sink());
  {
    runtime beta{node_config()};
    beta.listen(loopback("beta"));
    beta.connect("127.0.0.1", port);
    CHECK(seen.wait_for(cluster_event_kind::joined, "beta"));
    beta.shutdown();
  }
  CHECK(seen.wait_for(cluster_event_kind::left, "beta"));
  CHECK(names_of(alpha.members()) == std::set<std::string>{"alpha"});
}

TEST_CASE("a replicated agent spreads runs over its nodes", "[cluster]") {
  runtime alpha{node_config()};
  runtime beta{node_config()};
  runtime gamma{node_config()};
  auto port = alpha.listen(loopback("alpha"));
  beta.listen(loopback("beta"));
  beta.connect("127.0.0.1", port);
  gamma.connect("127.0.0.1", port, "gamma");
  // Each answer takes 300 ms, so all six runs are out before one is back.
  temp_dir dir;
  auto script = dir.write(
    "slow.json", R"({"rules": [{"name": "done", "reply": {"content": "done",
                   "latency_ms": 300}}]})");
  agent_spec spec;
  spec.name = "worker";
  spec.model = "scripted:" + script;
  auto worker = gamma.spawn_replicated(spec, {"*"});
  std::vector<std::future<run_result>> runs;
  for (int i = 0; i < 6; ++i)
    runs.push_back(gamma.submit(worker, "task " + std::to_string(i)));
  std::set<std::string> who;
  for (auto& f : runs) {
    auto r = f.get();
    CHECK(r.status == run_status::complete);
    who.insert(r.agent);
  }
  CHECK(who == std::set<std::string>{"worker@alpha", "worker@beta"});
}

TEST_CASE("agents a node hosts are found by name or capability anywhere",
          "[cluster]") {
  three_runtimes c;
  auto log = std::make_shared<model_log>();
  c.beta.add_model("desk", spawn_recording_model(
                             c.beta.system(), log, [](const chat_request&) {
                               return answer("triaged");
                             }));
  agent_spec spec;
  spec.name = "triage";
  spec.model = "desk";
  event_log seen;
  c.gamma.on_cluster_event(seen.sink());
  c.beta.host("triage", c.beta.spawn_agent(spec), {"support", "en"});
  // The update reaches gamma as a directory change.
  REQUIRE(seen.wait_for(cluster_event_kind::updated, "beta"));
  auto found = c.gamma.find_agents("", "support");
  REQUIRE(found.size() == 1);
  CHECK(found[0].node == "beta");
  CHECK(found[0].agent.name == "triage");
  CHECK(c.gamma.find_agents("triage").size() == 1);
  CHECK(c.gamma.find_agents("", "fr").empty());
  // Found in the directory, it runs like a local agent.
  auto r = c.gamma.run(found[0].agent.actor, "my printer is on fire");
  CHECK(r.status == run_status::complete);
  CHECK(r.answer == "triaged");
}

// The cluster CLI run as a user runs it: `troupe node` processes on loopback
// (a coordinator and two workers, each in its own working directory) and
// `troupe run --cluster` spreading a team over them. Asserts on what the
// programs print and on what they leave behind: the answer, the progress and
// timeline on stderr, the JSONL trace and the side-effect journals. The second
// test kills a worker with SIGKILL while it is inside a tool call and checks
// that its subtask is sent again to the other worker without repeating the
// side effect it had already made on the coordinator.

#include <catch2/catch.hpp>

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "messages/json_value.hpp"
#include "support/child_process.hpp"
#include "support/file_watch.hpp"
#include "support/paths.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// -- files --------------------------------------------------------------------

/// The complete records of a JSONL file that may still be being written (a
/// last line without its newline is left out; none when the file does not
/// exist).
std::vector<json> jsonl(const std::string& path) {
  std::vector<json> out;
  auto text = read_file(path);
  size_t at = 0;
  for (auto nl = text.find('\n', at); nl != std::string::npos;
       at = nl + 1, nl = text.find('\n', at)) {
    auto line = text.substr(at, nl - at);
    if (line.empty())
      continue;
    auto rec = json::parse(line, nullptr, false);
    if (!rec.is_discarded())
      out.push_back(std::move(rec));
  }
  return out;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in{text};
  for (std::string line; std::getline(in, line);)
    out.push_back(line);
  return out;
}

std::string attr(const json& rec, const char* key) {
  auto a = rec.find("attributes");
  if (a == rec.end() || !a->is_object())
    return {};
  auto i = a->find(key);
  if (i == a->end() || !i->is_string())
    return {};
  return i->get<std::string>();
}

std::string example(const std::string& file) {
  return source_dir() + "/examples/cluster/" + file;
}

// -- a cluster of `troupe node` processes -------------------------------------

/// One `troupe node` process in its own working directory, its stdout and
/// stderr in files there (stdout.txt, stderr.txt).
struct node_process {
  std::string name;
  fs::path cwd;
  std::unique_ptr<child_process> proc;

  std::string err() const {
    return proc->err();
  }

  std::string file(const std::string& name) const {
    return (cwd / name).string();
  }
};

/// Nodes started in subfolders of `dir`; every one still running when the
/// cluster goes away is killed (SIGKILL by pid, then reaped), also when an
/// assertion failed half-way.
class node_cluster {
public:
  explicit node_cluster(const temp_dir& dir) : dir_(dir) {
  }

  /// Starts the seed node on an ephemeral port and waits (bounded) for the
  /// port it bound, which it prints on stderr.
  void start_coordinator(const std::string& swarm,
                         std::vector<std::string> extra = {}) {
    auto& n = start("coordinator", swarm, std::move(extra));
    static const std::regex bound{
      R"(troupe node coordinator: listening on 127\.0\.0\.1:(\d+))"};
    auto found = n.proc->wait_for_err(bound, 10s);
    INFO("stderr of the coordinator:\n" << n.err());
    REQUIRE(!found.empty());
    port_ = found[1];
  }

  /// Starts a worker node joining the coordinator.
  void start_worker(const std::string& name, const std::string& swarm,
                    std::vector<std::string> extra = {}) {
    REQUIRE_FALSE(port_.empty());
    extra.insert(extra.begin(), {"--join", seed()});
    start(name, swarm, std::move(extra));
  }

  /// Waits (20 s at most in all) until every worker says it joined the
  /// cluster and the coordinator has seen each of them join.
  void wait_joined() {
    auto deadline = std::chrono::steady_clock::now() + 20s;
    auto left = [&] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    };
    // Whether `who` prints a stderr line containing `text` in time (node
    // names are plain letters, digits and '-': nothing to escape).
    auto says = [&](node_process& who, const std::string& text) {
      return !who.proc->wait_for_err(std::regex{text}, left()).empty();
    };
    auto& coordinator = node("coordinator");
    for (auto& n : nodes_) {
      if (n->name == "coordinator")
        continue;
      auto joined =
        says(*n, "troupe node " + n->name
                   + ": joined the cluster through coordinator")
        && says(coordinator, "troupe node coordinator: " + n->name + " joined");
      INFO(dump());
      REQUIRE(joined);
    }
  }

  /// HOST:PORT of the coordinator.
  std::string seed() const {
    return "127.0.0.1:" + port_;
  }

  node_process& node(const std::string& name) {
    for (auto& n : nodes_)
      if (n->name == name)
        return *n;
    FAIL("no node named " << name);
    throw std::logic_error{"unreachable"};
  }

  /// Every node's stderr, for failure messages.
  std::string dump() const {
    std::string out;
    for (const auto& n : nodes_)
      out += "--- stderr of node " + n->name + ":\n" + n->err();
    return out;
  }

private:
  node_process& start(const std::string& name, const std::string& swarm,
                      std::vector<std::string> extra) {
    auto n = std::make_unique<node_process>();
    n->name = name;
    n->cwd = dir_.path() / name;
    fs::create_directories(n->cwd);
    std::vector<std::string> args{cli_path(), "node",     "--name", name,
                                  "--listen", "127.0.0.1:0", "--swarm", swarm};
    args.insert(args.end(), extra.begin(), extra.end());
    n->proc = std::make_unique<child_process>(args, n->cwd.string(),
                                              n->file("stdout.txt"),
                                              n->file("stderr.txt"));
    REQUIRE(n->proc->started());
    nodes_.push_back(std::move(n));
    return *nodes_.back();
  }

  const temp_dir& dir_;
  std::string port_;
  std::vector<std::unique_ptr<node_process>> nodes_;
};

/// `troupe run --cluster` in the background, in its own folder, its answer
/// and stderr in files.
struct cluster_run {
  fs::path cwd;
  std::string trace_path;
  std::unique_ptr<child_process> proc;

  cluster_run(const temp_dir& dir, const std::string& seed,
              const std::string& swarm, const std::string& goal)
    : cwd(dir.path() / "run"), trace_path((cwd / "trace.jsonl").string()) {
    fs::create_directories(cwd);
    proc = std::make_unique<child_process>(
      std::vector<std::string>{cli_path(), "run", "--cluster", seed, swarm,
                               "--goal", goal, "--trace", trace_path,
                               "--timeout", "40"},
      cwd.string(), (cwd / "answer.txt").string(),
      (cwd / "stderr.txt").string());
    REQUIRE(proc->started());
  }

  std::string answer() const {
    return proc->out();
  }

  std::string err() const {
    return proc->err();
  }
};

bool has_progress_line(const std::string& err, const std::string& agent) {
  // "[  0.222s] researcher@worker-2 | step 1 | asking ..."
  std::regex re{R"(^\[\s*\d+\.\d+s\] )" + agent + R"( \| )"};
  for (const auto& line : lines_of(err))
    if (std::regex_search(line, re))
      return true;
  return false;
}

bool has_timeline_row(const std::string& err, const std::string& agent) {
  // "researcher@worker-1     |    ######    |    2     6     4   0.87s"
  for (const auto& line : lines_of(err))
    if (line.rfind(agent + " ", 0) == 0 && line.find('|') != std::string::npos
        && line.find('#') != std::string::npos)
      return true;
  return false;
}

// -- the test's own swarm files for the failover test -------------------------

/// A node file hosting search_notes as a journal tool (one line per call in
/// searches.jsonl in the node's working directory) answering
/// "notes from NODE on TOPIC"; `hang` makes every call wait a minute after
/// writing its line.
std::string worker_swarm(const std::string& node, bool hang) {
  json tool{{"kind", "journal"},
            {"description", "Look up the team's notes on a topic."},
            {"file", "searches.jsonl"},
            {"parameters",
             {{"type", "object"},
              {"properties", {{"topic", {{"type", "string"}}}}},
              {"required", json::array({"topic"})},
              {"additionalProperties", false}}},
            {"result", "notes from " + node + " on {topic}"},
            {"timeout_ms", 120000}};
  if (hang) {
    tool["delay_first"] = 1000;
    tool["delay_ms"] = 60000;
  }
  json swarm{{"name", node},
             {"tools", {{"search_notes", tool}}},
             {"agents", json::array()}};
  return swarm.dump(2);
}

/// The coordinator's file: record_finding appends to cluster-findings.jsonl
/// and answers the subtask's name.
std::string coordinator_swarm() {
  json tool{{"kind", "journal"},
            {"description", "Record a research finding."},
            {"file", "cluster-findings.jsonl"},
            {"parameters",
             {{"type", "object"},
              {"properties",
               {{"subtask", {{"type", "string"}}},
                {"finding", {{"type", "string"}}}}},
              {"required", json::array({"subtask", "finding"})},
              {"additionalProperties", false}}},
            {"result", "{subtask}"}};
  json swarm{{"name", "coordinator"},
             {"tools", {{"record_finding", tool}}},
             {"agents", json::array()}};
  return swarm.dump(2);
}

/// The researcher records first (the side effect on the coordinator), then
/// looks up notes on its worker node, then reports what it found.
std::string failover_script() {
  auto rule = [](const char* name, const char* agent, json cond, json reply) {
    json r{{"name", name}, {"agent", agent}, {"reply", std::move(reply)}};
    r.update(cond);
    return r;
  };
  json plan = json::object();
  plan["subtasks"] = json::array();
  for (const char* id : {"alpha", "beta"})
    plan["subtasks"].push_back(
      json{{"id", id},
           {"role", "researcher"},
           {"goal", std::string{"Research topic: "} + id + "."}});
  json script = json::object();
  script["rules"] = json::array(
     {rule("plan", "planner", json::object(), {{"content", plan.dump()}}),
      rule("record", "researcher",
           {{"step", 1}, {"regex", "Research topic: (\\w+)"}},
           {{"content", "Recording."},
            {"tool_calls",
             json::array({json{{"name", "record_finding"},
                               {"arguments",
                                {{"subtask", "{{1}}"},
                                 {"finding", "started {{1}}"}}}}})}}),
      rule("look-up", "researcher", {{"step", 2}, {"role", "tool"}},
           {{"content", "Looking up."},
            {"tool_calls",
             json::array({json{{"name", "search_notes"},
                               {"arguments",
                                {{"topic", "{{tool:record_finding}}"}}}}})}}),
      rule("report", "researcher", {{"step", 3}, {"role", "tool"}},
           {{"content", "{{tool:search_notes}}"}}),
      rule("brief", "synthesizer", json::object(),
           {{"content", "Brief: {{last}}"}})});
  return script.dump(2);
}

/// The example's run file with the test's script, and the researcher's tools
/// in the order it calls them.
std::string failover_run_swarm() {
  auto swarm = json::parse(read_file(example("cluster.swarm.json")));
  swarm["name"] = "cluster-failover";
  swarm["model"] = "scripted:failover.script.json";
  for (auto& agent : swarm.at("agents"))
    if (agent.at("name") == "researcher")
      agent["tools"] = json::array({"record_finding", "search_notes"});
  return swarm.dump(2);
}

} // namespace

TEST_CASE("three node processes on loopback run a team to completion",
          "[cluster]") {
  temp_dir dir;
  node_cluster cluster{dir};
  cluster.start_coordinator(example("coordinator.swarm.json"));
  cluster.start_worker("worker-1", example("worker.swarm.json"));
  cluster.start_worker("worker-2", example("worker.swarm.json"));
  cluster.wait_joined();

  cluster_run run{dir, cluster.seed(), example("cluster.swarm.json"),
                  "Should the office replace its gas boiler with a heat pump?"};
  auto code = run.proc->wait_exit(45s);
  auto answer = run.answer();
  auto err = run.err();
  INFO("answer:\n" << answer);
  INFO("stderr of troupe run:\n" << err);
  INFO(cluster.dump());
  REQUIRE(code == 0);

  // Every subtask's finding, from the notes the workers looked up.
  auto notes = json::parse(read_file(example("notes.json")));
  std::set<std::string> summaries;
  for (const char* topic : {"cost", "savings", "emissions"}) {
    auto summary = notes.at(topic).at("summary").get<std::string>();
    CHECK(answer.find(summary) != std::string::npos);
    summaries.insert(summary);
  }
  CHECK(answer.find(notes.at("risks").at("summary").get<std::string>())
        == std::string::npos);

  // The run joined through the seed and saw the whole cluster.
  CHECK(std::regex_search(err, std::regex{R"(troupe: joined the cluster )"
                                          R"(through coordinator \(members: )"
                                          R"([^)]*worker-1)"}));
  // Both workers did research; the planner and synthesizer ran on the
  // coordinator.
  CHECK(has_progress_line(err, "planner@coordinator"));
  CHECK(has_progress_line(err, "researcher@worker-1"));
  CHECK(has_progress_line(err, "researcher@worker-2"));
  CHECK(has_progress_line(err, "synthesizer@coordinator"));
  CHECK(has_timeline_row(err, "planner@coordinator"));
  CHECK(has_timeline_row(err, "researcher@worker-1"));
  CHECK(has_timeline_row(err, "researcher@worker-2"));
  CHECK(has_timeline_row(err, "synthesizer@coordinator"));
  CHECK(err.find(" lost (") == std::string::npos);

  // The trace names agents by node: the look-ups ran on both workers.
  std::multiset<std::string> searched_by;
  size_t reassigns = 0;
  for (const auto& rec : jsonl(run.trace_path)) {
    if (rec.value("type", "") == "span"
        && rec.value("name", "") == "execute_tool search_notes")
      searched_by.insert(attr(rec, "gen_ai.agent.name"));
    reassigns += rec.value("name", "") == "cluster.reassign";
  }
  CHECK(reassigns == 0);
  CHECK(searched_by.size() == 3);
  CHECK(searched_by.count("researcher@worker-1") >= 1);
  CHECK(searched_by.count("researcher@worker-2") >= 1);
  CHECK(searched_by.count("researcher@worker-1")
          + searched_by.count("researcher@worker-2")
        == 3);

  // The side effect happened once per subtask, on the coordinator.
  auto findings_path =
    cluster.node("coordinator").file("cluster-findings.jsonl");
  INFO("cluster-findings.jsonl:\n" << read_file(findings_path));
  auto findings = jsonl(findings_path);
  REQUIRE(findings.size() == 3);
  std::set<std::string> keys;
  std::set<std::string> recorded;
  for (const auto& f : findings) {
    keys.insert(f.at("key").get<std::string>());
    recorded.insert(f.at("args").at("finding").get<std::string>());
  }
  CHECK(keys.size() == 3);
  CHECK(recorded == summaries);
  // Only the coordinator, which hosts the tool, wrote the findings.
  CHECK_FALSE(
    fs::exists(cluster.node("worker-1").file("cluster-findings.jsonl")));
  CHECK_FALSE(
    fs::exists(cluster.node("worker-2").file("cluster-findings.jsonl")));
  CHECK_FALSE(fs::exists(run.cwd / "cluster-findings.jsonl"));
}

TEST_CASE("killing a worker mid-run still completes the run with no "
          "duplicated side effect",
          "[cluster]") {
  temp_dir dir;
  auto coordinator_file =
    dir.write("coordinator.swarm.json", coordinator_swarm());
  auto worker1_file =
    dir.write("worker-1.swarm.json", worker_swarm("worker-1", true));
  auto worker2_file =
    dir.write("worker-2.swarm.json", worker_swarm("worker-2", false));
  dir.write("failover.script.json", failover_script());
  auto run_file = dir.write("run.swarm.json", failover_run_swarm());

  node_cluster cluster{dir};
  cluster.start_coordinator(coordinator_file);
  cluster.start_worker("worker-1", worker1_file);
  cluster.start_worker("worker-2", worker2_file);
  cluster.wait_joined();
  auto& coordinator = cluster.node("coordinator");
  auto& worker1 = cluster.node("worker-1");
  auto& worker2 = cluster.node("worker-2");
  auto findings_path = coordinator.file("cluster-findings.jsonl");
  auto w1_searches = worker1.file("searches.jsonl");
  auto w2_searches = worker2.file("searches.jsonl");

  cluster_run run{dir, cluster.seed(), run_file, "Research two topics."};

  // Worker-1 is inside search_notes (its journal line is written before the
  // minute-long wait), and it made its subtask's side effect on the
  // coordinator before that.
  std::string topic;
  std::string hung_key;
  auto hung = wait_until(
    {fs::path{w1_searches}.parent_path().string(),
     fs::path{findings_path}.parent_path().string()},
    [&] {
      auto searches = jsonl(w1_searches);
      if (searches.empty())
        return false;
      topic = searches.front().at("args").at("topic").get<std::string>();
      hung_key = searches.front().at("key").get<std::string>();
      for (const auto& f : jsonl(findings_path))
        if (f.at("args").at("subtask") == topic)
          return true;
      return false;
    },
    20s);
  {
    INFO("stderr of troupe run:\n" << run.err());
    INFO(cluster.dump());
    INFO("cluster-findings.jsonl:\n" << read_file(findings_path));
    INFO("worker-1 searches.jsonl:\n" << read_file(w1_searches));
    REQUIRE(hung);
    REQUIRE((topic == "alpha" || topic == "beta"));
    REQUIRE(run.proc->running());
  }
  auto other = topic == "alpha" ? std::string{"beta"} : std::string{"alpha"};

  worker1.proc->send_signal(SIGKILL);
  CHECK(worker1.proc->wait_exit(10s) == -1); // killed by the signal

  auto code = run.proc->wait_exit(45s);
  auto answer = run.answer();
  auto err = run.err();
  auto trace = jsonl(run.trace_path);
  INFO("answer:\n" << answer);
  INFO("stderr of troupe run:\n" << err);
  INFO(cluster.dump());
  INFO("cluster-findings.jsonl:\n" << read_file(findings_path));
  INFO("worker-1 searches.jsonl:\n" << read_file(w1_searches));
  INFO("worker-2 searches.jsonl:\n" << read_file(w2_searches));
  REQUIRE(code == 0);

  // Both subtasks answered, both by worker-2 (worker-1 never answered).
  CHECK(answer.find("notes from worker-2 on alpha") != std::string::npos);
  CHECK(answer.find("notes from worker-2 on beta") != std::string::npos);
  CHECK(answer.find("notes from worker-1") == std::string::npos);

  // One side effect per subtask: the reassigned run's record_finding kept
  // its idempotency key and was answered from the coordinator's ledger.
  auto findings = jsonl(findings_path);
  REQUIRE(findings.size() == 2);
  std::set<std::string> keys;
  std::set<std::string> subtasks;
  for (const auto& f : findings) {
    keys.insert(f.at("key").get<std::string>());
    subtasks.insert(f.at("args").at("subtask").get<std::string>());
  }
  CHECK(keys.size() == 2);
  CHECK(subtasks == std::set<std::string>{"alpha", "beta"});
  CHECK(err.find("ledger: record_finding answered") != std::string::npos);

  // Worker-1 was asked once; worker-2 ran its own subtask and the moved one,
  // the moved one with the same idempotency key worker-1 had.
  CHECK(jsonl(w1_searches).size() == 1);
  auto w2 = jsonl(w2_searches);
  REQUIRE(w2.size() == 2);
  std::map<std::string, std::string> w2_keys;
  for (const auto& s : w2)
    w2_keys[s.at("args").at("topic").get<std::string>()] =
      s.at("key").get<std::string>();
  CHECK(w2_keys.count(other) == 1);
  REQUIRE(w2_keys.count(topic) == 1);
  CHECK(w2_keys[topic] == hung_key);

  // The move shows in the progress and in the trace, and the coordinator saw
  // worker-1 fail.
  CHECK(std::regex_search(
    err, std::regex{R"(node worker-1 lost \([^\n]*\): )"
                    R"(researcher moved to worker-2)"}));
  size_t reassigns = 0;
  for (const auto& rec : trace)
    if (rec.value("type", "") == "event"
        && rec.value("name", "") == "cluster.reassign") {
      ++reassigns;
      CHECK(attr(rec, "troupe.node.from") == "worker-1");
      CHECK(attr(rec, "troupe.node.to") == "worker-2");
    }
  CHECK(reassigns == 1);
  // Worker-1's look-up began and never ended; worker-2 ran it again under the
  // same key, and replayed worker-1's record_finding under its key.
  // idempotency key -> "AGENT STATUS" of each span under it
  std::map<std::string, std::vector<std::string>> tool_spans;
  for (const auto& rec : trace)
    if (rec.value("type", "") == "span"
        && rec.value("name", "").rfind("execute_tool ", 0) == 0)
      tool_spans[attr(rec, "troupe.idempotency_key")].push_back(
        attr(rec, "gen_ai.agent.name") + " " + rec.value("status", ""));
  CAPTURE(tool_spans);
  auto search_spans = tool_spans[hung_key];
  std::sort(search_spans.begin(), search_spans.end());
  CHECK(search_spans
        == std::vector<std::string>{"researcher@worker-1 unfinished",
                                    "researcher@worker-2 ok"});
  auto moved_record = std::find_if(
    findings.begin(), findings.end(),
    [&](const json& f) { return f.at("args").at("subtask") == topic; });
  REQUIRE(moved_record != findings.end());
  auto record_spans = tool_spans[moved_record->at("key").get<std::string>()];
  std::sort(record_spans.begin(), record_spans.end());
  CHECK(record_spans
        == std::vector<std::string>{"researcher@worker-1 ok",
                                    "researcher@worker-2 ok"});
  CHECK(coordinator.err().find("troupe node coordinator: worker-1 failed")
        != std::string::npos);
  CHECK(worker2.err().find("worker-1 failed") != std::string::npos);
}

TEST_CASE("a node that falls silent fails by heartbeat and is greeted again "
          "when it speaks",
          "[cluster]") {
  temp_dir dir;
  node_cluster cluster{dir};
  // A stopped process keeps its connections open: only the heartbeat can
  // tell it is gone.
  std::vector<std::string> quick{"--heartbeat-ms", "100",
                                 "--heartbeat-timeout-ms", "800"};
  cluster.start_coordinator(example("coordinator.swarm.json"), quick);
  cluster.start_worker("worker-1", example("worker.swarm.json"), quick);
  cluster.wait_joined();
  auto& coordinator = cluster.node("coordinator");
  auto& worker = cluster.node("worker-1");
  worker.proc->send_signal(SIGSTOP);
  auto failed = coordinator.proc->wait_for_err(
    std::regex{"troupe node coordinator: worker-1 failed: (.*)"}, 15s);
  INFO(cluster.dump());
  REQUIRE(!failed.empty());
  CHECK(failed[1] == "no heartbeat for 800 ms");
  worker.proc->send_signal(SIGCONT);
  // Its heartbeats resume; the coordinator greets it again.
  auto count = [](const std::string& text, const std::string& what) {
    size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos;
         at = text.find(what, at + 1))
      ++n;
    return n;
  };
  CHECK(wait_until(
    {coordinator.cwd.string()},
    [&] {
      return count(coordinator.err(), "coordinator: worker-1 joined") == 2;
    },
    15s));
  CHECK(coordinator.proc->running());
  CHECK(worker.proc->running());
}

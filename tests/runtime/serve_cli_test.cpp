// `troupe serve` as a user runs it: the real CLI binary as a child process on
// an ephemeral port, driven over HTTP, stopped with SIGTERM.

#include "runtime/serve_main.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include <boost/asio/ip/tcp.hpp>

#include "messages/json_value.hpp"
#include "support/api_client.hpp"
#include "support/child_process.hpp"
#include "support/paths.hpp"
#include "support/prometheus_text.hpp"
#include "support/temp_dir.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

std::string support_swarm() {
  return source_dir() + "/examples/support/support.swarm.json";
}

const std::regex listening{R"(serve: listening on http://127\.0\.0\.1:(\d+))"};

/// The port a started `troupe serve` says it listens on.
uint16_t listening_port(child_process& child) {
  REQUIRE(child.started());
  auto m = child.wait_for_line(listening, 60s);
  INFO(child.err());
  REQUIRE(m.size() == 2);
  return static_cast<uint16_t>(std::stoi(m[1]));
}

/// Follows run `id`'s events to the end; returns its last (final) status.
json final_status(uint16_t port, const std::string& id,
                  const std::string& token = "") {
  sse_stream s{port, events_request(id, token)};
  REQUIRE(s.status() == 200);
  auto frames = s.rest(60s);
  CHECK(s.ended());
  REQUIRE(!frames.empty());
  return json::parse(frames.back().data);
}

} // namespace

TEST_CASE("troupe serve: runs submitted over HTTP complete; SIGTERM stops it "
          "cleanly",
          "[serve]") {
  temp_dir dir;
  const std::string token = "operator-token-0123456789";
  auto auth = dir.write(
    "auth.json",
    json{{"tokens",
          {{{"name", "ops"}, {"token", token}, {"roles", {"operator"}}}}}}
      .dump());
  auto trace = dir.file("trace.jsonl");
  child_process child{{cli_path(), "serve", support_swarm(), "--listen",
                       "127.0.0.1:0", "--store", dir.file("runs.db"), "--auth",
                       auth, "--trace", trace},
                      dir.path().string(), dir.file("out.txt")};
  auto port = listening_port(child);

  CHECK(api_get(port, "/healthz").status == 200);
  CHECK(api_get(port, "/v1/runs").status == 401);
  auto sub = api_post(port, "/v1/runs",
                      {{"swarm", "support-desk"},
                       {"goal", "A customer asks: what is your refund policy, "
                                "and how much is 15% of 240 EUR?"}},
                      token);
  REQUIRE(sub.status == 202);
  auto id = sub.json()["id"].get<std::string>();
  CHECK(final_status(port, id, token)["status"] == "complete");
  auto run = api_get(port, "/v1/runs/" + id, token).json();
  CHECK(run["status"] == "complete");
  CHECK(run["answer"].get<std::string>().find("36") != std::string::npos);

  CHECK(child.stop(30s) == 0);
  CHECK(child.err().find("serve: stopping (SIGTERM)") != std::string::npos);
  // The trace file got the run's spans, whole lines of JSON each.
  std::ifstream in{trace};
  int spans = 0;
  for (std::string line; std::getline(in, line);) {
    auto rec = json::parse(line, nullptr, false);
    REQUIRE(rec.is_object());
    if (rec.value("trace_id", "") == run["trace_id"].get<std::string>())
      ++spans;
  }
  CHECK(spans > 0);
}

TEST_CASE("troupe serve: bad options exit 2, a taken port 3", "[serve]") {
  temp_dir dir;
  auto run = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {cli_path(), "serve"});
    child_process child{args, dir.path().string(), dir.file("out.txt")};
    REQUIRE(child.started());
    auto code = child.wait_exit(60s);
    return std::make_pair(code, child.err());
  };
  SECTION("a missing swarm file") {
    auto [code, err] = run({dir.file("nope.swarm.json"), "--store",
                            dir.file("runs.db"), "--listen", "127.0.0.1:0"});
    CHECK(code == 2);
    CHECK(err.find("nope.swarm.json") != std::string::npos);
  }
  SECTION("an open API on a non-loopback address") {
    auto [code, err] = run({support_swarm(), "--store", dir.file("runs.db"),
                            "--listen", "0.0.0.0:0"});
    CHECK(code == 2);
    CHECK(err.find("without an auth file") != std::string::npos);
  }
  SECTION("a bad auth file") {
    auto auth = dir.write("auth.json", R"({"tokens": [{"name": "a", "token": "short", "roles": ["viewer"]}]})");
    auto [code, err] = run({support_swarm(), "--store", dir.file("runs.db"),
                            "--listen", "127.0.0.1:0", "--auth", auth});
    CHECK(code == 2);
    CHECK(err.find("auth.json") != std::string::npos);
    CHECK(err.find("at least 16 characters") != std::string::npos);
  }
  SECTION("a limit both on the command line and in the auth file") {
    auto auth = dir.write(
      "auth.json",
      R"({"tokens": [{"name": "a", "token": "0123456789abcdef", "roles": ["viewer"]}], "limits": {"burst": 5}})");
    auto [code, err] = run({support_swarm(), "--store", dir.file("runs.db"),
                            "--listen", "127.0.0.1:0", "--auth", auth,
                            "--burst", "7"});
    CHECK(code == 2);
    CHECK(err.find("--burst") != std::string::npos);
  }
  SECTION("a thread count out of range") {
    auto [code, err] = run({support_swarm(), "--store", dir.file("runs.db"),
                            "--listen", "127.0.0.1:0", "--http-threads", "0"});
    CHECK(code == 2);
    CHECK(err.find("--http-threads") != std::string::npos);
  }
  SECTION("a port another socket holds") {
    boost::asio::io_context ioc;
    boost::asio::ip::tcp::acceptor holder{
      ioc, {boost::asio::ip::make_address("127.0.0.1"), 0}};
    auto port = std::to_string(holder.local_endpoint().port());
    auto [code, err] = run({support_swarm(), "--store", dir.file("runs.db"),
                            "--listen", "127.0.0.1:" + port});
    CHECK(code == 3);
    CHECK(err.find("127.0.0.1:" + port) != std::string::npos);
  }
}

TEST_CASE("troupe serve: GET /metrics counts the runs it served, and "
          "promtool accepts it",
          "[serve][metrics]") {
  temp_dir dir;
  child_process child{{cli_path(), "serve", support_swarm(), "--listen",
                       "127.0.0.1:0", "--store", dir.file("runs.db")},
                      dir.path().string(), dir.file("out.txt")};
  auto port = listening_port(child);

  auto before = api_get(port, "/metrics");
  REQUIRE(before.status == 200);
  CHECK(value(parse(before.body), "troupe_runs_finished_total",
              {{"swarm", "support-desk"}, {"status", "complete"}})
        == missing);

  const int runs = 2;
  for (int i = 0; i < runs; ++i) {
    auto sub = api_post(port, "/v1/runs",
                        {{"swarm", "support-desk"},
                         {"goal", "A customer asks: what is your refund "
                                  "policy, and how much is 15% of 240 EUR?"}});
    REQUIRE(sub.status == 202);
    REQUIRE(final_status(port, sub.json()["id"].get<std::string>())["status"]
            == "complete");
  }

  auto after = api_get(port, "/metrics");
  REQUIRE(after.status == 200);
  CHECK_THAT(after.header("Content-Type"),
             Catch::StartsWith("text/plain; version=0.0.4"));
  auto samples = parse(after.body);
  CHECK(value(samples, "troupe_runs_finished_total",
              {{"swarm", "support-desk"}, {"status", "complete"}})
        == runs);
  CHECK(value(samples, "troupe_run_steps_count", {{"swarm", "support-desk"}})
        == runs);
  CHECK(value(samples, "troupe_run_queue_wait_seconds_count") == runs);
  // Both ended before the scrape: none counts as running.
  CHECK(value(samples, "troupe_runs_running") == 0);
  CHECK(value(samples, "troupe_runs", {{"status", "running"}}) == 0);
  CHECK(value(samples, "troupe_agent_runs_total",
              {{"agent", "support"}, {"status", "complete"}})
        == runs);
  // The scripted model's calls and the calculator's, from the trace.
  double model_calls = 0;
  double calculator_calls = 0;
  double input_tokens = 0;
  for (const auto& s : samples) {
    if (s.name == "troupe_model_calls_total")
      model_calls += s.value;
    if (s.name == "troupe_tool_calls_total"
        && s.labels.count("tool") != 0 && s.labels.at("tool") == "calculator")
      calculator_calls += s.value;
    if (s.name == "troupe_tokens_total" && s.labels.count("kind") != 0
        && s.labels.at("kind") == "input")
      input_tokens += s.value;
  }
  CHECK(model_calls >= 2 * runs);
  CHECK(calculator_calls >= runs);
  CHECK(input_tokens > 0);

  auto lint = promtool_check(after.body);
  INFO(lint.out << lint.err);
  CHECK(lint.exit_code == 0);
  CHECK(lint.out.empty());
  CHECK(lint.err.empty());

  CHECK(child.stop(30s) == 0);
}

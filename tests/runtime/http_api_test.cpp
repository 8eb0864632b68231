// The HTTP API (docs/http-api.md) over real loopback HTTP: a run_service on a
// SQLite file in a temp folder with the support and refund example swarms
// (scripted models, no network), an http_api on an ephemeral port, and a
// blocking Beast client (tests/support/api_client.hpp). Runs are waited for
// through their event streams, never by sleeping.

#include "runtime/http_api.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <boost/asio/ip/tcp.hpp>

#include "messages/json_value.hpp"
#include "runtime/run_service.hpp"
#include "runtime/store.hpp"
#include "support/api_client.hpp"
#include "support/paths.hpp"
#include "support/temp_dir.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const std::string viewer_token = "viewer-token-0123456789";
const std::string operator_token = "operator-token-0123456789";
const std::string approver_token = "approver-token-0123456789";

const std::string support_goal =
  "A customer asks: what is your refund policy, and how much is 15% of 240 "
  "EUR?";
const std::string refund_goal = "Order A-1001 arrived broken. Please refund it.";

json auth_doc(json limits = nullptr) {
  json doc{{"tokens",
            {{{"name", "dash"}, {"token", viewer_token}, {"roles", {"viewer"}}},
             {{"name", "ops"},
              {"token", operator_token},
              {"roles", {"operator"}}},
             {{"name", "alice"},
              {"token", approver_token},
              {"roles", {"approver"}}}}}};
  if (!limits.is_null())
    doc["limits"] = std::move(limits);
  return doc;
}

/// The refund example copied into `dir`, its journal files (resolved against
/// the working directory) pointed into `dir` too, so runs leave nothing in
/// the source or build tree.
std::string refund_swarm_in(const temp_dir& dir) {
  auto src = fs::path{source_dir()} / "examples" / "refund";
  for (const char* f : {"refund.script.json", "orders.json"})
    fs::copy_file(src / f, dir.path() / f,
                  fs::copy_options::overwrite_existing);
  std::ifstream in{(src / "refund.swarm.json").string()};
  auto doc = json::parse(in);
  for (auto& [name, tool] : doc["tools"].items())
    if (tool.value("kind", "") == "journal")
      tool["file"] = dir.file(tool["file"].get<std::string>());
  return dir.write("refund.swarm.json", doc.dump(2));
}

std::string support_swarm() {
  return source_dir() + "/examples/support/support.swarm.json";
}

/// A run service and an API server on an ephemeral port.
struct api_fixture {
  temp_dir dir;
  std::unique_ptr<run_service> svc;
  std::unique_ptr<http_api> api;
  uint16_t port = 0;

  explicit api_fixture(http_api_options opts = {}, bool with_auth = true,
                       int32_t max_runs = 8, json limits = nullptr) {
    run_service_options so;
    so.store.path = dir.file("runs.db");
    so.max_concurrent_runs = max_runs;
    svc = std::make_unique<run_service>(
      std::vector<std::string>{support_swarm(), refund_swarm_in(dir)}, so);
    opts.host = "127.0.0.1";
    opts.port = 0;
    if (with_auth)
      opts.auth_file = dir.write("auth.json", auth_doc(limits).dump());
    api = std::make_unique<http_api>(*svc, opts);
    port = api->start();
  }

  ~api_fixture() {
    api->stop();
    svc->shutdown();
  }

  /// Submits a run as the operator; its id.
  std::string submit(const std::string& swarm, const std::string& goal) {
    auto res = api_post(port, "/v1/runs", {{"swarm", swarm}, {"goal", goal}},
                        operator_token);
    REQUIRE(res.status == 202);
    return res.json()["id"].get<std::string>();
  }

  /// The events of a run from the start until its stream ends.
  std::vector<sse_frame> all_events(const std::string& id) {
    auto r = events_request(id, viewer_token);
    sse_stream s{port, r};
    REQUIRE(s.status() == 200);
    auto frames = s.rest(60s);
    REQUIRE(s.ended());
    return frames;
  }
};

json data_of(const sse_frame& f) {
  return json::parse(f.data, nullptr, false);
}

bool is_final(const sse_frame& f) {
  auto d = data_of(f);
  return f.event == "status" && d.value("type", "") == "status"
         && is_finished_status(d.value("status", ""));
}

/// Reads frames until one satisfies `pred` (or the stream ends); all read.
template <class Pred>
std::vector<sse_frame> read_until(sse_stream& s, Pred pred) {
  std::vector<sse_frame> out;
  while (auto f = s.next(30s)) {
    if (f->is_comment())
      continue;
    out.push_back(*f);
    if (pred(*f))
      break;
  }
  return out;
}

void check_error(const api_response& res, int status, const std::string& code,
                 const std::string& needle) {
  INFO(res.body);
  CHECK(res.status == status);
  auto body = res.json();
  REQUIRE(body.is_object());
  CHECK(body["error"]["status"] == status);
  CHECK(body["error"]["code"] == code);
  CHECK(body["error"]["message"].get<std::string>().find(needle)
        != std::string::npos);
  CHECK(res.header("Content-Type") == "application/json");
}

} // namespace

// -- auth ---------------------------------------------------------------------------

TEST_CASE("http api: tokens and roles guard the routes", "[http-api]") {
  api_fixture fx;

  SECTION("/healthz needs no token") {
    auto res = api_get(fx.port, "/healthz");
    REQUIRE(res.status == 200);
    auto body = res.json();
    CHECK(body["status"] == "ok");
    CHECK(body["runs"]["queued"] == 0);
    CHECK(body["runs"]["running"] == 0);
  }
  SECTION("no token is 401 with WWW-Authenticate") {
    auto res = api_get(fx.port, "/v1/runs");
    check_error(res, 401, "unauthorized", "bearer token");
    CHECK(res.header("WWW-Authenticate").rfind("Bearer", 0) == 0);
  }
  SECTION("an unknown token is 401") {
    auto res = api_get(fx.port, "/v1/runs", "not-a-known-token-at-all");
    check_error(res, 401, "unauthorized", "unknown bearer token");
    CHECK(res.header("WWW-Authenticate").find("invalid_token")
          != std::string::npos);
  }
  SECTION("a viewer reads but may not submit: 403 names the role") {
    CHECK(api_get(fx.port, "/v1/runs", viewer_token).status == 200);
    CHECK(api_get(fx.port, "/v1/swarms", viewer_token).status == 200);
    auto res = api_post(fx.port, "/v1/runs",
                        {{"swarm", "support-desk"}, {"goal", support_goal}},
                        viewer_token);
    check_error(res, 403, "forbidden", "operator");
    CHECK(res.json()["error"]["message"].get<std::string>().find("dash")
          != std::string::npos);
    // Nothing was submitted.
    CHECK(fx.svc->list("", 10).total == 0);
  }
  SECTION("an operator submits (and reads, as operators are viewers)") {
    auto res = api_post(fx.port, "/v1/runs",
                        {{"swarm", "support-desk"}, {"goal", support_goal}},
                        operator_token);
    REQUIRE(res.status == 202);
    auto id = res.json()["id"].get<std::string>();
    CHECK(res.header("Location") == "/v1/runs/" + id);
    CHECK(res.json()["swarm"] == "support-desk");
    auto got = api_get(fx.port, "/v1/runs/" + id, operator_token);
    CHECK(got.status == 200);
    CHECK(got.json()["id"] == id);
    // The run acts for the token that submitted it.
    CHECK(fx.svc->get(id)->principal == "ops");
  }
  SECTION("an approver may not submit") {
    auto res = api_post(fx.port, "/v1/runs",
                        {{"swarm", "support-desk"}, {"goal", support_goal}},
                        approver_token);
    check_error(res, 403, "forbidden", "operator");
  }
  SECTION("the swarms are listed") {
    auto res = api_get(fx.port, "/v1/swarms", viewer_token);
    REQUIRE(res.status == 200);
    std::set<std::string> names;
    auto body = res.json();
    for (const auto& s : body["swarms"]) {
      names.insert(s["name"].get<std::string>());
      CHECK(s.contains("description"));
      CHECK(s.contains("entry"));
    }
    CHECK(names == std::set<std::string>{"support-desk", "refund-desk"});
  }
}

TEST_CASE("http api: a bad auth file is refused naming the file and the "
          "problem",
          "[http-api]") {
  temp_dir dir;
  auto fails_with = [&](const std::string& text, const std::string& needle) {
    auto path = dir.write("auth.json", text);
    INFO(text);
    try {
      auth_config::load(path);
      FAIL("no exception");
    } catch (const std::invalid_argument& e) {
      std::string what = e.what();
      INFO(what);
      CHECK(what.find(path) != std::string::npos);
      CHECK(what.find(needle) != std::string::npos);
    }
  };
  auto tok = [](std::string name, std::string token, json roles) {
    return json{{"name", name}, {"token", token}, {"roles", roles}};
  };
  fails_with("{\"tokens\": [", "not valid JSON");
  fails_with(json{{"tokens", {tok("a", "short", {"viewer"})}}}.dump(),
             "/tokens/0/token: must be at least 16 characters");
  fails_with(json{{"tokens", {tok("a", "", {"viewer"})}}}.dump(),
             "/tokens/0/token: must not be empty");
  fails_with(
    json{{"tokens", {tok("a", viewer_token, {"viewer", "admin"})}}}.dump(),
    "/tokens/0/roles/1: unknown role \"admin\"");
  fails_with(json{{"tokens", {tok("a", viewer_token, {"viewer"}),
                              tok("b", viewer_token, {"operator"})}}}
               .dump(),
             "/tokens/1/token: the same token as /tokens/0");
  fails_with(json{{"tokens", {tok("a", viewer_token, {"viewer"})}},
                  {"admins", json::array()}}
               .dump(),
             "/admins: unknown key");
  fails_with(json{{"tokens", {{{"name", "a"},
                               {"token", viewer_token},
                               {"roles", {"viewer"}},
                               {"role", "viewer"}}}}}
               .dump(),
             "/tokens/0/role: unknown key");
  fails_with(json{{"tokens", {tok("a", viewer_token, {"viewer"})}},
                  {"limits", {{"burst", 0}}}}
               .dump(),
             "/limits/burst: must be between");
  fails_with(json{{"tokens", json::array()}}.dump(),
             "/tokens: must be a non-empty array");
  // A token value is never repeated in a message.
  auto path = dir.write("auth.json",
                        json{{"tokens", {tok("a", viewer_token, {"viewer"}),
                                         tok("b", viewer_token, {"viewer"})}}}
                          .dump());
  try {
    auth_config::load(path);
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string{e.what()}.find(viewer_token) == std::string::npos);
  }
  // A missing file, and the server refusing to start on a bad one.
  CHECK_THROWS_WITH(auth_config::load(dir.file("missing.json")),
                    Catch::Contains("missing.json")
                      && Catch::Contains("cannot read"));
  run_service_options so;
  so.store.path = dir.file("runs.db");
  run_service svc{{support_swarm()}, so};
  http_api_options opts;
  opts.port = 0;
  opts.auth_file = dir.write("bad.json", "{\"tokens\": 3}");
  CHECK_THROWS_AS(http_api(svc, opts), std::invalid_argument);
  svc.shutdown();
}

// -- bad requests --------------------------------------------------------------------

TEST_CASE("http api: bad requests get JSON errors naming what was wrong",
          "[http-api]") {
  api_fixture fx{{}, true, 8, json{{"max_body_bytes", 2048}}};
  auto post = [&](const std::string& target, const std::string& body,
                  const std::string& type = "application/json") {
    api_request r;
    r.method = "POST";
    r.target = target;
    r.body = body;
    r.content_type = type;
    r.token = operator_token;
    return api_call(fx.port, r);
  };

  SECTION("a body over the limit is 413") {
    auto big = json{{"swarm", "support-desk"},
                    {"goal", std::string(4096, 'x')}}
                 .dump();
    check_error(post("/v1/runs", big), 413, "payload_too_large", "2048");
    // The server still serves the next connection.
    CHECK(api_get(fx.port, "/healthz").status == 200);
  }
  SECTION("a chunked body over the limit is 413 too") {
    std::string chunk(1500, 'x');
    char size[16];
    std::snprintf(size, sizeof(size), "%zx", chunk.size());
    auto raw = api_raw(fx.port,
                       "POST /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: "
                       "Bearer "
                         + operator_token
                         + "\r\nContent-Type: application/json\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n"
                         + size + "\r\n" + chunk + "\r\n" + size + "\r\n"
                         + chunk + "\r\n0\r\n\r\n");
    CHECK(raw.rfind("HTTP/1.1 413", 0) == 0);
    CHECK(raw.find("payload_too_large") != std::string::npos);
  }
  SECTION("malformed JSON is 400 naming the position") {
    auto res = post("/v1/runs", "{\"swarm\": \"support-desk\", \"goal\": }");
    check_error(res, 400, "bad_request", "malformed JSON");
    CHECK(res.json()["error"]["message"].get<std::string>().find("column")
          != std::string::npos);
  }
  SECTION("a body that is not an object is 400") {
    check_error(post("/v1/runs", "[1, 2]"), 400, "bad_request",
                "expected a JSON object");
  }
  SECTION("a missing, mistyped or unknown field is 400 naming it") {
    check_error(post("/v1/runs", R"({"swarm": "support-desk"})"), 400,
                "bad_request", "goal");
    check_error(post("/v1/runs",
                     R"({"swarm": "support-desk", "goal": "hi", "priority": "high"})"),
                400, "bad_request", "priority");
    check_error(post("/v1/runs",
                     R"({"swarm": "support-desk", "goal": "hi", "colour": 1})"),
                400, "bad_request", "colour");
    check_error(post("/v1/runs", R"({"swarm": "nope", "goal": "hi"})"), 400,
                "bad_request", "nope");
    CHECK(fx.svc->list("", 10).total == 0);
  }
  SECTION("a body that is not JSON is 415") {
    check_error(post("/v1/runs", "swarm=support-desk", "text/plain"), 415,
                "unsupported_media_type", "text/plain");
  }
  SECTION("an unknown run is 404, an unknown route 404") {
    check_error(api_get(fx.port, "/v1/runs/run-42", viewer_token), 404,
                "not_found", "run-42");
    check_error(api_get(fx.port, "/v1/runs/run-42/trace", viewer_token), 404,
                "not_found", "run-42");
    check_error(api_get(fx.port, "/v1/runs/run-42/events", viewer_token), 404,
                "not_found", "run-42");
    check_error(api_post(fx.port, "/v1/runs/run-42/cancel", json::object(),
                         operator_token),
                404, "not_found", "run-42");
    check_error(api_get(fx.port, "/v1/nothing", viewer_token), 404, "not_found",
                "/v1/nothing");
    check_error(api_get(fx.port, "/v2/runs"), 404, "not_found", "/v2/runs");
  }
  SECTION("a run id outside the allowed characters is 400") {
    check_error(api_get(fx.port, "/v1/runs/bad%24id", viewer_token), 400,
                "bad_request", "invalid run id");
    check_error(api_get(fx.port, "/v1/runs/" + std::string(65, 'a'),
                        viewer_token),
                400, "bad_request", "invalid run id");
    check_error(api_post(fx.port, "/v1/approvals/apr%0A1",
                         {{"decision", "approve"}}, approver_token),
                400, "bad_request", "invalid approval id");
  }
  SECTION("a wrong method on a known path is 405 with Allow") {
    api_request r;
    r.method = "DELETE";
    r.target = "/v1/runs";
    r.token = operator_token;
    auto res = api_call(fx.port, r);
    check_error(res, 405, "method_not_allowed", "DELETE");
    CHECK(res.header("Allow") == "GET, POST");
    r.method = "GET";
    r.target = "/v1/runs/run-1/cancel";
    res = api_call(fx.port, r);
    check_error(res, 405, "method_not_allowed", "GET");
    CHECK(res.header("Allow") == "POST");
  }
  SECTION("bad query parameters are 400 naming them") {
    check_error(api_get(fx.port, "/v1/runs?status=done", viewer_token), 400,
                "bad_request", "done");
    check_error(api_get(fx.port, "/v1/runs?limit=0", viewer_token), 400,
                "bad_request", "limit");
    check_error(api_get(fx.port, "/v1/runs?limit=1001", viewer_token), 400,
                "bad_request", "limit");
    check_error(api_get(fx.port, "/v1/runs?colour=red", viewer_token), 400,
                "bad_request", "colour");
    check_error(api_get(fx.port, "/v1/runs?cursor=not-a-cursor", viewer_token),
                400, "bad_request", "cursor");
  }
  SECTION("a malformed request line is 400 and the connection closes") {
    auto raw = api_raw(fx.port, "THIS IS NOT HTTP\r\n\r\n");
    CHECK(raw.rfind("HTTP/1.1 400", 0) == 0);
    CHECK(raw.find("malformed HTTP request") != std::string::npos);
  }
  SECTION("an unknown approval is 404; a bad decision 400") {
    check_error(api_post(fx.port, "/v1/approvals/apr-nope",
                         {{"decision", "approve"}}, approver_token),
                404, "not_found", "apr-nope");
    check_error(api_post(fx.port, "/v1/approvals/apr-nope",
                         {{"decision", "maybe"}}, approver_token),
                400, "bad_request", "decision");
    check_error(api_post(fx.port, "/v1/approvals/apr-nope",
                         {{"decision", "approve"}, {"why", "x"}},
                         approver_token),
                400, "bad_request", "why");
  }
}

TEST_CASE("http api: requests past the burst are 429 with Retry-After",
          "[http-api]") {
  // One token every 1000 s: the burst is all there is during the test.
  api_fixture fx{{}, true, 8,
                 json{{"requests_per_second", 0.001}, {"burst", 3}}};
  for (int i = 0; i < 3; ++i)
    REQUIRE(api_get(fx.port, "/v1/runs", viewer_token).status == 200);
  auto res = api_get(fx.port, "/v1/runs", viewer_token);
  check_error(res, 429, "too_many_requests", "dash");
  auto retry = std::stoll(res.header("Retry-After"));
  CHECK(retry >= 1);
  CHECK(retry <= 1000);
  // Buckets are per token: another token still has its burst, and /healthz
  // is never limited.
  CHECK(api_get(fx.port, "/v1/runs", operator_token).status == 200);
  CHECK(api_get(fx.port, "/healthz").status == 200);
  // Without a token the client's address has a bucket of its own; those
  // requests are still 401, until the address's bucket is empty too.
  for (int i = 0; i < 3; ++i)
    CHECK(api_get(fx.port, "/v1/runs").status == 401);
  CHECK(api_get(fx.port, "/v1/runs").status == 429);
}

// -- listening --------------------------------------------------------------------------

TEST_CASE("http api: without an auth file every route is open, on loopback "
          "only",
          "[http-api]") {
  api_fixture fx{{}, false};
  CHECK(api_get(fx.port, "/v1/runs").status == 200);
  auto res = api_post(fx.port, "/v1/runs",
                      {{"swarm", "support-desk"}, {"goal", support_goal}});
  CHECK(res.status == 202);

  http_api_options open;
  open.host = "0.0.0.0";
  open.port = 0;
  http_api wide{*fx.svc, open};
  CHECK_THROWS_AS(wide.start(), std::invalid_argument);
  open.host = "not-an-address";
  http_api bad{*fx.svc, open};
  CHECK_THROWS_WITH(bad.start(), Catch::Contains("not-an-address"));
  // A port in use: the error names host:port.
  http_api_options taken;
  taken.port = fx.port;
  http_api second{*fx.svc, taken};
  CHECK_THROWS_WITH(second.start(),
                    Catch::Contains("127.0.0.1:" + std::to_string(fx.port)));
}

TEST_CASE("http api: past max_connections a connection is answered 503",
          "[http-api]") {
  http_api_options opts;
  opts.max_connections = 1;
  api_fixture fx{opts};
  boost::asio::io_context ioc;
  boost::asio::ip::tcp::socket held{ioc};
  held.connect({boost::asio::ip::make_address("127.0.0.1"), fx.port});
  auto res = api_get(fx.port, "/healthz");
  check_error(res, 503, "unavailable", "too many connections");
  held.close();
  // Once the server has seen the first one close, there is room again.
  REQUIRE(fx.api->wait_connections(0, 10s));
  CHECK(api_get(fx.port, "/healthz").status == 200);
}

// -- runs --------------------------------------------------------------------------------

TEST_CASE("http api: a submitted run completes with its answer, usage and "
          "cost",
          "[http-api]") {
  api_fixture fx;
  auto id = fx.submit("support-desk", support_goal);
  auto frames = fx.all_events(id);
  REQUIRE(!frames.empty());
  CHECK(is_final(frames.back()));
  auto res = api_get(fx.port, "/v1/runs/" + id, viewer_token);
  REQUIRE(res.status == 200);
  auto run = res.json();
  CHECK(run["id"] == id);
  CHECK(run["swarm"] == "support-desk");
  CHECK(run["goal"] == support_goal);
  CHECK(run["status"] == "complete");
  // 15% of 240, computed by the calculator tool and quoted by the script.
  CHECK(run["answer"].get<std::string>().find("36") != std::string::npos);
  // The scripted replies' usage: 212 + 318 in, 41 + 64 out.
  CHECK(run["usage"]["input_tokens"] == 530);
  CHECK(run["usage"]["output_tokens"] == 105);
  CHECK(run["cost_usd"].is_number());
  CHECK(run["steps"].get<int64_t>() >= 2);
  CHECK(run["attempts"] == 1);
  CHECK(run["trace_id"].get<std::string>().size() == 32);
  CHECK(run["created_ms"].get<int64_t>() > 0);
  CHECK(run["ended_ms"].get<int64_t>() >= run["started_ms"].get<int64_t>());
  CHECK(run["result"].is_object());
  // The final event carries the same outcome.
  auto last = data_of(frames.back());
  CHECK(last["status"] == "complete");
  CHECK(last["answer"] == run["answer"]);
}

TEST_CASE("http api: runs are listed newest first, by status, in pages",
          "[http-api]") {
  api_fixture fx;
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    ids.push_back(fx.submit("support-desk", support_goal));
    fx.all_events(ids.back());
  }
  auto first = api_get(fx.port, "/v1/runs?status=complete&limit=2",
                       viewer_token);
  REQUIRE(first.status == 200);
  auto page1 = first.json();
  CHECK(page1["total"] == 3);
  REQUIRE(page1["runs"].size() == 2);
  REQUIRE(page1["next_cursor"].is_string());
  auto second = api_get(fx.port,
                        "/v1/runs?status=complete&limit=2&cursor="
                          + page1["next_cursor"].get<std::string>(),
                        viewer_token);
  REQUIRE(second.status == 200);
  auto page2 = second.json();
  REQUIRE(page2["runs"].size() == 1);
  CHECK(page2["next_cursor"].is_null());
  std::vector<std::string> listed;
  for (const auto* page : {&page1, &page2})
    for (const auto& r : (*page)["runs"]) {
      listed.push_back(r["id"].get<std::string>());
      CHECK(r["status"] == "complete");
    }
  // Newest first: the reverse of the submission order.
  CHECK(listed == std::vector<std::string>{ids[2], ids[1], ids[0]});
  auto none = api_get(fx.port, "/v1/runs?status=failed", viewer_token).json();
  CHECK(none["total"] == 0);
  CHECK(none["runs"].empty());
  CHECK(none["next_cursor"].is_null());
}

TEST_CASE("http api: the trace route returns the run's spans", "[http-api]") {
  api_fixture fx;
  auto id = fx.submit("support-desk", support_goal);
  fx.all_events(id);
  auto res = api_get(fx.port, "/v1/runs/" + id + "/trace", viewer_token);
  REQUIRE(res.status == 200);
  auto body = res.json();
  CHECK(body["run_id"] == id);
  auto trace_id = fx.svc->get(id)->trace_id;
  CHECK(body["trace_id"] == trace_id);
  REQUIRE(body["records"].is_array());
  bool invoke = false, tool = false;
  for (const auto& rec : body["records"]) {
    auto name = rec.value("name", "");
    invoke = invoke || name == "invoke_agent support";
    tool = tool || name == "execute_tool calculator";
    if (rec.contains("trace_id"))
      CHECK(rec["trace_id"] == trace_id);
  }
  CHECK(invoke);
  CHECK(tool);
}

// -- event streams --------------------------------------------------------------------

TEST_CASE("http api: a finished run's events replay, and resume after "
          "Last-Event-ID",
          "[http-api]") {
  api_fixture fx;
  auto id = fx.submit("support-desk", support_goal);
  auto all = fx.all_events(id);
  REQUIRE(all.size() >= 3);
  for (size_t i = 0; i < all.size(); ++i) {
    CHECK(all[i].id == std::to_string(i + 1));
    CHECK(data_of(all[i])["type"] == all[i].event);
  }
  CHECK(is_final(all.back()));
  CHECK(std::count_if(all.begin(), all.end(), is_final) == 1);
  CHECK(std::any_of(all.begin(), all.end(),
                    [](const sse_frame& f) { return f.event == "trace"; }));

  auto k = all.size() / 2;
  auto resumed = [&](api_request r) {
    r.token = viewer_token;
    sse_stream s{fx.port, r};
    REQUIRE(s.status() == 200);
    CHECK(s.header("Content-Type") == "text/event-stream");
    CHECK(s.header("Cache-Control") == "no-cache");
    auto frames = s.rest(60s);
    CHECK(s.ended());
    REQUIRE(frames.size() == all.size() - k);
    for (size_t i = 0; i < frames.size(); ++i) {
      CHECK(frames[i].id == all[k + i].id);
      CHECK(frames[i].data == all[k + i].data);
    }
  };
  SECTION("Last-Event-ID header") {
    auto r = events_request(id);
    r.headers = {{"Last-Event-ID", std::to_string(k)}};
    resumed(r);
  }
  SECTION("?after=") {
    api_request r;
    r.target = "/v1/runs/" + id + "/events?after=" + std::to_string(k);
    resumed(r);
  }
  SECTION("the header wins over ?after= (a browser reconnecting)") {
    api_request r;
    r.target = "/v1/runs/" + id + "/events?after=0";
    r.headers = {{"Last-Event-ID", std::to_string(k)}};
    resumed(r);
  }
  SECTION("after the last event: the stream ends at once, empty") {
    auto r = events_request(id, viewer_token);
    r.headers = {{"Last-Event-ID", all.back().id}};
    sse_stream s{fx.port, r};
    REQUIRE(s.status() == 200);
    CHECK(s.rest(30s).empty());
    CHECK(s.ended());
  }
  SECTION("bad positions are 400") {
    check_error(api_get(fx.port, "/v1/runs/" + id + "/events?after=-1",
                        viewer_token),
                400, "bad_request", "after");
    auto r = events_request(id, viewer_token);
    r.headers = {{"Last-Event-ID", "abc"}};
    check_error(api_call(fx.port, r), 400, "bad_request", "Last-Event-ID");
  }
}

TEST_CASE("http api: a stream too far behind ends, and resumes from "
          "Last-Event-ID losing nothing",
          "[http-api]") {
  http_api_options opts;
  // Two events in flight per client: a finished run's replay (posted all at
  // once, before any is written) overflows it at once.
  opts.sse_queue_limit = 2;
  api_fixture fx{opts};
  auto id = fx.submit("support-desk", support_goal);
  fx.svc->wait(id, 60s);
  std::vector<sse_frame> all;
  int streams = 0;
  while (all.empty() || !is_final(all.back())) {
    REQUIRE(streams < 1000);
    auto r = events_request(id, viewer_token);
    if (!all.empty())
      r.headers = {{"Last-Event-ID", all.back().id}};
    sse_stream s{fx.port, r};
    REQUIRE(s.status() == 200);
    auto frames = s.rest(30s);
    CHECK(s.ended());
    REQUIRE(!frames.empty());
    CHECK(frames.size() <= 2);
    all.insert(all.end(), frames.begin(), frames.end());
    ++streams;
  }
  CHECK(streams > 1);
  for (size_t i = 0; i < all.size(); ++i)
    CHECK(all[i].id == std::to_string(i + 1));
  CHECK(data_of(all.back())["status"] == "complete");
}

TEST_CASE("http api: a live run's events arrive in order, approval and all",
          "[http-api]") {
  api_fixture fx;
  auto id = fx.submit("refund-desk", refund_goal);
  auto r = events_request(id, viewer_token);
  sse_stream s{fx.port, r};
  REQUIRE(s.status() == 200);
  // The run waits for a human: its approval event arrives on the stream.
  auto before = read_until(
    s, [](const sse_frame& f) { return f.event == "approval"; });
  REQUIRE(!before.empty());
  REQUIRE(before.back().event == "approval");
  auto request = data_of(before.back())["request"];
  CHECK(request["run_id"] == id);
  CHECK(request["action"] == "issue_refund");
  // Approving lets it go on; the rest follows on the same stream, live.
  auto decided = api_post(fx.port, "/v1/approvals/" + request["id"].get<std::string>(),
                          {{"decision", "approve"}}, approver_token);
  REQUIRE(decided.status == 200);
  auto after = s.rest(60s);
  CHECK(s.ended());
  REQUIRE(!after.empty());
  CHECK(is_final(after.back()));
  CHECK(data_of(after.back())["status"] == "complete");
  std::vector<sse_frame> all = before;
  all.insert(all.end(), after.begin(), after.end());
  for (size_t i = 0; i < all.size(); ++i)
    CHECK(all[i].id == std::to_string(i + 1));
}

TEST_CASE("http api: an idle stream gets keep-alive comments", "[http-api]") {
  http_api_options opts;
  opts.keep_alive_interval = 50ms;
  api_fixture fx{opts};
  auto id = fx.submit("refund-desk", refund_goal);
  auto r = events_request(id, viewer_token);
  sse_stream s{fx.port, r};
  REQUIRE(s.status() == 200);
  read_until(s, [](const sse_frame& f) { return f.event == "approval"; });
  // Once the records of the pause are out, nothing happens while the run
  // waits for its human: a comment comes.
  auto f = s.next(30s);
  while (f && !f->is_comment())
    f = s.next(30s);
  REQUIRE(f);
  CHECK(f->comment == "keep-alive");
  CHECK(!s.ended());
}

TEST_CASE("http api: stop() ends open event streams", "[http-api]") {
  api_fixture fx;
  auto id = fx.submit("refund-desk", refund_goal);
  auto r = events_request(id, viewer_token);
  sse_stream s{fx.port, r};
  REQUIRE(s.status() == 200);
  read_until(s, [](const sse_frame& f) { return f.event == "approval"; });
  fx.api->stop();
  s.rest(30s);
  CHECK(s.ended());
  CHECK(fx.api->connections() == 0);
  fx.api->stop(); // idempotent
}

// -- cancel and approvals -----------------------------------------------------------

TEST_CASE("http api: queued and running runs are cancelled; twice is 409",
          "[http-api]") {
  api_fixture fx{{}, true, 1};
  auto running = fx.submit("refund-desk", refund_goal);
  auto r = events_request(running, viewer_token);
  sse_stream s{fx.port, r};
  REQUIRE(s.status() == 200);
  // Waiting for approval, it holds the only slot: the next one queues.
  read_until(s, [](const sse_frame& f) { return f.event == "approval"; });
  auto queued = fx.submit("support-desk", support_goal);
  CHECK(api_get(fx.port, "/v1/runs/" + queued, viewer_token).json()["status"]
        == "queued");
  CHECK(api_get(fx.port, "/healthz").json()["runs"]["queued"] == 1);

  auto c1 = api_post(fx.port, "/v1/runs/" + queued + "/cancel", json::object(),
                     operator_token);
  REQUIRE(c1.status == 202);
  CHECK(c1.json()["id"] == queued);
  CHECK(fx.all_events(queued).size() >= 1);
  CHECK(api_get(fx.port, "/v1/runs/" + queued, viewer_token).json()["status"]
        == "cancelled");

  // A viewer may not cancel.
  check_error(api_post(fx.port, "/v1/runs/" + running + "/cancel",
                       json::object(), viewer_token),
              403, "forbidden", "operator");
  auto c2 = api_post(fx.port, "/v1/runs/" + running + "/cancel",
                     json::object(), operator_token);
  REQUIRE(c2.status == 202);
  auto rest = s.rest(60s);
  CHECK(s.ended());
  REQUIRE(!rest.empty());
  CHECK(data_of(rest.back())["status"] == "cancelled");
  CHECK(api_get(fx.port, "/v1/runs/" + running, viewer_token).json()["status"]
        == "cancelled");
  check_error(api_post(fx.port, "/v1/runs/" + running + "/cancel",
                       json::object(), operator_token),
              409, "conflict", running);
  // A cancel without a body is fine too (and conflicts the same way).
  api_request bare;
  bare.method = "POST";
  bare.target = "/v1/runs/" + queued + "/cancel";
  bare.token = operator_token;
  CHECK(api_call(fx.port, bare).status == 409);
}

TEST_CASE("http api: a pending approval is listed and decided once",
          "[http-api]") {
  api_fixture fx;
  auto id = fx.submit("refund-desk", refund_goal);
  auto r = events_request(id, viewer_token);
  sse_stream s{fx.port, r};
  REQUIRE(s.status() == 200);
  read_until(s, [](const sse_frame& f) { return f.event == "approval"; });

  auto list = api_get(fx.port, "/v1/approvals", viewer_token);
  REQUIRE(list.status == 200);
  auto approvals = list.json()["approvals"];
  REQUIRE(approvals.size() == 1);
  auto req = approvals[0];
  CHECK(req["run_id"] == id);
  CHECK(req["agent"] == "support");
  CHECK(req["action"] == "issue_refund");
  CHECK(req["args"]["order_id"] == "A-1001");
  CHECK(req["reason"].get<std::string>().find("100 USD") != std::string::npos);
  CHECK(req["expires_ms"].get<int64_t>() > req["created_ms"].get<int64_t>());
  auto apr = req["id"].get<std::string>();

  check_error(api_post(fx.port, "/v1/approvals/" + apr,
                       {{"decision", "approve"}}, viewer_token),
              403, "forbidden", "approver");
  check_error(api_post(fx.port, "/v1/approvals/" + apr,
                       {{"decision", "approve"}}, operator_token),
              403, "forbidden", "approver");
  auto ok = api_post(fx.port, "/v1/approvals/" + apr,
                     {{"decision", "approve"}, {"note", "checked the photos"}},
                     approver_token);
  REQUIRE(ok.status == 200);
  CHECK(ok.json()["id"] == apr);
  CHECK(ok.json()["run_id"] == id);

  auto rest = s.rest(60s);
  REQUIRE(!rest.empty());
  CHECK(data_of(rest.back())["status"] == "complete");
  CHECK(api_get(fx.port, "/v1/runs/" + id, viewer_token).json()["status"]
        == "complete");
  CHECK(api_get(fx.port, "/v1/approvals", viewer_token).json()["approvals"]
          .empty());
  auto again = api_post(fx.port, "/v1/approvals/" + apr,
                        {{"decision", "deny"}}, approver_token);
  CHECK((again.status == 404 || again.status == 409));
}

TEST_CASE("http api: with several threads a handler that waits holds only its "
          "own",
          "[http-api]") {
  // The /metrics handler stands in for one waiting on a store another
  // process has locked: it holds its thread until the test lets it go.
  std::mutex mtx;
  std::condition_variable cv;
  bool entered = false, released = false;
  auto metrics = [&] {
    std::unique_lock<std::mutex> lock{mtx};
    entered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return released; });
    return std::string{"# TYPE up gauge\nup 1\n"};
  };
  temp_dir dir;
  run_service_options so;
  so.store.path = dir.file("runs.db");
  run_service svc{{support_swarm()}, so};
  http_api_options opts;
  opts.port = 0;
  opts.threads = 2;
  http_api api{svc, opts, metrics};
  auto port = api.start();
  auto held = std::async(std::launch::async,
                         [&] { return api_get(port, "/metrics"); });
  {
    std::unique_lock<std::mutex> lock{mtx};
    REQUIRE(cv.wait_for(lock, 15s, [&] { return entered; }));
  }
  // Answered while /metrics still waits: with one thread these would wait
  // for it, and time out.
  auto health = api_get(port, "/healthz");
  auto runs = api_get(port, "/v1/runs");
  bool still_waiting = held.wait_for(0s) == std::future_status::timeout;
  {
    std::lock_guard<std::mutex> guard{mtx};
    released = true;
  }
  cv.notify_all();
  auto metrics_res = held.get();
  CHECK(still_waiting);
  CHECK(health.status == 200);
  CHECK(runs.status == 200);
  CHECK(metrics_res.status == 200);
  CHECK(metrics_res.body == "# TYPE up gauge\nup 1\n");
  api.stop();
  svc.shutdown();
}

#include "bench/gateway_bench.hpp"
#include "bench/driver.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/stateful_actor.hpp>

#include "actors/model_codecs.hpp"
#include "messages/errors.hpp"
#include "messages/model.hpp"
#include "runtime/runtime.hpp"
#include "support/model_test_server.hpp"

namespace troupe::bench {

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using namespace std::chrono;
using troupe::test::model_reply;
using troupe::test::model_test_server;

/// What the server answers every request with, and what a reply must say.
constexpr const char* reply_text = "The answer is 42.";
/// The end of a streamed OpenAI reply, which a bare streamed reply must hold.
constexpr const char* stream_end = "data: [DONE]";
constexpr const char* plain_model = "openai:bench";
constexpr const char* stream_model = "openai:bench-stream";
/// Bound on any one request, from either client.
constexpr auto request_timeout = seconds{10};
/// Latency rounds per path, and the warm-up of each (whole replies, streamed
/// ones).
constexpr int latency_rounds = 4;
constexpr int64_t latency_warmup = 50;
constexpr int64_t stream_warmup = 5;

/// A loopback model server answering every request with reply_text.
std::unique_ptr<model_test_server> start_server() {
  auto server = std::make_unique<model_test_server>();
  server->respond_with([](const json&, const std::string&) {
    return model_reply::say(reply_text);
  });
  return server;
}

/// A runtime whose models plain_model and stream_model are endpoints of
/// `server`, its HTTP client keeping `max_idle` idle connections. No retries
/// (a failure must show) and no API key (whatever the environment holds), so
/// the gateway sends what the bare client sends.
runtime_config gateway_config(const model_test_server& server, size_t max_idle) {
  runtime_config cfg;
  cfg.load_middleman = false;
  if (const char* policy = std::getenv("TROUPE_SCHEDULER"))
    cfg.scheduler_policy = policy;
  if (const char* threads = std::getenv("TROUPE_SCHEDULER_THREADS"))
    cfg.scheduler_threads = static_cast<size_t>(std::atoi(threads));
  cfg.http.max_idle_per_host = max_idle;
  for (bool stream : {false, true}) {
    model_settings s;
    s.base_url = server.base_url();
    s.api_key_env = "TROUPE_BENCH_NO_API_KEY";
    s.stream = stream;
    s.request_timeout = duration_cast<milliseconds>(request_timeout);
    s.retry.max_retries = 0;
    cfg.models[stream ? stream_model : plain_model] = s;
  }
  return cfg;
}

/// The chat request every caller sends to `model`.
chat_request bench_request(const std::string& model) {
  chat_request req;
  req.ref.run_id = "bench";
  req.ref.trace_id = "00000000000000000000000000000001";
  req.ref.principal = "local";
  req.agent = "bench";
  req.model = model;
  chat_message system;
  system.role = chat_role::system;
  system.content = "You answer in one short sentence.";
  chat_message user;
  user.role = chat_role::user;
  user.content = "What is the answer?";
  req.messages = {system, user};
  return req;
}

// -- the gateway's callers ---------------------------------------------------

/// Chat requests through the gateway.
using chat_drive_plan = drive_plan<model_actor, chat_request, chat_response>;

/// A plan sending bench_request(`model`) to `target`, each reply checked to
/// say reply_text.
chat_drive_plan chat_plan(const model_actor& target, const std::string& model) {
  chat_drive_plan plan;
  plan.name = "gateway_bench_driver";
  plan.target = target;
  plan.request = bench_request(model);
  plan.timeout = caf::duration{request_timeout};
  plan.check = [](const chat_response& r) {
    return r.message.content == reply_text
             ? std::string{}
             : "unexpected reply: " + r.message.content;
  };
  return plan;
}

// -- the bare Beast client ---------------------------------------------------

/// What the bare sessions of one measurement share; they all run on one
/// io_context on the calling thread, so nothing here needs a lock.
struct bare_plan {
  tcp::endpoint server;
  http::request<http::string_body> request;
  /// Text a good reply's body holds.
  std::string expect;
  /// Close the connection after every reply (else keep it alive).
  bool new_connection = false;
  /// Requests not started yet.
  int64_t left = 0;
  /// Completions before the clock starts (and before latencies are kept).
  int64_t warmup = 0;
  int64_t completed = 0;
  int64_t failed = 0;
  std::string first_error;
  steady_clock::time_point clock_start;
  steady_clock::time_point clock_end;
  std::vector<double> us;
};

/// One connection making requests one after another until the plan has none
/// left, like Beast's example/http/client/async: every socket operation with
/// a deadline, every failure counted and followed by a fresh connection.
class bare_session : public std::enable_shared_from_this<bare_session> {
public:
  bare_session(net::io_context& ioc, bare_plan& plan)
    : stream_{ioc}, plan_{plan} {
  }

  /// Starts the first request.
  void run() {
    next();
  }

private:
  void next() {
    if (plan_.left == 0)
      return close();
    --plan_.left;
    started_ = steady_clock::now();
    if (!stream_.socket().is_open()) {
      stream_.expires_after(request_timeout);
      return stream_.async_connect(
        plan_.server,
        beast::bind_front_handler(&bare_session::on_connect, shared_from_this()));
    }
    write();
  }

  void on_connect(beast::error_code ec) {
    if (ec)
      return fail(ec, "connect");
    write();
  }

  void write() {
    stream_.expires_after(request_timeout);
    http::async_write(stream_, plan_.request,
                      beast::bind_front_handler(&bare_session::on_write,
                                                shared_from_this()));
  }

  void on_write(beast::error_code ec, size_t) {
    if (ec)
      return fail(ec, "write");
    response_ = {};
    stream_.expires_after(request_timeout);
    http::async_read(stream_, buffer_, response_,
                     beast::bind_front_handler(&bare_session::on_read,
                                               shared_from_this()));
  }

  void on_read(beast::error_code ec, size_t) {
    if (ec)
      return fail(ec, "read");
    auto now = steady_clock::now();
    if (response_.result_int() != 200
        || response_.body().find(plan_.expect) == std::string::npos)
      count_failure("status " + std::to_string(response_.result_int()) + ": "
                    + response_.body().substr(0, 200));
    else if (plan_.completed >= plan_.warmup)
      plan_.us.push_back(duration<double, std::micro>(now - started_).count());
    complete(now);
    if (plan_.new_connection || !response_.keep_alive())
      close_socket();
    next();
  }

  void fail(beast::error_code ec, const char* what) {
    count_failure(std::string{what} + ": " + ec.message());
    complete(steady_clock::now());
    close_socket();
    next();
  }

  void count_failure(const std::string& error) {
    if (plan_.failed++ == 0)
      plan_.first_error = error;
  }

  void complete(steady_clock::time_point now) {
    if (++plan_.completed == plan_.warmup)
      plan_.clock_start = now;
    plan_.clock_end = now;
  }

  void close_socket() {
    beast::error_code ignored; // the socket is being discarded either way
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
    buffer_.clear();
  }

  void close() {
    stream_.cancel();
    close_socket();
  }

  beast::tcp_stream stream_;
  bare_plan& plan_;
  beast::flat_buffer buffer_;
  http::response<http::string_body> response_;
  steady_clock::time_point started_;
};

/// A bare plan POSTing to `model`'s endpoint on `server` the body the gateway
/// would send for bench_request(model).
bare_plan bare_plan_for(const model_test_server& server, const std::string& model,
                        bool stream) {
  model_wire_options wire;
  wire.model_id = split_model_name(model).second;
  wire.stream = stream;
  bare_plan plan;
  plan.server = tcp::endpoint{net::ip::make_address("127.0.0.1"), server.port()};
  auto& req = plan.request;
  req.method(http::verb::post);
  req.target("/v1/chat/completions");
  req.version(11);
  req.set(http::field::host, "127.0.0.1:" + std::to_string(server.port()));
  req.set(http::field::content_type, "application/json");
  if (stream)
    req.set(http::field::accept, "text/event-stream");
  req.keep_alive(true);
  req.body() = openai::encode_request(bench_request(model), wire).dump();
  req.prepare_payload();
  plan.expect = stream ? stream_end : reply_text;
  return plan;
}

/// Runs `plan` on `sessions` connections on this thread, to its end.
void run_bare(bare_plan& plan, int64_t sessions) {
  net::io_context ioc;
  plan.clock_start = steady_clock::now();
  for (int64_t i = 0; i < sessions; ++i)
    std::make_shared<bare_session>(ioc, plan)->run();
  ioc.run();
}

// -- the workload's parts ----------------------------------------------------

/// An rps measurement's JSON line, its "rps" figure, and whether it failed.
struct rps_figures {
  json line;
  double rps = 0;
  bool ok = true;
};

/// Fills the figures every rps line has.
rps_figures rps_line(const std::string& path, const gateway_bench_options& opts,
                     int64_t warmup, double secs, int64_t failed,
                     const std::string& first_error, size_t connections,
                     double cpu_us) {
  rps_figures out;
  auto timed = opts.requests;
  out.rps = secs > 0 ? static_cast<double>(timed) / secs : 0;
  out.ok = failed == 0;
  out.line = json{{"workload", "gateway"},
                  {"part", "rps"},
                  {"path", path},
                  {"requests", timed},
                  {"warmup_requests", warmup},
                  {"in_flight", opts.in_flight},
                  {"failed", failed},
                  {"wall_ms", round2(secs * 1000.0)},
                  {"rps", std::round(out.rps)},
                  {"server_connections", connections},
                  {"process_cpu_us_per_request",
                   round2(cpu_us / static_cast<double>(timed + warmup))}};
  if (failed > 0)
    out.line["first_error"] = first_error;
  return out;
}

/// Requests per second through rt.model(plain_model) with a client pool of
/// `max_idle` connections.
rps_figures gateway_rps(const gateway_bench_options& opts, size_t max_idle,
                        const std::string& path) {
  auto server = start_server();
  runtime rt{gateway_config(*server, max_idle)};
  auto cpu = process_cpu_us();
  auto plan = chat_plan(rt.model(plain_model), plain_model);
  plan.warmup = 2 * opts.in_flight;
  plan.total = opts.requests + plan.warmup;
  plan.in_flight = opts.in_flight;
  auto r = drive(rt.system(), plan);
  auto out = rps_line(path, opts, plan.warmup, r.secs, r.failed, r.first_error,
                      server->connections(), process_cpu_us() - cpu);
  out.line["max_idle_per_host"] = max_idle;
  out.line["io_threads"] = runtime_config{}.io_threads;
  out.line["scheduler_threads"] = rt.system().scheduler().num_workers();
  rt.shutdown();
  server->stop();
  return out;
}

/// Requests per second from the bare client on in_flight connections.
rps_figures bare_rps(const gateway_bench_options& opts, bool new_connection,
                     const std::string& path) {
  auto server = start_server();
  auto plan = bare_plan_for(*server, plain_model, false);
  plan.new_connection = new_connection;
  plan.warmup = 2 * opts.in_flight;
  plan.left = opts.requests + plan.warmup;
  auto cpu = process_cpu_us();
  run_bare(plan, opts.in_flight);
  auto secs = duration<double>(plan.clock_end - plan.clock_start).count();
  auto out = rps_line(path, opts, plan.warmup, secs, plan.failed,
                      plan.first_error, server->connections(),
                      process_cpu_us() - cpu);
  server->stop();
  return out;
}

/// Sequential round trips, bare and through the gateway, whole and streamed:
/// prints one line per path; false when a request failed.
bool latencies(const gateway_bench_options& opts) {
  auto server = start_server();
  runtime rt{gateway_config(*server, http_client_options{}.max_idle_per_host)};
  struct path {
    const char* name = "";
    bool gateway = false;
    bool stream = false;
    std::vector<double> us;
    int64_t failed = 0;
    std::string first_error;
  };
  // Each gateway path right after its bare one, which it is compared with.
  std::vector<path> paths;
  auto add = [&paths](const char* name, bool gateway, bool stream) {
    path p;
    p.name = name;
    p.gateway = gateway;
    p.stream = stream;
    paths.push_back(std::move(p));
  };
  add("bare Beast, keep-alive", false, false);
  add("gateway, keep-alive", true, false);
  if (opts.stream_calls > 0) {
    add("bare Beast, keep-alive, streamed", false, true);
    add("gateway, keep-alive, streamed", true, true);
  }
  for (int round = 0; round < latency_rounds; ++round)
    for (size_t k = 0; k < paths.size(); ++k) {
      auto& p = paths[(k + static_cast<size_t>(round)) % paths.size()];
      auto model = p.stream ? stream_model : plain_model;
      const auto warmup = p.stream ? stream_warmup : latency_warmup;
      const auto per_round = std::max<int64_t>(
        1, (p.stream ? opts.stream_calls : opts.latency_calls) / latency_rounds);
      std::vector<double> us;
      int64_t failed = 0;
      std::string first_error;
      if (p.gateway) {
        auto plan = chat_plan(rt.model(model), model);
        plan.warmup = warmup;
        plan.total = per_round + warmup;
        auto r = drive(rt.system(), plan);
        us = std::move(r.us);
        failed = r.failed;
        first_error = r.first_error;
      } else {
        auto plan = bare_plan_for(*server, model, p.stream);
        plan.warmup = warmup;
        plan.left = per_round + warmup;
        run_bare(plan, 1);
        us = std::move(plan.us);
        failed = plan.failed;
        first_error = plan.first_error;
      }
      p.us.insert(p.us.end(), us.begin(), us.end());
      if (p.failed == 0 && failed > 0)
        p.first_error = first_error;
      p.failed += failed;
    }
  bool ok = true;
  json bare;
  for (auto& p : paths) {
    json line{{"workload", "gateway"},
              {"part", "latency"},
              {"path", p.name},
              {"calls", p.us.size()}};
    line.update(latency_figures(p.us));
    line["rounds"] = latency_rounds;
    line["warmup_per_round"] = p.stream ? stream_warmup : latency_warmup;
    line["failed"] = p.failed;
    if (p.failed > 0)
      line["first_error"] = p.first_error;
    if (!p.gateway) {
      bare = line;
    } else {
      line["added_p50_us"] = round2(line["p50_us"].get<double>()
                                    - bare["p50_us"].get<double>());
      line["added_p99_us"] = round2(line["p99_us"].get<double>()
                                    - bare["p99_us"].get<double>());
      line["server_connections_all_paths"] = server->connections();
    }
    print_line(line);
    ok &= p.failed == 0;
  }
  rt.shutdown();
  server->stop();
  return ok;
}

} // namespace

bool run_gateway_bench(const gateway_bench_options& opts) {
  const auto default_idle = http_client_options{}.max_idle_per_host;
  const auto pool = static_cast<size_t>(opts.in_flight);
  auto keep_alive = gateway_rps(opts, pool, "gateway, keep-alive (pool >= in flight)");
  print_line(keep_alive.line);
  auto fresh = gateway_rps(opts, 0, "gateway, new connection per request");
  print_line(fresh.line);
  bool ok = keep_alive.ok && fresh.ok;
  if (pool > default_idle) {
    auto small = gateway_rps(opts, default_idle,
                             "gateway, keep-alive, default pool (fewer idle "
                             "than in flight)");
    print_line(small.line);
    ok &= small.ok;
  }
  auto bare_keep = bare_rps(opts, false, "bare Beast, keep-alive");
  print_line(bare_keep.line);
  auto bare_fresh = bare_rps(opts, true, "bare Beast, new connection per request");
  print_line(bare_fresh.line);
  ok &= bare_keep.ok && bare_fresh.ok;
  auto ratio = [](double a, double b) { return b > 0 ? round2(a / b) : 0.0; };
  print_line(json{{"workload", "gateway"},
                  {"part", "rps ratios"},
                  {"gateway_keepalive_over_new_connection",
                   ratio(keep_alive.rps, fresh.rps)},
                  {"bare_keepalive_over_new_connection",
                   ratio(bare_keep.rps, bare_fresh.rps)},
                  {"gateway_over_bare_keepalive", ratio(keep_alive.rps, bare_keep.rps)},
                  {"gateway_over_bare_new_connection",
                   ratio(fresh.rps, bare_fresh.rps)}});
  ok &= latencies(opts);
  return ok;
}

} // namespace troupe::bench

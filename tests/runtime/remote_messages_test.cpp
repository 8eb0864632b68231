// Every protocol message crosses a real node boundary intact: two actor
// systems in this process, each with CAF's middleman, talk over loopback TCP.
// Node A publishes an echo actor; node B sends each message type through a
// proxy and checks that what comes back equals what it sent, so every value
// is serialized and deserialized twice (B -> A -> B).

#include "messages/type_ids.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "messages/errors.hpp"

using namespace troupe;
using namespace std::chrono_literals;

namespace {

/// Asks the echo actor to echo a caf::error as a value: (rm_error_atom, error).
using rm_error_atom = caf::atom_constant<caf::atom("rm_error")>;

/// Asks the echo actor to fail the request with a troupe error whose sentence
/// is the string: (rm_fail_atom, std::string).
using rm_fail_atom = caf::atom_constant<caf::atom("rm_fail")>;

constexpr auto reply_timeout = 10s;

constexpr int64_t i64_min = std::numeric_limits<int64_t>::min();
constexpr int64_t i64_max = std::numeric_limits<int64_t>::max();
constexpr int32_t i32_min = std::numeric_limits<int32_t>::min();
constexpr int32_t i32_max = std::numeric_limits<int32_t>::max();

// -- samples: every field set to something other than its default -----------

json rich_json(const std::string& tag) {
  return json{
    {"tag", tag},
    {"unicode", "Zürich 東京 🤖 naïve — “quoted”"},
    {"escapes", "tab\there\nnewline \"quote\" back\\slash \x01 control"},
    {"int_min", i64_min},
    {"int_max", i64_max},
    {"uint_max", std::numeric_limits<uint64_t>::max()},
    {"pi", 3.141592653589793},
    {"tiny", 1e-300},
    {"negative", -0.5},
    {"flags", {true, false, nullptr}},
    {"matrix",
     json::array({json::array({1, 2, 3}),
                  json::array({json::array({"deep"}), json::object(),
                               json::array()})})},
    {"nested", {{"level1", {{"level2", {{"level3", "bottom"}}}}}}},
  };
}

run_ref sample_ref() {
  return {"run-Ω-1", "0123456789abcdef0123456789abcdef", "fedcba9876543210",
          "alice@example.com", i32_max};
}

model_tool_call sample_model_call(const std::string& id) {
  return {id, "calculator", rich_json("args " + id),
          "{\"expression\": \"2 + 2\"", "unexpected end of input at 23"};
}

chat_message sample_message() {
  return {chat_role::tool, "résumé:\nline \"two\"",
          {sample_model_call("call-1"), sample_model_call("call-2")},
          "call-0", "kv_lookup"};
}

tool_spec sample_tool_spec(const std::string& name) {
  return {name, "Evaluates arithmetic — exactly",
          json{{"type", "object"},
               {"properties", {{"expression", {{"type", "string"}}}}},
               {"required", {"expression"}}}};
}

chat_request sample_chat_request() {
  chat_request req;
  req.ref = sample_ref();
  req.agent = "support";
  req.model = "openai:gpt-4o-mini";
  req.messages = {sample_message(),
                  {chat_role::assistant, "thinking…", {}, "", ""}};
  req.tools = {sample_tool_spec("calculator"), sample_tool_spec("clock")};
  req.params = json{{"temperature", 0.25}, {"max_tokens", 4096}};
  req.deadline_ms = i64_max;
  return req;
}

chat_response sample_chat_response() {
  return {sample_message(), {i64_max, i64_min}, "tool_calls",
          "scripted:x.json", true};
}

tool_error sample_tool_error() {
  return {tool_error_kind::rate_limited, "queue full (32 waiting) — übervoll"};
}

tool_call sample_tool_call() {
  return {sample_ref(), "support", i32_min,        "call-9",
          "kv_lookup",  rich_json("kv"), "idem-ä-1", i64_max};
}

tool_attempt sample_attempt(int32_t n) {
  return {n, i64_min, i64_max, 250 * n, tool_error_kind::timeout};
}

tool_result sample_tool_result() {
  return {"call-1",
          "calculator",
          true,
          rich_json("result"),
          sample_tool_error(),
          i32_max,
          {sample_attempt(1), sample_attempt(2)},
          true,
          {"approved by bob", "capped at 10 rows"}};
}

ledger_entry sample_ledger_entry() {
  return {"idem-ä-1", true, sample_tool_result(), i64_max};
}

budget_limits sample_limits() {
  // 0.1 + 0.2 has a long binary expansion: any rounding on the way shows.
  return {i64_max, i64_min, 2000, 0.1 + 0.2, 1760000000000};
}

budget_scope sample_scope(const std::string& account) {
  return {account, sample_limits()};
}

budget_amount sample_amount() {
  return {i64_max, {i64_min, i64_max}, i64_min};
}

run_task sample_run_task() {
  return {sample_ref(),
          "answer the customer — in Deutsch",
          sample_limits(),
          i32_max,
          rich_json("context"),
          {sample_scope("team/α"), sample_scope("team/α/run-1")}};
}

step_record sample_step(int32_t index) {
  return {index,
          sample_message(),
          {i64_max, 1},
          {sample_tool_result(), sample_tool_result()},
          {"unknown tool 'x'", "malformed reply"},
          i64_min,
          i64_max,
          123456789};
}

run_result sample_run_result() {
  return {"run-1",
          "support",
          run_status::cancelled,
          "partial answer ✓",
          {sample_step(1), sample_step(2)},
          {i64_max, i64_min},
          "cancelled by operator",
          i64_min,
          i64_max,
          rich_json("detail"),
          i64_max,
          {"budget 80% used", "loop suspected"}};
}

agent_event sample_agent_event() {
  return {"team/support",
          event_kind::awaiting_approval,
          "run-1",
          "0123456789abcdef0123456789abcdef",
          i32_max,
          run_status::halted,
          "answer",
          "why it failed",
          i64_min,
          "refund 500 € needs approval"};
}

span_start sample_span_start() {
  return {"0123456789abcdef0123456789abcdef", "aaaaaaaaaaaaaaaa",
          "bbbbbbbbbbbbbbbb", "gen_ai.chat", i64_max, rich_json("start")};
}

span_end sample_span_end() {
  return {"0123456789abcdef0123456789abcdef", "aaaaaaaaaaaaaaaa", i64_min,
          "error", "model endpoint returned 503", rich_json("end")};
}

trace_event sample_trace_event() {
  return {"0123456789abcdef0123456789abcdef", "aaaaaaaaaaaaaaaa",
          "tool.retry", i64_max, rich_json("event")};
}

budget_reserve sample_reserve() {
  return {sample_ref(),
          {sample_scope("team"), sample_scope("team/run-1")},
          "res-7",
          "openai:gpt-4o",
          sample_amount()};
}

budget_verdict sample_verdict() {
  return {"res-7", true, "account team: max_cost_usd 0.30 > 0.25",
          {"team crossed 80% of max_cost_usd", "run-1 crossed 50% of steps"}};
}

budget_charge sample_charge() {
  return {"team/run-1", "res-7", "openai:gpt-4o", sample_amount(), "run-1/a/d"};
}

budget_snapshot sample_snapshot() {
  return {"team/run-1", true, sample_limits(), sample_amount(),
          {1, {2, 3}, 4}, i64_max, i64_min};
}

approval_request sample_approval_request(const std::string& id) {
  return {id,
          sample_ref(),
          "support",
          "refund",
          rich_json("args " + id),
          "refunds above 100 € need a human",
          json::array({rich_json("step 1"), rich_json("step 2")}),
          i64_min,
          i64_max};
}

approval_decision sample_approval_decision() {
  return {"apr-1", approval_verdict::expired, "bob", "too late — sorry",
          i64_max};
}

child_stats sample_child(const std::string& name) {
  return {name, i64_max, true};
}

supervisor_stats sample_supervisor_stats() {
  return {"root", i64_max, i64_min,
          {sample_child("model"), sample_child("tools")}};
}

tool_listing sample_tool_listing(const caf::actor& who) {
  return {sample_tool_spec("echo"), "1.2.0", caf::actor_cast<tool_actor>(who),
          4500, "run", {"order_id", "amount"}, true, {"math", "ünïcode"}};
}

agent_listing sample_agent_listing(const caf::actor& who) {
  return {"researcher", {"search", "gpu"}, caf::actor_cast<runnable_actor>(who)};
}

node_info sample_node_info(const std::string& name, const caf::actor& who) {
  return {name,
          "10.231.0.2:4242",
          {"gpu", "eu-west"},
          {sample_agent_listing(who)},
          {sample_tool_listing(who)},
          who,
          UINT64_MAX,
          i64_max};
}

/// One sample of every type in the type-ID block; a new message type is one
/// more line here (the completeness check below fails until it is added).
/// `who` fills the actor handles of the cluster messages.
auto samples(const caf::actor& who = {}) {
  return std::make_tuple(
    json_value{rich_json("top")},
    sample_ref(),
    token_usage{i64_max, i64_min},
    sample_model_call("call-1"),
    sample_message(),
    sample_tool_spec("calculator"),
    sample_chat_request(),
    sample_chat_response(),
    sample_tool_error(),
    sample_tool_call(),
    sample_attempt(3),
    sample_tool_result(),
    sample_ledger_entry(),
    sample_run_task(),
    sample_step(7),
    sample_run_result(),
    sample_agent_event(),
    sample_span_start(),
    sample_span_end(),
    sample_trace_event(),
    sample_limits(),
    sample_scope("team/α"),
    sample_amount(),
    sample_reserve(),
    sample_verdict(),
    sample_charge(),
    budget_release{"team/run-1", "res-7"},
    budget_close{"team/run-1"},
    budget_recount{sample_ref(),
                   {sample_scope("team/α"), sample_scope("team/α/run-1")},
                   "run-1/a/d", sample_amount()},
    sample_snapshot(),
    sample_approval_request("apr-1"),
    sample_approval_decision(),
    std::vector<approval_request>{sample_approval_request("apr-1"),
                                  sample_approval_request("apr-2")},
    sample_child("model"),
    sample_supervisor_stats(),
    sample_tool_listing(who),
    sample_agent_listing(who),
    sample_node_info("worker-1", who),
    std::vector<node_info>{sample_node_info("coordinator", who),
                           sample_node_info("worker-2", who)},
    cluster_event{cluster_event_kind::failed, "worker-2",
                  "no heartbeat for 3000 ms", i64_max},
    remote_agent_args{json_value{rich_json("spec")}, who, who, who,
                      "client-42"});
}

using sample_tuple = decltype(samples());

// -- the echo actor on node A -------------------------------------------------

template <class T>
auto echo_handler() {
  return [](const T& x) { return x; };
}

template <class... Ts>
caf::behavior echo_behavior(std::tuple<Ts...>*) {
  return {
    echo_handler<Ts>()...,
    // Every atom of the protocols, alone.
    [](caf::atom_value x) { return x; },
    // Typed-interface messages that carry an atom with their arguments.
    [](ld_record_atom tag, const std::string& key, const tool_result& result) {
      return std::make_tuple(tag, key, result);
    },
    [](apr_decide_atom tag, const approval_decision& decision) {
      return std::make_tuple(tag, decision);
    },
    // An actor handle crosses as a proxy and must come back as the original.
    [](ev_subscribe_atom tag, const caf::actor& who, event_mask mask) {
      return std::make_tuple(tag, who, mask);
    },
    // A caf::error as a value (a lone error in a reply would be a failure).
    [](rm_error_atom tag, const caf::error& err) {
      return std::make_tuple(tag, err);
    },
    [](rm_fail_atom, const std::string& what) -> caf::error {
      return make_error(errc::refused, what);
    },
  };
}

caf::behavior echo(caf::event_based_actor* self) {
  // Anything else is refused with sec::unexpected_message, without printing.
  self->set_default_handler(caf::drop);
  return echo_behavior(static_cast<sample_tuple*>(nullptr));
}

// -- two nodes ---------------------------------------------------------------

/// One node: an actor system configured as runtime::runtime configures its
/// own (troupe's messages, quiet CAF logging, the middleman loaded).
struct node {
  static caf::actor_system_config& configured(caf::actor_system_config& cfg) {
    register_messages(cfg);
    cfg.set("scheduler.max-threads", 2);
    cfg.set("logger.console-verbosity", caf::atom("quiet"));
    cfg.load<caf::io::middleman>();
    return cfg;
  }
  caf::actor_system_config cfg;
  caf::actor_system sys{configured(cfg)};
};

/// The echo actor, published on a loopback port of its node; stopped and its
/// port closed when this goes, so that its system can shut down.
struct published_echo {
  caf::actor_system& sys;
  caf::actor handle;
  uint16_t port = 0;

  explicit published_echo(caf::actor_system& host)
    : sys(host), handle(host.spawn(echo)) {
    auto published = sys.middleman().publish(handle, 0, "127.0.0.1");
    if (!published) {
      caf::anon_send_exit(handle, caf::exit_reason::user_shutdown);
      FAIL("publish failed: " << sys.render(published.error()));
    }
    port = *published;
  }

  ~published_echo() {
    caf::anon_send_exit(handle, caf::exit_reason::user_shutdown);
    sys.middleman().close(port);
  }
};

/// Node A publishes an echo actor; node B holds a proxy for it. Members go in
/// reverse order: the proxy, the echo actor, then node B before node A.
struct two_nodes {
  node a;
  node b;
  published_echo echo{a.sys};
  caf::actor proxy;

  two_nodes() {
    REQUIRE(echo.port != 0);
    auto remote = b.sys.middleman().remote_actor("127.0.0.1", echo.port);
    if (!remote)
      FAIL("remote_actor failed: " << b.sys.render(remote.error()));
    proxy = std::move(*remote);
    // A proxy, not the echo actor itself: the messages really cross.
    REQUIRE(proxy.node() == a.sys.node());
    REQUIRE(a.sys.node() != b.sys.node());
  }
};

/// Every top-level field of `sent` differs from a default-constructed value,
/// or an echo check proves nothing for that field.
template <class T>
void check_all_fields_set(const T& sent) {
  json defaults = T{};
  json filled = sent;
  if (!defaults.is_object()) {
    CHECK(filled != defaults);
    return;
  }
  for (auto& [key, value] : defaults.items()) {
    INFO("field " << key);
    CHECK(filled.at(key) != value);
  }
}

/// Messages that carry actor handles have no JSON form; their samples set
/// every field by construction.
template <class T>
constexpr bool has_json = std::is_constructible<json, const T&>::value;

template <class T>
void check_echo(caf::scoped_actor& self, const caf::actor& proxy,
                const T& sent) {
  INFO("message type " << caf::type_name<T>::value);
  if constexpr (has_json<T>)
    check_all_fields_set(sent);
  bool replied = false;
  self->request(proxy, reply_timeout, sent)
    .receive(
      [&](const T& got) {
        replied = true;
        if constexpr (has_json<T>) {
          INFO("sent:     " << safe_dump(json(sent)));
          INFO("received: " << safe_dump(json(got)));
          CHECK(got == sent);
        } else {
          CHECK(got == sent);
        }
      },
      [&](const caf::error& err) {
        FAIL_CHECK("no echo: " << error_text(err));
      });
  CHECK(replied);
}

} // namespace

TEST_CASE("the samples cover every type in the type-ID block", "[remote]") {
  std::set<caf::type_id_t> covered;
  std::apply(
    [&](const auto&... xs) {
      (covered.insert(caf::type_id<std::decay_t<decltype(xs)>>::value), ...);
    },
    samples());
  std::set<caf::type_id_t> block;
  for (auto id = caf::id_block::troupe::begin; id < caf::id_block::troupe::end;
       ++id)
    block.insert(id);
  CHECK(covered == block);
  CHECK(std::tuple_size<sample_tuple>::value == block.size());
}

SCENARIO("every protocol message crosses a node boundary intact",
         "[remote]") {
  GIVEN("an echo actor published on node A and its proxy on node B") {
    two_nodes nodes;
    caf::scoped_actor self{nodes.b.sys};

    WHEN("each message type is sent to the proxy") {
      THEN("the echo equals the original") {
        // The cluster messages' handles name an actor of node B, which comes
        // back as itself.
        std::apply(
          [&](const auto&... xs) { (check_echo(self, nodes.proxy, xs), ...); },
          samples(caf::actor_cast<caf::actor>(self)));
      }
    }

    WHEN("each protocol atom is sent alone") {
      THEN("the same atom comes back") {
        std::initializer_list<caf::atom_value> atoms{
          ld_lookup_atom::value,    ld_record_atom::value,
          ev_subscribe_atom::value, ev_unsubscribe_atom::value,
          tr_flush_atom::value,     bg_query_atom::value,
          apr_list_atom::value,     apr_decide_atom::value,
          apr_watch_atom::value,    sup_child_atom::value,
          sup_await_atom::value,    sup_stats_atom::value,
          cl_hello_atom::value,     cl_beat_atom::value,
          cl_update_atom::value,    cl_leave_atom::value};
        for (auto atom : atoms) {
          INFO("atom " << to_string(atom));
          bool replied = false;
          self->request(nodes.proxy, reply_timeout, atom)
            .receive(
              [&](caf::atom_value got) {
                replied = true;
                CHECK(got == atom);
              },
              [&](const caf::error& err) {
                FAIL_CHECK("no echo: " << error_text(err));
              });
          CHECK(replied);
        }
      }
    }

    WHEN("atoms travel with arguments, as in the typed interfaces") {
      THEN("tags and arguments come back intact") {
        auto result = sample_tool_result();
        bool replied = false;
        self
          ->request(nodes.proxy, reply_timeout, ld_record_atom::value,
                    std::string{"idem-ä-1"}, result)
          .receive(
            [&](ld_record_atom, const std::string& key,
                const tool_result& got) {
              replied = true;
              CHECK(key == "idem-ä-1");
              CHECK(got == result);
            },
            [&](const caf::error& err) {
              FAIL_CHECK("no echo: " << error_text(err));
            });
        CHECK(replied);

        auto decision = sample_approval_decision();
        replied = false;
        self
          ->request(nodes.proxy, reply_timeout, apr_decide_atom::value,
                    decision)
          .receive(
            [&](apr_decide_atom, const approval_decision& got) {
              replied = true;
              CHECK(got == decision);
            },
            [&](const caf::error& err) {
              FAIL_CHECK("no echo: " << error_text(err));
            });
        CHECK(replied);
      }
    }

    WHEN("an actor handle of node B travels to node A and back") {
      caf::actor me = caf::actor_cast<caf::actor>(self);
      auto mask =
        mask_of(event_kind::warning) | mask_of(event_kind::task_failed);
      THEN("node B gets its own actor back, not a proxy of a proxy") {
        bool replied = false;
        self
          ->request(nodes.proxy, reply_timeout, ev_subscribe_atom::value, me,
                    mask)
          .receive(
            [&](ev_subscribe_atom, const caf::actor& who, event_mask got) {
              replied = true;
              CHECK(who == me);
              CHECK(who.node() == nodes.b.sys.node());
              CHECK(got == mask);
            },
            [&](const caf::error& err) {
              FAIL_CHECK("no echo: " << error_text(err));
            });
        CHECK(replied);
      }
    }

    WHEN("a troupe error travels as a value") {
      auto original = make_error(errc::refused,
                                 "budget «global» exhausted: 0.30 > 0.25 USD");
      THEN("it renders the same on the far side") {
        bool replied = false;
        self
          ->request(nodes.proxy, reply_timeout, rm_error_atom::value, original)
          .receive(
            [&](rm_error_atom, const caf::error& got) {
              replied = true;
              CHECK(got == original);
              CHECK(got.category() == error_category);
              CHECK(error_text(got) == error_text(original));
              CHECK(error_text(got)
                    == "refused: budget «global» exhausted: 0.30 > 0.25 USD");
              CHECK(nodes.b.sys.render(got) == nodes.a.sys.render(original));
            },
            [&](const caf::error& err) {
              FAIL_CHECK("no echo: " << error_text(err));
            });
        CHECK(replied);
      }
    }

    WHEN("node A fails a request with a troupe error") {
      THEN("node B's request fails with that error") {
        bool failed = false;
        self
          ->request(nodes.proxy, reply_timeout, rm_fail_atom::value,
                    std::string{"policy says no — für heute"})
          .receive(
            [&](caf::atom_value) { FAIL_CHECK("a value instead of an error"); },
            [&](const caf::error& err) {
              failed = true;
              CHECK(err.category() == error_category);
              CHECK(err == make_error(errc::refused, ""));
              CHECK(error_text(err) == "refused: policy says no — für heute");
            });
        CHECK(failed);
      }
    }

    WHEN("node A gets a message nobody handles") {
      THEN("node B's request fails with sec::unexpected_message") {
        bool failed = false;
        self
          ->request(nodes.proxy, reply_timeout, std::string{"no handler"},
                    int32_t{42})
          .receive(
            [&](caf::atom_value) { FAIL_CHECK("a value instead of an error"); },
            [&](const caf::error& err) {
              failed = true;
              CHECK(err == caf::sec::unexpected_message);
            });
        CHECK(failed);
      }
    }
  }
}

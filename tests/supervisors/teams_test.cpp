#include "supervisors/teams.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <unordered_map>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/events.hpp"
#include "messages/errors.hpp"
#include "runtime/clock.hpp"
#include "runtime/runtime.hpp"
#include "supervisors/pipeline.hpp"
#include "supervisors/team_run.hpp"
#include "support/runtime_fixture.hpp"
#include "support/test_models.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

// -- a recording model with latency, barriers and errors ----------------------

/// What the test model answers to one request.
struct model_reply {
  chat_response response;
  /// How long the reply is held back (a delayed message, not a sleep).
  std::chrono::milliseconds latency{0};
  /// Non-empty: the request fails with this text (a model endpoint error).
  std::string error;
  /// Non-empty: the reply is held until `barrier_count` requests of this
  /// group are held, then all of them are answered. Only requests in flight at
  /// the same time can meet there, so a barrier proves parallelism without any
  /// clock: run one after another, they would never be released.
  std::string barrier;
  size_t barrier_count = 0;
};

model_reply reply(std::string text, std::chrono::milliseconds latency = 0ms) {
  model_reply r;
  r.response = answer(std::move(text));
  r.latency = latency;
  return r;
}

model_reply model_failure(std::string why) {
  model_reply r;
  r.error = std::move(why);
  return r;
}

/// A reply that asks for a tool no agent here has: the agent turns it into an
/// observation, and an agent with max_steps 1 then ends max_steps.
model_reply useless_tool_call() {
  model_tool_call call;
  call.name = "no_such_tool";
  call.arguments = json::object();
  model_reply r;
  r.response = call_tools({call});
  return r;
}

/// One request the model got, with when it arrived and when it was answered.
struct call_record {
  chat_request req;
  int64_t received_ns = 0;
  int64_t replied_ns = 0;
};

struct call_log {
  std::mutex mtx;
  std::vector<call_record> calls;

  size_t add(const chat_request& req) {
    std::lock_guard<std::mutex> guard{mtx};
    calls.push_back({req, now_ns(), 0});
    return calls.size() - 1;
  }

  void replied(size_t i) {
    std::lock_guard<std::mutex> guard{mtx};
    calls[i].replied_ns = now_ns();
  }

  std::vector<call_record> snapshot() {
    std::lock_guard<std::mutex> guard{mtx};
    return calls;
  }

  std::vector<call_record> from(const std::string& agent) {
    std::vector<call_record> out;
    for (auto& c : snapshot())
      if (c.req.agent == agent)
        out.push_back(c);
    return out;
  }
};

using model_fn = std::function<model_reply(const chat_request&)>;

using tm_due_atom = caf::atom_constant<caf::atom("tm_due")>;

using test_model_actor = model_actor::extend<caf::reacts_to<tm_due_atom, uint64_t>>;

struct held_reply {
  caf::typed_response_promise<chat_response> promise;
  model_reply reply;
  size_t log_index = 0;
};

struct test_model_state {
  static inline const char* name = "test.team_model";
  std::shared_ptr<call_log> log;
  model_fn fn;
  std::unordered_map<uint64_t, held_reply> delayed;
  std::map<std::string, std::vector<held_reply>> barriers;
  uint64_t next_id = 0;
};

using test_model_ptr = test_model_actor::stateful_pointer<test_model_state>;

void deliver(test_model_ptr self, held_reply& h) {
  self->state.log->replied(h.log_index);
  if (!h.reply.error.empty())
    h.promise.deliver(make_error(errc::model_failed, h.reply.error));
  else
    h.promise.deliver(std::move(h.reply.response));
}

void release(test_model_ptr self, held_reply h) {
  if (h.reply.latency.count() <= 0) {
    deliver(self, h);
    return;
  }
  auto id = self->state.next_id++;
  auto latency = h.reply.latency;
  self->state.delayed.emplace(id, std::move(h));
  self->delayed_send(self, latency, tm_due_atom::value, id);
}

test_model_actor::behavior_type test_model(test_model_ptr self,
                                           std::shared_ptr<call_log> log,
                                           model_fn fn) {
  self->state.log = std::move(log);
  self->state.fn = std::move(fn);
  return {
    [self](chat_request& req) -> caf::result<chat_response> {
      auto& st = self->state;
      held_reply h;
      h.log_index = st.log->add(req);
      h.reply = st.fn(req);
      h.promise = self->make_response_promise<chat_response>();
      auto promise = h.promise;
      if (h.reply.barrier.empty()) {
        release(self, std::move(h));
        return promise;
      }
      auto& group = st.barriers[h.reply.barrier];
      auto needed = h.reply.barrier_count;
      group.push_back(std::move(h));
      if (group.size() >= needed) {
        auto all = std::move(group);
        group.clear();
        for (auto& held : all)
          release(self, std::move(held));
      }
      return promise;
    },
    [self](tm_due_atom, uint64_t id) {
      auto i = self->state.delayed.find(id);
      if (i == self->state.delayed.end())
        return;
      auto h = std::move(i->second);
      self->state.delayed.erase(i);
      deliver(self, h);
    },
  };
}

// -- reading requests ----------------------------------------------------------

/// The run's first user message: its goal, then "\n\nContext:\n" and the
/// context as JSON.
std::string first_user_message(const chat_request& req) {
  for (auto& m : req.messages)
    if (m.role == chat_role::user)
      return m.content;
  return {};
}

/// The goal the run got (without its context).
std::string goal_of(const chat_request& req) {
  auto text = first_user_message(req);
  auto cut = text.rfind("\n\nContext:\n");
  if (cut != std::string::npos)
    text.resize(cut);
  return text;
}

/// The context the run got.
json context_of(const chat_request& req) {
  auto text = first_user_message(req);
  auto cut = text.rfind("\n\nContext:\n");
  if (cut == std::string::npos)
    return json::object();
  return json::parse(text.substr(cut + 11));
}

std::string first_line(const std::string& s) {
  return s.substr(0, s.find('\n'));
}

/// The text between `from` and `to` (or the end).
std::string between(const std::string& text, const std::string& from,
                    const std::string& to) {
  auto start = text.find(from);
  if (start == std::string::npos)
    return {};
  start += from.size();
  auto end = to.empty() ? std::string::npos : text.find(to, start);
  return text.substr(start, end == std::string::npos ? std::string::npos
                                                     : end - start);
}

/// Two recorded calls were in flight at the same time.
bool overlap(const call_record& a, const call_record& b) {
  return a.received_ns < b.replied_ns && b.received_ns < a.replied_ns;
}

/// A subtask's entry in an orchestrator's or map_reduce's detail.
json subtask(const run_result& r, const std::string& id) {
  for (auto& s : r.detail.value.at("subtasks"))
    if (s.at("id") == id)
      return s;
  FAIL("no subtask '" << id << "' in " << r.detail.value.dump());
  return {};
}

int64_t ns(const json& s, const char* key) {
  return s.at(key).get<int64_t>();
}

struct fixture : runtime_fixture {
  std::shared_ptr<call_log> calls = std::make_shared<call_log>();

  /// Every agent of the test case uses this model ("m"): register it first.
  void model(model_fn fn) {
    // Adopted: a reply still held back must not keep shutdown waiting.
    auto m = rt.adopt(rt.system().spawn(test_model, calls, std::move(fn)));
    rt.add_model("m", caf::actor_cast<model_actor>(m));
  }

  runnable_actor agent(const std::string& name, int32_t max_steps = 4,
                       agent_faults faults = {}) {
    agent_spec spec;
    spec.name = name;
    spec.model = "m";
    spec.max_steps = max_steps;
    spec.faults = std::move(faults);
    return rt.spawn_agent(spec);
  }

  team_member member(const std::string& name, int32_t max_steps = 4,
                     agent_faults faults = {}) {
    return {name, agent(name, max_steps, std::move(faults))};
  }

  run_result run(const runnable_actor& team, std::string goal,
                 json context = nullptr) {
    run_options opts;
    opts.timeout = 30s;
    opts.context = std::move(context);
    return rt.run(team, std::move(goal), opts);
  }

  /// Every model call was made for this run: usage and steps add up.
  void check_accounts(const run_result& r) {
    auto all = calls->snapshot();
    CHECK(r.steps.size() == all.size());
    CHECK(r.usage.input_tokens == 10 * static_cast<int64_t>(all.size()));
    CHECK(r.usage.output_tokens == 5 * static_cast<int64_t>(all.size()));
  }
};

json three_step_plan() {
  return json{{"subtasks",
               {{{"id", "a"}, {"role", "research"}, {"goal", "find A"}},
                {{"id", "b"}, {"role", "research"}, {"goal", "find B"}},
                {{"id", "c"},
                 {"role", "write"},
                 {"goal", "combine"},
                 {"depends_on", {"a", "b"}}}}}};
}

/// Workers answer "<agent> did <first line of the goal>".
model_reply did(const chat_request& req,
                std::chrono::milliseconds latency = 0ms) {
  return reply(req.agent + " did " + first_line(goal_of(req)), latency);
}

} // namespace

// -- plans ---------------------------------------------------------------------

TEST_CASE("parse_plan reads subtasks and names every bad field",
          "[teams][plan]") {
  auto plan = parse_plan(three_step_plan());
  REQUIRE(plan.subtasks.size() == 3);
  CHECK(plan.subtasks[0].id == "a");
  CHECK(plan.subtasks[0].role == "research");
  CHECK(plan.subtasks[0].goal == "find A");
  CHECK(plan.subtasks[0].depends_on.empty());
  CHECK(plan.subtasks[2].depends_on == std::vector<std::string>{"a", "b"});

  auto fails = [](const json& doc) {
    try {
      parse_plan(doc);
    } catch (const std::invalid_argument& e) {
      return std::string{e.what()};
    }
    return std::string{"(accepted)"};
  };
  CHECK_THAT(fails(json::array()), Catch::Contains("must be a JSON object"));
  CHECK_THAT(fails(json::object()), Catch::Contains("has no \"subtasks\""));
  CHECK_THAT(fails(json{{"subtasks", "a, b"}}),
             Catch::Contains("plan/subtasks: must be an array"));
  CHECK_THAT(fails(json{{"subtasks", json::array()}, {"steps", 2}}),
             Catch::Contains("plan/steps: unknown field"));
  CHECK_THAT(
    fails(json{{"subtasks", {{{"id", "a"}, {"role", "r"}, {"priority", 1}}}}}),
    Catch::Contains("plan/subtasks/0/priority: unknown field"));
  CHECK_THAT(fails(json{{"subtasks", {{{"role", "r"}, {"goal", "g"}}}}}),
             Catch::Contains("plan/subtasks/0/id: is missing or empty"));
  CHECK_THAT(fails(json{{"subtasks",
                         {{{"id", "a"}, {"role", "r"}}, {{"id", "b"}}}}}),
             Catch::Contains("plan/subtasks/1/role: is missing or empty"));
  CHECK_THAT(fails(json{{"subtasks", {{{"id", 7}, {"role", "r"}}}}}),
             Catch::Contains("plan/subtasks/0/id: must be a string"));
  CHECK_THAT(fails(json{{"subtasks",
                         {{{"id", "a"}, {"role", "r"}, {"depends_on", "b"}}}}}),
             Catch::Contains("plan/subtasks/0/depends_on: must be an array"));
  CHECK_THAT(fails(json{{"subtasks", {"a"}}}),
             Catch::Contains("plan/subtasks/0: must be an object"));
}

TEST_CASE("check_plan names what is wrong with a plan", "[teams][plan]") {
  auto sub = [](std::string id, std::string role,
                std::vector<std::string> deps = {}) {
    return plan_subtask{std::move(id), std::move(role), "goal", std::move(deps)};
  };
  std::vector<std::string> roles{"r", "w"};
  auto fails = [&](std::vector<plan_subtask> subs, size_t limit = 10) {
    try {
      check_plan(team_plan{std::move(subs)}, roles, limit);
    } catch (const std::invalid_argument& e) {
      return std::string{e.what()};
    }
    return std::string{"(accepted)"};
  };
  CHECK(fails({sub("a", "r"), sub("b", "w", {"a"}), sub("c", "w", {"a", "b"})})
        == "(accepted)");
  CHECK_THAT(fails({}), Catch::Contains("no subtasks"));
  CHECK_THAT(fails({sub("", "r")}), Catch::Contains("subtask 1 has no id"));
  CHECK_THAT(fails({sub("a", "r"), sub("a", "w")}),
             Catch::Contains("subtask id 'a' is used twice"));
  CHECK_THAT(fails({sub("a", "x")}),
             Catch::Contains("subtask 'a' names unknown role 'x' (roles: r, w)"));
  CHECK_THAT(fails({sub("a", "r", {"z"})}),
             Catch::Contains("subtask 'a' depends on unknown subtask 'z'"));
  CHECK_THAT(fails({sub("a", "r", {"a"})}),
             Catch::Contains("dependency cycle: subtask 'a' depends on itself"));
  CHECK_THAT(fails({sub("a", "r"), sub("b", "r", {"a", "a"})}),
             Catch::Contains("subtask 'b' lists dependency 'a' twice"));
  CHECK_THAT(fails({sub("a", "r", {"b"}), sub("b", "r", {"a"})}),
             Catch::Contains("dependency cycle: a -> b -> a"));
  // The cycle is named by the subtasks on it, not those leading to it.
  CHECK_THAT(fails({sub("start", "r", {"x"}), sub("x", "r", {"y"}),
                    sub("y", "r", {"z"}), sub("z", "r", {"x"})}),
             Catch::Contains("dependency cycle: x -> y -> z -> x"));
  CHECK_THAT(fails({sub("a", "r"), sub("b", "r"), sub("c", "r")}, 2),
             Catch::Contains("3 subtasks, more than the limit of 2"));
}

// -- orchestrator_worker ---------------------------------------------------------

TEST_CASE_METHOD(fixture,
                 "orchestrator: independent subtasks run in parallel, a "
                 "dependent one after its inputs, with their results",
                 "[teams][orchestrator]") {
  model([](const chat_request& req) {
    if (req.agent == "planner")
      return reply(three_step_plan().dump());
    if (req.agent == "synth")
      return reply("synthesis");
    auto r = did(req, 100ms);
    if (req.agent == "r1" || req.agent == "r2") {
      // Neither research reply goes out before both research requests are in.
      r.barrier = "research";
      r.barrier_count = 2;
    }
    return r;
  });
  orchestrator_config cfg;
  cfg.name = "team";
  cfg.planner = agent("planner");
  cfg.workers["research"] = {member("r1"), member("r2")};
  cfg.workers["write"] = {member("w1")};
  cfg.synthesizer = agent("synth");
  auto team = rt.adopt(spawn_orchestrator(rt.system(), std::move(cfg)));

  auto r = run(team, "write a report");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.error.empty());
  CHECK(r.agent == "team");
  CHECK(r.answer == "synthesis");
  REQUIRE(r.detail.value.is_object());
  CHECK(r.detail.value["pattern"] == "orchestrator_worker");
  CHECK(r.detail.value["plan"].size() == 3);

  auto a = subtask(r, "a"), b = subtask(r, "b"), c = subtask(r, "c");
  for (auto& s : {a, b, c}) {
    CHECK(s["status"] == "complete");
    CHECK(s["attempts"] == 1);
  }
  // The two research subtasks went to the two researchers, at the same time.
  CHECK(a["member"] != b["member"]);
  CHECK(std::set<std::string>{a["member"].get<std::string>(),
                              b["member"].get<std::string>()}
        == std::set<std::string>{"r1", "r2"});
  CHECK(c["member"] == "w1");
  CHECK(ns(a, "started_ns") < ns(b, "ended_ns"));
  CHECK(ns(b, "started_ns") < ns(a, "ended_ns"));
  CHECK(ns(c, "started_ns") >= ns(a, "ended_ns"));
  CHECK(ns(c, "started_ns") >= ns(b, "ended_ns"));

  auto research = calls->from("r1");
  auto r2 = calls->from("r2");
  research.insert(research.end(), r2.begin(), r2.end());
  REQUIRE(research.size() == 2);
  CHECK(overlap(research[0], research[1]));
  auto writer = calls->from("w1");
  REQUIRE(writer.size() == 1);
  for (auto& x : research)
    CHECK(writer[0].received_ns >= x.replied_ns);

  // The dependent subtask builds on its inputs' answers.
  auto a_answer = a["member"].get<std::string>() + " did find A";
  auto b_answer = b["member"].get<std::string>() + " did find B";
  auto wgoal = goal_of(writer[0].req);
  CHECK_THAT(wgoal, Catch::StartsWith("combine\n\nResults you build on:"));
  CHECK_THAT(wgoal, Catch::Contains("[a] " + a_answer));
  CHECK_THAT(wgoal, Catch::Contains("[b] " + b_answer));
  CHECK(context_of(writer[0].req)["subtask"] == "c");
  CHECK(context_of(writer[0].req)["team_goal"] == "write a report");
  // ... and the independent ones get only their own goal.
  for (auto& x : research)
    CHECK_THAT(goal_of(x.req), !Catch::Contains("Results you build on"));

  // The planner was told the roles; the synthesizer got every result.
  auto planner = calls->from("planner");
  REQUIRE(planner.size() == 1);
  CHECK(context_of(planner[0].req)["roles"]
        == json::array({"research", "write"}));
  auto synth = calls->from("synth");
  REQUIRE(synth.size() == 1);
  auto sgoal = goal_of(synth[0].req);
  CHECK_THAT(sgoal, Catch::StartsWith("write a report"));
  CHECK_THAT(sgoal, Catch::Contains("[a (research)] " + a_answer));
  CHECK_THAT(sgoal, Catch::Contains("[b (research)] " + b_answer));
  CHECK_THAT(sgoal, Catch::Contains("[c (write)] w1 did combine"));
  check_accounts(r);
}

TEST_CASE_METHOD(fixture,
                 "orchestrator: a failed subtask is retried on another member "
                 "of its role",
                 "[teams][orchestrator]") {
  // The first worker request fails (whichever worker gets it): the worker
  // ends max_steps. Every later one succeeds.
  auto worker_calls = std::make_shared<int>(0);
  model([worker_calls](const chat_request& req) {
    if ((*worker_calls)++ == 0)
      return useless_tool_call();
    return did(req);
  });
  orchestrator_config cfg;
  cfg.name = "team";
  cfg.plan = team_plan{{{"x", "work", "do {{goal}}", {}}}};
  cfg.workers["work"] = {member("w1", 1), member("w2", 1)};
  auto team = rt.adopt(spawn_orchestrator(rt.system(), std::move(cfg)));

  auto r = run(team, "it");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.error.empty());
  auto all = calls->snapshot();
  REQUIRE(all.size() == 2);
  auto first = all[0].req.agent;
  auto x = subtask(r, "x");
  CHECK(x["status"] == "complete");
  CHECK(x["attempts"] == 2);
  // The retry went to the other member.
  CHECK(x["member"] == all[1].req.agent);
  CHECK(x["member"] != first);
  for (auto& c : all)
    CHECK(goal_of(c.req) == "do it");
  CHECK_FALSE(context_of(all[0].req).contains("attempt"));
  CHECK(context_of(all[1].req)["attempt"] == 2);
  // Without a synthesizer the answer lists the results.
  CHECK_THAT(r.answer, Catch::Contains("[x (work)] " + all[1].req.agent
                                       + " did do it"));
  check_accounts(r);
}

TEST_CASE_METHOD(fixture,
                 "orchestrator: a subtask that fails every attempt skips its "
                 "dependents and the team completes as a partial failure",
                 "[teams][orchestrator]") {
  model([](const chat_request& req) {
    if (req.agent == "b2")
      return model_failure("endpoint down");
    if (req.agent == "synth")
      return reply("merged");
    return did(req);
  });
  // b1 crashes whenever it starts a step (and is gone afterwards); b2's model
  // fails: each gets one of the two attempts.
  agent_faults always;
  always.crash_at_step = 1;
  orchestrator_config cfg;
  cfg.name = "team";
  cfg.plan = team_plan{{{"a", "bad", "break", {}},
                        {"b", "good", "use a", {"a"}},
                        {"c", "good", "independent", {}},
                        {"d", "good", "use b", {"b"}}}};
  cfg.workers["bad"] = {member("b1", 4, always), member("b2")};
  cfg.workers["good"] = {member("g1")};
  cfg.synthesizer = agent("synth");
  auto team = rt.adopt(spawn_orchestrator(rt.system(), std::move(cfg)));

  auto r = run(team, "goal");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.answer == "merged");
  CHECK_THAT(r.error, Catch::Contains("partial failure: 1 of 4 subtask(s) "
                                      "failed and 2 were skipped"));
  CHECK_THAT(r.error, Catch::Contains("a: failed after 2 attempt(s)"));
  auto a = subtask(r, "a");
  CHECK(a["status"] == "failed");
  CHECK(a["attempts"] == 2);
  CHECK_THAT(a["error"].get<std::string>(),
             Catch::Contains("failed after 2 attempt(s), last on '"
                             + a["member"].get<std::string>() + "'"));
  // One attempt each: b2 was asked once, so the other attempt was b1's.
  CHECK(calls->from("b2").size() == 1);
  CHECK(subtask(r, "b")["status"] == "skipped");
  CHECK_THAT(subtask(r, "b")["error"].get<std::string>(),
             Catch::Contains("depends on 'a'"));
  CHECK(subtask(r, "d")["status"] == "skipped");
  CHECK_THAT(subtask(r, "d")["error"].get<std::string>(),
             Catch::Contains("depends on 'b'"));
  CHECK(subtask(r, "c")["status"] == "complete");
  // The good worker ran only the independent subtask.
  auto good = calls->from("g1");
  REQUIRE(good.size() == 1);
  CHECK(goal_of(good[0].req) == "independent");
  // The synthesizer hears what failed.
  auto synth = calls->from("synth");
  REQUIRE(synth.size() == 1);
  CHECK_THAT(goal_of(synth[0].req), Catch::Contains("[a (bad)] FAILED: "));
  CHECK_THAT(goal_of(synth[0].req), Catch::Contains("[c (good)] g1 did independent"));
  CHECK(context_of(synth[0].req)["failed"] == json::array({"a", "b", "d"}));
}

TEST_CASE_METHOD(fixture, "orchestrator: when every subtask fails, the team fails",
                 "[teams][orchestrator]") {
  model([](const chat_request&) { return model_failure("endpoint down"); });
  orchestrator_config cfg;
  cfg.name = "team";
  cfg.plan = team_plan{{{"only", "work", "try", {}}}};
  cfg.workers["work"] = {member("w1")};
  cfg.max_attempts = 3;
  auto team = rt.adopt(spawn_orchestrator(rt.system(), std::move(cfg)));
  auto r = run(team, "goal");
  CHECK(r.status == run_status::failed);
  CHECK_THAT(r.error, Catch::Contains("every subtask failed"));
  CHECK_THAT(r.error, Catch::Contains("only: failed after 3 attempt(s)"));
  // A role of one member retries on that member.
  CHECK(calls->from("w1").size() == 3);
}

TEST_CASE_METHOD(fixture,
                 "orchestrator: a rejected plan is sent back to the planner "
                 "with the reason, and the corrected plan runs",
                 "[teams][orchestrator]") {
  model([](const chat_request& req) {
    if (req.agent == "planner") {
      if (goal_of(req).find("rejected") == std::string::npos)
        return reply(R"({"subtasks": [{"id": "a", "role": "x", "goal": "g"}]})");
      // Prose around a fenced block is fine.
      return reply("Here is the corrected plan:\n```json\n"
                   R"({"subtasks": [{"id": "s", "role": "work", "goal": "g2"}]})"
                   "\n```\nGood luck.");
    }
    return did(req);
  });
  orchestrator_config cfg;
  cfg.name = "team";
  cfg.planner = agent("planner");
  cfg.workers["work"] = {member("w1")};
  auto team = rt.adopt(spawn_orchestrator(rt.system(), std::move(cfg)));

  auto r = run(team, "plan this");
  REQUIRE(r.status == run_status::complete);
  auto planner = calls->from("planner");
  REQUIRE(planner.size() == 2);
  CHECK(goal_of(planner[0].req) == "plan this");
  auto again = goal_of(planner[1].req);
  CHECK_THAT(again, Catch::StartsWith("plan this"));
  CHECK_THAT(again, Catch::Contains("Your previous plan was rejected"));
  CHECK_THAT(again, Catch::Contains("unknown role 'x'"));
  CHECK(context_of(planner[1].req)["attempt"] == 2);
  CHECK(r.detail.value["plan"].size() == 1);
  CHECK(subtask(r, "s")["status"] == "complete");
  auto worker = calls->from("w1");
  REQUIRE(worker.size() == 1);
  CHECK(goal_of(worker[0].req) == "g2");
}

TEST_CASE_METHOD(fixture,
                 "orchestrator: a planner that is always wrong fails the run, "
                 "naming the problem",
                 "[teams][orchestrator]") {
  std::string cycle =
    R"({"subtasks": [{"id": "a", "role": "work", "goal": "1", "depends_on": ["b"]},
                     {"id": "b", "role": "work", "goal": "2", "depends_on": ["a"]}]})";
  model([cycle](const chat_request& req) {
    if (req.agent == "planner")
      return reply(cycle);
    return did(req);
  });
  orchestrator_config cfg;
  cfg.name = "team";
  cfg.planner = agent("planner");
  cfg.workers["work"] = {member("w1")};
  cfg.plan_retries = 2;
  auto team = rt.adopt(spawn_orchestrator(rt.system(), std::move(cfg)));

  auto r = run(team, "plan this");
  CHECK(r.status == run_status::failed);
  CHECK_THAT(r.error, Catch::Contains("rejected after 3 attempt(s)"));
  CHECK_THAT(r.error, Catch::Contains("dependency cycle: a -> b -> a"));
  CHECK(calls->from("planner").size() == 3);
  CHECK(calls->from("w1").empty());
  CHECK(r.steps.size() == 3);
}

TEST_CASE_METHOD(fixture,
                 "orchestrator: a planner answer without JSON is rejected",
                 "[teams][orchestrator]") {
  model([](const chat_request&) { return reply("I would rather not plan."); });
  orchestrator_config cfg;
  cfg.name = "team";
  cfg.planner = agent("planner");
  cfg.workers["work"] = {member("w1")};
  cfg.plan_retries = 0;
  auto team = rt.adopt(spawn_orchestrator(rt.system(), std::move(cfg)));
  auto r = run(team, "plan this");
  CHECK(r.status == run_status::failed);
  CHECK_THAT(r.error, Catch::Contains("rejected after 1 attempt(s)"));
  CHECK_THAT(r.error, Catch::Contains("no JSON plan"));
}

TEST_CASE_METHOD(fixture,
                 "orchestrator: a fixed plan runs without a planner, with "
                 "{{goal}} replaced by the team's goal",
                 "[teams][orchestrator]") {
  model([](const chat_request& req) { return did(req); });
  orchestrator_config cfg;
  cfg.name = "fixed";
  cfg.plan = team_plan{{{"sum", "work", "summarise {{goal}}", {}},
                        {"check", "work", "check {{goal}} twice: {{goal}}",
                         {"sum"}}}};
  cfg.workers["work"] = {member("w1")};
  auto team = rt.adopt(spawn_orchestrator(rt.system(), std::move(cfg)));
  auto r = run(team, "the report");
  REQUIRE(r.status == run_status::complete);
  auto worker = calls->from("w1");
  REQUIRE(worker.size() == 2);
  CHECK(goal_of(worker[0].req) == "summarise the report");
  CHECK(first_line(goal_of(worker[1].req))
        == "check the report twice: the report");
  CHECK_THAT(goal_of(worker[1].req),
             Catch::Contains("[sum] w1 did summarise the report"));
  CHECK_THAT(r.answer, Catch::Contains("[sum (work)] w1 did summarise the report"));
  CHECK_THAT(r.answer, Catch::Contains("[check (work)] w1 did check the report"));
  // The plan as run is in the detail.
  CHECK(r.detail.value["plan"][0]["goal"] == "summarise the report");
  check_accounts(r);
}

TEST_CASE_METHOD(fixture, "spawning a team refuses a bad config by name",
                 "[teams]") {
  model([](const chat_request& req) { return did(req); });
  auto w = member("w");
  auto judge = agent("judge");

  SECTION("orchestrator") {
    auto base = [&] {
      orchestrator_config cfg;
      cfg.name = "orch";
      cfg.workers["work"] = {w};
      cfg.plan = team_plan{{{"a", "work", "g", {}}}};
      return cfg;
    };
    auto refuse = [&](orchestrator_config cfg) {
      try {
        rt.adopt(spawn_orchestrator(rt.system(), std::move(cfg)));
      } catch (const std::invalid_argument& e) {
        return std::string{e.what()};
      }
      return std::string{"(accepted)"};
    };
    CHECK(refuse(base()) == "(accepted)");
    auto cfg = base();
    cfg.workers.clear();
    CHECK_THAT(refuse(cfg), Catch::Contains("team 'orch': has no workers"));
    cfg = base();
    cfg.plan = team_plan{{{"a", "x", "g", {}}}};
    CHECK_THAT(refuse(cfg), Catch::Contains("team 'orch'")
                              && Catch::Contains("unknown role 'x'"));
    cfg = base();
    cfg.plan = team_plan{{{"a", "work", "g", {"b"}}, {"b", "work", "g", {"a"}}}};
    CHECK_THAT(refuse(cfg), Catch::Contains("team 'orch'")
                              && Catch::Contains("dependency cycle: a -> b -> a"));
    cfg = base();
    cfg.plan = {};
    CHECK_THAT(refuse(cfg),
               Catch::Contains("team 'orch': needs a planner or a fixed plan"));
    cfg = base();
    cfg.workers["empty"] = {};
    CHECK_THAT(refuse(cfg), Catch::Contains("role 'empty' has no members"));
    cfg = base();
    cfg.workers["work"].push_back({"nobody", runnable_actor{}});
    CHECK_THAT(refuse(cfg), Catch::Contains("'nobody' has no runner"));
    cfg = base();
    cfg.workers["other"] = {w};
    CHECK_THAT(refuse(cfg), Catch::Contains("member name 'w' is used twice"));
    cfg = base();
    cfg.max_attempts = 0;
    CHECK_THAT(refuse(cfg), Catch::Contains("max_attempts must be at least 1"));
    cfg = base();
    cfg.name.clear();
    CHECK_THAT(refuse(cfg), Catch::Contains("needs a name"));
  }

  SECTION("map_reduce") {
    map_reduce_config cfg;
    cfg.name = "mr";
    CHECK_THROWS_WITH(spawn_map_reduce(rt.system(), cfg),
                      Catch::Contains("team 'mr': has no mappers"));
    cfg.mappers = {w, w};
    CHECK_THROWS_WITH(spawn_map_reduce(rt.system(), cfg),
                      Catch::Contains("mapper name 'w' is used twice"));
    cfg.mappers = {w};
    cfg.max_items = 0;
    CHECK_THROWS_AS(spawn_map_reduce(rt.system(), cfg), std::invalid_argument);
  }

  SECTION("debate") {
    debate_config cfg;
    cfg.name = "deb";
    cfg.debaters = {w};
    cfg.judge = judge;
    CHECK_THROWS_WITH(spawn_debate(rt.system(), cfg),
                      Catch::Contains("team 'deb'")
                        && Catch::Contains("at least two debaters, got 1"));
    cfg.debaters = {w, member("v")};
    cfg.judge = runnable_actor{};
    CHECK_THROWS_WITH(spawn_debate(rt.system(), cfg),
                      Catch::Contains("team 'deb': a debate needs a judge"));
    cfg.judge = judge;
    cfg.rounds = -1;
    CHECK_THROWS_WITH(spawn_debate(rt.system(), cfg),
                      Catch::Contains("rounds must not be negative"));
    cfg.rounds = 0;
    cfg.debaters = {w, w};
    CHECK_THROWS_WITH(spawn_debate(rt.system(), cfg),
                      Catch::Contains("debater name 'w' is used twice"));
  }

  SECTION("evaluator_optimizer") {
    evaluator_optimizer_config cfg;
    cfg.name = "evo";
    cfg.generator = w.runner;
    CHECK_THROWS_WITH(spawn_evaluator_optimizer(rt.system(), cfg),
                      Catch::Contains("team 'evo': needs an evaluator"));
    cfg.evaluator = judge;
    cfg.generator = runnable_actor{};
    CHECK_THROWS_WITH(spawn_evaluator_optimizer(rt.system(), cfg),
                      Catch::Contains("team 'evo': needs a generator"));
    cfg.generator = w.runner;
    cfg.max_rounds = 0;
    CHECK_THROWS_WITH(spawn_evaluator_optimizer(rt.system(), cfg),
                      Catch::Contains("max_rounds must be at least 1"));
  }
}

// -- debate ----------------------------------------------------------------------

namespace {

/// Debaters answer "<name>-first" in round 0 and "<name>-second" after.
model_reply debater_or_judge(const chat_request& req) {
  if (req.agent == "judge")
    return reply("verdict");
  auto round = context_of(req).value("debate_round", -1);
  auto r = reply(req.agent + (round == 0 ? "-first" : "-second"), 50ms);
  if (round == 0) {
    r.barrier = "opening";
    r.barrier_count = 3;
  }
  return r;
}

} // namespace

TEST_CASE_METHOD(fixture,
                 "debate: debaters answer in parallel, rebut the others' "
                 "answers, and the judge sees every answer",
                 "[teams][debate]") {
  model(debater_or_judge);
  debate_config cfg;
  cfg.name = "deb";
  cfg.debaters = {member("d1"), member("d2"), member("d3")};
  cfg.rounds = 1;
  cfg.judge = agent("judge");
  auto team = rt.adopt(spawn_debate(rt.system(), std::move(cfg)));

  auto r = run(team, "Is a hot dog a sandwich?");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.error.empty());
  CHECK(r.answer == "verdict");
  std::vector<std::string> names{"d1", "d2", "d3"};
  std::vector<call_record> openings;
  for (auto& d : names) {
    auto mine = calls->from(d);
    REQUIRE(mine.size() == 2);
    CHECK(goal_of(mine[0].req) == "Is a hot dog a sandwich?");
    openings.push_back(mine[0]);
    // The rebuttal shows its own answer as its own, the others' as others'.
    auto rebuttal = goal_of(mine[1].req);
    CHECK_THAT(rebuttal, Catch::Contains("Your answer so far:\n" + d + "-first"));
    auto others = between(rebuttal, "The other debaters answered:", "\n\nRebut");
    for (auto& o : names)
      if (o == d)
        CHECK_THAT(others, !Catch::Contains(o + "-first"));
      else
        CHECK_THAT(others, Catch::Contains("[" + o + "] " + o + "-first"));
    CHECK(context_of(mine[1].req)["debate_round"] == 1);
    // Rebuttals start after every first answer is in.
    for (auto& d2 : names)
      CHECK(mine[1].received_ns >= calls->from(d2)[0].replied_ns);
  }
  CHECK(overlap(openings[0], openings[1]));
  CHECK(overlap(openings[1], openings[2]));
  CHECK(overlap(openings[0], openings[2]));

  auto judge = calls->from("judge");
  REQUIRE(judge.size() == 1);
  auto jgoal = goal_of(judge[0].req);
  for (auto& d : names)
    CHECK_THAT(jgoal, Catch::Contains("[" + d + "] " + d + "-second"));
  CHECK(context_of(judge[0].req)["answers"].size() == 3);
  CHECK(r.detail.value["rounds"] == 1);
  CHECK(r.detail.value["answers"]["d2"]
        == json::array({"d2-first", "d2-second"}));
  CHECK(r.detail.value["failed"].empty());
  check_accounts(r);
}

TEST_CASE_METHOD(fixture,
                 "debate: a debater that fails drops out and the judge still "
                 "decides",
                 "[teams][debate]") {
  model([](const chat_request& req) {
    if (req.agent == "d2")
      return model_failure("debater endpoint down");
    auto r = debater_or_judge(req);
    r.barrier.clear();
    return r;
  });
  debate_config cfg;
  cfg.name = "deb";
  cfg.debaters = {member("d1"), member("d2"), member("d3")};
  cfg.rounds = 1;
  cfg.judge = agent("judge");
  auto team = rt.adopt(spawn_debate(rt.system(), std::move(cfg)));

  auto r = run(team, "question");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.answer == "verdict");
  CHECK_THAT(r.error, Catch::Contains("partial failure"));
  CHECK_THAT(r.error, Catch::Contains("d2 ("));
  CHECK_THAT(r.error, Catch::Contains("debater endpoint down"));
  // d2 is not asked to rebut, and nobody sees an answer from it.
  CHECK(calls->from("d2").size() == 1);
  for (auto& d : {"d1", "d3"}) {
    auto mine = calls->from(d);
    REQUIRE(mine.size() == 2);
    CHECK_THAT(goal_of(mine[1].req), !Catch::Contains("[d2]"));
  }
  auto judge = calls->from("judge");
  REQUIRE(judge.size() == 1);
  auto jgoal = goal_of(judge[0].req);
  CHECK_THAT(jgoal, Catch::Contains("[d1] d1-second"));
  CHECK_THAT(jgoal, Catch::Contains("[d3] d3-second"));
  CHECK_THAT(jgoal, !Catch::Contains("[d2]"));
  REQUIRE(r.detail.value["failed"].size() == 1);
  CHECK(r.detail.value["failed"][0]["debater"] == "d2");
}

TEST_CASE_METHOD(fixture, "debate: when every debater fails, the debate fails",
                 "[teams][debate]") {
  model([](const chat_request& req) {
    if (req.agent == "judge")
      return reply("verdict");
    return model_failure("down");
  });
  debate_config cfg;
  cfg.name = "deb";
  cfg.debaters = {member("d1"), member("d2")};
  cfg.rounds = 2;
  cfg.judge = agent("judge");
  auto team = rt.adopt(spawn_debate(rt.system(), std::move(cfg)));
  auto r = run(team, "question");
  CHECK(r.status == run_status::failed);
  CHECK_THAT(r.error, Catch::Contains("every debater failed"));
  CHECK_THAT(r.error, Catch::Contains("d1") && Catch::Contains("d2"));
  CHECK(calls->from("judge").empty());
}

// -- map_reduce ------------------------------------------------------------------

namespace {

std::string upper(std::string s) {
  for (auto& c : s)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

/// Mappers answer "<agent>:<ITEM>"; the first two mapper requests meet at a
/// barrier (possible only when two mappers work at once); the reducer
/// answers "reduced".
model_fn mapping_model() {
  auto mapper_calls = std::make_shared<int>(0);
  return [mapper_calls](const chat_request& req) {
    if (req.agent == "reducer")
      return reply("reduced");
    if (req.agent == "splitter")
      return reply("Items:\n```json\n[\"p\", \"q\", \"r\"]\n```");
    auto r = reply(req.agent + ":" + upper(goal_of(req)), 50ms);
    if ((*mapper_calls)++ < 2) {
      r.barrier = "map";
      r.barrier_count = 2;
    }
    return r;
  };
}

std::multiset<std::string> mapped_goals(call_log& log) {
  std::multiset<std::string> out;
  for (auto& c : log.snapshot())
    if (c.req.agent == "m1" || c.req.agent == "m2")
      out.insert(goal_of(c.req));
  return out;
}

} // namespace

TEST_CASE_METHOD(fixture,
                 "map_reduce: every line of the goal is mapped once, in "
                 "parallel over the mappers, and reduced",
                 "[teams][map_reduce]") {
  model(mapping_model());
  map_reduce_config cfg;
  cfg.name = "mr";
  cfg.mappers = {member("m1"), member("m2")};
  cfg.reducer = agent("reducer");
  auto team = rt.adopt(spawn_map_reduce(rt.system(), std::move(cfg)));

  auto r = run(team, "apple\nbanana\n\n  cherry \ndate\n");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.error.empty());
  CHECK(r.answer == "reduced");
  CHECK(mapped_goals(*calls)
        == std::multiset<std::string>{"apple", "banana", "cherry", "date"});
  auto m1 = calls->from("m1");
  auto m2 = calls->from("m2");
  // The pool shares the work, and its two mappers worked at the same time.
  CHECK_FALSE(m1.empty());
  CHECK_FALSE(m2.empty());
  bool parallel = false;
  for (auto& x : m1)
    for (auto& y : m2)
      parallel = parallel || overlap(x, y);
  CHECK(parallel);

  auto reducer = calls->from("reducer");
  REQUIRE(reducer.size() == 1);
  auto rgoal = goal_of(reducer[0].req);
  std::vector<std::string> items{"apple", "banana", "cherry", "date"};
  for (size_t i = 0; i < items.size(); ++i) {
    auto s = subtask(r, "item-" + std::to_string(i + 1));
    CHECK(s["status"] == "complete");
    CHECK(s["attempts"] == 1);
    CHECK_THAT(rgoal, Catch::Contains("[item-" + std::to_string(i + 1) + "] "
                                      + s["member"].get<std::string>() + ":"
                                      + upper(items[i])));
  }
  CHECK(context_of(reducer[0].req)["merge"] == "reduce");
  CHECK(r.detail.value["pattern"] == "map_reduce");
  check_accounts(r);
}

TEST_CASE_METHOD(fixture, "map_reduce: items come from the context's \"items\"",
                 "[teams][map_reduce]") {
  model(mapping_model());
  map_reduce_config cfg;
  cfg.name = "mr";
  cfg.mappers = {member("m1"), member("m2")};
  auto team = rt.adopt(spawn_map_reduce(rt.system(), std::move(cfg)));
  auto r = run(team, "this line is not an item",
               json{{"items", json::array({"x", "y", 3})}});
  REQUIRE(r.status == run_status::complete);
  CHECK(mapped_goals(*calls) == std::multiset<std::string>{"x", "y", "3"});
  // Without a reducer, the answer lists the mapped results.
  CHECK_THAT(r.answer,
             Catch::Contains("[item-1] "
                             + subtask(r, "item-1")["member"].get<std::string>()
                             + ":X"));
  CHECK_THAT(r.answer,
             Catch::Contains("[item-3] "
                             + subtask(r, "item-3")["member"].get<std::string>()
                             + ":3"));
}

TEST_CASE_METHOD(fixture,
                 "map_reduce: a splitter agent's JSON array is the split, "
                 "anything else fails the run",
                 "[teams][map_reduce]") {
  SECTION("an array") {
    model(mapping_model());
    map_reduce_config cfg;
    cfg.name = "mr";
    cfg.splitter = agent("splitter");
    cfg.mappers = {member("m1"), member("m2")};
    cfg.reducer = agent("reducer");
    auto team = rt.adopt(spawn_map_reduce(rt.system(), std::move(cfg)));
    auto r = run(team, "one line only");
    REQUIRE(r.status == run_status::complete);
    CHECK(mapped_goals(*calls) == std::multiset<std::string>{"p", "q", "r"});
    auto splitter = calls->from("splitter");
    REQUIRE(splitter.size() == 1);
    CHECK(goal_of(splitter[0].req) == "one line only");
    check_accounts(r);
  }
  SECTION("not an array") {
    model([](const chat_request& req) {
      if (req.agent == "splitter")
        return reply("{\"items\": \"p and q\"}");
      return did(req);
    });
    map_reduce_config cfg;
    cfg.name = "mr";
    cfg.splitter = agent("splitter");
    cfg.mappers = {member("m1")};
    auto team = rt.adopt(spawn_map_reduce(rt.system(), std::move(cfg)));
    auto r = run(team, "a\nb");
    CHECK(r.status == run_status::failed);
    CHECK_THAT(r.error, Catch::Contains("not a JSON array of items"));
    CHECK(calls->from("m1").empty());
  }
}

TEST_CASE_METHOD(fixture, "map_reduce: an empty or too large input fails",
                 "[teams][map_reduce]") {
  model([](const chat_request& req) { return did(req); });
  map_reduce_config cfg;
  cfg.name = "mr";
  cfg.mappers = {member("m1")};
  cfg.max_items = 2;
  auto team = rt.adopt(spawn_map_reduce(rt.system(), std::move(cfg)));
  auto empty = run(team, "\n   \n");
  CHECK(empty.status == run_status::failed);
  CHECK_THAT(empty.error, Catch::Contains("nothing to map"));
  auto large = run(team, "a\nb\nc");
  CHECK(large.status == run_status::failed);
  CHECK_THAT(large.error, Catch::Contains("3 items, more than the limit of 2"));
  CHECK(calls->snapshot().empty());
}

TEST_CASE_METHOD(fixture,
                 "map_reduce: a split function that throws fails that run "
                 "only, whatever it throws",
                 "[teams][map_reduce]") {
  model([](const chat_request& req) { return did(req); });
  map_reduce_config cfg;
  cfg.name = "mr";
  cfg.mappers = {member("m1")};
  cfg.split = [](const run_task& task) -> std::vector<std::string> {
    if (task.goal == "bad")
      throw std::runtime_error("no items in 'bad'");
    if (task.goal == "odd")
      throw 42;
    return {task.goal};
  };
  auto team = rt.adopt(spawn_map_reduce(rt.system(), std::move(cfg)));
  auto bad = run(team, "bad");
  CHECK(bad.status == run_status::failed);
  CHECK_THAT(bad.error, Catch::Contains("splitting the input failed: no items in 'bad'"));
  auto odd = run(team, "odd");
  CHECK(odd.status == run_status::failed);
  CHECK_THAT(odd.error, Catch::Contains("splitting the input failed: unknown exception"));
  // The team is still there for the next run.
  auto good = run(team, "fine");
  CHECK(good.status == run_status::complete);
  CHECK(calls->from("m1").size() == 1);
}

// -- evaluator_optimizer ---------------------------------------------------------

namespace {

/// The generator answers "draft <round>"; the evaluator answers what
/// `verdicts` holds for the round (the last one for later rounds).
model_fn evaluating_model(std::vector<std::string> verdicts) {
  return [verdicts](const chat_request& req) {
    auto round = context_of(req).value("round", 0);
    if (req.agent == "gen")
      return reply("draft " + std::to_string(round));
    auto i = std::min<size_t>(static_cast<size_t>(round) - 1, verdicts.size() - 1);
    return reply(verdicts[i]);
  };
}

evaluator_optimizer_config evo_config(fixture& f, int32_t rounds) {
  evaluator_optimizer_config cfg;
  cfg.name = "evo";
  cfg.generator = f.agent("gen");
  cfg.evaluator = f.agent("eval");
  cfg.max_rounds = rounds;
  return cfg;
}

} // namespace

TEST_CASE_METHOD(fixture,
                 "evaluator_optimizer: the generator gets the feedback and "
                 "the passing candidate is the answer",
                 "[teams][evaluator_optimizer]") {
  model(evaluating_model({"FAIL: add a title", "PASS - looks good"}));
  auto team = rt.adopt(spawn_evaluator_optimizer(rt.system(), evo_config(*this, 3)));
  auto r = run(team, "write a poem");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.error.empty());
  CHECK(r.answer == "draft 2");
  auto gen = calls->from("gen");
  REQUIRE(gen.size() == 2);
  CHECK(goal_of(gen[0].req) == "write a poem");
  auto second = goal_of(gen[1].req);
  CHECK_THAT(second, Catch::StartsWith("write a poem"));
  CHECK_THAT(second, Catch::Contains("Your previous answer:\ndraft 1"));
  CHECK_THAT(second, Catch::Contains("The evaluator's feedback:\nadd a title"));
  auto eval = calls->from("eval");
  REQUIRE(eval.size() == 2);
  CHECK_THAT(goal_of(eval[0].req), Catch::Contains("Candidate answer:\ndraft 1"));
  CHECK_THAT(goal_of(eval[1].req), Catch::Contains("Candidate answer:\ndraft 2"));
  CHECK_THAT(goal_of(eval[1].req), Catch::Contains("Task:\nwrite a poem"));
  auto& history = r.detail.value["history"];
  REQUIRE(history.size() == 2);
  CHECK(history[0]["pass"] == false);
  CHECK(history[0]["feedback"] == "add a title");
  CHECK(history[1]["pass"] == true);
  CHECK(r.detail.value["rounds"] == 2);
  check_accounts(r);
}

TEST_CASE_METHOD(fixture,
                 "evaluator_optimizer: an answer that never passes ends "
                 "max_steps with the last feedback",
                 "[teams][evaluator_optimizer]") {
  model([](const chat_request& req) {
    auto round = context_of(req).value("round", 0);
    if (req.agent == "gen")
      return reply("draft " + std::to_string(round));
    return reply("FAIL: still too long (round " + std::to_string(round) + ")");
  });
  auto team = rt.adopt(spawn_evaluator_optimizer(rt.system(), evo_config(*this, 2)));
  auto r = run(team, "write a poem");
  CHECK(r.status == run_status::max_steps);
  CHECK(r.answer == "draft 2");
  CHECK_THAT(r.error, Catch::Contains("in 2 round(s)"));
  CHECK_THAT(r.error, Catch::Contains("last feedback: still too long (round 2)"));
  CHECK(calls->from("gen").size() == 2);
  CHECK(calls->from("eval").size() == 2);
}

TEST_CASE_METHOD(fixture,
                 "evaluator_optimizer: JSON verdicts are read, alone or in text",
                 "[teams][evaluator_optimizer]") {
  model(evaluating_model(
    {R"(My verdict: {"pass": false, "feedback": "cite a source"} - sorry.)",
     R"({"pass": true})"}));
  auto team = rt.adopt(spawn_evaluator_optimizer(rt.system(), evo_config(*this, 3)));
  auto r = run(team, "explain tides");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.answer == "draft 2");
  auto gen = calls->from("gen");
  REQUIRE(gen.size() == 2);
  CHECK_THAT(goal_of(gen[1].req),
             Catch::Contains("The evaluator's feedback:\ncite a source"));
}

TEST_CASE_METHOD(fixture,
                 "evaluator_optimizer: a leading verdict word wins, in the "
                 "usual wordings, over JSON quoted later",
                 "[teams][evaluator_optimizer]") {
  std::string fail_text, pass_text;
  SECTION("FAIL quoting a passing JSON, then PASSED") {
    fail_text = R"(FAIL: it should return {"pass": true} for valid input)";
    pass_text = "PASSED - good";
  }
  SECTION("bold and labelled verdicts") {
    fail_text = "**FAIL** cite a source";
    pass_text = "Verdict: PASS";
  }
  model(evaluating_model({fail_text, pass_text}));
  auto team = rt.adopt(spawn_evaluator_optimizer(rt.system(), evo_config(*this, 3)));
  auto r = run(team, "explain tides");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.answer == "draft 2");
  CHECK(r.detail.value["history"][0]["pass"] == false);
  CHECK(r.detail.value["history"][1]["pass"] == true);
  CHECK(calls->from("gen").size() == 2);
}

TEST_CASE("extract_json takes whichever of an object or an array opens first",
          "[teams]") {
  CHECK(extract_json(R"(Items: [{"q": 1}, {"q": 2}])") == json::parse(R"([{"q": 1}, {"q": 2}])"));
  CHECK(extract_json(R"(Plan: {"subtasks": [1]} done)") == json::parse(R"({"subtasks": [1]})"));
  CHECK(extract_json("no json here").is_null());
}

TEST_CASE_METHOD(fixture,
                 "evaluator_optimizer: an unreadable verdict counts as a fail "
                 "saying so",
                 "[teams][evaluator_optimizer]") {
  SECTION("and the generator is told") {
    model(evaluating_model({"hmm, maybe?", "PASS"}));
    auto team =
      rt.adopt(spawn_evaluator_optimizer(rt.system(), evo_config(*this, 3)));
    auto r = run(team, "explain tides");
    REQUIRE(r.status == run_status::complete);
    CHECK(r.answer == "draft 2");
    CHECK(r.detail.value["history"][0]["pass"] == false);
    CHECK_THAT(r.detail.value["history"][0]["feedback"].get<std::string>(),
               Catch::Contains("unreadable"));
    auto gen = calls->from("gen");
    REQUIRE(gen.size() == 2);
    CHECK_THAT(goal_of(gen[1].req), Catch::Contains("unreadable"));
  }
  SECTION("and on the last round it ends the run") {
    model(evaluating_model({"PASSABLE, I guess"}));
    auto team =
      rt.adopt(spawn_evaluator_optimizer(rt.system(), evo_config(*this, 1)));
    auto r = run(team, "explain tides");
    CHECK(r.status == run_status::max_steps);
    CHECK(r.answer == "draft 1");
    CHECK_THAT(r.error, Catch::Contains("unreadable"));
  }
}

// -- hierarchies -----------------------------------------------------------------

TEST_CASE_METHOD(fixture,
                 "teams nest: an orchestrator over a debate over a map_reduce "
                 "completes, with answers flowing up and usage adding up",
                 "[teams][hierarchy]") {
  model([](const chat_request& req) {
    auto goal = goal_of(req);
    if (req.agent == "m1" || req.agent == "m2")
      return reply("M(" + goal + ")", 20ms);
    if (req.agent == "reducer") {
      auto results = between(goal, "Results:\n", "");
      std::replace(results.begin(), results.end(), '\n', '|');
      return reply("R{" + results + "}");
    }
    if (req.agent == "solo")
      return reply("S(" + first_line(goal) + ")", 20ms);
    if (req.agent == "judge") {
      auto listing = between(goal, "The debaters answered:", "\n\nDecide");
      std::replace(listing.begin(), listing.end(), '\n', ' ');
      return reply("J{" + listing + "}");
    }
    return reply(req.agent + " noted " + goal);
  });
  map_reduce_config mr;
  mr.name = "mr";
  mr.mappers = {member("m1"), member("m2")};
  mr.reducer = agent("reducer");
  auto mapper_team = rt.adopt(spawn_map_reduce(rt.system(), std::move(mr)));

  debate_config deb;
  deb.name = "panel";
  deb.debaters = {{"mr", mapper_team}, member("solo")};
  deb.judge = agent("judge");
  auto panel = rt.adopt(spawn_debate(rt.system(), std::move(deb)));

  orchestrator_config top;
  top.name = "top";
  top.plan = team_plan{{{"debate-it", "panel", "{{goal}}", {}},
                        {"note", "scribe", "note", {"debate-it"}}}};
  top.workers["panel"] = {{"panel", panel}};
  top.workers["scribe"] = {member("scribe")};
  auto team = rt.adopt(spawn_orchestrator(rt.system(), std::move(top)));

  auto r = run(team, "alpha\nbeta");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.error.empty());
  CHECK(r.agent == "top");
  // The map_reduce's mapped items reach the reducer, its answer the judge,
  // the judge's the orchestrator and the scribe.
  auto reduced = "R{[item-1] M(alpha)|[item-2] M(beta)|}";
  auto judged = "J{ [mr] " + std::string{reduced} + " [solo] S(alpha)}";
  CHECK_THAT(r.answer, Catch::Contains("[debate-it (panel)] " + judged));
  CHECK_THAT(r.answer, Catch::Contains("[note (scribe)] scribe noted note"));
  auto scribe = calls->from("scribe");
  REQUIRE(scribe.size() == 1);
  CHECK_THAT(goal_of(scribe[0].req), Catch::Contains("[debate-it] " + judged));
  // Every model call of every level counts towards the top team's run, which
  // every request carries.
  auto all = calls->snapshot();
  CHECK(all.size() == 6);
  check_accounts(r);
  for (auto& c : all) {
    CHECK(c.req.ref.run_id == r.run_id);
    CHECK(c.req.ref.trace_id == all[0].req.ref.trace_id);
  }
  CHECK(subtask(r, "debate-it")["member"] == "panel");
}

TEST_CASE_METHOD(fixture,
                 "orchestrator: max_parallel bounds how many subtasks run at "
                 "once",
                 "[teams][orchestrator]") {
  model([](const chat_request& req) { return did(req, 30ms); });
  orchestrator_config cfg;
  cfg.name = "team";
  cfg.plan = team_plan{{{"a", "work", "one", {}}, {"b", "work", "two", {}}}};
  cfg.workers["work"] = {member("w1"), member("w2")};
  cfg.max_parallel = 1;
  auto team = rt.adopt(spawn_orchestrator(rt.system(), std::move(cfg)));
  auto r = run(team, "goal");
  REQUIRE(r.status == run_status::complete);
  auto all = calls->snapshot();
  REQUIRE(all.size() == 2);
  CHECK_FALSE(overlap(all[0], all[1]));
  CHECK(all[1].received_ns >= all[0].replied_ns);
  auto a = subtask(r, "a"), b = subtask(r, "b");
  CHECK((ns(b, "started_ns") >= ns(a, "ended_ns")
         || ns(a, "started_ns") >= ns(b, "ended_ns")));
}

TEST_CASE_METHOD(fixture,
                 "orchestrator: a supervised worker's crash is retried by its "
                 "supervisor, not counted as a failed attempt",
                 "[teams][orchestrator]") {
  model([](const chat_request& req) { return did(req); });
  agent_spec spec;
  spec.name = "sturdy";
  spec.model = "m";
  spec.faults.crash_at_step = 1;
  spec.faults.crashes_left = std::make_shared<std::atomic<int32_t>>(1);
  orchestrator_config cfg;
  cfg.name = "team";
  cfg.plan = team_plan{{{"a", "work", "one", {}}}};
  cfg.workers["work"] = {{"sturdy", rt.spawn_supervised_agent(spec)}};
  auto team = rt.adopt(spawn_orchestrator(rt.system(), std::move(cfg)));
  auto r = run(team, "goal");
  REQUIRE(r.status == run_status::complete);
  CHECK(r.error.empty());
  CHECK(subtask(r, "a")["attempts"] == 1);
  CHECK_THAT(r.answer, Catch::Contains("[a (work)] sturdy did one"));
}

TEST_CASE_METHOD(fixture, "map_reduce: concurrent runs keep their items apart",
                 "[teams][map_reduce]") {
  model([](const chat_request& req) {
    return reply(req.agent + ":" + upper(goal_of(req)), 20ms);
  });
  map_reduce_config cfg;
  cfg.name = "mr";
  cfg.mappers = {member("m1"), member("m2")};
  auto team = rt.adopt(spawn_map_reduce(rt.system(), std::move(cfg)));
  run_options opts;
  opts.timeout = 30s;
  auto f1 = rt.submit(team, "a1\na2\na3", opts);
  auto f2 = rt.submit(team, "b1\nb2", opts);
  REQUIRE(f1.wait_for(30s) == std::future_status::ready);
  REQUIRE(f2.wait_for(30s) == std::future_status::ready);
  auto r1 = f1.get();
  auto r2 = f2.get();
  REQUIRE(r1.status == run_status::complete);
  REQUIRE(r2.status == run_status::complete);
  for (auto item : {"A1", "A2", "A3"}) {
    CHECK_THAT(r1.answer, Catch::Contains(std::string{":"} + item));
    CHECK_THAT(r2.answer, !Catch::Contains(std::string{":"} + item));
  }
  for (auto item : {"B1", "B2"}) {
    CHECK_THAT(r2.answer, Catch::Contains(std::string{":"} + item));
    CHECK_THAT(r1.answer, !Catch::Contains(std::string{":"} + item));
  }
  CHECK(r1.steps.size() == 3);
  CHECK(r2.steps.size() == 2);
  CHECK(r1.detail.value["subtasks"].size() == 3);
  CHECK(r2.detail.value["subtasks"].size() == 2);
  CHECK(calls->snapshot().size() == 5);
}

TEST_CASE_METHOD(fixture,
                 "debate: a debater that fails its rebuttal keeps its first "
                 "answer",
                 "[teams][debate]") {
  model([](const chat_request& req) {
    if (req.agent == "d1" && context_of(req).value("debate_round", -1) == 1)
      return model_failure("tired");
    auto r = debater_or_judge(req);
    r.barrier.clear();
    return r;
  });
  debate_config cfg;
  cfg.name = "deb";
  cfg.debaters = {member("d1"), member("d2")};
  cfg.rounds = 1;
  cfg.judge = agent("judge");
  auto team = rt.adopt(spawn_debate(rt.system(), std::move(cfg)));
  auto r = run(team, "question");
  REQUIRE(r.status == run_status::complete);
  auto judge = calls->from("judge");
  REQUIRE(judge.size() == 1);
  CHECK_THAT(goal_of(judge[0].req), Catch::Contains("[d1] d1-first"));
  CHECK_THAT(goal_of(judge[0].req), Catch::Contains("[d2] d2-second"));
  CHECK(r.detail.value["answers"]["d1"] == json::array({"d1-first"}));
  CHECK(r.detail.value["failed"].empty());
  // The kept answer is not passed off as a rebuttal: the result names it.
  REQUIRE(r.detail.value["missed_rebuttals"].size() == 1);
  CHECK(r.detail.value["missed_rebuttals"][0]["debater"] == "d1");
  CHECK(r.detail.value["missed_rebuttals"][0]["round"] == 1);
  CHECK_THAT(r.error, Catch::Contains("1 rebuttal(s) failed")
                        && Catch::Contains("d1 in round 1")
                        && Catch::Contains("tired"));
}

TEST_CASE_METHOD(fixture, "debate: an empty goal still asks every debater",
                 "[teams][debate]") {
  model([](const chat_request& req) { return reply(req.agent + " answers"); });
  debate_config cfg;
  cfg.name = "deb";
  cfg.debaters = {member("d1"), member("d2")};
  cfg.judge = agent("judge");
  auto team = rt.adopt(spawn_debate(rt.system(), std::move(cfg)));
  auto r = run(team, "");
  REQUIRE(r.status == run_status::complete);
  CHECK(calls->from("d1").size() == 1);
  CHECK(calls->from("d2").size() == 1);
  CHECK(r.answer == "judge answers");
}

TEST_CASE_METHOD(fixture,
                 "a team that is stopped answers its runs in flight as "
                 "cancelled, as an agent does",
                 "[teams][stop]") {
  // Members take a minute: the team is stopped while it waits for them.
  model([](const chat_request& req) { return reply(req.agent + " is slow", 60s); });
  runnable_actor team;
  SECTION("an agent (the behaviour teams should match)") {
    team = agent("t");
  }
  SECTION("pipeline") {
    team = spawn_pipeline(rt.system(), "t", {member("x")});
  }
  SECTION("orchestrator_worker") {
    orchestrator_config cfg;
    cfg.name = "t";
    cfg.plan = team_plan{{{"a", "work", "{{goal}}", {}}}};
    cfg.workers["work"] = {member("x")};
    team = spawn_orchestrator(rt.system(), std::move(cfg));
  }
  SECTION("map_reduce") {
    map_reduce_config cfg;
    cfg.name = "t";
    cfg.mappers = {member("x")};
    team = spawn_map_reduce(rt.system(), std::move(cfg));
  }
  SECTION("debate") {
    debate_config cfg;
    cfg.name = "t";
    cfg.debaters = {member("x"), member("y")};
    cfg.judge = agent("judge");
    team = spawn_debate(rt.system(), std::move(cfg));
  }
  SECTION("evaluator_optimizer") {
    evaluator_optimizer_config cfg;
    cfg.name = "t";
    cfg.generator = agent("x");
    cfg.evaluator = agent("y");
    team = spawn_evaluator_optimizer(rt.system(), std::move(cfg));
  }
  rt.adopt(team);
  auto started = std::make_shared<std::promise<void>>();
  auto started_f = started->get_future();
  auto once = std::make_shared<std::once_flag>();
  rt.adopt(spawn_event_observer(rt.system(), team,
                                mask_of(event_kind::run_started),
                                [started, once](const agent_event&) {
                                  std::call_once(*once,
                                                 [&] { started->set_value(); });
                                }));
  run_options opts;
  // Without an answer from the team, the caller gives up after this.
  opts.timeout = 3s;
  auto result = std::async(std::launch::async,
                           [this, team, opts] { return rt.run(team, "go", opts); });
  REQUIRE(started_f.wait_for(10s) == std::future_status::ready);
  caf::anon_send_exit(team, caf::exit_reason::user_shutdown);
  auto r = result.get();
  // Answered at once, well before the caller's own timeout ("got no result").
  CHECK(r.status == run_status::cancelled);
  CHECK_THAT(r.error, Catch::Contains("stopped"));
}

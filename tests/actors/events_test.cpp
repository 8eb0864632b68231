#include "actors/events.hpp"

#include <catch2/catch.hpp>

#include <condition_variable>
#include <future>
#include <mutex>

#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "runtime/builtin_tools.hpp"
#include "runtime/runtime.hpp"
#include "supervisors/pipeline.hpp"
#include "supervisors/teams.hpp"
#include "support/runtime_fixture.hpp"
#include "support/test_models.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

/// The events an observer got, filled from its callback (an actor thread).
struct collector {
  std::mutex mtx;
  std::condition_variable cv;
  std::vector<agent_event> events;

  void push(const agent_event& ev) {
    {
      std::lock_guard<std::mutex> guard{mtx};
      events.push_back(ev);
    }
    cv.notify_all();
  }

  /// Waits (at most 10 s) until `n` events have arrived; returns them all.
  std::vector<agent_event> wait_for(size_t n) {
    std::unique_lock<std::mutex> lock{mtx};
    cv.wait_for(lock, 10s, [&] { return events.size() >= n; });
    return events;
  }

  /// Waits (at most 10 s) until an event of `kind` for `run_id` has arrived.
  std::vector<agent_event> wait_for(event_kind kind, const std::string& run_id) {
    std::unique_lock<std::mutex> lock{mtx};
    cv.wait_for(lock, 10s, [&] {
      for (auto& ev : events)
        if (ev.kind == kind && ev.run_id == run_id)
          return true;
      return false;
    });
    return events;
  }
};

std::vector<std::string> kinds(const std::vector<agent_event>& events) {
  std::vector<std::string> out;
  for (auto& ev : events)
    out.push_back(to_string(ev.kind));
  return out;
}

model_tool_call calc(std::string expression) {
  model_tool_call c;
  c.name = "calculator";
  c.arguments = json{{"expression", std::move(expression)}};
  return c;
}

/// The run's goal, without its context.
std::string goal_of(const chat_request& req) {
  for (auto& m : req.messages)
    if (m.role == chat_role::user) {
      auto text = m.content;
      auto cut = text.rfind("\n\nContext:\n");
      if (cut != std::string::npos)
        text.resize(cut);
      return text;
    }
  return {};
}

/// Agents answer by their name:
///   "counter": two calculator steps, then "done <goal>";
///   "a": "apple pie" for goal "ok", and for "bad" a tool no one has (with
///        max_steps 1 the run ends max_steps);
///   anyone else: "<agent> got: <goal>".
chat_response by_agent(const chat_request& req) {
  auto goal = goal_of(req);
  if (req.agent == "counter") {
    auto step = step_of(req);
    if (step < 3)
      return call_tools({calc(std::to_string(step) + " + 1")});
    return answer("done " + goal);
  }
  if (req.agent == "a") {
    if (goal == "bad") {
      model_tool_call nope;
      nope.name = "no_such_tool";
      nope.arguments = json::object();
      return call_tools({nope});
    }
    return answer("apple pie");
  }
  return answer(req.agent + " got: " + goal);
}

struct fixture : runtime_fixture {
  fixture() {
    rt.tools().add(calculator_tool());
    rt.add_model("m", spawn_recording_model(rt.system(), log, by_agent));
  }

  runnable_actor agent(const std::string& name, int32_t max_steps = 5) {
    agent_spec spec;
    spec.name = name;
    spec.model = "m";
    spec.tools = {"calculator"};
    spec.max_steps = max_steps;
    return rt.spawn_agent(spec);
  }

  /// An observer of `source` (stopped with the runtime); the collector
  /// outlives the test body, as the observer may outlive it too.
  std::shared_ptr<collector> observe(const runnable_actor& source,
                                     event_mask mask,
                                     event_sink* sink = nullptr) {
    auto c = std::make_shared<collector>();
    auto obs = rt.adopt(spawn_event_observer(
      rt.system(), source, mask, [c](const agent_event& ev) { c->push(ev); }));
    if (sink != nullptr)
      *sink = obs;
    return c;
  }

  run_result run(const runnable_actor& target, std::string goal) {
    run_options opts;
    opts.timeout = 30s;
    return rt.run(target, std::move(goal), opts);
  }

  std::vector<chat_request> requests_from(const std::string& agent) {
    std::vector<chat_request> out;
    for (auto& req : log->snapshot())
      if (req.agent == agent)
        out.push_back(req);
    return out;
  }
};

} // namespace

TEST_CASE_METHOD(fixture,
                 "an observer sees a run start, each step, and its answer, in "
                 "order",
                 "[events]") {
  auto counter = agent("counter");
  auto c = observe(counter, all_events);
  auto r = run(counter, "count");
  REQUIRE(r.status == run_status::complete);
  REQUIRE(r.steps.size() == 3);
  auto events = c->wait_for(event_kind::task_completed, r.run_id);
  CHECK(kinds(events)
        == std::vector<std::string>{"run_started", "step_completed",
                                    "step_completed", "step_completed",
                                    "task_completed"});
  REQUIRE(events.size() == 5);
  for (int i = 1; i <= 3; ++i)
    CHECK(events[i].step == i);
  auto trace = requests_from("counter").at(0).ref.trace_id;
  CHECK_FALSE(trace.empty());
  for (size_t i = 0; i < events.size(); ++i) {
    CHECK(events[i].source == "counter");
    CHECK(events[i].run_id == r.run_id);
    CHECK(events[i].trace_id == trace);
    if (i > 0)
      CHECK(events[i].time_ns >= events[i - 1].time_ns);
  }
  auto& done = events.back();
  CHECK(done.status == run_status::complete);
  CHECK(done.answer == "done count");
  CHECK(done.answer == r.answer);
  CHECK(done.step == 3);
  CHECK(done.error.empty());
}

TEST_CASE_METHOD(fixture, "an observer gets only the kinds in its mask",
                 "[events]") {
  auto counter = agent("counter");
  auto c = observe(counter, mask_of(event_kind::task_completed));
  auto r1 = run(counter, "first");
  REQUIRE(r1.status == run_status::complete);
  // The agent sends its events in order: had the observer got the run's start
  // or steps, they would have come before this.
  auto events = c->wait_for(1);
  REQUIRE(events.size() == 1);
  CHECK(events[0].kind == event_kind::task_completed);
  CHECK(events[0].run_id == r1.run_id);
  auto r2 = run(counter, "second");
  REQUIRE(r2.status == run_status::complete);
  events = c->wait_for(2);
  CHECK(kinds(events)
        == std::vector<std::string>{"task_completed", "task_completed"});
  REQUIRE(events.size() == 2);
  CHECK(events[1].run_id == r2.run_id);
  CHECK(events[1].answer == "done second");
}

TEST_CASE_METHOD(fixture,
                 "subscribing again replaces the mask, unsubscribing stops the "
                 "events",
                 "[events]") {
  auto counter = agent("counter");
  event_sink obs;
  auto c = observe(counter, all_events, &obs);
  auto obs_handle = caf::actor_cast<caf::actor>(obs);

  SECTION("a new mask") {
    caf::anon_send(counter, ev_subscribe_atom::value, obs_handle,
                   mask_of(event_kind::task_completed));
    auto r = run(counter, "x");
    auto events = c->wait_for(event_kind::task_completed, r.run_id);
    // One subscription, with the new mask: no start, no steps, no duplicate.
    CHECK(kinds(events) == std::vector<std::string>{"task_completed"});
  }

  SECTION("unsubscribed") {
    auto r1 = run(counter, "one");
    c->wait_for(event_kind::task_completed, r1.run_id);
    caf::anon_send(counter, ev_unsubscribe_atom::value, obs_handle);
    auto r2 = run(counter, "two");
    REQUIRE(r2.status == run_status::complete);
    // Subscribed again for a third run: had run two been published to the
    // observer, its events would arrive before the third run's.
    caf::anon_send(counter, ev_subscribe_atom::value, obs_handle, all_events);
    auto r3 = run(counter, "three");
    auto events = c->wait_for(event_kind::task_completed, r3.run_id);
    REQUIRE(events.size() == 10);
    for (size_t i = 0; i < events.size(); ++i)
      CHECK(events[i].run_id == (i < 5 ? r1.run_id : r3.run_id));
  }

  SECTION("a zero mask unsubscribes") {
    caf::anon_send(counter, ev_subscribe_atom::value, obs_handle, event_mask{0});
    auto r1 = run(counter, "one");
    REQUIRE(r1.status == run_status::complete);
    caf::anon_send(counter, ev_subscribe_atom::value, obs_handle,
                   mask_of(event_kind::task_completed));
    auto r2 = run(counter, "two");
    auto events = c->wait_for(event_kind::task_completed, r2.run_id);
    REQUIRE(events.size() == 1);
    CHECK(events[0].run_id == r2.run_id);
  }
}

TEST_CASE_METHOD(fixture, "a failed run is published as task_failed",
                 "[events]") {
  SECTION("the model endpoint fails") {
    auto gone = spawn_recording_model(rt.system(), log, by_agent);
    rt.add_model("gone", gone);
    caf::anon_send_exit(gone, caf::exit_reason::user_shutdown);
    agent_spec spec;
    spec.name = "broken";
    spec.model = "gone";
    auto broken = rt.spawn_agent(spec);
    auto c = observe(broken, all_events);
    auto r = run(broken, "x");
    REQUIRE(r.status == run_status::failed);
    auto events = c->wait_for(event_kind::task_failed, r.run_id);
    REQUIRE_FALSE(events.empty());
    CHECK(events.front().kind == event_kind::run_started);
    auto& last = events.back();
    CHECK(last.kind == event_kind::task_failed);
    CHECK(last.status == run_status::failed);
    CHECK(last.error == r.error);
    CHECK_THAT(last.error, Catch::Contains("model 'gone' failed at step 1"));
  }
  SECTION("the step limit") {
    auto a = agent("a", 1);
    auto c = observe(a, mask_of(event_kind::task_failed)
                 | mask_of(event_kind::task_completed));
    auto r = run(a, "bad");
    REQUIRE(r.status == run_status::max_steps);
    auto events = c->wait_for(1);
    REQUIRE(events.size() == 1);
    CHECK(events[0].kind == event_kind::task_failed);
    CHECK(events[0].status == run_status::max_steps);
    CHECK_THAT(events[0].error, Catch::Contains("step limit (1)"));
  }
  SECTION("a team's stage fails") {
    auto a = agent("a", 1);
    auto q = rt.adopt(spawn_pipeline(rt.system(), "single", {{"a", a}}));
    auto cq = observe(q, all_events);
    auto r = run(q, "bad");
    REQUIRE(r.status == run_status::max_steps);
    auto events = cq->wait_for(event_kind::task_failed, r.run_id);
    CHECK(kinds(events)
          == std::vector<std::string>{"run_started", "task_failed"});
    REQUIRE(events.size() == 2);
    CHECK(events[1].source == "single");
    CHECK(events[1].status == run_status::max_steps);
    CHECK_THAT(events[1].error, Catch::Contains("stage 1 ('a') ended max_steps"));
  }
}

TEST_CASE_METHOD(fixture,
                 "a team publishes its own run_started and task_completed",
                 "[events]") {
  runnable_actor team;
  std::string name;
  SECTION("pipeline") {
    name = "chain";
    team = spawn_pipeline(rt.system(), name,
                          {{"x", agent("x")}, {"y", agent("y")}});
  }
  SECTION("orchestrator_worker") {
    name = "orch";
    orchestrator_config cfg;
    cfg.name = name;
    cfg.plan = team_plan{{{"s", "work", "{{goal}}", {}}}};
    cfg.workers["work"] = {{"x", agent("x")}};
    cfg.synthesizer = agent("y");
    team = spawn_orchestrator(rt.system(), std::move(cfg));
  }
  SECTION("map_reduce") {
    name = "mr";
    map_reduce_config cfg;
    cfg.name = name;
    cfg.mappers = {{"x", agent("x")}};
    cfg.reducer = agent("y");
    team = spawn_map_reduce(rt.system(), std::move(cfg));
  }
  SECTION("debate") {
    name = "deb";
    debate_config cfg;
    cfg.name = name;
    cfg.debaters = {{"x", agent("x")}, {"z", agent("z")}};
    cfg.judge = agent("y");
    team = spawn_debate(rt.system(), std::move(cfg));
  }
  SECTION("evaluator_optimizer") {
    name = "evo";
    // "y got: ..." is not a verdict, so one round ends max_steps: any
    // outcome is published; here it is task_failed.
    evaluator_optimizer_config cfg;
    cfg.name = name;
    cfg.generator = agent("x");
    cfg.evaluator = agent("y");
    cfg.max_rounds = 1;
    team = spawn_evaluator_optimizer(rt.system(), std::move(cfg));
  }
  rt.adopt(team);
  auto c = observe(team, all_events);
  auto r = run(team, "go");
  auto end_kind = r.status == run_status::complete ? event_kind::task_completed
                                                   : event_kind::task_failed;
  if (name == "evo")
    CHECK(r.status == run_status::max_steps);
  else
    CHECK(r.status == run_status::complete);
  auto events = c->wait_for(end_kind, r.run_id);
  // Only the team's own events: its members publish to their own subscribers.
  CHECK(kinds(events)
        == std::vector<std::string>{"run_started", to_string(end_kind)});
  REQUIRE(events.size() == 2);
  for (auto& ev : events) {
    CHECK(ev.source == name);
    CHECK(ev.run_id == r.run_id);
  }
  CHECK(events[1].answer == r.answer);
  CHECK(events[1].status == r.status);
  CHECK(events[1].step == static_cast<int32_t>(r.steps.size()));
  CHECK(events[0].trace_id == events[1].trace_id);
  CHECK(events[0].trace_id == log->snapshot().at(0).ref.trace_id);
}

TEST_CASE_METHOD(fixture, "a supervised agent publishes each run once",
                 "[events]") {
  agent_spec spec;
  spec.name = "counter";
  spec.model = "m";
  spec.tools = {"calculator"};
  spec.faults.crash_at_step = 2;
  spec.faults.crashes_left = std::make_shared<std::atomic<int32_t>>(1);
  auto sturdy = rt.spawn_supervised_agent(spec);
  auto c = observe(sturdy,
          mask_of(event_kind::run_started) | mask_of(event_kind::task_completed)
            | mask_of(event_kind::task_failed));
  auto r = run(sturdy, "count");
  REQUIRE(r.status == run_status::complete);
  auto events = c->wait_for(event_kind::task_completed, r.run_id);
  // The crash and the retry happen behind the front.
  CHECK(kinds(events)
        == std::vector<std::string>{"run_started", "task_completed"});
  CHECK(events.back().answer == "done count");
}

TEST_CASE_METHOD(fixture,
                 "wake_on starts a run on another agent with the event's answer",
                 "[events]") {
  auto a = agent("a");
  auto b = agent("b");
  std::promise<run_result> woken;
  auto result = woken.get_future();
  auto done = [p = std::make_shared<std::promise<run_result>>(std::move(woken))](
                run_result r) { p->set_value(std::move(r)); };
  rt.adopt(wake_on(rt.system(), a, event_kind::task_completed, b, {}, done));
  auto ra = run(a, "ok");
  REQUIRE(ra.status == run_status::complete);
  REQUIRE(result.wait_for(10s) == std::future_status::ready);
  auto rb = result.get();
  CHECK(rb.status == run_status::complete);
  CHECK(rb.agent == "b");
  CHECK(rb.answer == "b got: apple pie");
  CHECK(rb.run_id != ra.run_id);
  auto breq = requests_from("b");
  REQUIRE(breq.size() == 1);
  CHECK(goal_of(breq[0]) == "apple pie");
  CHECK_THAT(breq[0].messages.back().content,
             Catch::Contains("\"woken_by\": \"a\""));
  // The woken run continues the waking run's trace.
  CHECK(breq[0].ref.trace_id == requests_from("a").at(0).ref.trace_id);
}

TEST_CASE_METHOD(fixture,
                 "wake_on wakes only on its kind, with the task it is given",
                 "[events]") {
  auto a = agent("a", 1);
  auto b = agent("b");
  // Shared: the waker may outlive the test body.
  struct seen {
    std::mutex mtx;
    std::condition_variable cv;
    std::vector<run_result> results;
  };
  auto s = std::make_shared<seen>();
  auto done = [s](run_result r) {
    {
      std::lock_guard<std::mutex> guard{s->mtx};
      s->results.push_back(std::move(r));
    }
    s->cv.notify_all();
  };
  auto make = [](const agent_event& ev) {
    run_task task;
    task.goal = "handle failure of " + ev.source + ": " + ev.error;
    return task;
  };
  rt.adopt(wake_on(rt.system(), a, event_kind::task_failed, b, make, done));
  auto ok = run(a, "ok");
  REQUIRE(ok.status == run_status::complete);
  auto bad = run(a, "bad");
  REQUIRE(bad.status == run_status::max_steps);
  {
    std::unique_lock<std::mutex> lock{s->mtx};
    s->cv.wait_for(lock, 10s, [&] { return !s->results.empty(); });
    auto& results = s->results;
    // The waker sends b its tasks in order: a run for the completed one would
    // have ended first.
    REQUIRE(results.size() == 1);
    CHECK(results[0].status == run_status::complete);
    CHECK_THAT(results[0].answer,
               Catch::StartsWith("b got: handle failure of a: "));
    CHECK_THAT(results[0].answer, Catch::Contains("step limit (1)"));
  }
  CHECK(requests_from("b").size() == 1);
}

TEST_CASE_METHOD(fixture,
                 "an event_hub sends each event to the subscribers whose mask "
                 "holds its kind",
                 "[events]") {
  auto starts = std::make_shared<collector>();
  auto ends = std::make_shared<collector>();
  auto spawn_sink = [&](std::shared_ptr<collector> c) {
    return rt.adopt(rt.system().spawn([c]() -> event_sink::behavior_type {
      return {[c](const agent_event& ev) { c->push(ev); }};
    }));
  };
  auto s1 = caf::actor_cast<caf::actor>(spawn_sink(starts));
  auto s2 = caf::actor_cast<caf::actor>(spawn_sink(ends));
  event_hub hub;
  CHECK_FALSE(hub.wants(event_kind::run_started));
  hub.subscribe(s1, mask_of(event_kind::run_started));
  hub.subscribe(s2, mask_of(event_kind::task_completed)
                      | mask_of(event_kind::task_failed));
  CHECK(hub.size() == 2);
  CHECK(hub.wants(event_kind::run_started));
  CHECK(hub.wants(event_kind::task_failed));
  CHECK_FALSE(hub.wants(event_kind::step_completed));
  run_task task;
  task.ref.run_id = "r1";
  task.ref.trace_id = "t1";
  hub.publish(started_event("src", task));
  run_result done;
  done.run_id = "r1";
  done.status = run_status::complete;
  done.answer = "yes";
  hub.publish(finished_event("src", done, "t1"));
  auto got_start = starts->wait_for(1);
  auto got_end = ends->wait_for(1);
  REQUIRE(got_start.size() == 1);
  CHECK(got_start[0].kind == event_kind::run_started);
  CHECK(got_start[0].run_id == "r1");
  CHECK(got_start[0].trace_id == "t1");
  REQUIRE(got_end.size() == 1);
  CHECK(got_end[0].kind == event_kind::task_completed);
  CHECK(got_end[0].answer == "yes");
  // Unsubscribing one keeps the other and recomputes what the hub wants.
  hub.unsubscribe(s1);
  CHECK(hub.size() == 1);
  CHECK_FALSE(hub.wants(event_kind::run_started));
  hub.subscribe(s2, 0);
  CHECK(hub.size() == 0);
  CHECK_FALSE(hub.wants(event_kind::task_completed));
  // A failed result makes a task_failed event.
  done.status = run_status::halted;
  done.error = "deadline";
  auto ev = finished_event("src", done, "t1");
  CHECK(ev.kind == event_kind::task_failed);
  CHECK(ev.status == run_status::halted);
  CHECK(ev.error == "deadline");
}

TEST_CASE_METHOD(fixture,
                 "an event hub forgets subscribers that stopped without "
                 "unsubscribing",
                 "[events]") {
  auto live = std::make_shared<collector>();
  auto gone = std::make_shared<collector>();
  // Observers subscribed to no source: this test hands them to a hub itself.
  auto noop_source = runnable_actor{};
  auto live_sink = rt.adopt(spawn_event_observer(
    rt.system(), noop_source, all_events, [live](const agent_event& ev) { live->push(ev); }));
  auto gone_sink = spawn_event_observer(
    rt.system(), noop_source, all_events, [gone](const agent_event& ev) { gone->push(ev); });
  event_hub hub;
  hub.subscribe(caf::actor_cast<caf::actor>(live_sink), all_events);
  hub.subscribe(caf::actor_cast<caf::actor>(gone_sink), all_events);
  REQUIRE(hub.size() == 2);
  // Stop one observer and wait for it to be gone (a down message, no sleep).
  {
    caf::scoped_actor self{rt.system()};
    self->monitor(gone_sink);
    self->send_exit(gone_sink, caf::exit_reason::user_shutdown);
    bool down = false;
    self->receive([&](caf::down_msg&) { down = true; },
                  caf::after(10s) >> [] {});
    REQUIRE(down);
  }
  agent_event ev;
  ev.source = "someone";
  ev.kind = event_kind::task_completed;
  ev.run_id = "run-1";
  hub.publish(ev);
  CHECK(hub.size() == 1);
  CHECK(hub.wants(event_kind::task_completed));
  REQUIRE(live->wait_for(1).size() == 1);
  CHECK(live->events[0].run_id == "run-1");
  CHECK(gone->events.empty());
}

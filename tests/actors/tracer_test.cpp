#include "actors/tracer.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <map>
#include <mutex>

#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>
#include <set>

#include "messages/type_ids.hpp"
#include "runtime/runtime.hpp"
#include "support/temp_dir.hpp"
#include "support/test_models.hpp"

using namespace troupe;
using namespace troupe::test;
using namespace std::chrono_literals;

namespace {

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in{path};
  std::vector<json> out;
  std::string line;
  while (std::getline(in, line))
    out.push_back(json::parse(line));
  return out;
}

tool_definition add_tool() {
  tool_definition def;
  def.name = "add";
  def.description = "Adds two numbers";
  def.parameters = json{{"type", "object"},
                        {"properties",
                         {{"a", {{"type", "number"}}}, {"b", {{"type", "number"}}}}},
                        {"required", {"a", "b"}}};
  def.fn = [](const json& args, const tool_context&) -> json {
    return args.at("a").get<double>() + args.at("b").get<double>();
  };
  return def;
}

model_tool_call add_call(double a, double b) {
  model_tool_call c;
  c.name = "add";
  c.arguments = json{{"a", a}, {"b", b}};
  return c;
}

} // namespace

SCENARIO("the trace file holds one span per run, step, model call and tool "
         "call with correct parent links",
         "[trace]") {
  temp_dir dir;
  auto path = dir.file("trace.jsonl");
  std::vector<json> live;
  auto live_mtx = std::make_shared<std::mutex>();
  {
    runtime_config cfg;
    cfg.load_middleman = false;
    cfg.trace_path = path;
    cfg.trace_listeners.push_back([&live, live_mtx](const json& rec) {
      std::lock_guard<std::mutex> guard{*live_mtx};
      live.push_back(rec);
    });
    runtime rt{cfg};
    rt.tools().add(add_tool());
    auto log = std::make_shared<model_log>();
    rt.add_model("m", spawn_recording_model(rt.system(), log, [](auto& req) {
                   switch (step_of(req)) {
                     case 1:
                       return call_tools({add_call(1, 2), add_call(3, 4)},
                                         {50, 10});
                     case 2:
                       return call_tools({add_call(3, 7)}, {60, 8});
                     default:
                       return answer("10", {70, 3});
                   }
                 }));
    agent_spec spec;
    spec.name = "adder";
    spec.model = "m";
    spec.tools = {"add"};
    auto agent = rt.spawn_agent(spec);
    auto r = rt.run(agent, "add things");
    REQUIRE(r.status == run_status::complete);
    REQUIRE(r.steps.size() == 3);
    rt.flush_trace();
  }
  auto records = read_jsonl(path);
  std::map<std::string, json> spans; // by span id
  std::vector<json> events;
  std::set<std::string> trace_ids;
  for (auto& rec : records) {
    trace_ids.insert(rec.at("trace_id").get<std::string>());
    if (rec.at("type") == "span")
      spans.emplace(rec.at("span_id").get<std::string>(), rec);
    else if (rec.at("type") == "event")
      events.push_back(rec);
    else
      FAIL("unexpected record type " << rec.at("type"));
  }
  CHECK(trace_ids.size() == 1);
  auto named = [&](const std::string& prefix) {
    std::vector<json> out;
    for (auto& kv : spans)
      if (kv.second.at("name").get<std::string>().rfind(prefix, 0) == 0)
        out.push_back(kv.second);
    return out;
  };
  auto runs = named("invoke_agent ");
  auto steps = named("step ");
  auto chats = named("chat ");
  auto tools = named("execute_tool ");
  REQUIRE(runs.size() == 1);
  REQUIRE(steps.size() == 3);
  REQUIRE(chats.size() == 3);
  REQUIRE(tools.size() == 3);
  CHECK(spans.size() == 10);
  auto run_id = runs[0].at("span_id").get<std::string>();
  CHECK(runs[0].at("parent_span_id") == "");
  CHECK(runs[0].at("name") == "invoke_agent adder");
  CHECK(runs[0].at("attributes").at("gen_ai.operation.name") == "invoke_agent");
  CHECK(runs[0].at("attributes").at("gen_ai.agent.name") == "adder");
  CHECK(runs[0].at("attributes").at("troupe.run.status") == "complete");
  CHECK(runs[0].at("attributes").at("gen_ai.usage.input_tokens") == 180);
  CHECK(runs[0].at("status") == "ok");
  std::map<int, std::string> step_span_by_index;
  for (auto& s : steps) {
    CHECK(s.at("parent_span_id") == run_id);
    step_span_by_index[s.at("attributes").at("troupe.step").get<int>()] =
      s.at("span_id").get<std::string>();
  }
  REQUIRE(step_span_by_index.size() == 3);
  for (auto& c : chats) {
    auto& attrs = c.at("attributes");
    auto step = attrs.at("troupe.step").get<int>();
    CHECK(c.at("parent_span_id") == step_span_by_index.at(step));
    CHECK(attrs.at("gen_ai.operation.name") == "chat");
    CHECK(attrs.at("gen_ai.request.model") == "m");
    CHECK(attrs.at("gen_ai.agent.name") == "adder");
    CHECK(attrs.contains("gen_ai.usage.input_tokens"));
    CHECK(attrs.contains("gen_ai.usage.output_tokens"));
    CHECK(c.at("end_ns").get<int64_t>() >= c.at("start_ns").get<int64_t>());
  }
  std::map<int, int> tools_per_step;
  for (auto& t : tools) {
    auto& attrs = t.at("attributes");
    auto step = attrs.at("troupe.step").get<int>();
    ++tools_per_step[step];
    CHECK(t.at("parent_span_id") == step_span_by_index.at(step));
    CHECK(attrs.at("gen_ai.operation.name") == "execute_tool");
    CHECK(attrs.at("gen_ai.tool.name") == "add");
    CHECK_FALSE(attrs.at("gen_ai.tool.call.id").get<std::string>().empty());
    CHECK(attrs.at("troupe.tool.ok") == true);
    // A child span lies within its parent.
    auto& parent = spans.at(t.at("parent_span_id").get<std::string>());
    CHECK(t.at("start_ns").get<int64_t>() >= parent.at("start_ns").get<int64_t>());
    CHECK(t.at("end_ns").get<int64_t>() <= parent.at("end_ns").get<int64_t>());
  }
  CHECK(tools_per_step == std::map<int, int>{{1, 2}, {2, 1}});
  // Every state transition is an event on the run span, in order.
  std::vector<std::string> transitions;
  for (auto& e : events) {
    if (e.at("name") != "agent.transition")
      continue;
    CHECK(e.at("span_id") == run_id);
    transitions.push_back(e.at("attributes").at("troupe.state.from").get<std::string>()
                          + ">" + e.at("attributes").at("troupe.state.to").get<std::string>());
  }
  CHECK(transitions
        == std::vector<std::string>{"IDLE>PLANNING", "PLANNING>ACTING",
                                    "ACTING>PROCESSING", "PROCESSING>PLANNING",
                                    "PLANNING>ACTING", "ACTING>PROCESSING",
                                    "PROCESSING>PLANNING", "PLANNING>COMPLETE",
                                    "COMPLETE>IDLE"});
  // Listeners saw the same spans, plus their starts.
  size_t live_spans = 0, live_starts = 0;
  for (auto& rec : live) {
    live_spans += rec.at("type") == "span";
    live_starts += rec.at("type") == "span_start";
  }
  CHECK(live_spans == 10);
  CHECK(live_starts == 10);
}

SCENARIO("the tracer writes spans left open as unfinished when it stops",
         "[trace]") {
  temp_dir dir;
  auto path = dir.file("open.jsonl");
  {
    caf::actor_system_config cfg;
    register_messages(cfg);
    caf::actor_system sys{cfg};
    tracer_config tc;
    tc.jsonl_path = path;
    auto t = spawn_tracer(sys, tc);
    caf::anon_send(t, span_start{"t1", "s1", "", "dangling", 5, json::object()});
    caf::anon_send(t, span_start{"t1", "s2", "s1", "closed", 6, json::object()});
    caf::anon_send(t, span_end{"t1", "s2", 9, "error", "boom", json{{"k", 1}}});
    caf::anon_send(t, span_end{"t1", "unknown", 9, "ok", "", json::object()});
    caf::scoped_actor self{sys};
    bool flushed = false;
    self->request(t, 5s, tr_flush_atom::value)
      .receive([&](bool ok) { flushed = ok; }, [](caf::error&) {});
    REQUIRE(flushed);
    self->send_exit(t, caf::exit_reason::user_shutdown);
  }
  auto records = read_jsonl(path);
  REQUIRE(records.size() == 2);
  CHECK(records[0].at("name") == "closed");
  CHECK(records[0].at("status") == "error");
  CHECK(records[0].at("status_message") == "boom");
  CHECK(records[0].at("attributes").at("k") == 1);
  CHECK(records[0].at("duration_ms") == Approx(3e-6));
  CHECK(records[1].at("name") == "dangling");
  CHECK(records[1].at("status") == "unfinished");
}

SCENARIO("a trace file that cannot be opened is refused with its name",
         "[trace]") {
  runtime_config cfg;
  cfg.load_middleman = false;
  cfg.trace_path = "/nonexistent-dir/trace.jsonl";
  CHECK_THROWS_WITH(runtime{cfg}, Catch::Contains("/nonexistent-dir/trace.jsonl"));
}

#include "actors/agent.hpp"

#include <algorithm>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/exit_reason.hpp>
#include <caf/sec.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

#include "actors/events.hpp"
#include "actors/span_recorder.hpp"
#include "supervisors/team_run.hpp"
#include "messages/errors.hpp"
#include "runtime/clock.hpp"

namespace troupe {

const char* to_string(agent_phase x) {
  switch (x) {
    case agent_phase::idle:
      return "IDLE";
    case agent_phase::planning:
      return "PLANNING";
    case agent_phase::acting:
      return "ACTING";
    case agent_phase::awaiting_approval:
      return "AWAITING_APPROVAL";
    case agent_phase::processing:
      return "PROCESSING";
    case agent_phase::complete:
      return "COMPLETE";
    case agent_phase::max_steps:
      return "MAX_STEPS";
    case agent_phase::failed:
      return "FAILED";
    case agent_phase::halted:
      return "HALTED";
  }
  return "UNKNOWN";
}

run_result failed_result(const run_task& task, std::string error,
                         std::string agent) {
  run_result r;
  r.run_id = task.ref.run_id;
  r.agent = std::move(agent);
  r.status = run_status::failed;
  r.error = std::move(error);
  r.started_ns = now_ns();
  r.ended_ns = r.started_ns;
  return r;
}

json agent_spec_to_json(const agent_spec& spec) {
  const auto& c = spec.confidence;
  const auto& l = spec.loops;
  return json{{"name", spec.name},
              {"role", spec.role},
              {"system_prompt", spec.system_prompt},
              {"model", spec.model},
              {"tools", spec.tools},
              {"max_steps", spec.max_steps},
              {"max_parallel_tools", spec.max_parallel_tools},
              {"model_timeout_ms", spec.model_timeout.count()},
              {"model_params", spec.model_params},
              {"usage_estimate", spec.usage_estimate},
              {"confidence",
               {{"enabled", c.enabled},
                {"field", c.field},
                {"execute_at", c.execute_at},
                {"clarify_at", c.clarify_at},
                {"alternative_at", c.alternative_at},
                {"alternative_model", c.alternative_model},
                {"max_reroutes", c.max_reroutes}}},
              {"loops",
               {{"repeat_threshold", l.repeat_threshold},
                {"stall_steps", l.stall_steps},
                {"halt", l.halt}}},
              {"approval_ttl_ms", spec.approval_ttl.count()},
              {"node", spec.node}};
}

agent_spec agent_spec_from_json(const json& doc) {
  if (!doc.is_object())
    throw std::invalid_argument("agent spec: expected a JSON object, got "
                                + std::string{doc.type_name()});
  agent_spec spec;
  std::string field;
  auto get = [&](const json& obj, const char* key, auto& out) {
    field = key;
    if (auto i = obj.find(key); i != obj.end())
      i->get_to(out);
  };
  try {
    get(doc, "name", spec.name);
    get(doc, "role", spec.role);
    get(doc, "system_prompt", spec.system_prompt);
    get(doc, "model", spec.model);
    get(doc, "tools", spec.tools);
    get(doc, "max_steps", spec.max_steps);
    get(doc, "max_parallel_tools", spec.max_parallel_tools);
    int64_t ms = spec.model_timeout.count();
    get(doc, "model_timeout_ms", ms);
    spec.model_timeout = std::chrono::milliseconds{ms};
    get(doc, "model_params", spec.model_params);
    get(doc, "usage_estimate", spec.usage_estimate);
    if (auto i = doc.find("confidence"); i != doc.end() && i->is_object()) {
      auto& c = spec.confidence;
      get(*i, "enabled", c.enabled);
      get(*i, "field", c.field);
      get(*i, "execute_at", c.execute_at);
      get(*i, "clarify_at", c.clarify_at);
      get(*i, "alternative_at", c.alternative_at);
      get(*i, "alternative_model", c.alternative_model);
      get(*i, "max_reroutes", c.max_reroutes);
    }
    if (auto i = doc.find("loops"); i != doc.end() && i->is_object()) {
      get(*i, "repeat_threshold", spec.loops.repeat_threshold);
      get(*i, "stall_steps", spec.loops.stall_steps);
      get(*i, "halt", spec.loops.halt);
    }
    ms = spec.approval_ttl.count();
    get(doc, "approval_ttl_ms", ms);
    spec.approval_ttl = std::chrono::milliseconds{ms};
    get(doc, "node", spec.node);
  } catch (const json::exception& ex) {
    throw std::invalid_argument("agent spec: field '" + field
                                + "': " + ex.what());
  }
  return spec;
}

void validate(const agent_spec& spec) {
  auto fail = [&](const std::string& what) {
    throw std::invalid_argument("agent '" + spec.name + "': " + what);
  };
  if (spec.name.empty())
    throw std::invalid_argument("agent: name must not be empty");
  if (spec.max_steps < 1)
    fail("max_steps must be at least 1, got " + std::to_string(spec.max_steps));
  if (spec.max_parallel_tools < 1)
    fail("max_parallel_tools must be at least 1, got "
         + std::to_string(spec.max_parallel_tools));
  if (spec.model_timeout <= std::chrono::milliseconds{0})
    fail("model_timeout must be positive");
  if (!spec.model_params.is_object())
    fail("model_params must be a JSON object");
}

namespace {

/// Longest excerpt of a tool result or argument copied into a span.
constexpr size_t trace_excerpt = 2048;

/// Grace on top of a tool's own timeout before the agent stops waiting for
/// the adapter's answer (the adapter answers timeouts itself).
constexpr auto adapter_grace = std::chrono::seconds{2};

/// How long the agent waits for the budget actor's verdict.
constexpr auto budget_timeout = std::chrono::seconds{30};

/// Grace on top of an approval's time-to-live before the agent stops waiting
/// for the gate (the gate answers expiry itself).
constexpr auto approval_grace = std::chrono::seconds{5};

/// Output tokens reserved for a model call whose parameters set no max_tokens.
constexpr int64_t default_output_estimate = 512;

/// Dollars from nano-dollars, for messages: "0.012000".
std::string usd_text(int64_t nusd) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%.6f", nusd_to_usd(nusd));
  return buf;
}

/// A share or a confidence for messages: "0.62".
std::string format_share(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f", x);
  return buf;
}

std::string excerpt(std::string text, size_t max = trace_excerpt) {
  if (text.size() > max) {
    // Cut at a character boundary, not inside a UTF-8 sequence.
    while (max > 0 && (static_cast<unsigned char>(text[max]) & 0xC0) == 0x80)
      --max;
    text.resize(max);
    text += "...";
  }
  return text;
}

/// What the model reads for a tool result.
std::string observation_text(const tool_result& r) {
  std::string text;
  if (r.ok)
    text = r.content.value.is_string() ? r.content.value.get<std::string>()
                                       : safe_dump(r.content.value);
  else
    text = "error (" + json(r.error.kind).get<std::string>()
           + "): " + r.error.message;
  for (const auto& note : r.notes)
    text += "\n[runtime] " + note;
  return text;
}

/// How long a call may take: its own limit, cut to what is left of the
/// run's deadline (when it has one).
std::chrono::milliseconds bounded(std::chrono::milliseconds limit,
                                  int64_t deadline_ms) {
  if (deadline_ms <= 0)
    return limit;
  auto left = std::chrono::milliseconds{std::max<int64_t>(deadline_ms - now_ms(), 1)};
  return std::min(limit, left);
}

/// One active run.
struct active_run {
  uint64_t seq = 0;
  run_task task;
  /// task_digest of the goal and context: part of the calls' idempotency keys.
  std::string task_digest;
  caf::typed_response_promise<run_result> promise;
  run_result result;
  std::vector<chat_message> messages;
  int32_t max_steps = 0;
  std::string trace_id;
  std::string run_span;
  std::string step_span;
  /// A step has begun and is not yet recorded.
  bool step_open = false;
  /// The latest step's index, for events after its record is closed.
  int32_t current_step = 0;
  step_record step;
  // The tool calls of the current step, index-aligned.
  std::vector<tool_call> calls;
  std::vector<std::string> call_spans;
  std::vector<std::optional<tool_result>> results;
  std::deque<size_t> waiting;
  size_t in_flight = 0;
  /// Calls of the current step waiting for a human.
  size_t awaiting_approval = 0;
  /// Calls of the current step held back until every approval of the step
  /// is decided: a reply is carried out as a whole, so nothing it proposed
  /// (a confirmation email) runs before the action it goes with is approved.
  std::vector<size_t> held;
  /// The budget path of this run, its own account last.
  std::vector<budget_scope> budget_path;
  /// The open reservation of the current model call ("" for none).
  std::string reservation;
  /// What that reservation set aside.
  budget_amount reserved;
  /// Everything this run's attempts charged to the budget (checkpointed, so
  /// a resumed run can tell the budget what earlier attempts spent).
  budget_amount charged;
  /// Of that, what this attempt's own model calls spent (not replays).
  budget_amount spent_here;
  /// What an earlier attempt that failed spent, when this one started over
  /// rather than going on from it: the replies this one replays from the
  /// journal are within it (see spending()).
  budget_amount floor;
  /// The key the budget counts this durable run's spending under ("" when
  /// the agent has no store): "RUN_ID/CHECKPOINT_KEY".
  std::string budget_key;
  /// Calls per tool in this run (policy caps count them).
  std::map<std::string, int32_t> calls_per_tool;
  /// Loop detection: calls by signature, what the run has seen, and steps in
  /// a row that saw nothing new.
  std::map<std::string, int32_t> call_counts;
  std::set<std::string> seen;
  int32_t stall = 0;
  std::set<std::string> warned;
  /// Confidence routing: reroutes so far, and whether the next step asks the
  /// alternative model.
  int32_t reroutes = 0;
  bool ask_alternative = false;
  /// Notes for the current step's results, index-aligned (policy caps,
  /// approvals).
  std::vector<std::vector<std::string>> notes;
  /// The run's checkpoints in the store: "name/task digest".
  std::string checkpoint_key;
  /// Steps the last checkpoint held.
  size_t saved_steps = 0;
  /// The result came whole from a saved checkpoint: nothing to save again.
  bool replayed = false;
};

struct agent_state {
  static inline const char* name = "troupe.agent";

  agent_spec spec;
  /// How traces, events, results and logs name the agent: "name", or
  /// "name@node" for an agent a cluster placed on a node.
  std::string label;
  agent_links links;
  std::map<std::string, size_t> tool_index;
  std::vector<tool_spec> tool_specs;
  std::string tool_list; // "a, b, c" for observations
  /// Characters of the tool descriptions the model is sent every step.
  size_t tool_chars = 0;
  span_recorder trace;
  agent_phase phase = agent_phase::idle;
  std::optional<active_run> run;
  /// Subscribers to this agent's events.
  event_hub events;
  std::deque<std::pair<run_task, caf::typed_response_promise<run_result>>>
    backlog;
  uint64_t next_seq = 1;
  /// Tells this agent's budget accounts apart from those of another agent
  /// of the same name in the same run (two mappers spawned from one spec).
  std::string instance = random_hex(4);
};

using agent_self = runnable_actor::stateful_pointer<agent_state>;

void start_next(agent_self self);
void plan(agent_self self);
void act(agent_self self);

void enter(agent_self self, agent_phase next) {
  auto& st = self->state;
  auto prev = st.phase;
  st.phase = next;
  if (!st.run)
    return;
  auto& run = *st.run;
  st.trace.event(run.trace_id, run.run_span, "agent.transition",
                 [&] { return json{{"gen_ai.agent.name", st.label},
                      {"troupe.state.from", to_string(prev)},
                      {"troupe.state.to", to_string(next)},
                      {"troupe.step", run.current_step}}; });
}

/// An event of the active run with a one-line detail.
agent_event run_event(const agent_state& st, const active_run& run,
                      event_kind kind, std::string detail) {
  agent_event ev;
  ev.source = st.label;
  ev.kind = kind;
  ev.run_id = run.result.run_id;
  ev.trace_id = run.trace_id;
  ev.step = run.current_step;
  ev.time_ns = now_ns();
  ev.detail = std::move(detail);
  return ev;
}

/// Raises a guardrail warning: kept in the result, traced, logged and
/// published to subscribers.
void warn(agent_self self, const std::string& text) {
  auto& st = self->state;
  auto& run = *st.run;
  run.result.warnings.push_back(text);
  st.trace.event(run.trace_id,
                 run.step_span.empty() ? run.run_span : run.step_span,
                 "guardrail.warning",
                 [&] { return json{{"gen_ai.agent.name", st.label},
                      {"troupe.warning", text}}; });
  spdlog::warn("agent {}: run {}: {}", st.label, run.result.run_id, text);
  if (st.events.wants(event_kind::warning))
    st.events.publish(run_event(st, run, event_kind::warning, text));
}

/// Gives back what the run holds in the budget actor: an open reservation and
/// its account.
void close_budget(agent_self self, active_run& run) {
  const auto& budget = self->state.links.budget;
  if (!budget || run.budget_path.empty())
    return;
  const auto& account = run.budget_path.back().account;
  if (!run.reservation.empty())
    self->send(budget, budget_release{account, run.reservation});
  run.reservation.clear();
  self->send(budget, budget_close{account});
  run.budget_path.clear();
}

void add_to(budget_amount& x, const budget_amount& y) {
  x.steps += y.steps;
  x.tokens += y.tokens;
  x.cost_nusd += y.cost_nusd;
}

/// What the run's attempts have spent, as far as this one knows: what it
/// took over and charged, or, when it started over after a failed attempt,
/// that attempt's spending (which its replays repeat) and its own calls.
budget_amount spending(const active_run& run) {
  auto out = run.floor;
  add_to(out, run.spent_here);
  auto at_least = [](int64_t& x, int64_t y) { x = std::max(x, y); };
  at_least(out.steps, run.charged.steps);
  at_least(out.tokens.input_tokens, run.charged.tokens.input_tokens);
  at_least(out.tokens.output_tokens, run.charged.tokens.output_tokens);
  at_least(out.cost_nusd, run.charged.cost_nusd);
  return out;
}

/// Settles the open reservation of a model call with what it used, counted
/// under the run's budget key.
void charge(agent_self self, active_run& run, const std::string& model,
            const budget_amount& used) {
  const auto& budget = self->state.links.budget;
  if (!budget || run.reservation.empty() || run.budget_path.empty())
    return;
  self->send(budget, budget_charge{run.budget_path.back().account,
                                   run.reservation, model, used,
                                   run.budget_key});
  run.reservation.clear();
  add_to(run.charged, used);
  add_to(run.spent_here, used);
}

/// Tells the budget what the run's attempts have spent up to now: after a
/// restart, what earlier ones spent (it counts only what it has not seen).
void recount(agent_self self, active_run& run) {
  const auto& budget = self->state.links.budget;
  if (!budget || run.budget_path.empty() || run.budget_key.empty())
    return;
  auto ref = run.task.ref;
  ref.span_id = run.run_span;
  self->send(budget, budget_recount{std::move(ref), run.budget_path,
                                    run.budget_key, spending(run)});
}

/// How long a store lookup may take before the run starts without it.
constexpr auto checkpoint_timeout = std::chrono::seconds{10};

/// The state a checkpoint keeps: everything the run needs to go on from the
/// step it reached (the conversation, the steps and their results, usage,
/// what the guardrails have counted).
json checkpoint_state(const active_run& run) {
  return json{{"messages", run.messages},
              {"steps", run.result.steps},
              {"usage", run.result.usage},
              {"cost_nusd", run.result.cost_nusd},
              {"charged", spending(run)},
              {"warnings", run.result.warnings},
              {"calls_per_tool", run.calls_per_tool},
              {"call_counts", run.call_counts},
              {"seen", run.seen},
              {"stall", run.stall},
              {"warned", run.warned},
              {"reroutes", run.reroutes}};
}

/// Puts a checkpoint's state back into the run. Throws json errors for a
/// state it cannot read (the run then starts afresh).
void restore_state(active_run& run, const json& s) {
  // Everything is read before anything is set: a state that cannot be read
  // leaves the run as it was.
  auto messages = s.at("messages").get<std::vector<chat_message>>();
  auto steps = s.at("steps").get<std::vector<step_record>>();
  auto usage = s.at("usage").get<token_usage>();
  auto calls_per_tool = s.value("calls_per_tool", json::object())
                          .get<std::map<std::string, int32_t>>();
  auto call_counts = s.value("call_counts", json::object())
                       .get<std::map<std::string, int32_t>>();
  auto seen = s.value("seen", json::array()).get<std::set<std::string>>();
  auto warned = s.value("warned", json::array()).get<std::set<std::string>>();
  auto warnings = s.value("warnings", json::array())
                    .get<std::vector<std::string>>();
  auto stall = s.value("stall", 0);
  auto reroutes = s.value("reroutes", 0);
  auto cost = s.value("cost_nusd", int64_t{0});
  // Checkpoints from before "charged" was kept: one step per model call.
  auto charged = s.contains("charged")
                   ? s.at("charged").get<budget_amount>()
                   : budget_amount{static_cast<int64_t>(steps.size()), usage,
                                   cost};
  run.messages = std::move(messages);
  run.result.steps = std::move(steps);
  run.result.usage = usage;
  run.result.cost_nusd = cost;
  run.charged = charged;
  run.result.warnings = std::move(warnings);
  run.calls_per_tool = std::move(calls_per_tool);
  run.call_counts = std::move(call_counts);
  run.seen = std::move(seen);
  run.warned = std::move(warned);
  run.stall = stall;
  run.reroutes = reroutes;
  run.current_step = static_cast<int32_t>(run.result.steps.size());
  run.saved_steps = run.result.steps.size();
}

/// Saves the run's state to the store (when there is one): after a step,
/// and once more, final, when the run ends.
void save_checkpoint(agent_self self, bool final) {
  auto& st = self->state;
  auto& run = *st.run;
  if (!st.links.store || run.replayed)
    return;
  if (!final && run.result.steps.size() == run.saved_steps)
    return;
  auto state = checkpoint_state(run);
  if (final) {
    state["status"] = to_string(run.result.status);
    state["answer"] = run.result.answer;
    state["error"] = run.result.error;
  }
  run.saved_steps = run.result.steps.size();
  self->send(st.links.store, st_ckpt_put_atom::value, run.result.run_id,
             run.checkpoint_key, static_cast<int32_t>(run.result.steps.size()),
             final, json_value{std::move(state)});
}

/// Ends the active run, answers its caller and starts the next queued one.
void finish(agent_self self, run_status status, std::string answer,
            std::string error) {
  auto& st = self->state;
  auto& run = *st.run;
  if (run.step_open) {
    run.step.ended_ns = now_ns();
    run.result.steps.push_back(std::move(run.step));
    st.trace.end(run.trace_id, run.step_span, span_recorder::none, error);
    run.step_span.clear();
    run.step_open = false;
  }
  close_budget(self, run);
  run.result.status = status;
  run.result.answer = std::move(answer);
  run.result.error = std::move(error);
  run.result.ended_ns = now_ns();
  if (status != run_status::cancelled)
    save_checkpoint(self, true);
  switch (status) {
    case run_status::complete:
      enter(self, agent_phase::complete);
      break;
    case run_status::max_steps:
      enter(self, agent_phase::max_steps);
      break;
    case run_status::halted:
    case run_status::cancelled:
      enter(self, agent_phase::halted);
      break;
    case run_status::failed:
      enter(self, agent_phase::failed);
      break;
  }
  st.trace.end(
    run.trace_id, run.run_span,
    [&] { return json{{"troupe.run.status", to_string(status)},
         {"troupe.run.steps", run.result.steps.size()},
         {"gen_ai.usage.input_tokens", run.result.usage.input_tokens},
         {"gen_ai.usage.output_tokens", run.result.usage.output_tokens}}; },
    status == run_status::complete ? "" : run.result.error);
  spdlog::debug("agent {}: run {} ended {} after {} step(s)", st.label,
                run.result.run_id, to_string(status), run.result.steps.size());
  st.events.publish(finished_event(st.label, run.result, run.trace_id));
  run.promise.deliver(std::move(run.result));
  enter(self, agent_phase::idle);
  st.run.reset();
  start_next(self);
}

/// Traces a refusal by the run's own limits, as the budget actor traces its
/// own (see actors/budget.hpp).
void trace_budget_denied(const agent_state& st, const active_run& run,
                         const char* limit, const std::string& reason) {
  st.trace.event(run.trace_id, run.run_span, "budget.denied",
                 [&] { return json{{"gen_ai.agent.name", st.label},
                      {"troupe.budget.account", run.result.run_id},
                      {"troupe.budget.limit", limit},
                      {"troupe.budget.reason", reason}}; });
}

/// The last thing the model said, for a run that ends without a final answer.
std::string last_assistant_text(const active_run& run) {
  for (auto i = run.messages.rbegin(); i != run.messages.rend(); ++i)
    if (i->role == chat_role::assistant && !i->content.empty())
      return i->content;
  return {};
}

/// Goes on from a saved checkpoint (null: there is none): a completed run
/// answers with its saved result, an unfinished one plans its next step; a
/// run that ended otherwise (failed, halted...) starts afresh, as a retry of
/// it would.
void continue_from(agent_self self, const json& cp) {
  auto& st = self->state;
  auto& run = *st.run;
  if (cp.is_object()) {
    const auto& state = cp.value("state", json::object());
    bool final = cp.value("final", false);
    auto status = state.value("status", std::string{});
    if (!final || status == "complete") {
      try {
        restore_state(run, state);
        recount(self, run);
        auto step = static_cast<int64_t>(run.result.steps.size());
        st.trace.event(run.trace_id, run.run_span,
                       final ? "run.replayed" : "run.resumed",
                       [&] { return json{{"gen_ai.agent.name", st.label},
                                         {"troupe.step", step}}; });
        spdlog::info("agent {}: run {} {} from its checkpoint at step {}",
                     st.label, run.result.run_id,
                     final ? "answered" : "resumed", step);
        if (final) {
          run.replayed = true;
          finish(self, run_status::complete, state.value("answer", ""), "");
          return;
        }
      } catch (const std::exception& ex) {
        spdlog::warn("agent {}: run {}: unreadable checkpoint ({}); starting "
                     "from the first step",
                     st.label, run.result.run_id, ex.what());
      }
    } else if (state.contains("charged")) {
      // An attempt that ended failed (or halted...): this one starts over,
      // but what that one spent stays spent.
      try {
        run.floor = state.at("charged").get<budget_amount>();
        recount(self, run);
      } catch (const std::exception& ex) {
        spdlog::warn("agent {}: run {}: unreadable spending in its last "
                     "checkpoint ({})",
                     st.label, run.result.run_id, ex.what());
      }
    }
  }
  enter(self, agent_phase::planning);
  plan(self);
}

void begin(agent_self self, run_task task,
           caf::typed_response_promise<run_result> promise) {
  auto& st = self->state;
  st.run.emplace();
  auto& run = *st.run;
  run.seq = st.next_seq++;
  if (task.ref.run_id.empty())
    task.ref.run_id = "run-" + random_hex(8);
  if (task.ref.trace_id.empty())
    task.ref.trace_id = new_trace_id();
  run.trace_id = task.ref.trace_id;
  run.max_steps = st.spec.max_steps;
  if (task.max_steps > 0)
    run.max_steps = std::min(run.max_steps, task.max_steps);
  if (task.budget.max_steps > 0)
    run.max_steps = static_cast<int32_t>(
      std::min<int64_t>(run.max_steps, task.budget.max_steps));
  if (st.links.budget) {
    run.budget_path = task.budget_scopes;
    run.budget_path.push_back({task.ref.run_id + "/" + st.label + "#"
                                 + st.instance + "." + std::to_string(run.seq),
                               task.budget});
  }
  run.result.run_id = task.ref.run_id;
  run.result.agent = st.label;
  run.result.started_ns = now_ns();
  run.run_span = st.trace.start(
    run.trace_id, task.ref.span_id, "invoke_agent " + st.label,
    [&] { return json{{"gen_ai.operation.name", "invoke_agent"},
         {"gen_ai.agent.name", st.label},
         {"gen_ai.request.model", st.spec.model},
         {"troupe.run.id", task.ref.run_id},
         {"troupe.principal", task.ref.principal},
         {"troupe.goal", excerpt(task.goal)},
         {"troupe.max_steps", run.max_steps}}; });
  if (!st.spec.system_prompt.empty())
    run.messages.push_back({chat_role::system, st.spec.system_prompt, {}, "", ""});
  auto goal = task.goal;
  if (!task.context.value.is_null())
    goal += "\n\nContext:\n" + safe_dump(task.context.value, 2);
  run.messages.push_back({chat_role::user, std::move(goal), {}, "", ""});
  if (st.events.wants(event_kind::run_started))
    st.events.publish(started_event(st.label, task));
  run.task_digest = troupe::task_digest(task.goal, task.context.value);
  run.task = std::move(task);
  run.promise = std::move(promise);
  if (!st.links.store) {
    enter(self, agent_phase::planning);
    plan(self);
    return;
  }
  // Replicas and later incarnations of this agent make the same key for the
  // same task of the same run.
  run.checkpoint_key = st.spec.name + "/" + run.task_digest;
  run.budget_key = run.result.run_id + "/" + run.checkpoint_key;
  auto seq = run.seq;
  self
    ->request(st.links.store, checkpoint_timeout, st_ckpt_get_atom::value,
              run.result.run_id, run.checkpoint_key)
    .then(
      [self, seq](json_value& found) {
        if (self->state.run && self->state.run->seq == seq)
          continue_from(self, found.value);
      },
      [self, seq](caf::error& err) {
        auto& st = self->state;
        if (!st.run || st.run->seq != seq)
          return;
        spdlog::warn("agent {}: run {}: no checkpoint lookup ({}); starting "
                     "from the first step",
                     st.label, st.run->result.run_id, error_text(err));
        enter(self, agent_phase::planning);
        plan(self);
      });
}

void start_next(agent_self self) {
  auto& st = self->state;
  if (st.run || st.backlog.empty())
    return;
  auto next = std::move(st.backlog.front());
  st.backlog.pop_front();
  begin(self, std::move(next.first), std::move(next.second));
}

/// Closes the current step's span and record.
void close_step(agent_self self, const std::string& outcome) {
  auto& st = self->state;
  auto& run = *st.run;
  run.step.ended_ns = now_ns();
  st.trace.end(run.trace_id, run.step_span,
               [&] { return json{{"troupe.step.outcome", outcome},
                    {"troupe.step.tool_calls", run.step.tool_results.size()},
                    {"troupe.step.observations", run.step.observations.size()}}; });
  run.step_span.clear();
  run.step_open = false;
  run.result.steps.push_back(std::move(run.step));
  if (st.events.wants(event_kind::step_completed)) {
    agent_event ev;
    ev.source = st.label;
    ev.kind = event_kind::step_completed;
    ev.run_id = run.result.run_id;
    ev.trace_id = run.trace_id;
    ev.step = run.current_step;
    ev.time_ns = now_ns();
    st.events.publish(ev);
  }
  run.step = step_record{};
}

void on_model_error(agent_self self, const std::string& model_span,
                    const caf::error& err) {
  auto& st = self->state;
  auto& run = *st.run;
  auto text = "model '" + st.spec.model + "' failed at step "
              + std::to_string(run.step.index) + ": " + error_text(err);
  if (err == caf::sec::request_timeout && st.links.budget
      && !run.reservation.empty() && !run.budget_path.empty()) {
    // The endpoint may still finish, and bill, a call we stopped waiting
    // for: its reservation is charged rather than given back.
    charge(self, run, st.spec.model, run.reserved);
    text += " (its reserved estimate is charged to the budget: the endpoint "
            "may still bill it)";
  }
  st.trace.end(run.trace_id, model_span, span_recorder::none, text);
  auto deadline = run.task.budget.deadline_ms;
  if (deadline > 0 && now_ms() >= deadline) {
    finish(self, run_status::halted, last_assistant_text(run),
           "the run's deadline passed during step "
             + std::to_string(run.step.index) + " (" + text + ")");
    return;
  }
  spdlog::warn("agent {}: {}", st.label, text);
  finish(self, run_status::failed, last_assistant_text(run), std::move(text));
}

/// Judges a tool call the model proposed; returns the reason it cannot run,
/// or an empty string when it may.
std::string reject_reason(const agent_state& st, const model_tool_call& call) {
  if (call.name.empty())
    return "the tool call has no tool name";
  if (st.tool_index.count(call.name) == 0)
    return "unknown tool '" + call.name + "'; available tools: "
           + (st.tool_list.empty() ? std::string{"none"} : st.tool_list);
  if (!call.parse_error.empty())
    return "arguments for tool '" + call.name
           + "' are not valid JSON: " + call.parse_error;
  if (!call.arguments.value.is_object())
    return "arguments for tool '" + call.name
           + "' must be a JSON object, got "
           + call.arguments.value.type_name();
  return {};
}

/// Feeds the model an observation instead of acting on its reply, and plans
/// the next step.
void observe_and_replan(agent_self self, std::string text,
                        const std::string& outcome) {
  auto& st = self->state;
  auto& run = *st.run;
  run.step.observations.push_back(text);
  // Model APIs want every tool call of a reply answered before anything
  // else is said: the calls that were not carried out are answered so.
  if (!run.messages.empty() && run.messages.back().role == chat_role::assistant) {
    auto calls = run.messages.back().tool_calls;
    for (const auto& c : calls)
      run.messages.push_back({chat_role::tool,
                              "[runtime] not executed (" + outcome + ")", {},
                              c.id, c.name});
  }
  run.messages.push_back({chat_role::user, std::move(text), {}, "", ""});
  enter(self, agent_phase::processing);
  close_step(self, outcome);
  enter(self, agent_phase::planning);
  plan(self);
}

void carry_out(agent_self self);

/// The confidence a reply states in its structured output, if any.
std::optional<double> stated_confidence(const confidence_routing& cfg,
                                        const chat_message& msg) {
  if (msg.content.empty())
    return std::nullopt;
  auto doc = extract_json(msg.content);
  if (!doc.is_object())
    return std::nullopt;
  auto i = doc.find(cfg.field);
  if (i == doc.end() || !i->is_number())
    return std::nullopt;
  auto c = i->get<double>();
  if (!(c >= 0 && c <= 1))
    return std::nullopt;
  return c;
}

void escalate_reply(agent_self self, double confidence, std::string why);

/// Routes a reply by its stated confidence; carries it out when it is
/// confident enough (or states none).
void route_by_confidence(agent_self self) {
  auto& st = self->state;
  auto& run = *st.run;
  const auto& cfg = st.spec.confidence;
  auto c = cfg.enabled ? stated_confidence(cfg, run.step.reply) : std::nullopt;
  if (!c || *c >= cfg.execute_at) {
    carry_out(self);
    return;
  }
  auto shown = format_share(*c);
  std::string route;
  if (run.reroutes >= cfg.max_reroutes)
    route = "escalate";
  else if (*c >= cfg.clarify_at)
    route = "clarify";
  else if (*c >= cfg.alternative_at)
    route = st.links.alternative ? "alternative" : "escalate";
  else
    route = "escalate";
  st.trace.event(run.trace_id, run.step_span, "confidence.route",
                 [&] { return json{{"gen_ai.agent.name", st.label},
                      {"troupe.confidence", *c},
                      {"troupe.confidence.route", route}}; });
  spdlog::info("agent {}: confidence {} at step {}: {}", st.label, shown,
               run.step.index, route);
  if (route == "clarify") {
    ++run.reroutes;
    observe_and_replan(
      self,
      "[runtime] Your stated confidence " + shown + " is below "
        + format_share(cfg.execute_at)
        + ", so nothing was executed. Clarify: check what you are unsure "
          "about (look it up with the tools, or state the assumption), then "
          "reply again.",
      "clarify");
    return;
  }
  if (route == "alternative") {
    ++run.reroutes;
    // The same step again, asked of the alternative model; the unsure reply
    // is not part of the conversation it sees.
    run.messages.pop_back();
    run.ask_alternative = true;
    run.step.observations.push_back(
      "confidence " + shown + " below " + format_share(cfg.clarify_at)
      + ": asking the alternative model '" + cfg.alternative_model + "'");
    enter(self, agent_phase::processing);
    close_step(self, "alternative");
    enter(self, agent_phase::planning);
    plan(self);
    return;
  }
  escalate_reply(self, *c,
                 run.reroutes >= cfg.max_reroutes
                   ? "confidence " + shown + " still below "
                       + format_share(cfg.execute_at) + " after "
                       + std::to_string(run.reroutes) + " reroute(s)"
                   : "confidence " + shown + " below "
                       + format_share(cfg.alternative_at
                                      > 0 && st.links.alternative
                                        ? cfg.alternative_at
                                        : cfg.clarify_at));
}

void on_reply(agent_self self, const std::string& model_span,
              const std::string& asked, chat_response& resp) {
  auto& st = self->state;
  auto& run = *st.run;
  // Cost: the model that answered when it is priced, else the one asked.
  int64_t cost = 0;
  if (st.links.prices) {
    const auto& prices = *st.links.prices;
    auto priced = !resp.model.empty() && prices.find(resp.model)
                    ? resp.model
                    : asked;
    cost = prices.cost_nusd(priced, resp.usage);
  }
  st.trace.end(run.trace_id, model_span,
               [&] { return json{{"gen_ai.usage.input_tokens", resp.usage.input_tokens},
                    {"gen_ai.usage.output_tokens", resp.usage.output_tokens},
                    {"gen_ai.response.finish_reasons",
                     json::array({resp.finish_reason})},
                    {"gen_ai.response.model", resp.model},
                    {"troupe.cost_nusd", cost}}; });
  run.result.usage += resp.usage;
  run.step.usage = resp.usage;
  run.step.cost_nusd = cost;
  run.result.cost_nusd += cost;
  if (resp.replayed && !run.budget_key.empty()) {
    // An earlier attempt paid for this reply: nothing is spent now, but the
    // budget learns of it if that attempt's process is gone.
    if (st.links.budget && !run.reservation.empty()) {
      self->send(st.links.budget, budget_release{run.budget_path.back().account,
                                                 run.reservation});
      run.reservation.clear();
    }
    add_to(run.charged, budget_amount{1, resp.usage, cost});
    recount(self, run);
  } else {
    charge(self, run, resp.model, budget_amount{1, resp.usage, cost});
  }
  auto& msg = resp.message;
  msg.role = chat_role::assistant;
  // Give every call an id the tool message can answer to.
  for (size_t i = 0; i < msg.tool_calls.size(); ++i)
    if (msg.tool_calls[i].id.empty())
      msg.tool_calls[i].id = "call_" + std::to_string(run.step.index) + "_"
                             + std::to_string(i);
  run.step.reply = msg;
  run.messages.push_back(msg);
  if (msg.tool_calls.empty() && msg.content.empty()) {
    // Malformed: neither an answer nor a tool call.
    auto text = std::string{"[runtime] Your reply had neither content nor "
                            "tool calls. Give a final answer or call one of "
                            "the tools: "}
                + (st.tool_list.empty() ? std::string{"none"} : st.tool_list)
                + ".";
    st.trace.event(run.trace_id, run.step_span, "agent.malformed_reply",
                   [&] { return json{{"troupe.observation", text},
                        {"gen_ai.response.finish_reasons",
                         json::array({resp.finish_reason})}}; });
    observe_and_replan(self, std::move(text), "observation");
    return;
  }
  if (!msg.tool_calls.empty()) {
    // Limits of the run itself: the tokens are spent, but no tool runs past
    // them.
    const auto& budget = run.task.budget;
    std::string exhausted;
    const char* limit = "";
    if (budget.max_input_tokens > 0
        && run.result.usage.input_tokens > budget.max_input_tokens) {
      limit = "input_tokens";
      exhausted = "input tokens "
                  + std::to_string(run.result.usage.input_tokens)
                  + " exceed the run's limit of "
                  + std::to_string(budget.max_input_tokens);
    } else if (budget.max_output_tokens > 0
               && run.result.usage.output_tokens > budget.max_output_tokens) {
      limit = "output_tokens";
      exhausted = "output tokens "
                  + std::to_string(run.result.usage.output_tokens)
                  + " exceed the run's limit of "
                  + std::to_string(budget.max_output_tokens);
    } else if (budget.max_cost_usd > 0
               && run.result.cost_nusd > usd_to_nusd(budget.max_cost_usd)) {
      limit = "cost";
      exhausted = "cost $" + usd_text(run.result.cost_nusd)
                  + " exceeds the run's limit of $"
                  + usd_text(usd_to_nusd(budget.max_cost_usd));
    }
    if (!exhausted.empty()) {
      trace_budget_denied(st, run, limit, exhausted);
      close_step(self, "budget_exhausted");
      finish(self, run_status::halted, last_assistant_text(run),
             "budget exhausted: " + exhausted);
      return;
    }
  }
  route_by_confidence(self);
}

/// A signature of a tool call for loop detection.
std::string call_signature(const tool_call& call) {
  return call.name + "|" + safe_dump(call.args.value);
}

/// Counts a call; returns the warning when it was repeated too often.
std::string count_repeat(agent_state& st, active_run& run,
                         const tool_call& call) {
  auto limit = st.spec.loops.repeat_threshold;
  if (limit <= 0)
    return {};
  auto sig = call_signature(call);
  auto n = ++run.call_counts[sig];
  if (n < limit || !run.warned.insert("repeat|" + sig).second)
    return {};
  return "loop suspected: tool '" + call.name + "' called "
         + std::to_string(n) + " times with the same arguments "
         + excerpt(safe_dump(call.args.value), 200);
}

/// The last `n` steps of the run, for a human deciding an approval.
json recent_steps(const active_run& run, size_t n) {
  json out = json::array();
  auto from = run.result.steps.size() > n ? run.result.steps.size() - n : 0;
  for (auto i = from; i < run.result.steps.size(); ++i) {
    const auto& step = run.result.steps[i];
    json calls = json::array();
    for (const auto& r : step.tool_results)
      calls.push_back({{"tool", r.name},
                       {"ok", r.ok},
                       {"result", excerpt(observation_text(r), 300)}});
    out.push_back({{"step", step.index},
                   {"reply", excerpt(step.reply.content, 300)},
                   {"tool_calls", std::move(calls)}});
  }
  return out;
}

/// Sends an approval request to the gate; `decided` gets the decision (an
/// expiry when the gate does not answer) if the run is still the same.
template <class OnDecision>
void request_approval(agent_self self, approval_request req,
                      std::chrono::milliseconds ttl, OnDecision decided) {
  auto& st = self->state;
  auto& run = *st.run;
  req.ref = run.task.ref;
  req.ref.span_id = run.step_span;
  req.agent = st.spec.name;
  req.recent_steps = recent_steps(run, 3);
  req.created_ms = now_ms();
  req.ttl_ms = ttl.count();
  if (req.request_id.empty())
    req.request_id = "apr-" + random_hex(4);
  ++run.awaiting_approval;
  enter(self, agent_phase::awaiting_approval);
  auto detail = req.request_id + ": " + req.action + " "
                + excerpt(safe_dump(req.args.value), 200) + " (" + req.reason
                + ")";
  st.trace.event(run.trace_id, run.step_span, "approval.requested",
                 [&] { return json{{"troupe.approval.id", req.request_id},
                      {"troupe.approval.action", req.action},
                      {"troupe.approval.reason", req.reason},
                      {"troupe.approval.ttl_ms", req.ttl_ms}}; });
  spdlog::info("agent {}: awaiting approval {}", st.label, detail);
  if (st.events.wants(event_kind::awaiting_approval))
    st.events.publish(
      run_event(st, run, event_kind::awaiting_approval, detail));
  auto seq = run.seq;
  auto id = req.request_id;
  auto action = req.action;
  self->request(st.links.approvals, ttl + approval_grace, std::move(req))
    .then(
      [self, seq, decided](approval_decision& d) {
        if (self->state.run && self->state.run->seq == seq)
          decided(d);
      },
      [self, seq, decided, id, ttl](caf::error& err) {
        if (!self->state.run || self->state.run->seq != seq)
          return;
        approval_decision d;
        d.request_id = id;
        d.verdict = approval_verdict::expired;
        d.who = "approval gate";
        d.note = "the gate did not answer within "
                 + std::to_string(ttl.count()) + " ms: " + error_text(err);
        decided(d);
      });
}

/// Notes a decision in the trace; returns the sentence the model reads when
/// it was not an approval.
std::string record_decision(agent_self self, const approval_decision& d,
                            const std::string& action) {
  auto& st = self->state;
  auto& run = *st.run;
  --run.awaiting_approval;
  st.trace.event(run.trace_id, run.step_span, "approval.decided",
                 [&] { return json{{"troupe.approval.id", d.request_id},
                      {"troupe.approval.verdict", json(d.verdict)},
                      {"troupe.approval.who", d.who},
                      {"troupe.approval.note", d.note}}; });
  spdlog::info("agent {}: approval {} for {}: {} by {}", st.label,
               d.request_id, action, json(d.verdict).get<std::string>(),
               d.who);
  switch (d.verdict) {
    case approval_verdict::approve:
      return {};
    case approval_verdict::deny:
      return "a human (" + d.who + ") denied '" + action + "'"
             + (d.note.empty() ? std::string{} : ": " + d.note);
    case approval_verdict::expired:
      break;
  }
  return "nobody approved '" + action + "' in time (approval request "
         + d.request_id + " expired" + (d.note.empty() ? "" : ": " + d.note)
         + ")";
}

/// Sends call `index` to a human; it joins the waiting calls when approved
/// and becomes a denied result otherwise.
void ask_approval(agent_self self, size_t index,
                  const policy_verdict& verdict) {
  auto& st = self->state;
  auto& run = *st.run;
  const auto& call = run.calls[index];
  auto deny = [self, index](std::string why) {
    auto& run = *self->state.run;
    const auto& call = run.calls[index];
    run.step.observations.push_back(why);
    tool_result r;
    r.call_id = call.call_id;
    r.name = call.name;
    r.error = {tool_error_kind::denied, std::move(why)};
    run.results[index] = std::move(r);
  };
  if (!st.links.approvals) {
    deny("tool '" + call.name + "' needs a human's approval (" + verdict.reason
         + ") but no approval gate is configured");
    return;
  }
  auto ttl = verdict.ttl_ms > 0 ? std::chrono::milliseconds{verdict.ttl_ms}
                                : st.spec.approval_ttl;
  ttl = bounded(ttl, run.task.budget.deadline_ms);
  approval_request req;
  req.action = call.name;
  req.args = call.args;
  req.reason = verdict.reason;
  auto name = call.name;
  request_approval(self, std::move(req), ttl,
                   [self, index, name, deny](const approval_decision& d) {
                     auto why = record_decision(self, d, name);
                     auto& run = *self->state.run;
                     if (why.empty()) {
                       run.notes.resize(std::max(run.notes.size(), index + 1));
                       run.notes[index].push_back(
                         "approved by " + d.who
                         + (d.note.empty() ? std::string{} : ": " + d.note));
                       run.waiting.push_back(index);
                     } else {
                       deny(std::move(why));
                     }
                     enter(self, agent_phase::acting);
                     act(self);
                   });
}

/// Asks a human whether an unsure reply may be carried out.
void escalate_reply(agent_self self, double confidence, std::string why) {
  auto& st = self->state;
  auto& run = *st.run;
  const auto& msg = run.step.reply;
  if (!st.links.approvals) {
    observe_and_replan(self,
                       "[runtime] Your reply was not carried out: " + why
                         + ", and no human is available to approve it. Make "
                           "sure of it (use the tools) or answer differently.",
                       "escalation_unavailable");
    return;
  }
  json calls = json::array();
  for (const auto& c : msg.tool_calls)
    calls.push_back({{"tool", c.name}, {"arguments", c.arguments.value}});
  approval_request req;
  req.action = "carry out a low-confidence reply";
  req.args = json{{"confidence", confidence},
                  {"content", excerpt(msg.content, 1000)},
                  {"tool_calls", std::move(calls)}};
  req.reason = std::move(why);
  auto ttl = bounded(st.spec.approval_ttl, run.task.budget.deadline_ms);
  request_approval(self, std::move(req), ttl,
                   [self](const approval_decision& d) {
                     auto why = record_decision(self, d, "the reply");
                     if (why.empty()) {
                       carry_out(self);
                       return;
                     }
                     observe_and_replan(self,
                                        "[runtime] Your reply was not carried "
                                        "out: "
                                          + why + ". Answer differently.",
                                        "escalation_denied");
                   });
}

/// Carries out a reply: its final answer, or its tool calls (checked, judged
/// by the policy, some sent to a human first).
void carry_out(agent_self self) {
  auto& st = self->state;
  auto& run = *st.run;
  const auto& msg = run.step.reply;
  if (msg.tool_calls.empty()) {
    auto answer = msg.content; // close_step moves the step away
    close_step(self, "final_answer");
    finish(self, run_status::complete, std::move(answer), "");
    return;
  }
  // ACTING: check every call; the good ones run, bounded in parallel.
  enter(self, agent_phase::acting);
  run.calls.clear();
  run.call_spans.clear();
  run.results.clear();
  run.waiting.clear();
  run.held.clear();
  run.in_flight = 0;
  run.awaiting_approval = 0;
  run.notes.clear();
  std::vector<std::pair<size_t, policy_verdict>> approvals;
  std::string loop_warning;
  for (size_t i = 0; i < msg.tool_calls.size(); ++i) {
    const auto& proposed = msg.tool_calls[i];
    tool_call call;
    call.ref = run.task.ref;
    call.agent = st.spec.name;
    call.step = run.step.index;
    call.call_id = proposed.id;
    call.name = proposed.name;
    call.args = proposed.arguments;
    run.call_spans.emplace_back();
    auto reason = reject_reason(st, proposed);
    auto kind = st.tool_index.count(proposed.name) == 0
                  ? tool_error_kind::unknown_tool
                  : tool_error_kind::invalid_arguments;
    std::vector<std::string> notes;
    if (reason.empty() && st.links.rules) {
      policy_query q;
      q.role = st.spec.role.empty() ? st.spec.name : st.spec.role;
      q.principal = run.task.ref.principal;
      q.tool = call.name;
      q.args = call.args.value;
      q.calls_so_far = run.calls_per_tool[call.name];
      auto verdict = evaluate(*st.links.rules, q);
      if (verdict.decision != policy_decision::allow || !verdict.rule.empty())
        st.trace.event(run.trace_id, run.step_span, "policy.decision",
                       [&] { return json{{"gen_ai.tool.name", call.name},
                            {"gen_ai.tool.call.id", call.call_id},
                            {"troupe.policy.decision", to_string(verdict.decision)},
                            {"troupe.policy.rule", verdict.rule},
                            {"troupe.policy.reason", verdict.reason}}; });
      switch (verdict.decision) {
        case policy_decision::allow:
          break;
        case policy_decision::allow_with_caps:
          call.args = verdict.args;
          for (auto& c : verdict.capped)
            notes.push_back("policy rule '" + verdict.rule + "': " + c);
          break;
        case policy_decision::require_approval:
          approvals.emplace_back(i, verdict);
          break;
        case policy_decision::deny:
          reason = verdict.reason;
          kind = tool_error_kind::denied;
          break;
      }
    }
    const auto* tool = reason.empty()
                         ? &st.links.tools[st.tool_index.at(call.name)]
                         : nullptr;
    // Stable across retries of this call (see idempotency_config).
    call.idempotency_key = tool ? idempotency_key(tool->idempotency, call,
                                                  run.task_digest)
                                : std::string{};
    if (reason.empty()) {
      ++run.calls_per_tool[call.name];
      auto w = count_repeat(st, run, call);
      if (!w.empty() && loop_warning.empty())
        loop_warning = w;
    }
    run.calls.push_back(std::move(call));
    if (reason.empty()) {
      run.results.emplace_back();
      if (approvals.empty() || approvals.back().first != i)
        run.waiting.push_back(i);
      if (!notes.empty()) {
        // Kept for the result: the model learns what the policy changed.
        run.notes.resize(run.calls.size());
        run.notes[i] = std::move(notes);
      }
      continue;
    }
    st.trace.event(run.trace_id, run.step_span, "tool.rejected",
                   [&] { return json{{"gen_ai.tool.name", proposed.name},
                        {"gen_ai.tool.call.id", proposed.id},
                        {"error.type", json(kind)},
                        {"troupe.observation", reason}}; });
    run.step.observations.push_back(reason);
    tool_result rejected;
    rejected.call_id = proposed.id;
    rejected.name = proposed.name;
    rejected.error = {kind, std::move(reason)};
    run.results.emplace_back(std::move(rejected));
  }
  if (!loop_warning.empty()) {
    warn(self, loop_warning);
    if (st.spec.loops.halt) {
      close_step(self, "loop");
      finish(self, run_status::halted, last_assistant_text(run),
             "halted: " + loop_warning);
      return;
    }
  }
  if (!approvals.empty()) {
    run.held.assign(run.waiting.begin(), run.waiting.end());
    run.waiting.clear();
  }
  for (auto& [index, verdict] : approvals)
    ask_approval(self, index, verdict);
  act(self);
}

/// What the next model call may use, to reserve before it starts.
budget_amount estimate_call(const agent_state& st, const active_run& run,
                            const std::string& model) {
  budget_amount out;
  out.steps = 1;
  out.tokens = st.spec.usage_estimate;
  if (out.tokens.input_tokens <= 0) {
    size_t chars = st.tool_chars;
    for (const auto& m : run.messages) {
      chars += m.content.size();
      for (const auto& c : m.tool_calls)
        chars += c.name.size() + c.raw_arguments.size()
                 + (c.raw_arguments.empty() ? safe_dump(c.arguments.value).size()
                                            : 0);
    }
    out.tokens.input_tokens = static_cast<int64_t>(chars / 4) + 1;
  }
  if (out.tokens.output_tokens <= 0) {
    auto i = st.spec.model_params.find("max_tokens");
    out.tokens.output_tokens = i != st.spec.model_params.end()
                                   && i->is_number_integer()
                                   && i->get<int64_t>() > 0
                                 ? i->get<int64_t>()
                                 : default_output_estimate;
  }
  if (st.links.prices)
    out.cost_nusd = st.links.prices->cost_nusd(model, out.tokens);
  return out;
}

/// Ends the run because the budget said no.
void halt_for_budget(agent_self self, const std::string& reason) {
  auto& run = *self->state.run;
  auto done = run.result.steps.size();
  finish(self, run_status::halted, last_assistant_text(run),
         done == 0 ? "refused: " + reason
                   : "budget exhausted after " + std::to_string(done)
                       + " step(s): " + reason);
}

void ask_model(agent_self self);

void plan(agent_self self) {
  auto& st = self->state;
  auto& run = *st.run;
  save_checkpoint(self, false);
  if (run.task.budget.deadline_ms > 0 && now_ms() >= run.task.budget.deadline_ms) {
    finish(self, run_status::halted, last_assistant_text(run),
           "the run's deadline passed before step "
             + std::to_string(run.result.steps.size() + 1));
    return;
  }
  if (static_cast<int32_t>(run.result.steps.size()) >= run.max_steps) {
    finish(self, run_status::max_steps, last_assistant_text(run),
           "reached the step limit (" + std::to_string(run.max_steps)
             + ") without a final answer");
    return;
  }
  if (!st.links.budget) {
    // No budget actor: the run's own cost limit is checked here.
    auto limit = usd_to_nusd(run.task.budget.max_cost_usd);
    if (limit > 0 && run.result.cost_nusd >= limit) {
      auto reason = "the run spent $" + usd_text(run.result.cost_nusd)
                    + " of its $" + usd_text(limit) + " limit";
      trace_budget_denied(st, run, "cost", reason);
      halt_for_budget(self, reason);
      return;
    }
    ask_model(self);
    return;
  }
  // Reserve an estimate first: a call that cannot be afforded never starts.
  budget_reserve req;
  req.ref = run.task.ref;
  // Its refusals and warnings are traced in this run's span.
  req.ref.span_id = run.run_span;
  req.path = run.budget_path;
  req.reservation_id = run.budget_path.back().account + "@"
                       + std::to_string(run.result.steps.size() + 1);
  req.model = run.ask_alternative ? st.spec.confidence.alternative_model
                                  : st.spec.model;
  req.estimate = estimate_call(st, run, req.model);
  run.reservation = req.reservation_id;
  run.reserved = req.estimate;
  auto seq = run.seq;
  self->request(st.links.budget, budget_timeout, std::move(req))
    .then(
      [self, seq](budget_verdict& v) {
        auto& st = self->state;
        if (!st.run || st.run->seq != seq)
          return;
        for (const auto& w : v.warnings)
          warn(self, w);
        if (!v.granted) {
          st.run->reservation.clear();
          halt_for_budget(self, v.reason);
          return;
        }
        ask_model(self);
      },
      [self, seq](caf::error& err) {
        auto& st = self->state;
        if (!st.run || st.run->seq != seq)
          return;
        // A guardrail that cannot be asked fails closed.
        st.run->reservation.clear();
        finish(self, run_status::failed, last_assistant_text(*st.run),
               "the budget actor did not answer: " + error_text(err));
      });
}

/// Opens the next step and asks the model (the budget allowed it).
void ask_model(agent_self self) {
  auto& st = self->state;
  auto& run = *st.run;
  run.step = step_record{};
  run.step.index = static_cast<int32_t>(run.result.steps.size()) + 1;
  const auto& faults = st.spec.faults;
  if (faults.crash_at_step == run.step.index
      && (!faults.crashes_left || faults.crashes_left->fetch_sub(1) > 0))
    throw std::runtime_error("injected fault: agent '" + st.label
                             + "' crashed at step "
                             + std::to_string(run.step.index));
  auto alternative = run.ask_alternative && st.links.alternative;
  run.ask_alternative = false;
  const auto& model_name = alternative ? st.spec.confidence.alternative_model
                                       : st.spec.model;
  run.step.started_ns = now_ns();
  run.step_open = true;
  run.current_step = run.step.index;
  run.step_span = st.trace.start(run.trace_id, run.run_span,
                                 "step " + std::to_string(run.step.index),
                                 [&] { return json{{"gen_ai.agent.name", st.label},
                                      {"troupe.step", run.step.index}}; });
  auto model_span = st.trace.start(
    run.trace_id, run.step_span, "chat " + model_name,
    [&] { return json{{"gen_ai.operation.name", "chat"},
         {"gen_ai.request.model", model_name},
         {"gen_ai.agent.name", st.label},
         {"troupe.step", run.step.index}}; });
  chat_request req;
  req.ref = run.task.ref;
  req.ref.span_id = model_span;
  req.agent = st.spec.name;
  req.model = model_name;
  req.messages = run.messages;
  req.tools = st.tool_specs;
  req.params = st.spec.model_params;
  // The reservation covers the output it estimated: the model is held to it,
  // so a reply cannot cost more output tokens than were set aside.
  if (st.links.budget && !run.reservation.empty() && req.params.value.is_object()
      && !req.params.value.contains("max_tokens"))
    req.params.value["max_tokens"] = run.reserved.tokens.output_tokens;
  auto seq = run.seq;
  auto timeout = bounded(st.spec.model_timeout, run.task.budget.deadline_ms);
  req.deadline_ms = now_ms() + timeout.count();
  self->request(alternative ? st.links.alternative : st.links.model, timeout,
                std::move(req))
    .then(
      [self, seq, model_span, asked = model_name](chat_response& resp) {
        if (self->state.run && self->state.run->seq == seq)
          on_reply(self, model_span, asked, resp);
      },
      [self, seq, model_span](caf::error& err) {
        if (self->state.run && self->state.run->seq == seq)
          on_model_error(self, model_span, err);
      });
}

/// All tool results are in: show them to the model and plan the next step.
void process(agent_self self) {
  auto& st = self->state;
  auto& run = *st.run;
  enter(self, agent_phase::processing);
  bool learned = false;
  for (size_t i = 0; i < run.results.size(); ++i) {
    auto& r = run.results[i];
    auto text = observation_text(*r);
    if (run.seen.insert(stable_hash(call_signature(run.calls[i]) + "=>" + text))
          .second)
      learned = true;
    run.messages.push_back({chat_role::tool, std::move(text), {}, r->call_id,
                            r->name});
    run.step.tool_results.push_back(std::move(*r));
  }
  run.results.clear();
  run.notes.clear();
  close_step(self, "tool_calls");
  run.stall = learned ? 0 : run.stall + 1;
  const auto& loops = st.spec.loops;
  if (loops.stall_steps > 0 && run.stall >= loops.stall_steps
      && run.warned.insert("stall").second) {
    auto text = "no progress: " + std::to_string(run.stall)
                + " step(s) in a row made the same tool calls and got the "
                  "same results";
    warn(self, text);
    if (loops.halt) {
      finish(self, run_status::halted, last_assistant_text(run),
             "halted: " + text);
      return;
    }
  }
  enter(self, agent_phase::planning);
  plan(self);
}

void on_tool_result(agent_self self, size_t index, tool_result r) {
  auto& st = self->state;
  auto& run = *st.run;
  --run.in_flight;
  st.trace.end(
    run.trace_id, run.call_spans[index],
    [&] {
      json attrs{{"troupe.tool.ok", r.ok}, {"troupe.tool.attempts", r.attempts},
                 {"troupe.tool.replayed", r.replayed}};
      if (r.ok)
        attrs["gen_ai.tool.call.result"] = excerpt(safe_dump(r.content.value));
      else
        attrs["error.type"] = json(r.error.kind);
      return attrs;
    },
    r.ok ? std::string{} : r.error.message);
  if (r.replayed)
    st.trace.event(run.trace_id, run.step_span, "tool.replayed",
                   [&] { return json{{"gen_ai.tool.name", r.name},
                        {"gen_ai.tool.call.id", r.call_id},
                        {"troupe.idempotency_key",
                         run.calls[index].idempotency_key}}; });
  if (index < run.notes.size())
    for (auto& note : run.notes[index])
      r.notes.push_back(std::move(note));
  run.results[index] = std::move(r);
  act(self);
}

/// Starts waiting calls while slots are free; moves on once all are answered.
void act(agent_self self) {
  auto& st = self->state;
  auto& run = *st.run;
  if (run.awaiting_approval == 0 && !run.held.empty()) {
    run.waiting.insert(run.waiting.end(), run.held.begin(), run.held.end());
    run.held.clear();
  }
  auto limit = static_cast<size_t>(st.spec.max_parallel_tools);
  while (!run.waiting.empty() && run.in_flight < limit) {
    auto index = run.waiting.front();
    run.waiting.pop_front();
    auto& call = run.calls[index];
    const auto& tool = st.links.tools[st.tool_index.at(call.name)];
    auto limit = bounded(tool.timeout, run.task.budget.deadline_ms);
    call.deadline_ms = now_ms() + limit.count();
    run.call_spans[index] = st.trace.start(
      run.trace_id, run.step_span, "execute_tool " + call.name,
      [&] { return json{{"gen_ai.operation.name", "execute_tool"},
           {"gen_ai.tool.name", call.name},
           {"gen_ai.tool.call.id", call.call_id},
           {"gen_ai.tool.call.arguments", excerpt(safe_dump(call.args.value))},
           {"gen_ai.agent.name", st.label},
           {"troupe.idempotency_key", call.idempotency_key},
           {"troupe.step", call.step}}; });
    auto req = call;
    req.ref.span_id = run.call_spans[index];
    ++run.in_flight;
    auto seq = run.seq;
    auto name = call.name;
    auto call_id = call.call_id;
    self->request(tool.actor, limit + adapter_grace, std::move(req))
      .then(
        [self, seq, index](tool_result& r) {
          if (self->state.run && self->state.run->seq == seq)
            on_tool_result(self, index, std::move(r));
        },
        [self, seq, index, name, call_id](caf::error& err) {
          if (!self->state.run || self->state.run->seq != seq)
            return;
          tool_result r;
          r.call_id = call_id;
          r.name = name;
          auto kind = err == caf::sec::request_timeout
                        ? tool_error_kind::timeout
                        : tool_error_kind::transient;
          r.error = {kind, "tool '" + name + "' did not answer: "
                             + error_text(err)};
          r.attempts = 1;
          on_tool_result(self, index, std::move(r));
        });
  }
  if (run.waiting.empty() && run.in_flight == 0 && run.awaiting_approval == 0)
    process(self);
}

/// Answers the active run and every queued one when the agent stops or
/// crashes: CAF 0.17 drops unanswered promises silently, so without this their
/// callers would wait for their own timeouts.
void fail_all(agent_self self, run_status status, const std::string& why,
              bool crashed = false) {
  auto& st = self->state;
  if (st.run) {
    auto& run = *st.run;
    close_budget(self, run);
    if (run.step_open) {
      run.step.ended_ns = now_ns();
      run.result.steps.push_back(std::move(run.step));
      run.step_open = false;
    }
    run.result.status = status;
    run.result.answer = last_assistant_text(run);
    run.result.error = why;
    run.result.ended_ns = now_ns();
    st.trace.end(run.trace_id, run.step_span, span_recorder::none, why);
    st.trace.end(run.trace_id, run.run_span,
                 [&] { return json{{"troupe.run.status", to_string(status)}}; },
                 why);
    st.events.publish(finished_event(st.label, run.result, run.trace_id));
    if (crashed)
      run.promise.deliver(make_error(errc::crashed, why));
    else
      run.promise.deliver(std::move(run.result));
    st.run.reset();
  }
  for (auto& queued : st.backlog) {
    if (crashed) {
      queued.second.deliver(make_error(errc::crashed, why));
      continue;
    }
    auto r = failed_result(queued.first, why, st.label);
    r.status = status;
    queued.second.deliver(std::move(r));
  }
  st.backlog.clear();
  st.phase = agent_phase::idle;
}

runnable_actor::behavior_type agent(agent_self self, agent_spec spec,
                                    agent_links links) {
  auto& st = self->state;
  for (size_t i = 0; i < links.tools.size(); ++i) {
    const auto& t = links.tools[i];
    st.tool_index.emplace(t.spec.name, i);
    st.tool_specs.push_back(t.spec);
    st.tool_chars += t.spec.name.size() + t.spec.description.size()
                     + safe_dump(t.spec.parameters.value).size();
    if (!st.tool_list.empty())
      st.tool_list += ", ";
    st.tool_list += t.spec.name;
  }
  st.trace = span_recorder{links.tracer};
  st.label = spec.node.empty() ? spec.name : spec.name + "@" + spec.node;
  st.spec = std::move(spec);
  st.links = std::move(links);
  self->set_exit_handler([self](caf::exit_msg& msg) {
    auto why = "agent '" + self->state.label
               + "' stopped: " + error_text(msg.reason);
    auto status = msg.reason == caf::exit_reason::user_shutdown
                    ? run_status::cancelled
                    : run_status::failed;
    fail_all(self, status, why);
    self->quit(msg.reason);
  });
  self->set_exception_handler([self](std::exception_ptr& eptr) -> caf::error {
    auto what = exception_text(eptr);
    auto why = "agent '" + self->state.label + "' crashed: " + what;
    spdlog::error("{}", why);
    fail_all(self, run_status::failed, why, true);
    return make_error(errc::crashed, why);
  });
  return {
    [self](run_task& task) -> caf::result<run_result> {
      auto promise = self->make_response_promise<run_result>();
      auto& st = self->state;
      if (st.run) {
        st.backlog.emplace_back(std::move(task), promise);
      } else {
        begin(self, std::move(task), promise);
      }
      return promise;
    },
    subscribe_handler(self),
    unsubscribe_handler(self),
  };
}

} // namespace

runnable_actor spawn_agent(caf::actor_system& sys, agent_spec spec,
                           agent_links links) {
  validate(spec);
  if (!links.model)
    throw std::invalid_argument("agent '" + spec.name + "': no model actor");
  for (const auto& t : links.tools)
    if (!t.actor)
      throw std::invalid_argument("agent '" + spec.name + "': tool '"
                                  + t.spec.name + "' has no actor");
  return sys.spawn(agent, std::move(spec), std::move(links));
}

} // namespace troupe

#include "actors/agent.hpp"

#include <algorithm>
#include <deque>
#include <map>
#include <optional>
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
  if (r.ok)
    return r.content.value.is_string() ? r.content.value.get<std::string>()
                                       : safe_dump(r.content.value);
  return "error (" + json(r.error.kind).get<std::string>()
         + "): " + r.error.message;
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
};

struct agent_state {
  static inline const char* name = "troupe.agent";

  agent_spec spec;
  agent_links links;
  std::map<std::string, size_t> tool_index;
  std::vector<tool_spec> tool_specs;
  std::string tool_list; // "a, b, c" for observations
  span_recorder trace;
  agent_phase phase = agent_phase::idle;
  std::optional<active_run> run;
  /// Subscribers to this agent's events.
  event_hub events;
  std::deque<std::pair<run_task, caf::typed_response_promise<run_result>>>
    backlog;
  uint64_t next_seq = 1;
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
                 [&] { return json{{"gen_ai.agent.name", st.spec.name},
                      {"troupe.state.from", to_string(prev)},
                      {"troupe.state.to", to_string(next)},
                      {"troupe.step", run.current_step}}; });
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
  run.result.status = status;
  run.result.answer = std::move(answer);
  run.result.error = std::move(error);
  run.result.ended_ns = now_ns();
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
  spdlog::debug("agent {}: run {} ended {} after {} step(s)", st.spec.name,
                run.result.run_id, to_string(status), run.result.steps.size());
  st.events.publish(finished_event(st.spec.name, run.result, run.trace_id));
  run.promise.deliver(std::move(run.result));
  enter(self, agent_phase::idle);
  st.run.reset();
  start_next(self);
}

/// The last thing the model said, for a run that ends without a final answer.
std::string last_assistant_text(const active_run& run) {
  for (auto i = run.messages.rbegin(); i != run.messages.rend(); ++i)
    if (i->role == chat_role::assistant && !i->content.empty())
      return i->content;
  return {};
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
  run.result.run_id = task.ref.run_id;
  run.result.agent = st.spec.name;
  run.result.started_ns = now_ns();
  run.run_span = st.trace.start(
    run.trace_id, task.ref.span_id, "invoke_agent " + st.spec.name,
    [&] { return json{{"gen_ai.operation.name", "invoke_agent"},
         {"gen_ai.agent.name", st.spec.name},
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
    st.events.publish(started_event(st.spec.name, task));
  run.task = std::move(task);
  run.promise = std::move(promise);
  enter(self, agent_phase::planning);
  plan(self);
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
    ev.source = st.spec.name;
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
  st.trace.end(run.trace_id, model_span, span_recorder::none, text);
  auto deadline = run.task.budget.deadline_ms;
  if (deadline > 0 && now_ms() >= deadline) {
    finish(self, run_status::halted, last_assistant_text(run),
           "the run's deadline passed during step "
             + std::to_string(run.step.index) + " (" + text + ")");
    return;
  }
  spdlog::warn("agent {}: {}", st.spec.name, text);
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

void on_reply(agent_self self, const std::string& model_span,
              chat_response& resp) {
  auto& st = self->state;
  auto& run = *st.run;
  st.trace.end(run.trace_id, model_span,
               [&] { return json{{"gen_ai.usage.input_tokens", resp.usage.input_tokens},
                    {"gen_ai.usage.output_tokens", resp.usage.output_tokens},
                    {"gen_ai.response.finish_reasons",
                     json::array({resp.finish_reason})},
                    {"gen_ai.response.model", resp.model}}; });
  run.result.usage += resp.usage;
  run.step.usage = resp.usage;
  auto& msg = resp.message;
  msg.role = chat_role::assistant;
  // Give every call an id the tool message can answer to.
  for (size_t i = 0; i < msg.tool_calls.size(); ++i)
    if (msg.tool_calls[i].id.empty())
      msg.tool_calls[i].id = "call_" + std::to_string(run.step.index) + "_"
                             + std::to_string(i);
  run.step.reply = msg;
  run.messages.push_back(msg);
  if (msg.tool_calls.empty()) {
    if (!msg.content.empty()) {
      close_step(self, "final_answer");
      finish(self, run_status::complete, msg.content, "");
      return;
    }
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
    run.step.observations.push_back(text);
    run.messages.push_back({chat_role::user, std::move(text), {}, "", ""});
    enter(self, agent_phase::processing);
    close_step(self, "observation");
    enter(self, agent_phase::planning);
    plan(self);
    return;
  }
  // Token limits: the tokens are spent, but no tool runs past them.
  const auto& budget = run.task.budget;
  std::string exhausted;
  if (budget.max_input_tokens > 0
      && run.result.usage.input_tokens > budget.max_input_tokens)
    exhausted = "input tokens " + std::to_string(run.result.usage.input_tokens)
                + " exceed the run's limit of "
                + std::to_string(budget.max_input_tokens);
  else if (budget.max_output_tokens > 0
           && run.result.usage.output_tokens > budget.max_output_tokens)
    exhausted = "output tokens "
                + std::to_string(run.result.usage.output_tokens)
                + " exceed the run's limit of "
                + std::to_string(budget.max_output_tokens);
  if (!exhausted.empty()) {
    close_step(self, "budget_exhausted");
    finish(self, run_status::halted, last_assistant_text(run),
           "budget exhausted: " + exhausted);
    return;
  }
  // ACTING: check every call; the good ones run, bounded in parallel.
  enter(self, agent_phase::acting);
  run.calls.clear();
  run.call_spans.clear();
  run.results.clear();
  run.waiting.clear();
  run.in_flight = 0;
  for (size_t i = 0; i < msg.tool_calls.size(); ++i) {
    const auto& proposed = msg.tool_calls[i];
    tool_call call;
    call.ref = run.task.ref;
    call.agent = st.spec.name;
    call.step = run.step.index;
    call.call_id = proposed.id;
    call.name = proposed.name;
    call.args = proposed.arguments;
    // Stable across retries of this call; the agent's name keeps team members
    // sharing a run apart.
    call.idempotency_key = stable_hash(
      run.task.ref.run_id + "|" + st.spec.name + "|"
      + std::to_string(run.step.index) + "|" + proposed.name + "|"
      + safe_dump(proposed.arguments.value));
    run.calls.push_back(std::move(call));
    run.call_spans.emplace_back();
    auto reason = reject_reason(st, proposed);
    if (reason.empty()) {
      run.results.emplace_back();
      run.waiting.push_back(i);
      continue;
    }
    auto kind = st.tool_index.count(proposed.name) == 0
                  ? tool_error_kind::unknown_tool
                  : tool_error_kind::invalid_arguments;
    st.trace.event(run.trace_id, run.step_span, "tool.rejected",
                   [&] { return json{{"gen_ai.tool.name", proposed.name},
                        {"gen_ai.tool.call.id", proposed.id},
                        {"troupe.observation", reason}}; });
    run.step.observations.push_back(reason);
    tool_result rejected;
    rejected.call_id = proposed.id;
    rejected.name = proposed.name;
    rejected.error = {kind, std::move(reason)};
    run.results.emplace_back(std::move(rejected));
  }
  act(self);
}

void plan(agent_self self) {
  auto& st = self->state;
  auto& run = *st.run;
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
  run.step = step_record{};
  run.step.index = static_cast<int32_t>(run.result.steps.size()) + 1;
  const auto& faults = st.spec.faults;
  if (faults.crash_at_step == run.step.index
      && (!faults.crashes_left || faults.crashes_left->fetch_sub(1) > 0))
    throw std::runtime_error("injected fault: agent '" + st.spec.name
                             + "' crashed at step "
                             + std::to_string(run.step.index));
  run.step.started_ns = now_ns();
  run.step_open = true;
  run.current_step = run.step.index;
  run.step_span = st.trace.start(run.trace_id, run.run_span,
                                 "step " + std::to_string(run.step.index),
                                 [&] { return json{{"gen_ai.agent.name", st.spec.name},
                                      {"troupe.step", run.step.index}}; });
  auto model_span = st.trace.start(
    run.trace_id, run.step_span, "chat " + st.spec.model,
    [&] { return json{{"gen_ai.operation.name", "chat"},
         {"gen_ai.request.model", st.spec.model},
         {"gen_ai.agent.name", st.spec.name},
         {"troupe.step", run.step.index}}; });
  chat_request req;
  req.ref = run.task.ref;
  req.ref.span_id = model_span;
  req.agent = st.spec.name;
  req.model = st.spec.model;
  req.messages = run.messages;
  req.tools = st.tool_specs;
  req.params = st.spec.model_params;
  auto seq = run.seq;
  auto timeout = bounded(st.spec.model_timeout, run.task.budget.deadline_ms);
  self->request(st.links.model, timeout, std::move(req))
    .then(
      [self, seq, model_span](chat_response& resp) {
        if (self->state.run && self->state.run->seq == seq)
          on_reply(self, model_span, resp);
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
  for (auto& r : run.results) {
    run.messages.push_back(
      {chat_role::tool, observation_text(*r), {}, r->call_id, r->name});
    run.step.tool_results.push_back(std::move(*r));
  }
  run.results.clear();
  close_step(self, "tool_calls");
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
      json attrs{{"troupe.tool.ok", r.ok}, {"troupe.tool.attempts", r.attempts}};
      if (r.ok)
        attrs["gen_ai.tool.call.result"] = excerpt(safe_dump(r.content.value));
      else
        attrs["error.type"] = json(r.error.kind);
      return attrs;
    },
    r.ok ? std::string{} : r.error.message);
  run.results[index] = std::move(r);
  act(self);
}

/// Starts waiting calls while slots are free; moves on once all are answered.
void act(agent_self self) {
  auto& st = self->state;
  auto& run = *st.run;
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
           {"gen_ai.agent.name", st.spec.name},
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
  if (run.waiting.empty() && run.in_flight == 0)
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
    st.events.publish(finished_event(st.spec.name, run.result, run.trace_id));
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
    auto r = failed_result(queued.first, why, st.spec.name);
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
    if (!st.tool_list.empty())
      st.tool_list += ", ";
    st.tool_list += t.spec.name;
  }
  st.trace = span_recorder{links.tracer};
  st.spec = std::move(spec);
  st.links = std::move(links);
  self->set_exit_handler([self](caf::exit_msg& msg) {
    auto why = "agent '" + self->state.spec.name
               + "' stopped: " + error_text(msg.reason);
    auto status = msg.reason == caf::exit_reason::user_shutdown
                    ? run_status::cancelled
                    : run_status::failed;
    fail_all(self, status, why);
    self->quit(msg.reason);
  });
  self->set_exception_handler([self](std::exception_ptr& eptr) -> caf::error {
    auto what = exception_text(eptr);
    auto why = "agent '" + self->state.spec.name + "' crashed: " + what;
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

#pragma once

// Test doubles that are real actors: a model whose replies come from a C++
// function and that records every request it gets.

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "messages/model.hpp"

namespace troupe::test {

/// Every request a recording model received, in order.
struct model_log {
  std::mutex mtx;
  std::vector<chat_request> requests;

  std::vector<chat_request> snapshot() {
    std::lock_guard<std::mutex> guard{mtx};
    return requests;
  }
};

/// The step a request is for: assistant messages so far + 1.
inline int step_of(const chat_request& req) {
  int n = 1;
  for (auto& m : req.messages)
    if (m.role == chat_role::assistant)
      ++n;
  return n;
}

/// An assistant reply with text.
inline chat_response answer(std::string text, token_usage usage = {10, 5}) {
  chat_response r;
  r.message.role = chat_role::assistant;
  r.message.content = std::move(text);
  r.usage = usage;
  r.finish_reason = "stop";
  r.model = "test";
  return r;
}

/// A tool call as a model proposes it.
inline model_tool_call proposed(std::string name, json args,
                                std::string id = "") {
  model_tool_call c;
  c.id = std::move(id);
  c.name = std::move(name);
  c.arguments = std::move(args);
  return c;
}

/// An assistant reply with tool calls.
inline chat_response call_tools(std::vector<model_tool_call> calls,
                                token_usage usage = {10, 5}) {
  chat_response r;
  r.message.role = chat_role::assistant;
  r.message.tool_calls = std::move(calls);
  r.usage = usage;
  r.finish_reason = "tool_calls";
  r.model = "test";
  return r;
}

/// A model actor answering with `fn` and logging each request to `log`.
inline model_actor
spawn_recording_model(caf::actor_system& sys, std::shared_ptr<model_log> log,
                      std::function<chat_response(const chat_request&)> fn) {
  return sys.spawn([log, fn]() -> model_actor::behavior_type {
    return {
      [log, fn](chat_request& req) -> chat_response {
        {
          std::lock_guard<std::mutex> guard{log->mtx};
          log->requests.push_back(req);
        }
        return fn(req);
      },
    };
  });
}

} // namespace troupe::test

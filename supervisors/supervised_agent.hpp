#pragma once

// A supervised agent: the agent runs as the only child of its own supervisor,
// behind a front actor that answers the run protocol, so it stands wherever
// an agent can.
//
//   caller --run_task--> front --sup_await--> supervisor --starts/restarts--> agent
//                          \--run_task (attempt 1..n)------------------------^
//
// If the agent crashes mid-run it answers with errc::crashed (see
// actors/agent.hpp); the supervisor restarts it by policy and the front sends
// the same task to the new incarnation, up to `run_retries` times. The caller
// gets the retried result, or an error naming the crash once retries or the
// supervisor's restart intensity are spent. Other agents are never disturbed:
// every agent has its own supervisor.

#include <chrono>
#include <cstdint>
#include <string>

#include <caf/fwd.hpp>

#include "messages/run.hpp"
#include "messages/trace.hpp"
#include "supervisors/supervisor.hpp"

namespace troupe {

/// How an agent is supervised.
struct supervision_options {
  /// The supervisor's restart intensity and backoff.
  int32_t max_restarts = 3;
  std::chrono::milliseconds window{std::chrono::seconds{10}};
  std::chrono::milliseconds backoff_base{0};
  std::chrono::milliseconds backoff_cap{std::chrono::seconds{1}};
  /// How often a run whose agent crashed is tried again on the restarted agent.
  int32_t run_retries = 2;
};

/// Spawns the supervisor (with `agent` as its permanent child) and the front.
/// `agent` must only spawn (no blocking work): it runs on the supervisor.
runnable_actor spawn_supervised_agent(caf::actor_system& sys, std::string name,
                                      child_factory agent,
                                      supervision_options opts,
                                      tracer_actor tracer = {});

/// Whether an error is an agent's crash (errc::crashed) or a request that
/// reached an agent only as it died: both mean "try again on the restart".
bool is_crash(const caf::error& err);

} // namespace troupe

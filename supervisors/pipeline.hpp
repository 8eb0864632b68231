#pragma once

// The pipeline team: stages run one after another, each stage's answer the
// next stage's goal. It answers the run protocol, so a pipeline stands wherever
// an agent can (as a stage of another pipeline, a worker of a team...).
//
//   run_task{goal} --> stage 1 --answer--> stage 2 --answer--> ... --> run_result
//                         \-- failed/halted/max_steps: the pipeline ends there,
//                             naming the stage, with the work done so far
//
// Every stage gets the pipeline's run id, trace and deadline; the original goal
// travels in the stage task's context ("pipeline_goal"), and the previous
// stage's answer is its goal. Usage adds up; steps are concatenated in order.

#include <string>
#include <vector>

#include <caf/fwd.hpp>

#include "messages/run.hpp"
#include "messages/trace.hpp"
#include "supervisors/teams.hpp"

namespace troupe {

/// One stage: a name for traces and errors, and whoever runs it.
using pipeline_stage = team_member;

/// Spawns a pipeline. Throws std::invalid_argument for no stages, a stage
/// without a runner or a repeated stage name.
runnable_actor spawn_pipeline(caf::actor_system& sys, std::string name,
                              std::vector<pipeline_stage> stages,
                              tracer_actor tracer = {});

} // namespace troupe

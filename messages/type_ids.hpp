#pragma once

// The one type-ID block: every message type troupe sends, so that one call
// (register_messages) makes them all known to an actor system and to its peers.

#include <caf/type_id.hpp>

#include "messages/approval.hpp"
#include "messages/budget.hpp"
#include "messages/cluster.hpp"
#include "messages/common.hpp"
#include "messages/json_value.hpp"
#include "messages/model.hpp"
#include "messages/run.hpp"
#include "messages/supervision.hpp"
#include "messages/tool.hpp"
#include "messages/trace.hpp"

CAF_BEGIN_TYPE_ID_BLOCK(troupe, caf::first_custom_type_id)

  CAF_ADD_TYPE_ID(troupe, (troupe::json_value))
  CAF_ADD_TYPE_ID(troupe, (troupe::run_ref))
  CAF_ADD_TYPE_ID(troupe, (troupe::token_usage))
  // model
  CAF_ADD_TYPE_ID(troupe, (troupe::model_tool_call))
  CAF_ADD_TYPE_ID(troupe, (troupe::chat_message))
  CAF_ADD_TYPE_ID(troupe, (troupe::tool_spec))
  CAF_ADD_TYPE_ID(troupe, (troupe::chat_request))
  CAF_ADD_TYPE_ID(troupe, (troupe::chat_response))
  // tool
  CAF_ADD_TYPE_ID(troupe, (troupe::tool_error))
  CAF_ADD_TYPE_ID(troupe, (troupe::tool_call))
  CAF_ADD_TYPE_ID(troupe, (troupe::tool_attempt))
  CAF_ADD_TYPE_ID(troupe, (troupe::tool_result))
  CAF_ADD_TYPE_ID(troupe, (troupe::ledger_entry))
  // run
  CAF_ADD_TYPE_ID(troupe, (troupe::run_task))
  CAF_ADD_TYPE_ID(troupe, (troupe::step_record))
  CAF_ADD_TYPE_ID(troupe, (troupe::run_result))
  CAF_ADD_TYPE_ID(troupe, (troupe::agent_event))
  // trace
  CAF_ADD_TYPE_ID(troupe, (troupe::span_start))
  CAF_ADD_TYPE_ID(troupe, (troupe::span_end))
  CAF_ADD_TYPE_ID(troupe, (troupe::trace_event))
  // budget
  CAF_ADD_TYPE_ID(troupe, (troupe::budget_limits))
  CAF_ADD_TYPE_ID(troupe, (troupe::budget_scope))
  CAF_ADD_TYPE_ID(troupe, (troupe::budget_amount))
  CAF_ADD_TYPE_ID(troupe, (troupe::budget_reserve))
  CAF_ADD_TYPE_ID(troupe, (troupe::budget_verdict))
  CAF_ADD_TYPE_ID(troupe, (troupe::budget_charge))
  CAF_ADD_TYPE_ID(troupe, (troupe::budget_release))
  CAF_ADD_TYPE_ID(troupe, (troupe::budget_close))
  CAF_ADD_TYPE_ID(troupe, (troupe::budget_snapshot))
  // approval
  CAF_ADD_TYPE_ID(troupe, (troupe::approval_request))
  CAF_ADD_TYPE_ID(troupe, (troupe::approval_decision))
  CAF_ADD_TYPE_ID(troupe, (std::vector<troupe::approval_request>))
  // supervision
  CAF_ADD_TYPE_ID(troupe, (troupe::child_stats))
  CAF_ADD_TYPE_ID(troupe, (troupe::supervisor_stats))
  // cluster
  CAF_ADD_TYPE_ID(troupe, (troupe::tool_listing))
  CAF_ADD_TYPE_ID(troupe, (troupe::agent_listing))
  CAF_ADD_TYPE_ID(troupe, (troupe::node_info))
  CAF_ADD_TYPE_ID(troupe, (std::vector<troupe::node_info>))
  CAF_ADD_TYPE_ID(troupe, (troupe::cluster_event))
  CAF_ADD_TYPE_ID(troupe, (troupe::remote_agent_args))
  // added later: new types go last, so the IDs above stay put
  CAF_ADD_TYPE_ID(troupe, (troupe::budget_recount))

CAF_END_TYPE_ID_BLOCK(troupe)

namespace caf {
class actor_system_config;
} // namespace caf

namespace troupe {

/// Makes every troupe message type known to an actor system (and so to its
/// remote peers). Call once on a config before constructing the actor system.
void register_messages(caf::actor_system_config& cfg);

} // namespace troupe

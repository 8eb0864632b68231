#include "messages/type_ids.hpp"

#include <caf/actor_system_config.hpp>

#include "messages/errors.hpp"

namespace troupe {

const char* to_string(run_status x) {
  switch (x) {
    case run_status::complete:
      return "complete";
    case run_status::max_steps:
      return "max_steps";
    case run_status::failed:
      return "failed";
    case run_status::halted:
      return "halted";
    case run_status::cancelled:
      return "cancelled";
  }
  return "unknown";
}

const char* to_string(event_kind x) {
  switch (x) {
    case event_kind::run_started:
      return "run_started";
    case event_kind::step_completed:
      return "step_completed";
    case event_kind::task_completed:
      return "task_completed";
    case event_kind::task_failed:
      return "task_failed";
    case event_kind::warning:
      return "warning";
    case event_kind::awaiting_approval:
      return "awaiting_approval";
  }
  return "unknown";
}

const char* to_string(cluster_event_kind x) {
  switch (x) {
    case cluster_event_kind::joined:
      return "joined";
    case cluster_event_kind::updated:
      return "updated";
    case cluster_event_kind::left:
      return "left";
    case cluster_event_kind::failed:
      return "failed";
  }
  return "unknown";
}

void register_messages(caf::actor_system_config& cfg) {
  cfg.add_message_types<caf::id_block::troupe>();
  register_error_category(cfg);
}

} // namespace troupe

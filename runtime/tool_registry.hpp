#pragma once

// The tool registry: every tool a runtime can serve, by name and version, and
// by capability. Agents name the tools they may use; the runtime resolves those
// names here when it spawns the agent, and serves each tool through one tool
// adapter actor (actors/tool_adapter.hpp).

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "messages/common.hpp"
#include "messages/json_value.hpp"
#include "messages/model.hpp"
#include "messages/tool.hpp"
#include "actors/tool_guards.hpp"

namespace troupe {

class json_schema;

/// What a tool body knows about the call it serves.
struct tool_context {
  run_ref ref;
  std::string agent;
  std::string call_id;
  /// Stable across retries of the same call: pass it to external systems.
  std::string idempotency_key;
  /// Unix time in milliseconds after which the caller has given up; 0 = none.
  int64_t deadline_ms = 0;
};

/// Thrown by a tool body to report a typed failure; any other exception counts
/// as a permanent failure with its what() as the message.
class tool_failure : public std::runtime_error {
public:
  tool_failure(tool_error_kind kind, const std::string& what)
    : std::runtime_error(what), kind_(kind) {
    // nop
  }

  /// transient (worth retrying) or permanent.
  tool_error_kind kind() const noexcept {
    return kind_;
  }

private:
  tool_error_kind kind_;
};

/// Which calls of a tool count as the same call (and so run once).
enum class idempotency_scope : uint8_t {
  /// The same run, agent, task, step, tool and arguments (the default). The
  /// task is a digest of the goal and context the agent was given, so two
  /// subtasks a team hands one member keep their calls apart, while a run
  /// resumed or retried on the same task finds its earlier calls.
  call,
  /// The same run, tool and arguments, at any step or agent.
  run,
  /// The same tool and arguments, in any run.
  global,
};

/// How a tool's idempotency keys are made.
struct idempotency_config {
  idempotency_scope scope = idempotency_scope::call;
  /// The arguments that make up the key; empty = all of them.
  std::vector<std::string> fields;
  /// Overrides the two above: the key of a call.
  std::function<std::string(const tool_call&)> key;
};

/// A scope's name as in swarm files and the cluster directory ("call",
/// "run", "global"), and back (an unknown name is "call").
const char* to_string(idempotency_scope x);
idempotency_scope idempotency_scope_from(const std::string& name);

/// The idempotency key of a call under a tool's configuration: a stable hash
/// of what the scope and fields name (or the custom function's result).
/// `task` identifies the agent's task within the run (see task_digest); only
/// the call scope uses it.
std::string idempotency_key(const idempotency_config& cfg,
                            const tool_call& call,
                            const std::string& task = "");

/// A stable digest of a task's goal and context, for idempotency keys.
std::string task_digest(const std::string& goal, const json& context);

/// A tool body: gets validated arguments, returns the result as JSON. It runs
/// on the runtime's blocking pool, never on an actor thread, so it may block.
using tool_function = std::function<json(const json& args, const tool_context&)>;

/// A tool: what the model sees (name, description, schema) plus what runs.
struct tool_definition {
  std::string name;
  std::string description;
  /// JSON Schema of the arguments (an object schema).
  json parameters = json{{"type", "object"}};
  /// What the tool can do, for look-up by capability ("math", "time"...).
  std::vector<std::string> capabilities;
  /// Dotted version, compared numerically ("1.10.0" > "1.9.3").
  std::string version = "1.0.0";
  tool_function fn;
  /// How long one call may run before the caller gets a timeout.
  std::chrono::milliseconds timeout{std::chrono::seconds{30}};
  /// True (the default): the body may block, so it runs on the blocking pool.
  /// False: the body is quick, pure computation that never blocks (no I/O, no
  /// locks held for long); the adapter then runs it in place and saves two
  /// thread hand-offs per call, but cannot enforce `timeout` on it.
  bool blocking = true;
  /// True when the tool only reads (no side effect anywhere): its results
  /// are not recorded in the idempotency ledger, so a repeated call runs
  /// again and reads fresh data (duplicates in flight at once still share
  /// one run). False (the default) is the safe choice for anything that
  /// changes the world.
  bool read_only = false;
  /// Retries, circuit breaker, rate and concurrency limits (none by default).
  tool_guards guards;
  /// Which calls are the same call (see idempotency_config).
  idempotency_config idempotency;
};

/// A registered tool with its compiled schema.
struct registered_tool {
  tool_definition definition;
  std::shared_ptr<const json_schema> schema;

  /// The model-facing description.
  tool_spec spec() const;
};

using tool_ptr = std::shared_ptr<const registered_tool>;

/// Thrown when a tool cannot be registered (duplicate, bad schema, no body).
class tool_registry_error : public std::invalid_argument {
public:
  using std::invalid_argument::invalid_argument;
};

/// Compares dotted versions numerically; returns <0, 0 or >0.
int compare_versions(const std::string& a, const std::string& b);

/// How long a caller waits for one call of the tool through its guards:
/// every attempt, every backoff at its cap and every wait in a limiter's
/// queue.
std::chrono::milliseconds call_budget(const tool_definition& def);

/// Tools by name, version and capability. Thread-safe.
class tool_registry {
public:
  /// Adds a tool; throws tool_registry_error naming the tool when its name is
  /// empty, it has no body, its schema is not a valid schema, or the same name
  /// and version is already registered.
  tool_ptr add(tool_definition def);

  /// The tool of that name: the given version, or the highest when empty.
  /// nullptr when there is none.
  tool_ptr find(const std::string& name, const std::string& version = "") const;

  /// Tools with a capability, best first: a tool whose version equals
  /// `preferred_version` first, then by descending version, then by name.
  std::vector<tool_ptr>
  find_by_capability(const std::string& capability,
                     const std::string& preferred_version = "") const;

  /// Every registered tool (all versions), by name then version.
  std::vector<tool_ptr> all() const;

private:
  mutable std::mutex mtx_;
  // name -> version -> tool
  std::map<std::string, std::map<std::string, tool_ptr>> tools_;
};

} // namespace troupe

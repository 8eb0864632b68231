#pragma once

// The scripted model: troupe's embedded default model. It answers the model
// protocol from a JSON script instead of a network endpoint, so examples and
// tests run with no network and no key. The format is documented in
// docs/scripted-model.md.
//
// Design: a script is parsed and validated once, up front, into an immutable
// model_script; every mistake a hand-written script can hold (a typo'd key, a
// bad regex, step min > max) is reported at load time with the file and the
// JSON pointer of the bad value, never at the first request that happens to
// reach it. Selecting a reply depends only on the request, so one actor (and
// one script) can serve any number of concurrent runs.

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/expected.hpp>

#include "messages/json_value.hpp"
#include "messages/model.hpp"

namespace troupe {

/// A script that cannot be read or is not a valid scripted-model script. The
/// message starts with the script's origin and, for a bad value, the JSON
/// pointer of that value: "support.json: /rules/3/regex: invalid regular ...".
class script_error : public std::invalid_argument {
public:
  using std::invalid_argument::invalid_argument;
};

/// What a script answers to one request: the response and how long the actor
/// holds it back before delivering it.
struct scripted_reply {
  chat_response response;
  std::chrono::milliseconds latency{0};
  /// The rule that matched: its name, or its pointer ("/rules/2") if unnamed.
  std::string rule;
};

/// A parsed, validated script. Immutable; share it between actors and threads.
class model_script {
public:
  /// Validates `doc` and builds a script. `origin` names the script in errors
  /// and in chat_response.model ("scripted:" + origin). Throws script_error
  /// naming `origin` and the JSON pointer of the first bad value.
  static std::shared_ptr<const model_script> parse(
    const json& doc, const std::string& origin);

  /// Reads and parses the script file at `path` (which becomes the origin).
  /// `//` and `/* */` comments are allowed. Throws script_error naming the
  /// file when it is unreadable, not JSON (with line, column and byte offset)
  /// or not a valid script.
  static std::shared_ptr<const model_script> load(const std::string& path);

  /// Chooses the reply for `req`: the first rule whose every condition holds.
  /// Errors: errc::no_matching_rule (naming the origin, the agent, the step
  /// and an excerpt of the latest message), errc::invalid_input for a request
  /// without messages. Never throws (short of std::bad_alloc).
  caf::expected<scripted_reply> select(const chat_request& req) const;

  /// The response for `req`, as select() without the latency (which the
  /// actor applies, not this function).
  caf::expected<chat_response> reply(const chat_request& req) const;

  /// Where the script came from: the file path given to load(), or the
  /// origin given to parse().
  const std::string& origin() const;

  /// Number of rules.
  size_t size() const;

  ~model_script();
  model_script(const model_script&) = delete;
  model_script& operator=(const model_script&) = delete;

private:
  struct rule;

  explicit model_script(std::string origin);

  std::string origin_;
  std::vector<rule> rules_;
};

/// Spawns a scripted model actor serving `script`. The actor answers every
/// chat_request with the script's reply, after the rule's latency_ms (a
/// delayed message, never a sleep), or with a troupe error; it never throws.
/// A reply still held back when the actor is killed is not delivered: the
/// requester's own timeout covers it.
model_actor spawn_scripted_model(
  caf::actor_system& sys, std::shared_ptr<const model_script> script);

} // namespace troupe

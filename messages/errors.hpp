#pragma once

// Errors inside the runtime are values: a caf::error in the "troupe" category
// whose context is one human-readable sentence naming what went wrong. They
// cross nodes like any error and render without an actor system (error_text).

#include <cstdint>
#include <exception>
#include <string>

#include <caf/atom.hpp>
#include <caf/error.hpp>

namespace caf {
class actor_system_config;
} // namespace caf

namespace troupe {

/// troupe's error codes.
enum class errc : uint8_t {
  /// No scripted-model rule matches the conversation.
  no_matching_rule = 1,
  /// A model endpoint could not produce a reply.
  model_failed,
  /// Bad input at a boundary (a config file, a request).
  invalid_input,
  /// Something we waited on did not answer in time.
  timeout,
  /// An actor we depended on went away.
  unavailable,
  /// A guardrail refused (budget, policy).
  refused,
  /// The agent crashed while handling a run.
  crashed,
};

/// Text name of an error code.
const char* to_string(errc x);

/// The category atom of troupe's errors.
constexpr caf::atom_value error_category = caf::atom("troupe");

/// Makes a troupe error with a sentence saying what went wrong.
caf::error make_error(errc code, std::string what);

/// One line for any caf::error: troupe's own sentence, CAF's text otherwise.
std::string error_text(const caf::error& err);

/// Only the sentence of a troupe error (without its code name), for errors
/// that are quoted inside another; error_text() for any other error.
std::string error_sentence(const caf::error& err);

/// The what() of an exception, or "unknown exception" for one that is not a
/// std::exception (for exception handlers).
std::string exception_text(const std::exception_ptr& eptr);

/// Teaches a config to render troupe errors (called by register_messages).
void register_error_category(caf::actor_system_config& cfg);

} // namespace troupe

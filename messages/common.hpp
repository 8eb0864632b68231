#pragma once

// Values every protocol shares: the identity a request carries through the run,
// and token usage.

#include <cstdint>
#include <string>

#include "messages/define.hpp"

namespace troupe {

/// Identity of the run a request belongs to; every request carries one.
struct run_ref {
  std::string run_id;
  /// 32 hex digits, shared by every span of the run.
  std::string trace_id;
  /// The span this request is a child of.
  std::string span_id;
  /// Who the run acts for.
  std::string principal;
  /// Higher goes first where calls queue (rate and concurrency limits).
  int32_t priority = 0;
};
TROUPE_MESSAGE(run_ref, run_id, trace_id, span_id, principal, priority)

/// Tokens consumed by one or more model calls.
struct token_usage {
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;

  token_usage& operator+=(const token_usage& other) {
    input_tokens += other.input_tokens;
    output_tokens += other.output_tokens;
    return *this;
  }
};
TROUPE_MESSAGE(token_usage, input_tokens, output_tokens)

} // namespace troupe

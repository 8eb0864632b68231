#pragma once

// Wall-clock time and identifiers for runs, traces and spans.

#include <cstdint>
#include <string>

namespace troupe {

/// Nanoseconds since the Unix epoch.
int64_t now_ns();

/// Milliseconds since the Unix epoch.
int64_t now_ms();

/// `bytes` random bytes as lowercase hex (2 * bytes digits).
std::string random_hex(size_t bytes);

/// A new 32-hex-digit trace id.
inline std::string new_trace_id() {
  return random_hex(16);
}

/// A new 16-hex-digit span id.
inline std::string new_span_id() {
  return random_hex(8);
}

/// FNV-1a 64-bit hash of a string as 16 hex digits: stable across processes
/// and machines (used for default idempotency keys).
std::string stable_hash(const std::string& text);

} // namespace troupe

#pragma once

// An incremental parser for server-sent events (the text/event-stream format of
// the WHATWG HTML standard, section 9.2), fed with bytes as they arrive.
//
// It is a pure value with no I/O so that it can be tested and fuzzed apart from
// the HTTP client. Lines end with CRLF, LF or CR, and any of them may be split
// across feeds. An event is dispatched on a blank line; an event still
// incomplete when the stream ends is discarded, as the standard says.

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace troupe {

/// One dispatched server-sent event.
struct sse_event {
  /// The `event:` field; empty when the event named none (a "message").
  std::string event;
  /// The `data:` lines joined with '\n'.
  std::string data;
  /// The last event ID seen on the stream so far (it persists across events).
  std::string id;
};

/// Splits an event stream into events, one feed at a time.
class sse_parser {
public:
  /// Receives each complete event.
  using event_handler = std::function<void(sse_event)>;

  /// Parses `bytes` and calls `on_event` for every event they complete.
  /// Never throws on malformed input: unknown fields and garbage are ignored.
  void feed(std::string_view bytes, const event_handler& on_event);

  /// Ends the stream: a partial line and an undispatched event are discarded.
  void finish();

  /// The last `id:` value seen.
  const std::string& last_event_id() const noexcept {
    return last_id_;
  }

  /// The last valid `retry:` value in milliseconds, or -1 when none was sent.
  long long retry_ms() const noexcept {
    return retry_ms_;
  }

private:
  void process_line(const event_handler& on_event);

  std::string line_;
  std::string data_;
  std::string event_;
  std::string last_id_;
  long long retry_ms_ = -1;
  bool has_data_ = false;
  bool after_cr_ = false;
  bool started_ = false;
  size_t bom_matched_ = 0;
};

} // namespace troupe

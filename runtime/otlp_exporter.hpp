#pragma once

// Sends troupe's trace records to an OpenTelemetry collector over OTLP/HTTP
// with the JSON encoding (ExportTraceServiceRequest, POST application/json).
//
// Pointing it at a collector:
//
//   troupe::otlp_options o;
//   o.endpoint = "http://127.0.0.1:4318/v1/traces"; // the full URL
//   o.headers["Authorization"] = "Bearer ...";      // if the collector asks
//   troupe::otlp_exporter otlp{o};                  // throws on bad options
//   troupe::runtime_config cfg;
//   cfg.trace_listeners.push_back(otlp.listener());
//   troupe::runtime rt{cfg};
//   ... runs ...
//   rt.shutdown();                                   // the tracer's last records
//   otlp.stop();                                     // drains, bounded
//
// From the command line: `troupe run ... --otlp http://127.0.0.1:4318/v1/traces`.
// An OpenTelemetry Collector takes it with an `otlp` receiver whose `http`
// protocol is enabled (port 4318); Jaeger (COLLECTOR_OTLP_ENABLED=true) and
// Grafana Tempo listen on the same path. https:// endpoints are verified
// against the system CA store plus `ca_file`.
//
// How records become OTLP:
// - A "span" record is one span: hex traceId/spanId/parentSpanId, name,
//   kind CLIENT for model calls and tool calls (gen_ai.operation.name "chat",
//   "execute_tool", ...) and INTERNAL otherwise, start/end as decimal nanosecond
//   strings, attributes as typed AnyValues (integers as intValue strings), and
//   status OK ("ok") or ERROR (anything else but "" / "unset") with its message.
// - An "event" record becomes an event of its span. The tracer writes a span
//   when it ends, so most events arrive before their span: an event whose span
//   is not in the batch waits in the exporter (at most max_queue events) and
//   goes out with its span. An event for a span already sent (a late one, such
//   as an agent's last transition), one pushed out of the full waiting room, or
//   one still waiting at stop() goes out on a small carrier span instead: a
//   child of its span named "troupe.events", covering its events' times, with
//   attribute troupe.events.span_id. Nothing is lost to the pairing.
// - "span_start" records and records of any other type are ignored: OTLP
//   carries a span once, whole. A record with a malformed id, time or field is
//   dropped (counted in dropped_invalid) rather than spoiling its batch.
//
// Threads and delivery:
// - listener() only copies the record into a bounded queue under a mutex; it
//   never waits for the sender and never does I/O (a full queue drops the
//   record and counts it). It may outlive the exporter: it then drops.
// - One sender thread batches up to max_batch records, or whatever the oldest
//   record has waited flush_interval for, and POSTs each batch with the
//   runtime's HTTP client (runtime/http_client.hpp) on an io_context that only
//   this thread runs: the exchange is synchronous for the sender, with the
//   client's connect and total timeouts, its keep-alive connection reused
//   across batches and re-opened when the collector closed it.
// - Connection errors, timeouts and 429/502/503/504 are retried up to
//   max_attempts with exponential backoff and full jitter, waiting at least
//   the collector's Retry-After (honoured up to max_backoff: a longer pause
//   would only move the loss into the queue). Other statuses are the
//   collector's final word: the batch is dropped, counted, and not retried.
//   A 2xx with partialSuccess.rejectedSpans counts those spans as rejected.
// - Drops and failures are logged at warn, at most one line per kind every
//   10 s with a count of the lines held back, so a dead collector does not
//   flood the log.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "actors/tracer.hpp"

namespace troupe {

/// Where and how an otlp_exporter sends.
struct otlp_options {
  /// The full URL of the collector's traces endpoint, e.g.
  /// http://127.0.0.1:4318/v1/traces (http:// or https://).
  std::string endpoint;
  /// Extra header fields sent with every request (e.g. authorization);
  /// never logged.
  std::map<std::string, std::string> headers;
  /// The resource's service.name.
  std::string service_name = "troupe";
  /// Records waiting to be sent; more are dropped (and counted).
  size_t max_queue = 4096;
  /// Records per request at most.
  size_t max_batch = 256;
  /// The longest a record waits for its batch to fill.
  std::chrono::milliseconds flush_interval{1000};
  /// Attempts per batch, the first included.
  int max_attempts = 5;
  /// The wait before retry n is uniformly random in
  /// [0, min(max_backoff, initial_backoff * 2^(n-1))].
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{5000};
  /// Bound on one attempt (connecting included); also stop()'s default bound.
  std::chrono::milliseconds timeout{5000};
  /// https: a PEM file of extra trusted CAs, added to the system store.
  std::string ca_file;
};

/// What an exporter did so far. Records are counted one each, spans and
/// events alike, unless a name says spans.
struct otlp_stats {
  /// Records the listener accepted into the queue.
  uint64_t enqueued = 0;
  /// Span records the collector accepted.
  uint64_t exported_spans = 0;
  /// Event records the collector accepted (on their spans or on carriers).
  uint64_t exported_events = 0;
  /// Spans a 2xx answer reported as rejected (partialSuccess.rejectedSpans).
  uint64_t rejected_spans = 0;
  /// Records the listener dropped because the queue was full.
  uint64_t dropped_queue_full = 0;
  /// Records of batches that failed max_attempts times.
  uint64_t dropped_after_retries = 0;
  /// Records of batches the collector refused with a status not worth a
  /// retry (400, 401, 413, 500...).
  uint64_t dropped_rejected = 0;
  /// Records that could not be encoded (a malformed id, time or field).
  uint64_t dropped_invalid = 0;
  /// Records given up by stop(): still queued or in flight when its bound ran
  /// out, or handed to the listener after it.
  uint64_t dropped_at_stop = 0;
  /// Requests the collector answered with 2xx.
  uint64_t batches_sent = 0;
  /// Attempts after the first, over all batches.
  uint64_t retries = 0;
  /// Events waiting for their span right now.
  uint64_t held_events = 0;
  /// The latest failure (a transport error or an HTTP status with the body's
  /// start); empty when nothing failed yet.
  std::string last_error;
};

/// Exports trace records to an OTLP/HTTP JSON endpoint from its own thread.
class otlp_exporter {
public:
  /// Validates `opts` and starts the sender thread. Throws
  /// std::invalid_argument naming the bad option.
  explicit otlp_exporter(otlp_options opts);

  otlp_exporter(const otlp_exporter&) = delete;
  otlp_exporter& operator=(const otlp_exporter&) = delete;

  /// Calls stop().
  ~otlp_exporter();

  /// The listener to add to runtime_config::trace_listeners: enqueues and
  /// returns at once.
  trace_listener listener() const;

  /// Waits until every record enqueued before the call was sent or dropped
  /// (or waits for its span, for an event: see the header comment). True
  /// when that happened within `timeout`.
  bool flush(std::chrono::milliseconds timeout);

  /// stop(options.timeout).
  void stop();

  /// Refuses new records, sends what is queued (and the events still waiting,
  /// on carriers) for at most `bound`, then cancels what is in flight, counts
  /// the rest in dropped_at_stop and joins the thread. Idempotent.
  void stop(std::chrono::milliseconds bound);

  /// The counters so far.
  otlp_stats stats() const;

  struct state;

private:
  std::shared_ptr<state> state_;
  std::thread sender_;
};

namespace detail {

/// Encodes `records` ("span" and "event" trace records, other types skipped)
/// as one OTLP ExportTraceServiceRequest in the JSON encoding, attaching each
/// event to its span when the span is among them and to a carrier span
/// otherwise. Throws std::invalid_argument naming the first malformed record.
/// For tests and tools; the exporter does the same batch by batch.
json otlp_encode(const std::vector<json>& records,
                 const std::string& service_name = "troupe");

} // namespace detail

} // namespace troupe

#pragma once

// What the cluster and gateway workloads of troupe-bench share: one
// event-based driver actor that keeps `in_flight` requests pipelined to an
// actor until `total` have been answered, checking every reply, and the
// figures their JSON lines carry.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/duration.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/stateful_actor.hpp>

#include "messages/errors.hpp"
#include "messages/json_value.hpp"

namespace troupe::bench {

// -- figures -----------------------------------------------------------------

/// Prints a JSON line to stdout.
inline void print_line(const json& line) {
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
}

/// `x` rounded to two decimals.
inline double round2(double x) {
  return std::round(x * 100.0) / 100.0;
}

/// CPU time of every thread of this process, in microseconds.
inline double process_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6
         + static_cast<double>(ts.tv_nsec) / 1e3;
}

/// The value at quantile `q` of sorted `xs` (0 when empty).
inline double quantile(const std::vector<double>& xs, double q) {
  if (xs.empty())
    return 0;
  auto i = static_cast<size_t>(q * static_cast<double>(xs.size()));
  return xs[std::min(xs.size() - 1, i)];
}

/// p50, p99 and mean of `us` (sorted in place), with `prefix` on the names.
inline json latency_figures(std::vector<double>& us,
                            const std::string& prefix = "") {
  std::sort(us.begin(), us.end());
  double sum = 0;
  for (auto x : us)
    sum += x;
  return json{{prefix + "p50_us", round2(quantile(us, 0.5))},
              {prefix + "p99_us", round2(quantile(us, 0.99))},
              {prefix + "mean_us",
               round2(sum / static_cast<double>(std::max<size_t>(us.size(), 1)))}};
}

// -- the driver --------------------------------------------------------------

/// What a driver does: `total` requests to `target`, `in_flight` at once,
/// each answered by a `Reply`.
template <class Handle, class Request, class Reply>
struct drive_plan {
  /// The driver actor's name.
  const char* name = "bench_driver";
  Handle target;
  Request request;
  int64_t total = 0;
  int64_t in_flight = 1;
  /// Completions before the clock starts (and before latencies are kept).
  int64_t warmup = 0;
  /// Bound on any one request.
  caf::duration timeout;
  /// Fits the copy of `request` sent as the n-th (from 0); none sends it as
  /// it is.
  std::function<void(Request&, int64_t n)> prepare;
  /// Checks a reply: empty when it is good, else what is wrong with it.
  std::function<std::string(const Reply&)> check;
};

/// What a driver measured.
struct drive_result {
  /// From the warmup-th completion to the last.
  double secs = 0;
  /// Round trips after the warm-up, in microseconds.
  std::vector<double> us;
  int64_t failed = 0;
  std::string first_error;
};

namespace detail {

/// A driver's state: requests started and answered.
template <class Handle, class Request, class Reply>
struct driver_state {
  const char* name = "bench_driver";
  drive_plan<Handle, Request, Reply> plan;
  int64_t issued = 0;
  int64_t answered = 0;
  std::chrono::steady_clock::time_point clock_start;
  drive_result result;
  std::shared_ptr<std::promise<drive_result>> done;
};

template <class Handle, class Request, class Reply>
using driver_actor = caf::stateful_actor<driver_state<Handle, Request, Reply>>;

template <class Handle, class Request, class Reply>
void issue(driver_actor<Handle, Request, Reply>* self);

/// Counts one answer (`error` empty: a good one) and keeps the pipe full.
template <class Handle, class Request, class Reply>
void settle(driver_actor<Handle, Request, Reply>* self,
            std::chrono::steady_clock::time_point started,
            const std::string& error) {
  using namespace std::chrono;
  auto& st = self->state;
  auto now = steady_clock::now();
  ++st.answered;
  if (!error.empty()) {
    if (st.result.failed++ == 0)
      st.result.first_error = error;
  } else if (st.answered > st.plan.warmup) {
    st.result.us.push_back(duration<double, std::micro>(now - started).count());
  }
  if (st.answered == st.plan.warmup)
    st.clock_start = now;
  if (st.issued < st.plan.total) {
    issue(self);
  } else if (st.answered == st.plan.total) {
    st.result.secs = duration<double>(now - st.clock_start).count();
    st.done->set_value(std::move(st.result));
    self->quit();
  }
}

/// Sends the next request.
template <class Handle, class Request, class Reply>
void issue(driver_actor<Handle, Request, Reply>* self) {
  auto& st = self->state;
  auto next = st.plan.request;
  if (st.plan.prepare)
    st.plan.prepare(next, st.issued);
  ++st.issued;
  auto started = std::chrono::steady_clock::now();
  self->request(st.plan.target, st.plan.timeout, std::move(next))
    .then(
      [self, started](Reply& r) {
        settle(self, started, self->state.plan.check(r));
      },
      [self, started](caf::error& err) {
        settle(self, started, error_text(err));
      });
}

/// Starts the plan's first `in_flight` requests; every answer starts the
/// next one until `total` have been sent.
template <class Handle, class Request, class Reply>
void driver(driver_actor<Handle, Request, Reply>* self,
            drive_plan<Handle, Request, Reply> plan,
            std::shared_ptr<std::promise<drive_result>> done) {
  auto& st = self->state;
  st.name = plan.name;
  st.plan = std::move(plan);
  st.done = std::move(done);
  st.clock_start = std::chrono::steady_clock::now();
  auto first = std::min(st.plan.in_flight, st.plan.total);
  for (int64_t i = 0; i < first; ++i)
    issue(self);
}

} // namespace detail

/// Runs `plan` on `sys` and waits for it.
template <class Handle, class Request, class Reply>
drive_result drive(caf::actor_system& sys,
                   drive_plan<Handle, Request, Reply> plan) {
  auto done = std::make_shared<std::promise<drive_result>>();
  auto result = done->get_future();
  auto d = sys.spawn(detail::driver<Handle, Request, Reply>, std::move(plan),
                     done);
  auto out = result.get();
  // The driver may still be on its way out of the last answer.
  caf::scoped_actor{sys}->wait_for(d);
  return out;
}

} // namespace troupe::bench

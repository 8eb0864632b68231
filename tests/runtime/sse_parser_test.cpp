#include "runtime/sse_parser.hpp"

#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

using troupe::sse_event;
using troupe::sse_parser;

namespace {

/// Feeds `text` in pieces of `step` bytes and returns the events.
std::vector<sse_event> parse(const std::string& text, size_t step = 0,
                             bool finish = true) {
  sse_parser p;
  std::vector<sse_event> out;
  auto sink = [&out](sse_event ev) { out.push_back(std::move(ev)); };
  if (step == 0)
    step = text.size() + 1;
  for (size_t i = 0; i < text.size(); i += step)
    p.feed(std::string_view{text}.substr(i, step), sink);
  if (finish)
    p.finish();
  return out;
}

} // namespace

TEST_CASE("http sse parser: data lines are joined with newlines", "[http][sse]") {
  auto evs = parse("data: a\ndata:b\ndata:  c\n\n");
  REQUIRE(evs.size() == 1);
  CHECK(evs[0].data == "a\nb\n c");
  CHECK(evs[0].event.empty());
  CHECK(evs[0].id.empty());
}

TEST_CASE("http sse parser: event and id fields; the id persists", "[http][sse]") {
  auto evs = parse("event: delta\nid: 42\ndata: x\n\ndata: y\n\n"
                   "event: stop\nid\ndata: z\n\n");
  REQUIRE(evs.size() == 3);
  CHECK(evs[0].event == "delta");
  CHECK(evs[0].id == "42");
  CHECK(evs[1].event.empty());
  CHECK(evs[1].id == "42");
  CHECK(evs[2].event == "stop");
  CHECK(evs[2].id.empty()); // "id" alone resets it
}

TEST_CASE("http sse parser: comments, blank runs and unknown fields are ignored",
          "[http][sse]") {
  auto evs = parse(": hello\n\n\n\nfoo: bar\nretry: 1500\ndata: x\n"
                   ": inside\n\nevent: lonely\n\n");
  REQUIRE(evs.size() == 1);
  CHECK(evs[0].data == "x");
  sse_parser p;
  p.feed("retry: 1500\n\n", nullptr);
  CHECK(p.retry_ms() == 1500);
  p.feed("retry: soon\n\n", nullptr);
  CHECK(p.retry_ms() == 1500);
}

TEST_CASE("http sse parser: CRLF, CR and LF line ends, split anywhere",
          "[http][sse]") {
  const std::string text = "\xEF\xBB\xBF" "data: one\r\n\r\n"
                           "data: two\rdata: 2\r\r"
                           "event: e\ndata: three\n\n";
  for (size_t step = 1; step <= text.size(); ++step) {
    INFO("step " << step);
    auto evs = parse(text, step);
    REQUIRE(evs.size() == 3);
    CHECK(evs[0].data == "one");
    CHECK(evs[1].data == "two\n2");
    CHECK(evs[2].data == "three");
    CHECK(evs[2].event == "e");
  }
}

TEST_CASE("http sse parser: an event without its blank line is not dispatched",
          "[http][sse]") {
  sse_parser p;
  std::vector<sse_event> out;
  auto sink = [&out](sse_event ev) { out.push_back(std::move(ev)); };
  p.feed("data: done\n\ndata: partial\n", sink);
  REQUIRE(out.size() == 1);
  p.finish();
  CHECK(out.size() == 1);
  // finish() discards the partial event: a later blank line does not revive it.
  p.feed("\n", sink);
  CHECK(out.size() == 1);
  CHECK(parse("data: no end").empty());
}

TEST_CASE("http sse parser: garbage lines are ignored", "[http][sse]") {
  auto evs = parse("\x01\x02 garbage\n:::\n data: leading space is a field\n"
                   "data\n\n");
  REQUIRE(evs.size() == 1);
  CHECK(evs[0].data.empty()); // "data" with no colon is an empty data line
}

TEST_CASE("http sse parser: 1 MB of random input never throws", "[http][sse]") {
  std::mt19937 rng{20261201};
  // Tokens that make well-formed events likely, mixed with random bytes.
  const std::vector<std::string> tokens = {
    "data:", "data: x", "event: e", "id: 1", "id", "retry: 10", ": c", "\n",
    "\n",    "\r\n",   "\r",        "x",     ":",  "\xEF\xBB\xBF"};
  std::string input;
  std::uniform_int_distribution<int> pick{0, 3};
  std::uniform_int_distribution<size_t> token{0, tokens.size() - 1};
  std::uniform_int_distribution<int> byte{0, 255};
  while (input.size() < (1u << 20)) {
    if (pick(rng) == 0)
      input.push_back(static_cast<char>(byte(rng)));
    else
      input += tokens[token(rng)];
  }
  std::uniform_int_distribution<size_t> piece{1, 4096};
  sse_parser p;
  size_t events = 0;
  size_t bytes = 0;
  CHECK_NOTHROW([&] {
    for (size_t i = 0; i < input.size();) {
      auto n = std::min(piece(rng), input.size() - i);
      p.feed(std::string_view{input}.substr(i, n), [&](sse_event ev) {
        ++events;
        bytes += ev.data.size();
      });
      i += n;
    }
    p.finish();
  }());
  CHECK(events > 0);
  CHECK(bytes < input.size());
}

#include "runtime/clock.hpp"

#include <chrono>
#include <random>

namespace troupe {

int64_t now_ns() {
  using namespace std::chrono;
  return duration_cast<nanoseconds>(system_clock::now().time_since_epoch())
    .count();
}

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch())
    .count();
}

std::string random_hex(size_t bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  // Seeded with 256 bits, not one 32-bit draw, so ids of different processes
  // do not collide.
  thread_local std::mt19937_64 gen = [] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64{seq};
  }();
  std::string out;
  out.reserve(bytes * 2);
  uint64_t pool = 0;
  for (size_t i = 0; i < bytes; ++i) {
    if (i % 8 == 0)
      pool = gen();
    auto byte = static_cast<unsigned>(pool & 0xffu);
    pool >>= 8;
    out += digits[byte >> 4];
    out += digits[byte & 0x0fu];
  }
  return out;
}

std::string stable_hash(const std::string& text) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i) {
    out[static_cast<size_t>(i)] = digits[h & 0x0fu];
    h >>= 4;
  }
  return out;
}

} // namespace troupe

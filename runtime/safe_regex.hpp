#pragma once

// Regular expressions from configuration (scripted-model rules, JSON Schema
// patterns) run against text troupe does not control: tool results, fetched
// pages, model output. libstdc++'s default regex executor recurses once per
// input character, so "(.*)" overflows a thread's stack on a few ten thousand
// characters and kills the process. Its polynomial (Thompson NFA) executor
// uses stack bounded by the pattern instead; the price is that back-references
// are refused when the pattern is compiled.

#include <regex>

namespace troupe {

/// Flags for every regex compiled from configuration.
#if defined(__GLIBCXX__)
constexpr auto safe_regex_flags
  = std::regex::ECMAScript | std::regex_constants::__polynomial;
#else
constexpr auto safe_regex_flags = std::regex::ECMAScript;
#endif

} // namespace troupe

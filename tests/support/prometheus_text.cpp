#include "support/prometheus_text.hpp"

#include <unistd.h>

#include <cstdlib>
#include <sstream>
#include <utility>

#include <catch2/catch.hpp>

#include "support/temp_dir.hpp"

namespace troupe::test {

std::vector<sample> parse(const std::string& text) {
  std::vector<sample> out;
  std::istringstream in{text};
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#')
      continue;
    sample s;
    size_t i = line.find_first_of("{ ");
    REQUIRE(i != std::string::npos);
    s.name = line.substr(0, i);
    if (line[i] == '{') {
      ++i;
      while (line.at(i) != '}') {
        auto eq = line.find('=', i);
        REQUIRE(eq != std::string::npos);
        auto key = line.substr(i, eq - i);
        REQUIRE(line.at(eq + 1) == '"');
        std::string value;
        size_t k = eq + 2;
        for (; line.at(k) != '"'; ++k) {
          if (line[k] == '\\') {
            ++k;
            value += line.at(k) == 'n' ? '\n' : line[k];
          } else {
            value += line[k];
          }
        }
        s.labels[key] = value;
        i = k + 1;
        if (line.at(i) == ',')
          ++i;
      }
      ++i;
    }
    REQUIRE(line.at(i) == ' ');
    auto number = line.substr(i + 1);
    char* end = nullptr;
    s.value = std::strtod(number.c_str(), &end);
    REQUIRE(end != number.c_str());
    out.push_back(std::move(s));
  }
  return out;
}

double value(const std::vector<sample>& samples, const std::string& name,
             const label_set& labels) {
  for (const auto& s : samples)
    if (s.name == name && s.labels == labels)
      return s.value;
  return missing;
}

double bucket(const std::vector<sample>& samples, const std::string& name,
              label_set labels, double le) {
  for (const auto& s : samples) {
    if (s.name != name + "_bucket")
      continue;
    auto i = s.labels.find("le");
    if (i == s.labels.end() || std::strtod(i->second.c_str(), nullptr) != le)
      continue;
    auto rest = s.labels;
    rest.erase("le");
    if (rest == labels)
      return s.value;
  }
  return missing;
}

std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs{path != nullptr ? path : ""};
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    auto candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0)
      return candidate;
  }
  return {};
}

process_output promtool_check(const std::string& exposition) {
  auto promtool = find_program("promtool");
  if (promtool.empty())
    FAIL("promtool is not on PATH: run scripts/setup.sh, which installs "
         "Debian's prometheus package");
  temp_dir dir;
  auto file = dir.write("metrics.txt", exposition);
  // run_command gives the shell /dev/null as stdin; an inner shell feeds
  // promtool the file instead, and a hung promtool is stopped after 60 s.
  return run_command("/bin/sh -c "
                     + shell_quote("exec timeout 60 " + shell_quote(promtool)
                                   + " check metrics < " + shell_quote(file)));
}

} // namespace troupe::test

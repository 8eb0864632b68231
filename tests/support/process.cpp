#include "support/process.hpp"

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "support/temp_dir.hpp"

namespace troupe::test {

std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::string shell_quote(const std::string& arg) {
  std::string out = "'";
  for (char c : arg) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

process_output run_command(const std::string& command) {
  temp_dir dir;
  auto out_path = dir.file("stdout");
  auto err_path = dir.file("stderr");
  auto full = command + " >" + shell_quote(out_path) + " 2>"
              + shell_quote(err_path) + " </dev/null";
  process_output result;
  auto status = std::system(full.c_str());
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.out = read_file(out_path);
  result.err = read_file(err_path);
  return result;
}

} // namespace troupe::test

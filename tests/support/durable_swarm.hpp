#pragma once

// The durable swarm of tests/runtime/durable (a clerk records each item in a
// journal file, a reviewer signs it off) copied into a test's folder, its
// script named by absolute path.

#include <fstream>
#include <string>

#include "messages/json_value.hpp"
#include "tests/support/paths.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

namespace troupe::test {

/// Writes dir/durable.swarm.json and returns its path. With `journal_in_dir`
/// the journal file is dir/side-effects.jsonl; otherwise it stays relative
/// to the working directory of whoever runs the swarm.
inline std::string write_durable_swarm(const temp_dir& dir,
                                       bool journal_in_dir = true) {
  auto src = source_dir() + "/tests/runtime/durable/";
  auto doc = json::parse(read_file(src + "durable.swarm.json"));
  doc["model"] = "scripted:" + src + "durable.script.json";
  if (journal_in_dir)
    doc["tools"]["record_item"]["file"] = dir.file("side-effects.jsonl");
  auto path = dir.file("durable.swarm.json");
  std::ofstream{path} << doc.dump(2);
  return path;
}

} // namespace troupe::test

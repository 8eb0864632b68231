// Plans of orchestrator-worker teams: parsing and checking.

#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>

#include "supervisors/teams.hpp"

namespace troupe {

namespace {

std::string list(const std::vector<std::string>& xs) {
  std::string out;
  for (const auto& x : xs)
    out += (out.empty() ? "" : ", ") + x;
  return out;
}

[[noreturn]] void bad(const std::string& where, const std::string& what) {
  throw std::invalid_argument(where + ": " + what);
}

std::string type_name(const json& j) {
  return j.type_name();
}

} // namespace

team_plan parse_plan(const json& doc) {
  if (!doc.is_object())
    bad("plan", "must be a JSON object with \"subtasks\", got "
                  + type_name(doc));
  for (auto it = doc.begin(); it != doc.end(); ++it)
    if (it.key() != "subtasks")
      bad("plan/" + it.key(), "unknown field (expected: subtasks)");
  auto subs = doc.find("subtasks");
  if (subs == doc.end())
    bad("plan", "has no \"subtasks\"");
  if (!subs->is_array())
    bad("plan/subtasks", "must be an array, got " + type_name(*subs));
  team_plan plan;
  for (size_t i = 0; i < subs->size(); ++i) {
    const auto& s = (*subs)[i];
    auto where = "plan/subtasks/" + std::to_string(i);
    if (!s.is_object())
      bad(where, "must be an object, got " + type_name(s));
    plan_subtask out;
    for (auto it = s.begin(); it != s.end(); ++it) {
      const auto& key = it.key();
      const auto& v = it.value();
      auto at = where + "/" + key;
      if (key == "id" || key == "role" || key == "goal") {
        if (!v.is_string())
          bad(at, "must be a string, got " + type_name(v));
        (key == "id" ? out.id : key == "role" ? out.role : out.goal) =
          v.get<std::string>();
      } else if (key == "depends_on") {
        if (!v.is_array())
          bad(at, "must be an array of subtask ids, got " + type_name(v));
        for (size_t k = 0; k < v.size(); ++k) {
          if (!v[k].is_string())
            bad(at + "/" + std::to_string(k),
                "must be a string, got " + type_name(v[k]));
          out.depends_on.push_back(v[k].get<std::string>());
        }
      } else {
        bad(at, "unknown field (expected one of: id, role, goal, depends_on)");
      }
    }
    if (out.id.empty())
      bad(where + "/id", "is missing or empty");
    if (out.role.empty())
      bad(where + "/role", "is missing or empty");
    plan.subtasks.push_back(std::move(out));
  }
  return plan;
}

void check_plan(const team_plan& plan, const std::vector<std::string>& roles,
                size_t max_subtasks) {
  if (plan.subtasks.empty())
    throw std::invalid_argument("the plan has no subtasks");
  if (plan.subtasks.size() > max_subtasks)
    throw std::invalid_argument("the plan has " + std::to_string(plan.subtasks.size())
                                + " subtasks, more than the limit of "
                                + std::to_string(max_subtasks));
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < plan.subtasks.size(); ++i) {
    const auto& s = plan.subtasks[i];
    if (s.id.empty())
      throw std::invalid_argument("subtask " + std::to_string(i + 1)
                                  + " has no id");
    if (!index.emplace(s.id, i).second)
      throw std::invalid_argument("subtask id '" + s.id + "' is used twice");
    if (std::find(roles.begin(), roles.end(), s.role) == roles.end())
      throw std::invalid_argument("subtask '" + s.id + "' names unknown role '"
                                  + s.role + "' (roles: " + list(roles) + ")");
  }
  for (const auto& s : plan.subtasks) {
    std::set<std::string> seen;
    for (const auto& d : s.depends_on) {
      if (d == s.id)
        throw std::invalid_argument("dependency cycle: subtask '" + s.id
                                    + "' depends on itself");
      if (index.count(d) == 0)
        throw std::invalid_argument("subtask '" + s.id
                                    + "' depends on unknown subtask '" + d + "'");
      if (!seen.insert(d).second)
        throw std::invalid_argument("subtask '" + s.id + "' lists dependency '"
                                    + d + "' twice");
    }
  }
  // Depth-first search with colours; a grey node reached again closes a cycle.
  enum colour { white, grey, black };
  std::vector<colour> col(plan.subtasks.size(), white);
  std::vector<size_t> path;
  std::function<void(size_t)> visit = [&](size_t i) {
    col[i] = grey;
    path.push_back(i);
    for (const auto& d : plan.subtasks[i].depends_on) {
      auto j = index.at(d);
      if (col[j] == grey) {
        auto from = std::find(path.begin(), path.end(), j);
        std::string cycle;
        for (auto k = from; k != path.end(); ++k)
          cycle += plan.subtasks[*k].id + " -> ";
        throw std::invalid_argument("dependency cycle: " + cycle
                                    + plan.subtasks[j].id);
      }
      if (col[j] == white)
        visit(j);
    }
    path.pop_back();
    col[i] = black;
  };
  for (size_t i = 0; i < plan.subtasks.size(); ++i)
    if (col[i] == white)
      visit(i);
}

} // namespace troupe

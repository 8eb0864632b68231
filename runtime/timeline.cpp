#include "runtime/timeline.hpp"

#include <algorithm>
#include <cstdio>
#include <map>

namespace troupe {

namespace {

constexpr const char* invoke_prefix = "invoke_agent ";

bool starts_with(const std::string& s, const char* prefix) {
  return s.rfind(prefix, 0) == 0;
}

std::string seconds(int64_t ns) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2fs", static_cast<double>(ns) / 1e9);
  return buf;
}

std::string pad(std::string s, size_t n) {
  if (s.size() > n)
    return s.substr(0, n - 1) + "~";
  s.resize(n, ' ');
  return s;
}

std::string right(const std::string& s, size_t n) {
  return s.size() >= n ? s : std::string(n - s.size(), ' ') + s;
}

} // namespace

timeline::timeline() : data_(std::make_shared<data>()) {
  // nop
}

trace_listener timeline::listener() const {
  auto self = *this;
  return [self](const json& record) mutable { self.add(record); };
}

void timeline::add(const json& rec) {
  if (!rec.is_object() || rec.value("type", "") != "span")
    return;
  span s;
  try {
    s.id = rec.value("span_id", "");
    s.parent = rec.value("parent_span_id", "");
    s.name = rec.value("name", "");
    s.start_ns = rec.value("start_ns", int64_t{0});
    s.end_ns = rec.value("end_ns", int64_t{0});
    s.status = rec.value("status", "");
    if (rec.contains("attributes") && rec["attributes"].is_object())
      s.attributes = rec["attributes"];
  } catch (const json::exception&) {
    return; // a record of an unexpected shape has no place on the chart
  }
  std::lock_guard<std::mutex> guard{data_->mtx};
  data_->spans.push_back(std::move(s));
}

std::vector<timeline_bar> timeline::bars() const {
  std::vector<span> spans;
  {
    std::lock_guard<std::mutex> guard{data_->mtx};
    spans = data_->spans;
  }
  std::map<std::string, size_t> by_id;
  for (size_t i = 0; i < spans.size(); ++i)
    by_id.emplace(spans[i].id, i);
  std::vector<timeline_bar> out;
  std::map<std::string, size_t> bar_of; // invoke span id -> bar
  for (const auto& s : spans) {
    if (!starts_with(s.name, invoke_prefix))
      continue;
    timeline_bar b;
    b.agent = s.name.substr(std::char_traits<char>::length(invoke_prefix));
    b.team = s.attributes.is_object() && s.attributes.contains("troupe.team.pattern");
    b.start_ns = s.start_ns;
    b.end_ns = s.end_ns;
    b.status = s.attributes.value("troupe.run.status",
                                  s.status == "ok" ? "complete" : s.status);
    bar_of.emplace(s.id, out.size());
    out.push_back(std::move(b));
  }
  // Attribute each model and tool call to the nearest enclosing run.
  for (const auto& s : spans) {
    bool model = starts_with(s.name, "chat ");
    bool tool = starts_with(s.name, "execute_tool ");
    if (!model && !tool)
      continue;
    auto parent = s.parent;
    for (int hops = 0; hops < 64 && !parent.empty(); ++hops) {
      if (auto b = bar_of.find(parent); b != bar_of.end()) {
        auto& bar = out[b->second];
        if (model) {
          ++bar.model_calls;
          bar.input_tokens += s.attributes.value("gen_ai.usage.input_tokens", int64_t{0});
          bar.output_tokens += s.attributes.value("gen_ai.usage.output_tokens", int64_t{0});
        } else {
          ++bar.tool_calls;
        }
        break;
      }
      auto p = by_id.find(parent);
      if (p == by_id.end())
        break;
      parent = spans[p->second].parent;
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.start_ns < b.start_ns;
  });
  return out;
}

timeline_totals timeline::totals() const {
  timeline_totals t;
  auto bs = bars();
  if (bs.empty())
    return t;
  int64_t first = bs.front().start_ns, last = 0;
  std::map<std::string, bool> agents;
  for (const auto& b : bs) {
    first = std::min(first, b.start_ns);
    last = std::max(last, b.end_ns);
    agents[b.agent] = true;
    ++t.runs;
    t.model_calls += b.model_calls;
    t.tool_calls += b.tool_calls;
    t.input_tokens += b.input_tokens;
    t.output_tokens += b.output_tokens;
    if (b.status != "complete")
      ++t.incomplete;
  }
  t.wall_ns = last - first;
  t.agents = static_cast<int64_t>(agents.size());
  return t;
}

std::string timeline::render(size_t width, size_t max_rows) const {
  auto bs = bars();
  if (bs.empty())
    return "(no runs traced)\n";
  width = std::max<size_t>(width, 10);
  int64_t t0 = bs.front().start_ns, t1 = t0;
  for (const auto& b : bs)
    t1 = std::max(t1, b.end_ns);
  auto span_ns = std::max<int64_t>(t1 - t0, 1);
  // One row per agent, in order of its first run.
  std::vector<std::string> order;
  std::map<std::string, std::vector<const timeline_bar*>> rows;
  size_t label = 5;
  for (const auto& b : bs) {
    if (rows.find(b.agent) == rows.end())
      order.push_back(b.agent);
    rows[b.agent].push_back(&b);
    label = std::max(label, b.agent.size());
  }
  label = std::min<size_t>(label, 28);
  auto column = [&](int64_t t) {
    auto c = static_cast<size_t>((t - t0) * static_cast<int64_t>(width) / span_ns);
    return std::min(c, width - 1);
  };
  std::string out = pad("agent", label) + "  " + pad("0s", width / 2)
                    + right(seconds(t1 - t0), width - width / 2)
                    + "  runs steps tools    busy\n";
  size_t shown = 0;
  for (const auto& name : order) {
    if (shown == max_rows)
      break;
    ++shown;
    std::string chart(width, ' ');
    int64_t busy = 0, steps = 0, tools = 0;
    for (const auto* b : rows[name]) {
      char mark = b->status != "complete" ? 'x' : b->team ? '=' : '#';
      for (auto c = column(b->start_ns); c <= column(b->end_ns); ++c)
        chart[c] = mark;
      busy += b->end_ns - b->start_ns;
      steps += b->model_calls;
      tools += b->tool_calls;
    }
    out += pad(name, label) + " |" + chart + "|"
           + right(std::to_string(rows[name].size()), 5)
           + right(std::to_string(steps), 6) + right(std::to_string(tools), 6)
           + right(seconds(busy), 8) + "\n";
  }
  if (order.size() > shown)
    out += "... and " + std::to_string(order.size() - shown) + " more agents\n";
  auto t = totals();
  out += "totals: " + seconds(t.wall_ns) + " wall, " + std::to_string(t.agents)
         + " agents, " + std::to_string(t.runs) + " runs ("
         + std::to_string(t.incomplete) + " not complete), "
         + std::to_string(t.model_calls) + " model calls, "
         + std::to_string(t.tool_calls) + " tool calls, "
         + std::to_string(t.input_tokens) + " input + "
         + std::to_string(t.output_tokens) + " output tokens\n";
  return out;
}

} // namespace troupe

#include "runtime/sse_parser.hpp"

#include <cctype>

namespace troupe {

void sse_parser::feed(std::string_view bytes, const event_handler& on_event) {
  // A UTF-8 byte order mark may open the stream; it is not part of a field.
  static constexpr std::string_view bom = "\xEF\xBB\xBF";
  for (char c : bytes) {
    if (!started_) {
      if (c == bom[bom_matched_]) {
        if (++bom_matched_ == bom.size())
          started_ = true;
        continue;
      }
      started_ = true;
      line_.append(bom.substr(0, bom_matched_)); // not a BOM after all
    }
    if (after_cr_) {
      after_cr_ = false;
      if (c == '\n')
        continue;
    }
    if (c == '\r') {
      after_cr_ = true;
      process_line(on_event);
    } else if (c == '\n') {
      process_line(on_event);
    } else {
      line_.push_back(c);
    }
  }
}

void sse_parser::finish() {
  line_.clear();
  data_.clear();
  event_.clear();
  has_data_ = false;
  after_cr_ = false;
}

void sse_parser::process_line(const event_handler& on_event) {
  std::string line;
  line.swap(line_);
  if (line.empty()) {
    if (has_data_) {
      sse_event ev;
      ev.event = std::move(event_);
      ev.data = std::move(data_);
      ev.id = last_id_;
      if (!ev.data.empty() && ev.data.back() == '\n')
        ev.data.pop_back();
      event_.clear();
      data_.clear();
      has_data_ = false;
      if (on_event)
        on_event(std::move(ev));
    } else {
      event_.clear();
    }
    return;
  }
  if (line.front() == ':')
    return; // a comment
  std::string_view field{line};
  std::string_view value;
  if (auto colon = field.find(':'); colon != std::string_view::npos) {
    value = field.substr(colon + 1);
    field = field.substr(0, colon);
    if (!value.empty() && value.front() == ' ')
      value.remove_prefix(1);
  }
  if (field == "data") {
    data_.append(value);
    data_.push_back('\n');
    has_data_ = true;
  } else if (field == "event") {
    event_.assign(value);
  } else if (field == "id") {
    if (value.find('\0') == std::string_view::npos)
      last_id_.assign(value);
  } else if (field == "retry") {
    if (!value.empty() && value.size() < 19) {
      long long ms = 0;
      for (char c : value) {
        if (!std::isdigit(static_cast<unsigned char>(c)))
          return;
        ms = ms * 10 + (c - '0');
      }
      retry_ms_ = ms;
    }
  }
  // Any other field is ignored.
}

} // namespace troupe

#include "support/otlp_receiver.hpp"

namespace troupe::test {

otlp_receiver::otlp_receiver()
  : server_([this](const test_http_request& req) { return on_request(req); }) {
}

std::string otlp_receiver::endpoint() const {
  return "http://127.0.0.1:" + std::to_string(server_.port()) + "/v1/traces";
}

void otlp_receiver::script(std::vector<test_http_action> actions) {
  std::lock_guard<std::mutex> guard{mtx_};
  for (auto& a : actions)
    script_.push_back(std::move(a));
}

void otlp_receiver::answer_rest(test_http_action action) {
  std::lock_guard<std::mutex> guard{mtx_};
  rest_ = std::move(action);
}

std::vector<test_http_request> otlp_receiver::requests() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return requests_;
}

std::vector<nlohmann::json> otlp_receiver::bodies() const {
  std::vector<nlohmann::json> out;
  for (const auto& req : requests()) {
    auto doc = nlohmann::json::parse(req.body, nullptr, false);
    out.push_back(doc.is_discarded() ? nlohmann::json(req.body) : doc);
  }
  return out;
}

std::vector<nlohmann::json> otlp_receiver::spans() const {
  std::vector<nlohmann::json> out;
  for (const auto& body : bodies()) {
    if (!body.is_object() || !body.contains("resourceSpans"))
      continue;
    for (const auto& rs : body["resourceSpans"])
      for (const auto& ss : rs.value("scopeSpans", nlohmann::json::array()))
        for (const auto& span : ss.value("spans", nlohmann::json::array()))
          out.push_back(span);
  }
  return out;
}

bool otlp_receiver::wait_requests(size_t n,
                                  std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock{mtx_};
  return arrived_.wait_for(lock, timeout,
                           [&] { return requests_.size() >= n; });
}

test_http_action otlp_receiver::on_request(const test_http_request& req) {
  std::lock_guard<std::mutex> guard{mtx_};
  requests_.push_back(req);
  arrived_.notify_all();
  if (script_.empty())
    return rest_;
  auto next = std::move(script_.front());
  script_.pop_front();
  return next;
}

nlohmann::json otlp_attribute(const nlohmann::json& item,
                              const std::string& key) {
  for (const auto& kv : item.value("attributes", nlohmann::json::array()))
    if (kv.value("key", "") == key)
      return kv.value("value", nlohmann::json{});
  return nullptr;
}

} // namespace troupe::test

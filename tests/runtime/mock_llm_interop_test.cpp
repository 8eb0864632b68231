// Interop with a third-party OpenAI-compatible server: @dwmkerr/mock-llm from
// npm, which tests/interop/mock-llm/run.sh installs, starts on 127.0.0.1 with
// tests/interop/mock-llm/config.yaml and names in MOCK_LLM_BASE_URL. Hidden
// ([.]): only the interop.mock_llm CTest entry runs these, with the server up.

#include <chrono>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "runtime/runtime.hpp"

using namespace std::chrono_literals;
using troupe::json;
using troupe::run_status;

namespace {

std::string mock_llm_url() {
  const char* url = std::getenv("MOCK_LLM_BASE_URL");
  if (url == nullptr || *url == '\0')
    FAIL("MOCK_LLM_BASE_URL is not set: run these tests through ctest -R "
         "interop.mock_llm, which starts the server");
  return url;
}

/// A runtime whose "openai:mock-model" is the mock-llm server.
std::unique_ptr<troupe::runtime> make_runtime(bool stream,
                                              troupe::trace_listener listener) {
  troupe::runtime_config cfg;
  cfg.load_middleman = false;
  troupe::model_settings s;
  s.base_url = mock_llm_url();
  s.stream = stream;
  cfg.models["openai:mock-model"] = s;
  cfg.trace_listeners.push_back(std::move(listener));
  return std::make_unique<troupe::runtime>(cfg);
}

/// The weather tool the server's rules call.
troupe::tool_definition weather_tool(std::shared_ptr<std::vector<json>> seen) {
  troupe::tool_definition def;
  def.name = "get_weather";
  def.description = "The current weather in a city.";
  def.parameters = {{"type", "object"},
                    {"properties", {{"city", {{"type", "string"}}}}},
                    {"required", {"city"}}};
  def.blocking = false;
  def.fn = [seen](const json& args, const troupe::tool_context&) -> json {
    seen->push_back(args);
    return {{"city", args.at("city")}, {"temperature", "18C"}};
  };
  return def;
}

} // namespace

TEST_CASE("an agent completes a tool-calling run against mock-llm",
          "[.][mock-llm]") {
  auto calls = std::make_shared<std::vector<json>>();
  auto rt = make_runtime(false, [](const json&) {});
  rt->tools().add(weather_tool(calls));
  troupe::agent_spec spec;
  spec.name = "forecaster";
  spec.model = "openai:mock-model";
  spec.tools = {"get_weather"};
  spec.max_steps = 4;
  troupe::run_options opts;
  opts.timeout = 30s;
  auto result = rt->run(rt->spawn_agent(spec),
                        "What is the weather in Paris?", opts);
  INFO(result.error);
  REQUIRE(result.status == run_status::complete);
  CHECK(result.answer == "It is 18C in Paris.");
  // The tool ran once, with the arguments the server sent as a JSON string.
  REQUIRE(calls->size() == 1);
  CHECK((*calls)[0] == json{{"city", "Paris"}});
  REQUIRE(result.steps.size() == 2);
  CHECK(result.steps[0].reply.tool_calls.at(0).id == "call_weather_1");
  CHECK(result.steps[0].tool_results.at(0).ok);
  // Usage as the server reported it: 20 + 40 in, 10 + 7 out.
  CHECK(result.usage.input_tokens == 60);
  CHECK(result.usage.output_tokens == 17);
}

TEST_CASE("a streamed text reply from mock-llm arrives in increments and "
          "whole",
          "[.][mock-llm]") {
  std::mutex mtx;
  std::vector<std::string> pieces;
  auto rt = make_runtime(true, [&](const json& rec) {
    if (rec.value("name", "") != "model.delta")
      return;
    std::lock_guard<std::mutex> guard{mtx};
    pieces.push_back(rec["attributes"].value("troupe.delta.text", ""));
  });
  troupe::agent_spec spec;
  spec.name = "streamer";
  spec.model = "openai:mock-model";
  troupe::run_options opts;
  opts.timeout = 30s;
  auto result = rt->run(rt->spawn_agent(spec), "Please stream me a reply.",
                        opts);
  rt->flush_trace();
  INFO(result.error);
  REQUIRE(result.status == run_status::complete);
  CHECK(result.answer == "one two three four five");
  std::lock_guard<std::mutex> guard{mtx};
  // The server sends 4 characters a chunk: several increments, which add
  // up to the answer.
  CHECK(pieces.size() >= 5);
  std::string joined;
  for (const auto& p : pieces)
    joined += p;
  CHECK(joined == result.answer);
}

// A downstream program built against an installed troupe: it sees only the
// installed headers and links troupe::troupe through find_package(troupe).
// It does what the README's tour does: a tool, an agent, a run.

#include <cstdlib>
#include <iostream>

#include "actors/scripted_model.hpp"
#include "runtime/runtime.hpp"

int main() {
  troupe::runtime_config cfg;
  cfg.load_middleman = false;
  troupe::runtime rt{cfg};

  troupe::tool_definition weather;
  weather.name = "weather";
  weather.description = "Current temperature in a city";
  weather.parameters = {{"type", "object"},
                        {"properties", {{"city", {{"type", "string"}}}}},
                        {"required", {"city"}},
                        {"additionalProperties", false}};
  weather.fn = [](const troupe::json& args, const troupe::tool_context&) {
    return troupe::json{{"city", args["city"]}, {"celsius", 21}};
  };
  rt.tools().add(weather);

  auto script = troupe::model_script::parse(
    troupe::json::parse(R"({"rules": [
      {"step": 1, "reply": {"tool_calls": [
        {"name": "weather", "arguments": {"city": "Lyon"}}]}},
      {"reply": {"content": "It is {{tool:weather:/celsius}} C in {{tool:weather:/city}}."}}
    ]})"),
    "consumer.json");
  rt.add_model("scripted-consumer",
               troupe::spawn_scripted_model(rt.system(), script));

  troupe::agent_spec spec;
  spec.name = "assistant";
  spec.model = "scripted-consumer";
  spec.tools = {"weather"};
  auto agent = rt.spawn_agent(spec);
  auto result = rt.run(agent, "How warm is it in Lyon?");
  if (result.status != troupe::run_status::complete) {
    std::cerr << "consumer: run ended " << troupe::to_string(result.status)
              << ": " << result.error << '\n';
    return EXIT_FAILURE;
  }
  std::cout << "consumer ok: " << result.answer << std::endl;
  return EXIT_SUCCESS;
}

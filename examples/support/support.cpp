// The support agent in C++: the same agent as support.swarm.json, built with
// the troupe API instead of a swarm file.
//
//   ./support_example ["goal"]

#include <cstdlib>
#include <iostream>
#include <string>

#include "runtime/builtin_tools.hpp"
#include "runtime/runtime.hpp"

int main(int argc, char** argv) {
  troupe::log_to_stderr(); // stdout is the example's own output
  std::string dir = TROUPE_EXAMPLE_DIR;
  std::string goal = argc > 1 ? argv[1]
                              : "A customer asks: what is your refund policy, "
                                "and how much is 15% of 240 EUR?";
  troupe::runtime_config cfg;
  // TROUPE_MODEL=openai:gpt-4o-mini (or anthropic:...) runs it on a real model.
  cfg.model_override = troupe::model_override_from_env();
  cfg.trace_path = "support-trace.jsonl";
  troupe::runtime rt{cfg};

  // Tools: name, description, JSON Schema, capabilities, version, body.
  rt.tools().add(troupe::calculator_tool());
  rt.tools().add(troupe::clock_tool());
  rt.tools().add(troupe::kv_lookup_tool(dir + "/knowledge.json"));

  troupe::agent_spec spec;
  spec.name = "support";
  spec.system_prompt = "You are the support agent of Acme Outfitters. Look "
                       "policies up in the knowledge base (kv_lookup) instead "
                       "of guessing, use the calculator for any arithmetic, "
                       "and answer briefly.";
  spec.model = "scripted:" + dir + "/support.script.json";
  spec.tools = {"calculator", "kv_lookup", "clock"};
  spec.max_steps = 6;
  auto agent = rt.spawn_agent(spec);

  auto result = rt.run(agent, goal);
  for (const auto& step : result.steps) {
    std::cout << "step " << step.index << ": ";
    if (step.reply.tool_calls.empty())
      std::cout << "final answer\n";
    for (const auto& r : step.tool_results)
      std::cout << "\n  " << r.name << " -> "
                << (r.ok ? r.content.value.dump() : r.error.message);
    if (!step.tool_results.empty())
      std::cout << "\n";
  }
  std::cout << "\n" << result.answer << "\n\nstatus: "
            << troupe::to_string(result.status) << ", tokens: "
            << result.usage.input_tokens << " in / "
            << result.usage.output_tokens << " out, trace: "
            << cfg.trace_path << "\n";
  return result.status == troupe::run_status::complete ? EXIT_SUCCESS
                                                       : EXIT_FAILURE;
}

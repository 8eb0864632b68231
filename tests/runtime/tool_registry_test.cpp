#include "runtime/tool_registry.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <thread>
#include <vector>

#include "runtime/json_schema.hpp"

using namespace troupe;
using Catch::Matchers::Contains;

namespace {

/// A minimal valid tool whose body echoes its name and version.
tool_definition make_tool(const std::string& name, const std::string& version,
                          std::vector<std::string> capabilities = {}) {
  tool_definition def;
  def.name = name;
  def.version = version;
  def.description = "test tool " + name;
  def.parameters = {{"type", "object"},
                    {"properties", {{"x", {{"type", "integer"}}}}},
                    {"additionalProperties", false}};
  def.capabilities = std::move(capabilities);
  def.fn = [name, version](const json&, const tool_context&) -> json {
    return {{"name", name}, {"version", version}};
  };
  return def;
}

std::string add_error(tool_registry& reg, tool_definition def) {
  try {
    reg.add(std::move(def));
  } catch (const tool_registry_error& e) {
    return e.what();
  }
  FAIL("add succeeded");
  return {};
}

/// "name@version" of each tool, in order.
std::vector<std::string> labels(const std::vector<tool_ptr>& tools) {
  std::vector<std::string> out;
  for (const auto& t : tools)
    out.push_back(t->definition.name + "@" + t->definition.version);
  return out;
}

} // namespace

TEST_CASE("compare_versions compares dotted versions numerically",
          "[registry]") {
  CHECK(compare_versions("1.10.0", "1.9.3") > 0);
  CHECK(compare_versions("1.9.3", "1.10.0") < 0);
  CHECK(compare_versions("1.0", "1.0.0") == 0);
  CHECK(compare_versions("01.2", "1.2") == 0);
  CHECK(compare_versions("2", "1.99.99") > 0);
  CHECK(compare_versions("1.0.0-beta", "1.0.0") < 0);
  CHECK(compare_versions("1.0.0-alpha", "1.0.0-beta") < 0);
  CHECK(compare_versions("1.123456789012345678901234567890", "1.9") > 0);
  CHECK(compare_versions("3.1.4", "3.1.4") == 0);
}

TEST_CASE("an added tool can be found and describes itself", "[registry]") {
  tool_registry reg;
  auto added = reg.add(make_tool("calc", "1.0.0", {"math"}));
  REQUIRE(added != nullptr);
  auto found = reg.find("calc");
  REQUIRE(found == added);
  CHECK(reg.find("nope") == nullptr);
  auto spec = found->spec();
  CHECK(spec.name == "calc");
  CHECK(spec.description == "test tool calc");
  CHECK(spec.parameters.value == found->definition.parameters);
  REQUIRE(found->schema != nullptr);
  CHECK(found->schema->validate(json{{"x", 1}}).empty());
  CHECK(found->schema->first_error(json{{"x", "1"}})
        == "/x: type: expected integer, got string");
  CHECK(found->definition.fn(json::object(), tool_context{})
        == json{{"name", "calc"}, {"version", "1.0.0"}});
}

TEST_CASE("find picks the highest version or the exact one", "[registry]") {
  tool_registry reg;
  reg.add(make_tool("calc", "1.9.3"));
  reg.add(make_tool("calc", "1.10.0"));
  reg.add(make_tool("calc", "1.2"));
  auto best = reg.find("calc");
  REQUIRE(best != nullptr);
  CHECK(best->definition.version == "1.10.0");
  auto exact = reg.find("calc", "1.9.3");
  REQUIRE(exact != nullptr);
  CHECK(exact->definition.version == "1.9.3");
  auto equal = reg.find("calc", "1.2.0");
  REQUIRE(equal != nullptr);
  CHECK(equal->definition.version == "1.2");
  CHECK(reg.find("calc", "2.0.0") == nullptr);
  CHECK(labels(reg.all())
        == std::vector<std::string>{"calc@1.2", "calc@1.9.3", "calc@1.10.0"});
}

TEST_CASE("find_by_capability orders preferred, then version, then name",
          "[registry]") {
  tool_registry reg;
  reg.add(make_tool("beta", "2.0.0", {"math"}));
  reg.add(make_tool("alpha", "1.0.0", {"math", "time"}));
  reg.add(make_tool("alpha", "3.0.0", {"math"}));
  reg.add(make_tool("gamma", "2.0.0", {"math"}));
  reg.add(make_tool("clock", "9.0.0", {"time"}));
  CHECK(labels(reg.find_by_capability("math"))
        == std::vector<std::string>{"alpha@3.0.0", "beta@2.0.0", "gamma@2.0.0",
                                    "alpha@1.0.0"});
  CHECK(labels(reg.find_by_capability("math", "1.0"))
        == std::vector<std::string>{"alpha@1.0.0", "alpha@3.0.0", "beta@2.0.0",
                                    "gamma@2.0.0"});
  CHECK(labels(reg.find_by_capability("time"))
        == std::vector<std::string>{"clock@9.0.0", "alpha@1.0.0"});
  CHECK(reg.find_by_capability("weather").empty());
}

TEST_CASE("a duplicate name and version is rejected", "[registry]") {
  tool_registry reg;
  reg.add(make_tool("calc", "1.0.0"));
  auto text = add_error(reg, make_tool("calc", "1.0.0"));
  CHECK_THAT(text, Contains("tool 'calc' version 1.0.0: already registered"));
  CHECK_THAT(add_error(reg, make_tool("calc", "1.0")),
             Contains("tool 'calc' version 1.0: already registered"));
  CHECK(reg.all().size() == 1);
  CHECK_NOTHROW(reg.add(make_tool("calc", "1.0.1")));
  CHECK_NOTHROW(reg.add(make_tool("other", "1.0.0")));
}

TEST_CASE("a bad schema is rejected naming the tool and the keyword",
          "[registry]") {
  tool_registry reg;
  auto def = make_tool("calc", "1.0.0");
  def.parameters["properties"]["x"]["minimum"] = "zero";
  CHECK_THAT(add_error(reg, def),
             Contains("tool 'calc' version 1.0.0: bad parameters schema: "
                      "schema /properties/x/minimum: must be a number"));
  def.parameters = {{"type", "string"}};
  CHECK_THAT(add_error(reg, def),
             Contains("tool 'calc' version 1.0.0: parameters must be an "
                      "object schema"));
  def.parameters = json::array();
  CHECK_THAT(add_error(reg, def), Contains("tool 'calc'"));
  CHECK(reg.find("calc") == nullptr);
}

TEST_CASE("a tool without name, body, version or timeout is rejected",
          "[registry]") {
  tool_registry reg;
  auto nameless = make_tool("", "1.0.0");
  CHECK_THAT(add_error(reg, nameless), Contains("the name is empty"));
  auto bodiless = make_tool("calc", "1.0.0");
  bodiless.fn = nullptr;
  CHECK_THAT(add_error(reg, bodiless),
             Contains("tool 'calc' version 1.0.0: it has no function to run"));
  CHECK_THAT(add_error(reg, make_tool("calc", "")),
             Contains("the version must be dotted numbers"));
  CHECK_THAT(add_error(reg, make_tool("calc", "1..2")),
             Contains("the version must be dotted numbers"));
  auto instant = make_tool("calc", "1.0.0");
  instant.timeout = std::chrono::milliseconds{0};
  CHECK_THAT(add_error(reg, instant), Contains("the timeout must be positive"));
  CHECK(reg.all().empty());
}

TEST_CASE("concurrent adds all land", "[registry]") {
  tool_registry reg;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&reg, t] {
      for (int k = 0; k < 25; ++k)
        reg.add(make_tool("tool" + std::to_string(t), "1." + std::to_string(k),
                          {"shared"}));
    });
  for (auto& th : threads)
    th.join();
  CHECK(reg.all().size() == 100);
  CHECK(reg.find_by_capability("shared").size() == 100);
  for (int t = 0; t < 4; ++t) {
    auto best = reg.find("tool" + std::to_string(t));
    REQUIRE(best != nullptr);
    CHECK(best->definition.version == "1.24");
  }
}

namespace {

tool_call keyed_call(std::string run, std::string agent, int32_t step,
                     json args) {
  tool_call call;
  call.ref.run_id = std::move(run);
  call.agent = std::move(agent);
  call.step = step;
  call.name = "pay";
  call.args = std::move(args);
  return call;
}

} // namespace

TEST_CASE("idempotency keys follow the tool's scope and fields",
          "[registry][idempotency]") {
  auto base = keyed_call("r1", "a", 1, {{"order", "A-1"}, {"amount", 5}});
  auto task = task_digest("refund A-1", json::object());
  idempotency_config call_scope;
  auto key = idempotency_key(call_scope, base, task);
  CHECK_THAT(key, Catch::Matchers::StartsWith("pay:"));

  SECTION("the same call gives the same key whatever the argument order") {
    auto again = base;
    again.args = json::parse(R"({"amount": 5, "order": "A-1"})");
    CHECK(idempotency_key(call_scope, again, task) == key);
  }
  SECTION("the call scope tells apart run, agent, task, step and arguments") {
    auto other_run = base;
    other_run.ref.run_id = "r2";
    auto other_agent = base;
    other_agent.agent = "b";
    auto other_step = base;
    other_step.step = 2;
    auto other_args = base;
    other_args.args.value["amount"] = 6;
    CHECK(idempotency_key(call_scope, other_run, task) != key);
    CHECK(idempotency_key(call_scope, other_agent, task) != key);
    CHECK(idempotency_key(call_scope, other_step, task) != key);
    CHECK(idempotency_key(call_scope, other_args, task) != key);
    // Two subtasks a team gives one member keep their calls apart.
    CHECK(idempotency_key(call_scope, base,
                          task_digest("refund A-2", json::object()))
          != key);
    CHECK(idempotency_key(call_scope, base,
                          task_digest("refund A-1", {{"note", "x"}}))
          != key);
  }
  SECTION("the run scope ignores agent, task and step") {
    idempotency_config run_scope;
    run_scope.scope = idempotency_scope::run;
    auto later = base;
    later.agent = "b";
    later.step = 7;
    CHECK(idempotency_key(run_scope, later, "other")
          == idempotency_key(run_scope, base, task));
    later.ref.run_id = "r2";
    CHECK(idempotency_key(run_scope, later, task)
          != idempotency_key(run_scope, base, task));
  }
  SECTION("the global scope with fields keys on the named arguments only") {
    idempotency_config global;
    global.scope = idempotency_scope::global;
    global.fields = {"order"};
    auto elsewhere = keyed_call("r9", "z", 4, {{"order", "A-1"}, {"amount", 99}});
    CHECK(idempotency_key(global, elsewhere)
          == idempotency_key(global, base, task));
    elsewhere.args.value["order"] = "A-2";
    CHECK(idempotency_key(global, elsewhere)
          != idempotency_key(global, base, task));
  }
  SECTION("a custom key function wins") {
    idempotency_config custom;
    custom.key = [](const tool_call& c) { return "mine:" + c.agent; };
    CHECK(idempotency_key(custom, base, task) == "mine:a");
  }
}

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

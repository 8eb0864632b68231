#include "runtime/builtin_tools.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "runtime/clock.hpp"
#include "runtime/json_schema.hpp"

using namespace troupe;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

json call(const tool_definition& def, const json& args) {
  return def.fn(args, tool_context{});
}

json calc(const std::string& expression) {
  static const auto tool = calculator_tool();
  auto out = call(tool, {{"expression", expression}});
  CHECK(out["expression"] == expression);
  return out["result"];
}

/// The message of the permanent tool_failure `expression` raises.
std::string calc_error(const std::string& expression) {
  static const auto tool = calculator_tool();
  try {
    auto out = call(tool, {{"expression", expression}});
    FAIL("'" << expression << "' evaluated to " << out.dump());
  } catch (const tool_failure& e) {
    CHECK(e.kind() == tool_error_kind::permanent);
    return e.what();
  }
  return {};
}

/// A fresh directory under the system temp dir, removed afterwards.
struct temp_dir {
  fs::path path = fs::temp_directory_path() / ("troupe-test-" + random_hex(8));

  temp_dir() {
    fs::create_directories(path);
  }

  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }

  std::string write(const std::string& name, const std::string& text) const {
    auto file = path / name;
    std::ofstream out(file, std::ios::binary);
    out << text;
    return file.string();
  }
};

std::string kv_error(const std::string& path) {
  try {
    kv_lookup_tool(path);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  FAIL("kv_lookup_tool accepted " << path);
  return {};
}

} // namespace

TEST_CASE("calculator follows precedence and associativity", "[tools]") {
  CHECK(calc("2 + 3 * 4") == 14);
  CHECK(calc("(2 + 3) * 4") == 20);
  CHECK(calc("10 - 4 - 3") == 3);
  CHECK(calc("100 / 10 / 5") == 2);
  CHECK(calc("2 ^ 3 ^ 2") == 512);
  CHECK(calc("-2 ^ 2") == -4);
  CHECK(calc("(-2) ^ 2") == 4);
  CHECK(calc("2 ^ -1") == 0.5);
  CHECK(calc("7 % 3") == 1);
  CHECK(calc("-7 % 3") == -1);
  CHECK(calc("2 * 3 % 4") == 2);
  CHECK(calc("+-+1") == -1);
  CHECK(calc("1 - -1") == 2);
  CHECK(calc(" \t1.5e3 + .5 ") == 1500.5);
  CHECK(calc("2E-2") == 0.02);
  CHECK(calc("3.") == 3);
}

TEST_CASE("calculator functions and constants", "[tools]") {
  CHECK(calc("sqrt(16) + abs(-3)") == 7);
  CHECK(calc("round(2.5)") == 3);
  CHECK(calc("round(-2.5)") == -3);
  CHECK(calc("floor(-1.5)") == -2);
  CHECK(calc("ceil(1.2)") == 2);
  CHECK(calc("min(3, 1, 2)") == 1);
  CHECK(calc("max(1, 2.5)") == 2.5);
  CHECK(calc("max(4)") == 4);
  CHECK(calc("max(min(5, 9), sqrt(2 ^ 6))") == 8);
  CHECK(calc("pi").get<double>() == Approx(3.141592653589793));
  CHECK(calc("e ^ 2").get<double>() == Approx(7.38905609893065));
  CHECK(calc("2 * pi").get<double>() == Approx(6.283185307179586));
}

TEST_CASE("calculator returns integral results as integers", "[tools]") {
  CHECK(calc("1 + 1").is_number_integer());
  CHECK(calc("9 / 3").is_number_integer());
  CHECK(calc("1 / 4").is_number_float());
  CHECK(calc("2 ^ 60").is_number_float());
}

TEST_CASE("calculator errors name the problem and position", "[tools]") {
  CHECK(calc_error("(1+2))") == "unexpected ')' at position 6");
  CHECK(calc_error("1 +") == "unexpected end of expression at position 4");
  CHECK(calc_error("2 # 3") == "unexpected '#' at position 3");
  CHECK(calc_error("1 2") == "unexpected '2' at position 3");
  CHECK(calc_error("1.2.3") == "unexpected '.' at position 4");
  CHECK(calc_error("3 \xC3\x97 4") == "unexpected '\xC3\x97' at position 3");
  CHECK(calc_error("(1") == "unexpected end of expression at position 3");
  CHECK(calc_error("   ") == "the expression is empty");
  CHECK(calc_error("4 / (2 - 2)") == "division by zero at position 3");
  CHECK(calc_error("5 % 0") == "modulo by zero at position 3");
  CHECK(calc_error("foo(1)")
        == "unknown function 'foo' at position 1; known functions: abs, ceil, "
           "floor, max, min, round, sqrt");
  CHECK(calc_error("1 + x") == "unknown name 'x' at position 5; known "
                               "constants: e, pi");
  CHECK(calc_error("sqrt(1, 2)") == "sqrt takes 1 argument, got 2 at position 1");
  CHECK(calc_error("max()") == "max takes at least 1 argument, got 0 at "
                               "position 1");
  CHECK(calc_error("sqrt(-4)") == "sqrt of the negative number -4.0 at "
                                  "position 1");
  CHECK(calc_error("(-8) ^ (1/3)")
        == "-8.0 ^ 0.3333333333333333 is not a real number at position 6");
  CHECK(calc_error("10 ^ 400") == "the result is not finite (overflow) at "
                                  "position 4");
  CHECK(calc_error("1e308 * 10") == "the result is not finite (overflow) at "
                                    "position 7");
  CHECK(calc_error("1e999") == "number '1e999' is out of range at position 1");
  CHECK(calc_error(".") == "malformed number '.' at position 1");
}

TEST_CASE("calculator bounds nesting at 200 levels", "[tools]") {
  CHECK(calc(std::string(200, '(') + "7" + std::string(200, ')')) == 7);
  CHECK(calc_error(std::string(201, '(') + "7" + std::string(201, ')'))
        == "the expression nests deeper than 200 levels at position 201");
  CHECK_THAT(calc_error(std::string(300, '-') + "1"),
             Contains("nests deeper than 200 levels"));
  std::string tower = "2";
  for (int k = 0; k < 300; ++k)
    tower += "^1";
  CHECK_THAT(calc_error(tower), Contains("nests deeper than 200 levels"));
}

TEST_CASE("kv_lookup returns stored values and lists known keys", "[tools]") {
  temp_dir dir;
  auto path = dir.write("kv.json",
                        R"({"alpha": 1, "beta": {"x": [1, 2]}, "gamma": "g"})");
  auto tool = kv_lookup_tool(path);
  CHECK(tool.name == "kv_lookup");
  CHECK(call(tool, {{"key", "beta"}})
        == json{{"key", "beta"}, {"found", true}, {"value", {{"x", {1, 2}}}}});
  CHECK(call(tool, {{"key", "gamma"}})["value"] == "g");
  try {
    call(tool, {{"key", "delta"}});
    FAIL("found delta");
  } catch (const tool_failure& e) {
    CHECK(e.kind() == tool_error_kind::permanent);
    CHECK(std::string{e.what()}
          == "no entry for key 'delta'; known keys: alpha, beta, gamma");
  }
}

TEST_CASE("kv_lookup lists at most 20 known keys", "[tools]") {
  temp_dir dir;
  json table;
  for (int k = 0; k < 25; ++k)
    table["k" + std::to_string(100 + k)] = k;
  auto tool = kv_lookup_tool(dir.write("many.json", table.dump()));
  try {
    call(tool, {{"key", "zzz"}});
    FAIL("found zzz");
  } catch (const tool_failure& e) {
    std::string text = e.what();
    CHECK_THAT(text, Contains("known keys: k100, k101,"));
    CHECK_THAT(text, Contains("k119, ... (5 more)"));
    CHECK_THAT(text, !Contains("k120"));
  }
}

TEST_CASE("kv_lookup rejects files it cannot use", "[tools]") {
  temp_dir dir;
  auto missing = (dir.path / "missing.json").string();
  CHECK_THAT(kv_error(missing), Contains("cannot open '" + missing + "'"));
  auto broken = dir.write("broken.json", "{\"a\": ");
  CHECK_THAT(kv_error(broken), Contains("'" + broken + "' is not valid JSON"));
  auto array = dir.write("array.json", "[1, 2]");
  CHECK_THAT(kv_error(array),
             Contains("'" + array + "' holds a JSON array, expected an object"));
  CHECK_THAT(kv_error(dir.path.string()), Contains("is a directory"));
}

TEST_CASE("clock returns the current UTC time", "[tools]") {
  auto before = now_ms();
  auto out = call(clock_tool(), json::object());
  auto after = now_ms();
  auto unix_ms = out["unix_ms"].get<int64_t>();
  CHECK(before <= unix_ms);
  CHECK(unix_ms <= after);
  auto utc = out["utc"].get<std::string>();
  REQUIRE(std::regex_match(utc,
                           std::regex{R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)"}));
  std::tm tm{};
  REQUIRE(std::sscanf(utc.c_str(), "%d-%d-%dT%d:%d:%dZ", &tm.tm_year,
                      &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
                      &tm.tm_sec)
          == 6);
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  CHECK(static_cast<int64_t>(timegm(&tm)) == unix_ms / 1000);
}

TEST_CASE("builtin tools register and their schemas judge arguments",
          "[tools]") {
  temp_dir dir;
  auto kv_path = dir.write("kv.json", R"({"a": 1})");
  tool_registry reg;
  reg.add(calculator_tool());
  reg.add(clock_tool());
  reg.add(kv_lookup_tool(kv_path));
  std::vector<std::string> names;
  for (const auto& t : reg.all())
    names.push_back(t->definition.name);
  CHECK(names == builtin_tool_names());
  REQUIRE(reg.find_by_capability("math").size() == 1);
  CHECK(reg.find_by_capability("math")[0]->definition.name == "calculator");
  CHECK(reg.find_by_capability("time")[0]->definition.name == "clock");
  CHECK(reg.find_by_capability("knowledge")[0]->definition.name == "kv_lookup");
  CHECK(reg.find_by_capability("lookup")[0]->definition.name == "kv_lookup");

  json_schema calc_schema{calculator_tool().parameters};
  CHECK(calc_schema.validate({{"expression", "2 * (3 + 4)"}}).empty());
  CHECK(calc_schema.first_error(json::object())
        == "(root): required: missing required property \"expression\"");
  CHECK(calc_schema.validate({{"expression", 5}}).at(0).rule == "type");
  CHECK(calc_schema.validate({{"expression", "1"}, {"x", 1}}).at(0).rule
        == "additionalProperties");
  CHECK(calc_schema.validate({{"expression", std::string(1001, '1')}})
          .at(0)
          .rule
        == "maxLength");

  json_schema kv_schema{kv_lookup_tool(kv_path).parameters};
  CHECK(kv_schema.validate({{"key", "a"}}).empty());
  CHECK(kv_schema.validate({{"key", ""}}).at(0).rule == "minLength");
  CHECK(kv_schema.validate({{"key", "a"}, {"limit", 1}}).at(0).pointer
        == "/limit");

  json_schema clock_schema{clock_tool().parameters};
  CHECK(clock_schema.validate(json::object()).empty());
  CHECK(clock_schema.validate({{"tz", "UTC"}}).at(0).rule
        == "additionalProperties");
  CHECK(clock_schema.validate(json::array()).at(0).rule == "type");
}

#include "runtime/json_schema.hpp"

#include <catch2/catch.hpp>

#include <limits>
#include <string>

using namespace troupe;
using Catch::Matchers::Contains;

namespace {

/// The one violation `schema` finds in `instance`.
schema_violation one_violation(const json& schema, const json& instance) {
  auto found = json_schema{schema}.validate(instance);
  INFO("schema: " << schema.dump());
  REQUIRE(found.size() == 1);
  return found.front();
}

/// Checks that `instance` fails exactly one rule, at `pointer`, and that the
/// message names both.
void expect_violation(const json& schema, const json& instance,
                      const std::string& pointer, const std::string& rule) {
  auto v = one_violation(schema, instance);
  CHECK(v.pointer == pointer);
  CHECK(v.rule == rule);
  CHECK_THAT(v.message, Contains((pointer.empty() ? "(root)" : pointer) + ": "
                                 + rule + ": "));
}

bool valid(const json& schema, const json& instance) {
  return json_schema{schema}.validate(instance).empty();
}

std::string schema_error_text(const json& schema) {
  try {
    json_schema compiled{schema};
  } catch (const schema_error& e) {
    return e.what();
  }
  FAIL("schema compiled: " << schema.dump());
  return {};
}

} // namespace

TEST_CASE("type accepts each named type and rejects the others", "[schema]") {
  CHECK(valid({{"type", "object"}}, json::object()));
  CHECK(valid({{"type", "array"}}, json::array()));
  CHECK(valid({{"type", "string"}}, "x"));
  CHECK(valid({{"type", "number"}}, 2.5));
  CHECK(valid({{"type", "number"}}, 2));
  CHECK(valid({{"type", "integer"}}, -7));
  CHECK(valid({{"type", "boolean"}}, false));
  CHECK(valid({{"type", "null"}}, nullptr));
  expect_violation({{"type", "object"}}, json::array(), "", "type");
  expect_violation({{"type", "array"}}, json::object(), "", "type");
  expect_violation({{"type", "string"}}, 1, "", "type");
  expect_violation({{"type", "number"}}, "1", "", "type");
  expect_violation({{"type", "boolean"}}, 0, "", "type");
  expect_violation({{"type", "null"}}, false, "", "type");
  auto v = one_violation({{"type", "integer"}}, "12");
  CHECK(v.message == "(root): type: expected integer, got string");
}

TEST_CASE("integer accepts integral floats, number accepts integers",
          "[schema]") {
  CHECK(valid({{"type", "integer"}}, 3.0));
  CHECK(valid({{"type", "integer"}}, json::parse("1e3")));
  CHECK(valid({{"type", "integer"}}, std::numeric_limits<uint64_t>::max()));
  expect_violation({{"type", "integer"}}, 3.5, "", "type");
  expect_violation({{"type", "integer"}}, true, "", "type");
  expect_violation({{"type", "integer"}},
                   std::numeric_limits<double>::infinity(), "", "type");
  expect_violation({{"type", "integer"}},
                   std::numeric_limits<double>::quiet_NaN(), "", "type");
}

TEST_CASE("a type list accepts any of its types", "[schema]") {
  json schema{{"type", {"string", "null"}}};
  CHECK(valid(schema, "x"));
  CHECK(valid(schema, nullptr));
  auto v = one_violation(schema, 1.5);
  CHECK(v.rule == "type");
  CHECK(v.message == "(root): type: expected string or null, got number");
}

TEST_CASE("properties validate members at nested pointers", "[schema]") {
  json schema = json::parse(R"({
    "type": "object",
    "properties": {"a": {"type": "object", "properties": {"b": {
      "type": "array", "items": {"type": "object", "properties": {
        "c": {"type": "string"}}}}}}}
  })");
  CHECK(valid(schema, json::parse(R"({"a": {"b": [{"c": "x"}, {}]}})")));
  CHECK(valid(schema, json::parse(R"({"other": 1})")));
  expect_violation(schema,
                   json::parse(R"({"a": {"b": [{}, {}, {}, {"c": 7}]}})"),
                   "/a/b/3/c", "type");
}

TEST_CASE("required reports a missing property at its object", "[schema]") {
  json schema = json::parse(R"({
    "type": "object", "required": ["name"],
    "properties": {"inner": {"type": "object", "required": ["id"]}}
  })");
  CHECK(valid(schema, json{{"name", "x"}}));
  auto v = one_violation(schema, json::object());
  CHECK(v.pointer == "");
  CHECK(v.rule == "required");
  CHECK(v.message == "(root): required: missing required property \"name\"");
  expect_violation(schema, json{{"name", "x"}, {"inner", json::object()}},
                   "/inner", "required");
}

TEST_CASE("additionalProperties false reports the extra property",
          "[schema]") {
  json schema = json::parse(R"({
    "type": "object", "properties": {"a": {}}, "additionalProperties": false
  })");
  CHECK(valid(schema, json{{"a", 1}}));
  auto v = one_violation(schema, json{{"a", 1}, {"zz", 2}});
  CHECK(v.pointer == "/zz");
  CHECK(v.rule == "additionalProperties");
  CHECK(v.message
        == "/zz: additionalProperties: property \"zz\" is not allowed; "
           "expected only \"a\"");
  CHECK(valid({{"additionalProperties", true}}, json{{"q", 1}}));
}

TEST_CASE("additionalProperties as a schema validates the extra properties",
          "[schema]") {
  json schema = json::parse(R"({
    "properties": {"a": {"type": "string"}},
    "additionalProperties": {"type": "integer"}
  })");
  CHECK(valid(schema, json{{"a", "x"}, {"n", 3}}));
  expect_violation(schema, json{{"a", "x"}, {"n", "3"}}, "/n", "type");
}

TEST_CASE("enum accepts only listed values, numbers by value", "[schema]") {
  json schema{{"enum", {"red", "green", 1, nullptr}}};
  CHECK(valid(schema, "red"));
  CHECK(valid(schema, 1.0));
  CHECK(valid(schema, nullptr));
  auto v = one_violation(schema, "purple");
  CHECK(v.rule == "enum");
  CHECK(v.message
        == "(root): enum: \"purple\" is not one of \"red\", \"green\", 1, "
           "null");
  expect_violation({{"properties", {{"c", {{"enum", {"x"}}}}}}},
                   json{{"c", "y"}}, "/c", "enum");
}

TEST_CASE("const accepts only the one value", "[schema]") {
  json schema{{"properties", {{"v", {{"const", {{"k", {1, 2}}}}}}}}};
  CHECK(valid(schema, json{{"v", {{"k", {1, 2}}}}}));
  expect_violation(schema, json{{"v", {{"k", {1, 3}}}}}, "/v", "const");
  auto v = one_violation({{"const", 3}}, 4);
  CHECK(v.message == "(root): const: 4 is not equal to the constant 3");
}

TEST_CASE("minimum and maximum are inclusive", "[schema]") {
  json schema{{"properties", {{"age", {{"minimum", 18}, {"maximum", 150}}}}}};
  CHECK(valid(schema, json{{"age", 18}}));
  CHECK(valid(schema, json{{"age", 150}}));
  CHECK(valid(schema, json{{"age", 18.0}}));
  auto low = one_violation(
    {{"properties", {{"age", {{"type", "integer"}, {"minimum", 18}}}}}},
    json{{"age", 3}});
  CHECK(low.pointer == "/age");
  CHECK(low.rule == "minimum");
  CHECK(low.message == "/age: minimum: 3 is less than the minimum 18");
  expect_violation(schema, json{{"age", 17.5}}, "/age", "minimum");
  expect_violation(schema, json{{"age", 150.01}}, "/age", "maximum");
  CHECK(valid({{"minimum", 1}}, "not a number"));
}

TEST_CASE("exclusiveMinimum and exclusiveMaximum are numeric and strict",
          "[schema]") {
  json schema{{"exclusiveMinimum", 0}, {"exclusiveMaximum", 1.5}};
  CHECK(valid(schema, 0.001));
  CHECK(valid(schema, 1));
  expect_violation(schema, 0, "", "exclusiveMinimum");
  expect_violation(schema, -3, "", "exclusiveMinimum");
  expect_violation(schema, 1.5, "", "exclusiveMaximum");
  auto v = one_violation(schema, 2);
  CHECK(v.message
        == "(root): exclusiveMaximum: 2 is not less than the exclusive "
           "maximum 1.5");
}

TEST_CASE("numeric bounds compare large integers exactly", "[schema]") {
  // 2^53 + 1 is not representable as a double; a double comparison would
  // call it equal to 2^53.
  json schema{{"maximum", 9007199254740992LL}};
  CHECK(valid(schema, 9007199254740992LL));
  expect_violation(schema, 9007199254740993LL, "", "maximum");
  CHECK(valid({{"minimum", -1}}, std::numeric_limits<uint64_t>::max()));
  expect_violation({{"maximum", 1.5}}, std::numeric_limits<uint64_t>::max(),
                   "", "maximum");
  expect_violation({{"minimum", 0.5}}, std::numeric_limits<int64_t>::min(),
                   "", "minimum");
  expect_violation({{"maximum", 10}}, 1e300, "", "maximum");
  expect_violation({{"minimum", 10}}, std::numeric_limits<double>::quiet_NaN(),
                   "", "minimum");
  expect_violation({{"maximum", 10}}, std::numeric_limits<double>::infinity(),
                   "", "maximum");
}

TEST_CASE("minLength and maxLength count code points", "[schema]") {
  json schema{{"minLength", 3}, {"maxLength", 5}};
  CHECK(valid(schema, "abc"));
  CHECK(valid(schema, "h\xC3\xA9llo"));                   // 6 bytes, 5 points
  CHECK(valid(schema, "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E")); // 9 bytes, 3
  expect_violation(schema, "ab", "", "minLength");
  expect_violation(schema, "abcdef", "", "maxLength");
  expect_violation({{"maxLength", 1}}, "\xF0\x9F\x98\x80\xF0\x9F\x98\x80", "",
                   "maxLength");
  CHECK(valid({{"maxLength", 1}}, "\xF0\x9F\x98\x80"));
  auto v = one_violation({{"properties", {{"n", {{"minLength", 2}}}}}},
                         json{{"n", "a"}});
  CHECK(v.message
        == "/n: minLength: \"a\" has 1 character, fewer than the minimum 2");
}

TEST_CASE("string length survives invalid UTF-8", "[schema]") {
  // Each invalid byte counts as one character; the message stays valid UTF-8.
  std::string bad = "\xFF\xFE\xC3";
  auto v = one_violation({{"maxLength", 2}}, bad);
  CHECK(v.rule == "maxLength");
  CHECK_THAT(v.message, Contains("has 3 characters"));
  CHECK_NOTHROW(json(v.message).dump());
  CHECK(valid({{"maxLength", 3}}, bad));
  CHECK(valid({{"minLength", 2}}, "\xED\xA0\x80")); // a surrogate: 3 bytes
}

TEST_CASE("pattern searches anywhere unless anchored", "[schema]") {
  CHECK(valid({{"pattern", "b"}}, "abc"));
  CHECK(valid({{"pattern", "^[0-9]+$"}}, "123"));
  expect_violation({{"pattern", "^b"}}, "abc", "", "pattern");
  auto v = one_violation(
    {{"properties", {{"code", {{"pattern", "^[0-9]+$"}}}}}},
    json{{"code", "12a"}});
  CHECK(v.pointer == "/code");
  CHECK(v.message
        == "/code: pattern: \"12a\" does not match the pattern ^[0-9]+$");
  CHECK(valid({{"pattern", "^x"}}, 5));
}

TEST_CASE("pattern handles long strings without exhausting the stack",
          "[schema]") {
  std::string text(200000, 'a');
  CHECK(valid({{"pattern", "(a|b)*$"}}, text));
  expect_violation({{"pattern", "^(a|b)*c$"}}, text, "", "pattern");
}

TEST_CASE("items applies to every element", "[schema]") {
  json schema{{"items", {{"type", "integer"}, {"minimum", 0}}}};
  CHECK(valid(schema, json::array()));
  CHECK(valid(schema, {1, 2, 3}));
  expect_violation(schema, {1, 2, -3}, "/2", "minimum");
  auto found = json_schema{schema}.validate({"x", 1, -1});
  REQUIRE(found.size() == 2);
  CHECK(found[0].pointer == "/0");
  CHECK(found[0].rule == "type");
  CHECK(found[1].pointer == "/2");
  CHECK(found[1].rule == "minimum");
}

TEST_CASE("minItems and maxItems bound the array size", "[schema]") {
  json schema{{"minItems", 1}, {"maxItems", 2}};
  CHECK(valid(schema, {1}));
  CHECK(valid(schema, {1, 2}));
  expect_violation(schema, json::array(), "", "minItems");
  auto v = one_violation(schema, {1, 2, 3});
  CHECK(v.rule == "maxItems");
  CHECK(v.message
        == "(root): maxItems: the array has 3 items, more than the maximum 2");
}

TEST_CASE("violations come in document order", "[schema]") {
  json schema = json::parse(R"({
    "type": "object", "required": ["z"],
    "properties": {
      "a": {"type": "string"},
      "b": {"type": "object", "properties": {"c": {"maximum": 1}}},
      "d": {"type": "array", "items": {"type": "integer"}}
    }
  })");
  auto found = json_schema{schema}.validate(
    json::parse(R"({"d": [1, "x"], "b": {"c": 5}, "a": 1})"));
  REQUIRE(found.size() == 4);
  CHECK(found[0].pointer == "");
  CHECK(found[0].rule == "required");
  CHECK(found[1].pointer == "/a");
  CHECK(found[2].pointer == "/b/c");
  CHECK(found[3].pointer == "/d/1");
  CHECK(json_schema{schema}.first_error(json::object())
        == "(root): required: missing required property \"z\"");
  CHECK(json_schema{schema}.first_error(json{{"z", 1}}).empty());
}

TEST_CASE("a value of the wrong type gets only the type violation",
          "[schema]") {
  json schema = json::parse(R"({
    "type": "object", "required": ["a", "b"], "minLength": 50,
    "properties": {"a": {"type": "string"}}, "enum": [{"a": "x"}]
  })");
  auto found = json_schema{schema}.validate(json::array({1, 2}));
  REQUIRE(found.size() == 1);
  CHECK(found[0].rule == "type");
  CHECK(found[0].message == "(root): type: expected object, got array");
}

TEST_CASE("pointer tokens escape ~ and /", "[schema]") {
  CHECK(append_pointer("", "a/b") == "/a~1b");
  CHECK(append_pointer("/x", "m~n") == "/x/m~0n");
  CHECK(append_pointer("", "~1") == "/~01");
  CHECK(append_pointer("", "") == "/");
  json schema{{"properties",
               {{"a/b", {{"properties", {{"m~n", {{"type", "string"}}}}}}}}}};
  expect_violation(schema, json{{"a/b", {{"m~n", 1}}}}, "/a~1b/m~0n", "type");
  expect_violation({{"additionalProperties", false}}, json{{"~/", 1}}, "/~0~1",
                   "additionalProperties");
}

TEST_CASE("annotations and unknown keywords are ignored", "[schema]") {
  json schema = json::parse(R"({
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "t", "description": "d", "default": 5, "examples": [1],
    "x-vendor": {"anything": true}, "type": "integer"
  })");
  CHECK(valid(schema, 5));
  expect_violation(schema, "5", "", "type");
}

TEST_CASE("boolean schemas accept or reject everything", "[schema]") {
  CHECK(valid(true, json{{"anything", {1, 2}}}));
  expect_violation(false, 1, "", "false");
  json schema{{"properties", {{"never", false}}}, {"items", true}};
  CHECK(valid(schema, json{{"other", 1}}));
  expect_violation(schema, json{{"never", nullptr}}, "/never", "false");
}

TEST_CASE("bad schemas are rejected naming the schema pointer", "[schema]") {
  CHECK_THAT(schema_error_text(
               {{"properties", {{"age", {{"minimum", "eighteen"}}}}}}),
             Contains("schema /properties/age/minimum: must be a number"));
  CHECK_THAT(schema_error_text({{"type", "strin"}}),
             Contains("schema /type: unknown type \"strin\""));
  CHECK_THAT(schema_error_text({{"type", {"string", 3}}}),
             Contains("schema /type/1: must be a type name string"));
  CHECK_THAT(schema_error_text({{"type", json::array()}}),
             Contains("schema /type: must name at least one type"));
  CHECK_THAT(schema_error_text(
               {{"properties", {{"code", {{"pattern", "([a-z]"}}}}}}),
             Contains("schema /properties/code/pattern: invalid regular "
                      "expression"));
  CHECK_THAT(schema_error_text({{"minLength", -1}}),
             Contains("schema /minLength: must be a non-negative integer"));
  CHECK_THAT(schema_error_text({{"maxItems", 1.5}}),
             Contains("schema /maxItems: must be a non-negative integer"));
  CHECK_THAT(schema_error_text({{"exclusiveMinimum", true}}),
             Contains("schema /exclusiveMinimum: must be a number"));
  CHECK_THAT(schema_error_text({{"required", {"a", 1}}}),
             Contains("schema /required/1: must be a property name string"));
  CHECK_THAT(schema_error_text({{"required", {"a", "a"}}}),
             Contains("schema /required/1: duplicate property name"));
  CHECK_THAT(schema_error_text({{"additionalProperties", "no"}}),
             Contains("schema /additionalProperties: must be a boolean or a "
                      "schema"));
  CHECK_THAT(schema_error_text(json::parse(R"({"items": [{"type": "x"}]})")),
             Contains("schema /items: must be a schema"));
  CHECK_THAT(schema_error_text({{"enum", "red"}}),
             Contains("schema /enum: must be an array"));
  CHECK_THAT(schema_error_text({{"properties", {{"a/b", 42}}}}),
             Contains("schema /properties/a~1b: must be a schema"));
  CHECK_THAT(schema_error_text(42), Contains("schema (root): must be a schema"));
  CHECK_THAT(schema_error_text({{"pattern",
                                 std::string(json_schema::max_pattern_length + 1,
                                             'a')}}),
             Contains("schema /pattern: pattern is longer than"));
}

TEST_CASE("deeply nested schemas and instances cannot crash", "[schema]") {
  std::string deep_schema;
  for (int k = 0; k < 10000; ++k)
    deep_schema += "{\"items\":";
  deep_schema += "{}" + std::string(10000, '}');
  CHECK_THAT(schema_error_text(json::parse(deep_schema)),
             Contains("nests deeper than"));
  auto deep_instance = json::parse(std::string(100000, '[')
                                   + std::string(100000, ']'));
  json_schema schema{{{"type", "array"},
                      {"items", {{"type", "array"}, {"items", {{"const", 1}}}}},
                      {"enum", {1}}}};
  auto found = schema.validate(deep_instance);
  REQUIRE(found.size() == 2);
  CHECK(found[0].rule == "enum");
  CHECK(found[0].message
        == "(root): enum: an array of 1 item is not one of 1");
  CHECK(found[1].pointer == "/0/0");
  CHECK(found[1].rule == "const");
}

TEST_CASE("keywords the validator does not implement are refused, not ignored",
          "[schema]") {
  for (auto keyword : {"anyOf", "oneOf", "allOf", "$ref", "patternProperties"}) {
    json schema{{"type", "object"},
                {"properties", {{"x", {{keyword, json::array()}}}}}};
    if (std::string{keyword} == "$ref" || std::string{keyword} == "patternProperties")
      schema["properties"]["x"][keyword] = json::object();
    CHECK_THROWS_WITH(json_schema{schema},
                      Catch::Contains(std::string{"/properties/x/"} + keyword)
                        && Catch::Contains("not supported"));
  }
  // Annotations stay accepted.
  CHECK_NOTHROW(json_schema{json{{"type", "string"}, {"format", "date-time"},
                                 {"description", "when"}}});
}

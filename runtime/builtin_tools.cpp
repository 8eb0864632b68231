#include "runtime/builtin_tools.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <stdexcept>
#include <utility>

#include "runtime/clock.hpp"

namespace troupe {

namespace {

[[noreturn]] void permanent(const std::string& what) {
  throw tool_failure(tool_error_kind::permanent, what);
}

/// The string argument `name`; the schema guarantees it, but bodies may be
/// called directly.
const std::string& string_arg(const json& args, const char* name) {
  auto i = args.is_object() ? args.find(name) : args.end();
  if (!args.is_object() || i == args.end() || !i->is_string())
    permanent(std::string{"argument '"} + name + "' must be a string");
  return i->get_ref<const std::string&>();
}

// -- calculator ---------------------------------------------------------------

/// A finite double as JSON would print it (locale-independent).
std::string format(double x) {
  return json(x).dump();
}

/// A recursive-descent evaluator over the grammar
///   sum     := product (('+' | '-') product)*
///   product := unary (('*' | '/' | '%') unary)*
///   unary   := ('+' | '-') unary | power
///   power   := primary ('^' unary)?
///   primary := number | name | name '(' [sum (',' sum)*] ')' | '(' sum ')'
/// Every recursive step passes a nesting guard, so depth is bounded.
class calculator {
public:
  static constexpr int max_nesting = 200;

  explicit calculator(const std::string& text) : text_(text) {
    // nop
  }

  double evaluate() {
    skip_space();
    if (at_end())
      permanent("the expression is empty");
    auto value = parse_sum();
    skip_space();
    if (!at_end())
      unexpected();
    return value;
  }

private:
  /// Counts one level of nesting, opened at `at`, for as long as it lives.
  class nesting {
  public:
    nesting(calculator& self, size_t at) : self_(self) {
      if (++self_.depth_ > max_nesting)
        self_.fail(at, "the expression nests deeper than "
                                 + std::to_string(max_nesting) + " levels");
    }
    ~nesting() {
      --self_.depth_;
    }
    nesting(const nesting&) = delete;
    nesting& operator=(const nesting&) = delete;

  private:
    calculator& self_;
  };

  [[noreturn]] void fail(size_t at, const std::string& what,
                         const std::string& hint = "") const {
    permanent(what + " at position " + std::to_string(at + 1) + hint);
  }

  /// The character at `pos_` as a message shows it: a whole UTF-8 sequence
  /// when there is one, else the byte in hex.
  std::string describe_here() const {
    auto lead = static_cast<unsigned char>(text_[pos_]);
    if (lead >= 0x20 && lead < 0x7F)
      return "'" + std::string(1, static_cast<char>(lead)) + "'";
    size_t len = lead >= 0xC2 && lead <= 0xDF   ? 2
                 : lead >= 0xE0 && lead <= 0xEF ? 3
                 : lead >= 0xF0 && lead <= 0xF4 ? 4
                                                : 0;
    bool whole = len > 0 && text_.size() - pos_ >= len;
    for (size_t k = 1; whole && k < len; ++k)
      whole = (static_cast<unsigned char>(text_[pos_ + k]) & 0xC0u) == 0x80u;
    if (whole)
      return "'" + text_.substr(pos_, len) + "'";
    static const char* hex = "0123456789ABCDEF";
    return std::string{"byte 0x"} + hex[lead >> 4] + hex[lead & 0xFu];
  }

  [[noreturn]] void unexpected() const {
    if (at_end())
      fail(pos_, "unexpected end of expression");
    fail(pos_, "unexpected " + describe_here());
  }

  bool at_end() const {
    return pos_ >= text_.size();
  }

  char peek() const {
    return at_end() ? '\0' : text_[pos_];
  }

  void skip_space() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n'
                         || peek() == '\r'))
      ++pos_;
  }

  static bool is_digit(char c) {
    return c >= '0' && c <= '9';
  }

  static bool is_name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  }

  double checked(double value, size_t at) const {
    if (!std::isfinite(value))
      fail(at, "the result is not finite (overflow)");
    return value;
  }

  double parse_sum() {
    auto value = parse_product();
    for (;;) {
      skip_space();
      auto op = peek();
      if (op != '+' && op != '-')
        return value;
      auto at = pos_++;
      auto rhs = parse_product();
      value = checked(op == '+' ? value + rhs : value - rhs, at);
    }
  }

  double parse_product() {
    auto value = parse_unary();
    for (;;) {
      skip_space();
      auto op = peek();
      if (op != '*' && op != '/' && op != '%')
        return value;
      auto at = pos_++;
      auto rhs = parse_unary();
      if (op == '*') {
        value = checked(value * rhs, at);
      } else if (rhs == 0) {
        fail(at, op == '/' ? "division by zero" : "modulo by zero");
      } else {
        value = checked(op == '/' ? value / rhs : std::fmod(value, rhs), at);
      }
    }
  }

  double parse_unary() {
    skip_space();
    auto op = peek();
    if (op != '+' && op != '-')
      return parse_power();
    nesting guard{*this, pos_++};
    auto value = parse_unary();
    return op == '-' ? -value : value;
  }

  double parse_power() {
    auto base = parse_primary();
    skip_space();
    if (peek() != '^')
      return base;
    auto at = pos_++;
    nesting guard{*this, at};
    auto exponent = parse_unary();
    auto value = std::pow(base, exponent);
    if (std::isnan(value))
      fail(at, format(base) + " ^ " + format(exponent) + " is not a real number");
    return checked(value, at);
  }

  double parse_primary() {
    skip_space();
    if (at_end())
      unexpected();
    auto c = peek();
    if (c == '(') {
      nesting guard{*this, pos_++};
      auto value = parse_sum();
      skip_space();
      if (peek() != ')')
        unexpected();
      ++pos_;
      return value;
    }
    if (is_digit(c) || c == '.')
      return parse_number();
    if (is_name_start(c))
      return parse_name();
    unexpected();
  }

  double parse_number() {
    auto start = pos_;
    bool digits = false;
    while (is_digit(peek())) {
      ++pos_;
      digits = true;
    }
    if (peek() == '.') {
      ++pos_;
      while (is_digit(peek())) {
        ++pos_;
        digits = true;
      }
    }
    if (!digits)
      fail(start, "malformed number '" + text_.substr(start, pos_ - start) + "'");
    if (peek() == 'e' || peek() == 'E') {
      auto sign = pos_ + 1 < text_.size()
                      && (text_[pos_ + 1] == '+' || text_[pos_ + 1] == '-')
                    ? 1
                    : 0;
      if (pos_ + 1 + sign < text_.size() && is_digit(text_[pos_ + 1 + sign])) {
        pos_ += 1 + sign;
        while (is_digit(peek()))
          ++pos_;
      }
    }
    auto literal = text_.substr(start, pos_ - start);
    double value = 0;
    auto first = text_.data() + start;
    auto last = text_.data() + pos_;
    auto [end, ec] = std::from_chars(first, last, value);
    if (ec == std::errc::result_out_of_range)
      fail(start, "number '" + literal + "' is out of range");
    if (ec != std::errc{} || end != last)
      fail(start, "malformed number '" + literal + "'");
    return value;
  }

  double parse_name() {
    auto start = pos_;
    while (is_name_start(peek()) || is_digit(peek()))
      ++pos_;
    auto name = text_.substr(start, pos_ - start);
    skip_space();
    if (peek() != '(') {
      if (name == "pi")
        return 3.14159265358979323846;
      if (name == "e")
        return 2.71828182845904523536;
      fail(start, "unknown name '" + name + "'", "; known constants: e, pi");
    }
    if (arity(name) == 0)
      fail(start, "unknown function '" + name + "'",
           "; known functions: abs, ceil, floor, max, min, round, sqrt");
    nesting guard{*this, pos_++};
    std::vector<double> args;
    skip_space();
    if (peek() != ')') {
      for (;;) {
        args.push_back(parse_sum());
        skip_space();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        if (peek() == ')')
          break;
        unexpected();
      }
    }
    ++pos_;
    return apply(name, args, start);
  }

  /// 1 for one-argument functions, -1 for variadic ones, 0 for unknown names.
  static int arity(const std::string& name) {
    if (name == "sqrt" || name == "abs" || name == "round" || name == "floor"
        || name == "ceil")
      return 1;
    if (name == "min" || name == "max")
      return -1;
    return 0;
  }

  double apply(const std::string& name, const std::vector<double>& args,
               size_t at) const {
    if (arity(name) == 1 && args.size() != 1)
      fail(at, name + " takes 1 argument, got " + std::to_string(args.size()));
    if (args.empty())
      fail(at, name + " takes at least 1 argument, got 0");
    auto x = args.front();
    if (name == "sqrt") {
      if (x < 0)
        fail(at, "sqrt of the negative number " + format(x));
      return std::sqrt(x);
    }
    if (name == "abs")
      return std::fabs(x);
    if (name == "round")
      return std::round(x);
    if (name == "floor")
      return std::floor(x);
    if (name == "ceil")
      return std::ceil(x);
    auto result = x;
    for (auto y : args)
      result = name == "min" ? std::min(result, y) : std::max(result, y);
    return result;
  }

  const std::string& text_;
  size_t pos_ = 0;
  int depth_ = 0;
};

/// A result as JSON: integral values within +-2^53 as integers.
json number_result(double x) {
  constexpr double exact = 9007199254740992.0;
  if (std::trunc(x) == x && std::fabs(x) <= exact)
    return static_cast<int64_t>(x);
  return x;
}

// -- kv_lookup ----------------------------------------------------------------

json load_table(const std::string& tool, const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw std::invalid_argument(tool + ": '" + path
                                + "' is a directory, expected a JSON file");
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw std::invalid_argument(tool + ": cannot open '" + path + "'");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad())
    throw std::invalid_argument(tool + ": cannot read '" + path + "'");
  json table;
  try {
    table = json::parse(text.str());
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(tool + ": '" + path
                                + "' is not valid JSON: " + e.what());
  }
  if (!table.is_object())
    throw std::invalid_argument(tool + ": '" + path + "' holds a JSON "
                                + std::string{table.type_name()}
                                + ", expected an object of key-value pairs");
  return table;
}

std::string known_keys(const json& table) {
  constexpr size_t max_listed = 20;
  if (table.empty())
    return "the table is empty";
  std::string out = "known keys: ";
  size_t listed = 0;
  for (const auto& entry : table.items()) {
    if (listed == max_listed) {
      out += ", ... (" + std::to_string(table.size() - listed) + " more)";
      break;
    }
    if (listed++ > 0)
      out += ", ";
    out += entry.key();
  }
  return out;
}

} // namespace

tool_definition calculator_tool() {
  tool_definition def;
  def.name = "calculator";
  def.description =
    "Evaluates an arithmetic expression and returns the number. "
    "Supports + - * / % ^ (power), parentheses, unary minus, the "
    "constants pi and e, and the functions sqrt, abs, round, floor, ceil, min "
    "and max, e.g. \"2 * (3 + 4) ^ 2\" or \"max(1.5, sqrt(16))\".";
  def.parameters = {
    {"type", "object"},
    {"properties",
     {{"expression",
       {{"type", "string"},
        {"minLength", 1},
        {"maxLength", 1000},
        {"description", "The arithmetic expression to evaluate."}}}}},
    {"required", {"expression"}},
    {"additionalProperties", false}};
  def.capabilities = {"math"};
  def.timeout = std::chrono::seconds{5};
  def.fn = [](const json& args, const tool_context&) -> json {
    const auto& expression = string_arg(args, "expression");
    calculator calc{expression};
    auto result = calc.evaluate();
    return {{"expression", expression}, {"result", number_result(result)}};
  };
  def.read_only = true;
  return def;
}

tool_definition kv_lookup_tool(std::string json_file_path) {
  auto table =
    std::make_shared<const json>(load_table("kv_lookup", json_file_path));
  tool_definition def;
  def.name = "kv_lookup";
  def.description =
    "Looks up the value stored under an exact key in a fixed key-value table "
    "of " + std::to_string(table->size()) + " entries and returns it.";
  def.parameters = {
    {"type", "object"},
    {"properties",
     {{"key",
       {{"type", "string"},
        {"minLength", 1},
        {"description", "The exact key to look up."}}}}},
    {"required", {"key"}},
    {"additionalProperties", false}};
  def.capabilities = {"lookup", "knowledge"};
  def.timeout = std::chrono::seconds{5};
  def.fn = [table](const json& args, const tool_context&) -> json {
    const auto& key = string_arg(args, "key");
    auto i = table->find(key);
    if (i == table->end())
      permanent("no entry for key '" + key + "'; " + known_keys(*table));
    return {{"key", key}, {"found", true}, {"value", *i}};
  };
  def.read_only = true;
  return def;
}

tool_definition clock_tool() {
  tool_definition def;
  def.name = "clock";
  def.description = "Returns the current date and time in UTC, as ISO 8601 "
                    "text and as Unix milliseconds.";
  def.parameters = {{"type", "object"},
                    {"properties", json::object()},
                    {"additionalProperties", false}};
  def.capabilities = {"time"};
  def.timeout = std::chrono::seconds{5};
  def.fn = [](const json&, const tool_context&) -> json {
    auto ms = now_ms();
    auto secs = static_cast<std::time_t>(ms / 1000);
    std::tm utc{};
    if (gmtime_r(&secs, &utc) == nullptr)
      permanent("clock: cannot convert " + std::to_string(ms)
                + " ms to a UTC date");
    char text[32];
    if (std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc) == 0)
      permanent("clock: cannot format the UTC date");
    return {{"utc", text}, {"unix_ms", ms}};
  };
  def.read_only = true;
  return def;
}

tool_definition lookup_tool(std::string name, std::string description,
                            std::string json_file_path, std::string key_field) {
  auto table = std::make_shared<const json>(load_table(name, json_file_path));
  tool_definition def;
  def.name = std::move(name);
  def.description = description.empty()
                      ? "Looks up a record by its " + key_field + "."
                      : std::move(description);
  def.parameters = {
    {"type", "object"},
    {"properties",
     {{key_field,
       {{"type", "string"}, {"minLength", 1}, {"maxLength", 200}}}}},
    {"required", {key_field}},
    {"additionalProperties", false}};
  def.capabilities = {"lookup"};
  def.timeout = std::chrono::seconds{5};
  def.blocking = false;
  def.fn = [table, key_field, tool = def.name](const json& args,
                                               const tool_context&) -> json {
    const auto& key = string_arg(args, key_field.c_str());
    auto i = table->find(key);
    if (i == table->end())
      permanent(tool + ": no record with " + key_field + " '" + key + "'; "
                + known_keys(*table));
    return *i;
  };
  def.read_only = true;
  return def;
}

namespace {

/// "{name}" in `text` replaced by the argument's value.
std::string fill_template(std::string text, const json& args) {
  if (!args.is_object())
    return text;
  for (const auto& item : args.items()) {
    auto slot = "{" + item.key() + "}";
    auto value = item.value().is_string() ? item.value().get<std::string>()
                                          : safe_dump(item.value());
    for (auto at = text.find(slot); at != std::string::npos;
         at = text.find(slot, at + value.size()))
      text.replace(at, slot.size(), value);
  }
  return text;
}

} // namespace

tool_definition journal_tool(std::string name, journal_settings settings) {
  {
    std::ofstream probe(settings.file, std::ios::app);
    if (!probe)
      throw std::invalid_argument(name + ": cannot open '" + settings.file
                                  + "' for appending");
  }
  struct shared_state {
    std::mutex mtx;
    int32_t calls = 0;
    int32_t successes = 0;
    /// Keys the file holds (dedupe_by_key).
    std::set<std::string> keys;
  };
  auto state = std::make_shared<shared_state>();
  if (settings.dedupe_by_key) {
    std::ifstream in(settings.file);
    std::string line;
    while (std::getline(in, line)) {
      auto rec = json::parse(line, nullptr, false);
      // A torn last line (a process killed mid-write) holds no key.
      if (rec.is_object() && rec.contains("key") && rec["key"].is_string())
        state->keys.insert(rec["key"].get<std::string>());
    }
  }
  tool_definition def;
  def.name = std::move(name);
  def.description = settings.description.empty()
                      ? "Records an action in " + settings.file + "."
                      : settings.description;
  def.parameters = settings.parameters;
  def.capabilities = {"journal"};
  def.fn = [state, settings, tool = def.name](const json& args,
                                              const tool_context& ctx) -> json {
    bool slow = false;
    {
      std::lock_guard<std::mutex> guard{state->mtx};
      if (state->calls++ < settings.fail_first)
        throw tool_failure(settings.failure,
                           tool + ": the remote system failed (call "
                             + std::to_string(state->calls) + " of the first "
                             + std::to_string(settings.fail_first)
                             + " that fail)");
      if (settings.dedupe_by_key && !ctx.idempotency_key.empty()
          && !state->keys.insert(ctx.idempotency_key).second)
        return fill_template(settings.result, args);
      json line{{"tool", tool},
                {"key", ctx.idempotency_key},
                {"run_id", ctx.ref.run_id},
                {"args", args},
                {"at_ms", now_ms()}};
      std::ofstream out(settings.file, std::ios::app);
      out << safe_dump(line) << '\n';
      out.flush();
      if (!out)
        throw tool_failure(tool_error_kind::transient,
                           tool + ": cannot append to " + settings.file);
      slow = state->successes++ < settings.delay_first;
    }
    if (slow)
      std::this_thread::sleep_for(settings.delay);
    return fill_template(settings.result, args);
  };
  return def;
}

std::vector<std::string> builtin_tool_names() {
  return {"calculator", "clock", "kv_lookup"};
}

} // namespace troupe

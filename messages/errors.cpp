#include "messages/errors.hpp"

#include <caf/actor_system_config.hpp>
#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace troupe {

const char* to_string(errc x) {
  switch (x) {
    case errc::no_matching_rule:
      return "no_matching_rule";
    case errc::model_failed:
      return "model_failed";
    case errc::invalid_input:
      return "invalid_input";
    case errc::timeout:
      return "timeout";
    case errc::unavailable:
      return "unavailable";
    case errc::refused:
      return "refused";
    case errc::crashed:
      return "crashed";
  }
  return "unknown";
}

caf::error make_error(errc code, std::string what) {
  return caf::error{static_cast<uint8_t>(code), error_category,
                    caf::make_message(std::move(what))};
}

namespace {

std::string render(uint8_t code, caf::atom_value category,
                   const caf::message& context) {
  std::string out;
  if (category == error_category)
    out = to_string(static_cast<errc>(code));
  else if (category == caf::atom("system"))
    out = to_string(static_cast<caf::sec>(code));
  else
    out = to_string(category) + ":" + std::to_string(code);
  if (context.size() == 1 && context.match_element<std::string>(0)) {
    out += ": ";
    out += context.get_as<std::string>(0);
  } else if (!context.empty()) {
    out += ": ";
    out += to_string(context);
  }
  return out;
}

} // namespace

std::string error_text(const caf::error& err) {
  if (!err)
    return "no error";
  return render(err.code(), err.category(), err.context());
}

std::string error_sentence(const caf::error& err) {
  const auto& context = err.context();
  if (err && err.category() == error_category && context.size() == 1
      && context.match_element<std::string>(0))
    return context.get_as<std::string>(0);
  return error_text(err);
}

std::string exception_text(const std::exception_ptr& eptr) {
  try {
    if (eptr)
      std::rethrow_exception(eptr);
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "unknown exception";
  }
  return "no exception";
}

void register_error_category(caf::actor_system_config& cfg) {
  cfg.add_error_category(error_category, render);
}

} // namespace troupe

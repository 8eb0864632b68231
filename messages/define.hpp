#pragma once

// TROUPE_MESSAGE(T, fields...) gives a message struct its whole contract in one
// place: the CAF inspect overload (binary serialization across nodes and
// to_string), JSON conversion (to_json / from_json, missing fields keep their
// defaults) and equality. Listing the fields once means the three can never drift.

#include <cstddef>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include <caf/meta/type_name.hpp>
#include <nlohmann/json.hpp>

#define TROUPE_PP_EXPAND(x) x
#define TROUPE_PP_NARG(...)                                                    \
  TROUPE_PP_EXPAND(TROUPE_PP_NARG_(__VA_ARGS__, 16, 15, 14, 13, 12, 11, 10, 9, \
                                   8, 7, 6, 5, 4, 3, 2, 1))
#define TROUPE_PP_NARG_(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12,     \
                        _13, _14, _15, _16, N, ...)                            \
  N
#define TROUPE_PP_CAT(a, b) TROUPE_PP_CAT_(a, b)
#define TROUPE_PP_CAT_(a, b) a##b

// TROUPE_PP_PREFIX(p, a, b, c) -> p.a, p.b, p.c
#define TROUPE_PP_PREFIX(p, ...)                                               \
  TROUPE_PP_CAT(TROUPE_PP_PREFIX_, TROUPE_PP_NARG(__VA_ARGS__))(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_1(p, a) p.a
#define TROUPE_PP_PREFIX_2(p, a, ...) p.a, TROUPE_PP_PREFIX_1(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_3(p, a, ...) p.a, TROUPE_PP_PREFIX_2(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_4(p, a, ...) p.a, TROUPE_PP_PREFIX_3(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_5(p, a, ...) p.a, TROUPE_PP_PREFIX_4(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_6(p, a, ...) p.a, TROUPE_PP_PREFIX_5(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_7(p, a, ...) p.a, TROUPE_PP_PREFIX_6(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_8(p, a, ...) p.a, TROUPE_PP_PREFIX_7(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_9(p, a, ...) p.a, TROUPE_PP_PREFIX_8(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_10(p, a, ...) p.a, TROUPE_PP_PREFIX_9(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_11(p, a, ...) p.a, TROUPE_PP_PREFIX_10(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_12(p, a, ...) p.a, TROUPE_PP_PREFIX_11(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_13(p, a, ...) p.a, TROUPE_PP_PREFIX_12(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_14(p, a, ...) p.a, TROUPE_PP_PREFIX_13(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_15(p, a, ...) p.a, TROUPE_PP_PREFIX_14(p, __VA_ARGS__)
#define TROUPE_PP_PREFIX_16(p, a, ...) p.a, TROUPE_PP_PREFIX_15(p, __VA_ARGS__)

/// Defines inspect and operator== for a message struct (for messages that
/// carry actor handles, which have no JSON form).
#define TROUPE_WIRE_MESSAGE(T, ...)                                            \
  template <class Inspector>                                                   \
  typename Inspector::result_type inspect(Inspector& f, T& x) {                \
    return f(caf::meta::type_name("troupe::" #T),                              \
             TROUPE_PP_PREFIX(x, __VA_ARGS__));                                \
  }                                                                            \
  inline bool operator==(const T& lhs, const T& rhs) {                         \
    return std::tie(TROUPE_PP_PREFIX(lhs, __VA_ARGS__))                        \
           == std::tie(TROUPE_PP_PREFIX(rhs, __VA_ARGS__));                    \
  }                                                                            \
  inline bool operator!=(const T& lhs, const T& rhs) {                         \
    return !(lhs == rhs);                                                      \
  }

/// Defines inspect, to_json/from_json and operator== for a message struct.
#define TROUPE_MESSAGE(T, ...)                                                 \
  TROUPE_WIRE_MESSAGE(T, __VA_ARGS__)                                          \
  NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(T, __VA_ARGS__)

/// Maps an enum to JSON strings and back; an unknown string or a non-string is
/// an error naming the enum and the value (nlohmann's own macro would silently
/// pick the first enumerator). Use: TROUPE_JSON_ENUM(E, {{E::a, "a"}, ...})
#define TROUPE_JSON_ENUM(E, ...)                                               \
  inline const std::pair<E, const char*>* troupe_enum_names(E*,                \
                                                            size_t& n) {       \
    static const std::pair<E, const char*> names[] = __VA_ARGS__;             \
    n = sizeof(names) / sizeof(names[0]);                                      \
    return names;                                                              \
  }                                                                            \
  inline void to_json(nlohmann::json& j, const E& x) {                         \
    size_t n = 0;                                                              \
    auto* names = troupe_enum_names(static_cast<E*>(nullptr), n);              \
    for (size_t i = 0; i < n; ++i)                                             \
      if (names[i].first == x) {                                               \
        j = names[i].second;                                                   \
        return;                                                                \
      }                                                                        \
    j = "invalid(" + std::to_string(static_cast<int>(x)) + ")";               \
  }                                                                            \
  inline void from_json(const nlohmann::json& j, E& x) {                       \
    size_t n = 0;                                                              \
    auto* names = troupe_enum_names(static_cast<E*>(nullptr), n);              \
    if (j.is_string())                                                         \
      for (size_t i = 0; i < n; ++i)                                           \
        if (j.get_ref<const std::string&>() == names[i].second) {             \
          x = names[i].first;                                                  \
          return;                                                              \
        }                                                                      \
    std::string known;                                                         \
    for (size_t i = 0; i < n; ++i)                                             \
      known += (i == 0 ? "" : ", ") + std::string{names[i].second};           \
    throw std::invalid_argument(std::string{#E ": unknown value "}             \
                                + j.dump(-1, ' ', false,                       \
                                         nlohmann::json::error_handler_t::     \
                                           replace)                            \
                                + " (expected one of: " + known + ")");        \
  }

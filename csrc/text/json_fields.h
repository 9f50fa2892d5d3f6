#pragma once

// Typed reads of a tokenizer.json component's fields (internal); every error names the file and
// component (`what`), the field, and what was found.
#include <c10/util/Exception.h>

#include <nlohmann/json.hpp>

#include <string>

namespace moeprune::text::detail {

inline const nlohmann::json& field(const nlohmann::json& obj, const char* key,
                                   const std::string& what) {
  TORCH_CHECK(obj.is_object(), what, ": expected a JSON object, found ", obj.type_name());
  TORCH_CHECK(obj.contains(key), what, ": missing \"", key, "\"");
  return obj.at(key);
}

inline std::string string_field(const nlohmann::json& obj, const char* key,
                                const std::string& what) {
  const auto& v = field(obj, key, what);
  TORCH_CHECK(v.is_string(), what, ": \"", key, "\" is ", v.dump(), ", not a string");
  return v.get<std::string>();
}

/// A boolean field; absent or null gives `fallback`.
inline bool bool_field(const nlohmann::json& obj, const char* key, bool fallback,
                       const std::string& what) {
  if (!obj.contains(key) || obj.at(key).is_null()) return fallback;
  const auto& v = obj.at(key);
  TORCH_CHECK(v.is_boolean(), what, ": \"", key, "\" is ", v.dump(), ", not true/false");
  return v.get<bool>();
}

inline int64_t int_field(const nlohmann::json& obj, const char* key, const std::string& what) {
  const auto& v = field(obj, key, what);
  TORCH_CHECK(v.is_number_integer(), what, ": \"", key, "\" is ", v.dump(), ", not an integer");
  return v.get<int64_t>();
}

/// The "type" of a component, e.g. "NFC".
inline std::string type_of(const nlohmann::json& spec, const std::string& what) {
  return string_field(spec, "type", what);
}

}  // namespace moeprune::text::detail

#pragma once

// Typed reads of a tokenizer.json component's fields (internal), through io/json.h; every error
// names the file and component (`what`), the field, and what was found.
#include "io/json.h"

#include <nlohmann/json.hpp>

#include <string>

namespace moeprune::text::detail {

inline const nlohmann::json& field(const nlohmann::json& obj, const char* key,
                                   const std::string& what) {
  io::expect_object(obj, what);
  TORCH_CHECK(obj.contains(key), what, ": \"", key, "\" is missing");
  return obj.at(key);
}

inline std::string string_field(const nlohmann::json& obj, const char* key,
                                const std::string& what) {
  return io::json_field<std::string>(io::expect_object(obj, what), key, what);
}

/// A boolean field; absent or null gives `fallback`.
inline bool bool_field(const nlohmann::json& obj, const char* key, bool fallback,
                       const std::string& what) {
  return io::json_field<bool>(obj, key, what, fallback);
}

inline int64_t int_field(const nlohmann::json& obj, const char* key, const std::string& what) {
  return io::json_field<int64_t>(io::expect_object(obj, what), key, what);
}

/// The "type" of a component, e.g. "NFC".
inline std::string type_of(const nlohmann::json& spec, const std::string& what) {
  return string_field(spec, "type", what);
}

}  // namespace moeprune::text::detail

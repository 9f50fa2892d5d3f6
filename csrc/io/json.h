#pragma once

// Reading JSON for every reader in the library (config.json, tokenizer.json, the safetensors
// header and index, plans, layer states, model options): one place that turns nlohmann's
// exceptions into errors naming where the text came from (a file, a field) and, for a value,
// the key, the type expected and what was found.
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>

namespace moeprune::io {

/// Parses `text`; throws "<what>: not valid JSON: <the parser's message with its position>".
template <typename Json = nlohmann::json>
Json parse_json(std::string_view text, const std::string& what) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, what, ": not valid JSON: ", e.what());
  }
}

/// Reads and parses the file at `path`; throws naming it when it cannot be opened (followed by
/// `hint`, e.g. what the file is for) or is not JSON.
template <typename Json = nlohmann::json>
Json read_json_file(const std::string& path, const std::string& hint = "") {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), path, ": cannot open", hint.empty() ? "" : " (", hint,
              hint.empty() ? "" : ")");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_json<Json>(text.str(), path);
}

/// Throws "<what>: expected a JSON object, found <type>" unless `j` is an object.
template <typename Json>
const Json& expect_object(const Json& j, const std::string& what) {
  TORCH_CHECK(j.is_object(), what, ": expected a JSON object, found ", j.type_name());
  return j;
}

/// j[key] as T (bool, an integer or floating type, or std::string); throws naming `what`, the key,
/// the type expected and the value found, or that the key is missing.
template <typename T, typename Json>
T json_field(const Json& j, const std::string& key, const std::string& what) {
  TORCH_CHECK(j.contains(key), what, ": \"", key, "\" is missing");
  const auto& v = j.at(key);
  bool ok = false;
  const char* want = "";
  if constexpr (std::is_same_v<T, bool>) {
    ok = v.is_boolean();
    want = "true/false";
  } else if constexpr (std::is_integral_v<T>) {
    ok = v.is_number_unsigned() || (std::is_signed_v<T> && v.is_number_integer());
    want = "an integer";
  } else if constexpr (std::is_floating_point_v<T>) {
    ok = v.is_number();
    want = "a number";
  } else {
    static_assert(std::is_same_v<T, std::string>, "json_field reads bool, numbers and strings");
    ok = v.is_string();
    want = "a string";
  }
  TORCH_CHECK(ok, what, ": \"", key, "\" is ", v.dump(), ", not ", want);
  return v.template get<T>();
}

/// json_field, or `fallback` when `key` is absent or null.
template <typename T, typename Json>
T json_field(const Json& j, const std::string& key, const std::string& what, const T& fallback) {
  return j.contains(key) && !j.at(key).is_null() ? json_field<T>(j, key, what) : fallback;
}

}  // namespace moeprune::io

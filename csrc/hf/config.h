#pragma once

// config.json of a Hugging Face checkpoint folder, read with errors that name the file, the key
// and what was found.
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <utility>

namespace moeprune::hf {

class Config {
 public:
  /// Reads `directory`/config.json; throws naming the file when it is missing or not JSON.
  explicit Config(const std::string& directory);

  const std::string& path() const { return path_; }
  const nlohmann::ordered_json& json() const { return json_; }
  bool contains(const std::string& key) const { return json_.contains(key); }
  /// Present and not null.
  bool is_set(const std::string& key) const {
    return json_.contains(key) && !json_.at(key).is_null();
  }

  /// A non-negative integer; `fallback` (>= 0) when absent, else absence is an error.
  int64_t integer(const std::string& key, int64_t fallback = -1) const;
  double number(const std::string& key, double fallback) const;
  bool flag(const std::string& key, bool fallback) const;
  std::string text(const std::string& key, const std::string& fallback) const;

 private:
  std::string path_;
  nlohmann::ordered_json json_;
};

/// Runs `read` (code reading `config`), turning a JSON type error from inside it (a value of
/// another type than the reader expects, where it does not check) into an error naming the file.
template <typename F>
decltype(auto) read_checked(const Config& config, F&& read) {
  try {
    return std::forward<F>(read)();
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, config.path(), ": ", e.what());
  }
}

}  // namespace moeprune::hf

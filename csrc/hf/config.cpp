#include "hf/config.h"

#include "io/json.h"

#include <c10/util/Exception.h>

#include <filesystem>
#include <fstream>

namespace moeprune::hf {

Config::Config(const std::string& directory)
    : path_((std::filesystem::path(directory) / "config.json").string()) {
  json_ = io::read_json_file<nlohmann::ordered_json>(
      path_, "a Hugging Face checkpoint folder needs config.json");
  io::expect_object(json_, path_);
}

int64_t Config::integer(const std::string& key, int64_t fallback) const {
  if (!json_.contains(key)) {
    TORCH_CHECK(fallback >= 0, path_, ": config.json has no \"", key, "\"");
    return fallback;
  }
  const auto& v = json_.at(key);
  TORCH_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0, path_, ": config.json \"", key,
              "\" is ", v.dump(), ", not a non-negative integer");
  return v.get<int64_t>();
}

double Config::number(const std::string& key, double fallback) const {
  if (!json_.contains(key)) {
    return fallback;
  }
  const auto& v = json_.at(key);
  TORCH_CHECK(v.is_number(), path_, ": config.json \"", key, "\" is ", v.dump(), ", not a number");
  return v.get<double>();
}

bool Config::flag(const std::string& key, bool fallback) const {
  if (!json_.contains(key)) {
    return fallback;
  }
  const auto& v = json_.at(key);
  TORCH_CHECK(v.is_boolean(), path_, ": config.json \"", key, "\" is ", v.dump(),
              ", not true/false");
  return v.get<bool>();
}

std::string Config::text(const std::string& key, const std::string& fallback) const {
  if (!json_.contains(key)) {
    return fallback;
  }
  const auto& v = json_.at(key);
  TORCH_CHECK(v.is_string(), path_, ": config.json \"", key, "\" is ", v.dump(), ", not a string");
  return v.get<std::string>();
}

}  // namespace moeprune::hf

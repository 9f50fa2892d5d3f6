#pragma once

// A description of the machine a benchmark ran on, for bench/results/*.json.
#include <nlohmann/json.hpp>

#include <filesystem>

namespace bench {

nlohmann::json machine_info();

/// Writes `results` to `path` (creating its folder) through a temporary file and a rename, so an
/// interrupted run leaves no half file.
void write_results(const std::filesystem::path& path, const nlohmann::json& results);

}  // namespace bench

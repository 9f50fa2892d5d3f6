#pragma once

// A description of the machine a benchmark ran on, for bench/results/*.json.
#include <nlohmann/json.hpp>

namespace bench {

nlohmann::json machine_info();

}  // namespace bench

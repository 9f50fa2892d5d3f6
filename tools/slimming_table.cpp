#include "slimming_table.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace cli {
namespace {

std::string error_text(double e) {
  return std::isnan(e) ? std::string("-") : fmt::format("{:.4f}", e);
}

// JSON has no NaN: no calibration, no error measured.
nlohmann::json error_json(double e) {
  return std::isnan(e) ? nlohmann::json() : nlohmann::json(e);
}

constexpr const char* kRow = "{:<36} {:<14} {:>8.2f}% {:>10} {:>11} {:>9} {:>7.1f}\n";

}  // namespace

SlimmingTable::SlimmingTable(std::string zeros_column) {
  fmt::print("{:<36} {:<14} {:>9} {:>10} {:>11} {:>9} {:>7}\n", "layer", "weights", zeros_column,
             "rel.error", "fewest tok", "fell back", "seconds");
}

void SlimmingTable::layer(const moeprune::compression::LayerSparsityReport& r) {
  int64_t fewest = -1, fell = 0;
  for (size_t i = 0; i < r.routed_tokens.size(); ++i) {
    fewest = fewest < 0 ? r.routed_tokens[i] : std::min(fewest, r.routed_tokens[i]);
    fell += r.fell_back[i] ? 1 : 0;
  }
  fmt::print(kRow, r.name, "experts", 100.0 * r.sparsity(), error_text(r.relative_error),
             fewest < 0 ? std::string("-") : std::to_string(fewest), fell, r.seconds);
  std::fflush(stdout);
  nlohmann::json j{{"index", r.key},
                   {"prefix", r.name},
                   {"weights", r.weights},
                   {"zeros", r.zeros},
                   {"sparsity", r.sparsity()},
                   {"experts", r.experts},
                   {"routed_tokens", r.routed_tokens},
                   {"fell_back", r.fell_back},
                   {"layer_tokens", r.layer_tokens},
                   {"seconds", r.seconds}};
  j["relative_error"] = error_json(r.relative_error);
  layers_.push_back(std::move(j));
}

void SlimmingTable::linears(const moeprune::compression::LinearSparsityReport& r) {
  fmt::print(kRow, r.name, moeprune::to_string(r.role), 100.0 * r.sparsity(),
             error_text(r.relative_error), r.tokens > 0 ? std::to_string(r.tokens) : "-", "",
             r.seconds);
  std::fflush(stdout);
  nlohmann::json j{
      {"decoder_layer", r.block}, {"module", r.name},     {"role", moeprune::to_string(r.role)},
      {"linears", r.linears},     {"weights", r.weights}, {"zeros", r.zeros},
      {"sparsity", r.sparsity()}, {"tokens", r.tokens},   {"seconds", r.seconds}};
  j["relative_error"] = error_json(r.relative_error);
  linears_.push_back(std::move(j));
}

}  // namespace cli

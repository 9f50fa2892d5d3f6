#pragma once

// The per-layer table and JSON rows `moeprune sparsify` and `moeprune quantize` print and write:
// each MoE layer's experts and each group of dense layers as they are done, with the zeros
// reached, the relative output error on the calibration tokens, the fewest tokens an expert was
// routed and how many experts fell back to all tokens (--min-tokens), or the tokens that reached
// a dense layer.
#include <moeprune/compression/linear_sparsity.h>
#include <moeprune/compression/model_sparsity.h>

#include <nlohmann/json.hpp>

#include <string>

namespace cli {

class SlimmingTable {
 public:
  /// Prints the header. `zeros_column`: the column's title ("sparsity", "zeros").
  explicit SlimmingTable(std::string zeros_column);
  void layer(const moeprune::compression::LayerSparsityReport& r);
  void linears(const moeprune::compression::LinearSparsityReport& r);
  /// The rows so far: one per MoE layer (index, prefix, counts, routed tokens...) and one per
  /// group of dense layers (decoder layer, module, role, linears...).
  const nlohmann::json& layers() const { return layers_; }
  const nlohmann::json& linear_groups() const { return linears_; }

 private:
  nlohmann::json layers_ = nlohmann::json::array();
  nlohmann::json linears_ = nlohmann::json::array();
};

}  // namespace cli

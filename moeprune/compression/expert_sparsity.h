#pragma once

// Sparsity inside the experts of a model's MoE layers, through the MoE view (the Unified seed's
// "Expert Slimming"; METHODS.md section 10). Each expert is calibrated on the tokens it serves
// (MoE-Pruner, Xie et al. 2024): its first linear (and the up projection of a gated expert) on
// the layer inputs of the tokens routed to it, its second linear on its own hidden activations
// of those tokens, optionally weighted by each token's router weight for the expert; or every
// expert on every calibration token (expert-balanced calibration, MoEQuant / EAQuant). Both
// linears of an expert are calibrated from one pass of the unpruned expert, as the Wanda and
// SparseGPT references do within a transformer block. Layers go in order; sequentially, each
// layer is calibrated on the outputs of the layers already pruned before it (SparseGPT's
// sequential mode), else all on the unpruned model (llm-compressor's "basic" pipeline).
#include <moeprune/compression/weight_sparsity.h>
#include <moeprune/layers/linear_capture.h>
#include <moeprune/layers/moe_view.h>

#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moeprune::compression {

enum class SparsityMethod {
  kMagnitude,  ///< the smallest |W_ij| of each row: no calibration
  kWanda,      ///< |W_ij| * ||X_j||_2 (wanda_mask)
  kSparseGPT,  ///< OBS with weight updates (sparsegpt)
};
/// "magnitude", "wanda" or "sparsegpt"; an error lists them.
SparsityMethod parse_sparsity_method(const std::string& name);
std::string to_string(SparsityMethod method);

/// Which tokens an expert's statistics come from.
enum class ExpertCalibration {
  kRouted,     ///< the tokens the router sends to the expert (and the capacity keeps)
  kAllTokens,  ///< every calibration token of the layer, whatever the routing
};
/// "routed" or "all"; an error lists them.
ExpertCalibration parse_expert_calibration(const std::string& name);
std::string to_string(ExpertCalibration calibration);

/// Which weights are pruned: the routed experts' and, beyond them, the model's dense linear layers
/// by role (MoEView::linears: attention, shared experts, dense MLPs). Routers, norms, embeddings
/// and the output head are never pruned.
struct SparsityTargets {
  bool experts = true;
  bool attention = false;
  bool shared_experts = false;
  bool dense = false;
  /// "all": every role the model has; a role it lacks is not an error (when named, it is).
  bool everything = false;

  /// "experts", "attention", "shared_experts", "dense", comma-separated, or "all"; an error names
  /// an unknown or repeated one.
  static SparsityTargets parse(const std::string& text);
  /// The same list ("experts,attention"; "all" when all four).
  std::string describe() const;
  bool wants(LinearRole role) const;
  /// Whether any dense linear layer is targeted.
  bool beyond_experts() const { return attention || shared_experts || dense; }
};

struct ExpertSparsityOptions {
  TORCH_ARG(SparsityMethod, method) = SparsityMethod::kWanda;
  TORCH_ARG(SparsityPattern, pattern) = SparsityPattern::unstructured(0.5);
  TORCH_ARG(ExpertCalibration, calibration) = ExpertCalibration::kRouted;
  /// Weight each routed token by its combine weight for the expert (MoE-Pruner): the Gram matrix
  /// becomes sum_t g_t x_t x_t^T. Routed calibration only.
  TORCH_ARG(bool, router_weighted) = false;
  /// An expert the router sent fewer tokens than this is calibrated on all the layer's tokens
  /// instead (unweighted), and the report says so. At least 1: an expert no token reached has
  /// no statistics (Wanda's scores would all be zero, SparseGPT would prune every input).
  TORCH_ARG(int64_t, min_tokens) = 1;
  /// Calibrate each layer on the outputs of the layers pruned before it (one calibration pass
  /// per layer); false: one pass of the unpruned model for all layers.
  TORCH_ARG(bool, sequential) = true;
  /// The blocks to prune, by key (a MoE layer's key, or a dense block's LinearEntry::block);
  /// empty: all of them.
  TORCH_ARG(std::vector<int64_t>, layers);
  /// What is pruned (sparsify_experts: the experts only; sparsify, model_sparsity.h: any).
  TORCH_ARG(SparsityTargets, targets);
  TORCH_ARG(SparseGPTOptions, sparsegpt);
};

/// What sparsifying did to one MoE layer.
struct LayerSparsityReport {
  int64_t key = 0;
  std::string name;
  /// The bank's experts (original ids; a merged expert by its first member), the calibration
  /// tokens each was routed (before any fallback), and whether it fell below min_tokens and was
  /// calibrated on all the layer's tokens. Empty counts for magnitude (no calibration).
  std::vector<int64_t> experts;
  std::vector<int64_t> routed_tokens;
  std::vector<bool> fell_back;
  /// Calibration tokens that reached the layer.
  int64_t layer_tokens = 0;
  /// Expert weights (biases excluded) and how many are zero after pruning.
  int64_t weights = 0;
  int64_t zeros = 0;
  /// sum ||(W - W') X^T||^2 / sum ||W X^T||^2 over the experts' linears, each on its own
  /// calibration inputs X (the Gram matrices the method used; for magnitude, the routed tokens
  /// when the view has calibration data, else NaN).
  double relative_error = 0.0;
  double seconds = 0.0;

  double sparsity() const {
    return weights > 0 ? static_cast<double>(zeros) / static_cast<double>(weights) : 0.0;
  }
};

/// Refuses options sparsify_experts would refuse whatever the model (pattern, min_tokens,
/// router weighting without routed calibration), naming the problem.
void check_sparsity_options(const ExpertSparsityOptions& options);

/// Called after each layer is pruned (progress).
using LayerSparsityCallback = std::function<void(const LayerSparsityReport& report)>;

/// Prunes the weights inside every expert of the view's MoE layers (options.layers() only, when
/// given; options.targets() must be the experts alone: sparsify in model_sparsity.h prunes
/// more), in place: pruned weights become exact zeros, kept ones keep their value (magnitude,
/// Wanda) or are updated (SparseGPT). Wanda and SparseGPT need calibration data in the view.
/// Refuses a factorised bank (its weights are L R + S). Returns one report per pruned layer, in
/// the model's order.
std::vector<LayerSparsityReport> sparsify_experts(const MoEView& view,
                                                  const ExpertSparsityOptions& options,
                                                  const LayerSparsityCallback& on_layer = {});

/// The same for one MoE layer, from the calls that reached it with their input tokens (a
/// capture with inputs); `calls` null: no calibration, which only magnitude accepts. For callers
/// that run the model themselves (the layer-streamed checkpoint).
LayerSparsityReport sparsify_moe_layer(const MoELayerEntry& layer, const LayerCalls* calls,
                                       const ExpertSparsityOptions& options);

}  // namespace moeprune::compression

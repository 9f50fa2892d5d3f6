#pragma once

// Sparsity in a whole model through its MoE view: the routed experts (expert_sparsity.h) and the
// dense linear layers options.targets() names (linear_sparsity.h), block by block. Sequentially,
// each block is calibrated on the outputs of the blocks pruned before it, and the block's
// experts and dense layers from one pass of the block before any of them is pruned (the Wanda
// and SparseGPT references' order); else everything from one pass of the unpruned model.
#include <moeprune/compression/expert_sparsity.h>
#include <moeprune/compression/linear_sparsity.h>
#include <moeprune/layers/moe_view.h>

#include <vector>

namespace moeprune::compression {

struct SparsityReport {
  /// One per pruned MoE layer, in the model's order.
  std::vector<LayerSparsityReport> layers;
  /// One per pruned group of dense layers (a block's layers of one role), in the model's order.
  std::vector<LinearSparsityReport> linears;
};

/// Prunes what options.targets() names in the view's model, in place; refuses a target the model
/// has no layer for (naming what it has), and Wanda or SparseGPT without calibration data.
SparsityReport sparsify(const MoEView& view, const ExpertSparsityOptions& options,
                        const LayerSparsityCallback& on_layer = {},
                        const LinearSparsityCallback& on_linears = {});

}  // namespace moeprune::compression

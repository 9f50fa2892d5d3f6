#pragma once

// M-SMoE expert merging (Li et al., ICLR 2024, "Merge, Then Compress: Demystify Efficient SMoE
// with Hints from Its Routing Policy"; UNITES-Lab/MC-SMoE mcsmoe/merging/grouping.py):
// 1. usage frequency of every expert on calibration data;
// 2. the most used experts of a layer dominate a group each, every other expert joins the
//    dominant expert it is most similar to (router-logit cosine by default);
// 3. members are aligned to their dominant expert (expert_alignment.h) and averaged with their
//    usage frequencies as weights;
// 4. the router keeps its E columns: each original expert maps to its group's merged expert.
// Then fine-tune with distillation from the unmerged model, routers frozen (TrainerOptions::
// teacher and VisionTransformerImpl::set_routers_trainable). Everything here works on a model's
// MoE view (layers/moe_view.h), whatever the model.
#include <moeprune/layers/moe_view.h>

#include <torch/arg.h>

#include <cstdint>
#include <map>
#include <vector>

namespace moeprune::compression {

/// Routing statistics of the MoE layers of a model on calibration data, keyed by layer key.
struct ExpertUsage {
  /// Layer -> [E] float64: the share of the calibration tokens' routing choices (top-k for token
  /// choice, picks for expert choice) that went to each expert; sums to 1 per layer.
  std::map<int64_t, torch::Tensor> frequency;
  /// Layer -> [T, E] float32: the router logits of every calibration token (router-logit
  /// similarity).
  std::map<int64_t, torch::Tensor> router_logits;
};

/// Walks `view`'s calibration data (evaluation mode, no grad) and gathers ExpertUsage.
ExpertUsage collect_expert_usage(const MoEView& view);

/// Adds one layer's usage from the calls it received (what collect_expert_usage does per layer),
/// for callers that run the layers themselves (a checkpoint streamed layer by layer).
void add_expert_usage(ExpertUsage& usage, const MoELayerEntry& layer, const LayerCalls& calls);

enum class MergeSimilarity {
  /// Cosine between the experts' router-logit columns over the calibration tokens (M-SMoE's
  /// default).
  kRouterLogits,
  /// Cosine between the experts' flattened weights (w1, b1, w2, b2, w3), each expert's neurons
  /// aligned to the layer's most used expert first.
  kWeights,
};

/// Layer key -> merge groups (original expert ids), the group's dominant expert first.
using MergeGroups = std::map<int64_t, std::vector<std::vector<int64_t>>>;

/// Groups the experts of each MoE layer in `counts` (key -> number of groups) per M-SMoE: the
/// `count` most frequent experts dominate a group each (ties to the lower id); every other
/// expert joins the dominant expert with the highest similarity. Throws unless 1 <= count <=
/// experts held.
MergeGroups group_experts(const MoEView& view, const ExpertUsage& usage,
                          const std::map<int64_t, int64_t>& counts,
                          MergeSimilarity similarity = MergeSimilarity::kRouterLogits);

/// The same number of groups in every MoE layer.
std::map<int64_t, int64_t> same_group_count(const MoEView& view, int64_t groups);

/// M-SMoE's global budget: `total` groups over all MoE layers, given to the experts with the
/// highest usage frequency compared across layers; each layer's most used expert always counts,
/// so every layer keeps at least one group. (MC-SMoE draws a threshold over the sorted
/// frequencies, which can hand out fewer groups on ties; this takes exactly `total`.)
std::map<int64_t, int64_t> global_group_counts(const MoEView& view, const ExpertUsage& usage,
                                               int64_t total);

/// Merges the experts of `view`'s layers in place: per group, aligns the members' neurons to the
/// dominant (first) expert (when `align`), then writes W = sum_i f_i W_i / sum_i f_i for every
/// expert parameter (f: usage frequency; a group that was never used is averaged uniformly). The
/// bank shrinks to one expert per group and records the groups in its state, so checkpoints reload.
/// The groups of a layer must cover all its held experts; every layer is checked before any
/// changes.
void merge_experts(const MoEView& view, const MergeGroups& groups, const ExpertUsage& usage,
                   bool align = true);

/// A readable table of merge groups with their frequencies.
std::string format_groups(const MergeGroups& groups, const ExpertUsage& usage);

}  // namespace moeprune::compression

#pragma once

// M-SMoE merging of a Hugging Face checkpoint without loading it whole (METHODS.md section 8;
// compression/merging.h for the method): the calibration tokens stream through the model one
// decoder layer at a time to gather every MoE layer's usage (routing frequency and router
// logits); the groups are then chosen (the same count per layer, or M-SMoE's global budget over
// all layers' frequencies); each MoE layer is loaded alone, merged, and its merged experts
// spilled to a scratch file; finally the checkpoint is written with hf::write_merged_checkpoint.
// Peak memory is one decoder layer plus the activations, then one MoE layer.
#include <moeprune/compression/merging.h>
#include <moeprune/hf/pruning.h>
#include <moeprune/models/lm/checkpoint_layers.h>
#include <moeprune/models/lm/streamed.h>

#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace moeprune::lm {

/// The routing usage of every MoE layer of `checkpoint` on `calibration` ([N, S] token ids, run
/// `batch_size` sequences at a time), keyed by hf::MoELayerRef::index; what
/// compression::collect_expert_usage gives for the model in memory.
///
/// Resumable with options.journal(): each MoE layer's usage is kept in the journal's folder
/// (usage-<index>.safetensors) before its decoder layer is journaled, and read back for the
/// layers a resumed run skips.
compression::ExpertUsage streamed_expert_usage(
    const CheckpointLayers& checkpoint, const torch::Tensor& calibration, int64_t batch_size,
    const StreamOptions& options = {}, const std::function<void(int64_t, int64_t)>& progress = {});

struct MergeCheckpointOptions {
  /// Groups (merged experts) in every MoE layer; or
  TORCH_ARG(int64_t, groups_per_layer) = -1;
  /// instead, groups over all MoE layers (compression::global_group_counts).
  TORCH_ARG(int64_t, total_groups) = -1;
  TORCH_ARG(compression::MergeSimilarity, similarity) = compression::MergeSimilarity::kRouterLogits;
  /// Align the members' neurons to the dominant expert before averaging (M-SMoE).
  TORCH_ARG(bool, align) = true;
  /// Folder for the merged experts' scratch files (removed when done).
  TORCH_ARG(std::string, scratch_dir) = "/tmp";
  /// A resumable merge: each MoE layer's merged experts are kept in the journal's folder
  /// (merged-<index>.safetensors, with its groups and state) instead of a scratch file, and a
  /// layer found there is not merged again. The caller removes the journal once the output is
  /// written. Null: scratch files.
  TORCH_ARG(std::shared_ptr<StreamJournal>, journal) = nullptr;
};

struct MergeCheckpointResult {
  compression::ExpertUsage usage;
  compression::MergeGroups groups;
  hf::WriteReport report;
  /// MoE layers whose merged experts came from the journal (a resumed run).
  int64_t layers_from_journal = 0;
};

/// Merges every MoE layer of `checkpoint` given its `usage` and writes the result to the new
/// folder `out`. The merging runs in fp32 whatever checkpoint.dtype(); the merged weights are
/// written in each tensor's own dtype. `progress(layers merged, layers)` while merging;
/// `write.progress` while writing.
MergeCheckpointResult merge_checkpoint(const CheckpointLayers& checkpoint,
                                       const compression::ExpertUsage& usage,
                                       const std::string& out,
                                       const MergeCheckpointOptions& options,
                                       const hf::WriteOptions& write = {},
                                       const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace moeprune::lm

#include <moeprune/models/lm/streamed_merge.h>

#include "models/lm/streamed_moe_layers.h"

#include <moeprune/hf/checkpoint.h>
#include <moeprune/io/safetensors.h>
#include <moeprune/layers/moe_view.h>

#include <torch/torch.h>

#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace moeprune::lm {
namespace {

// Scratch files removed however the merge ends.
class ScratchFiles {
 public:
  explicit ScratchFiles(std::string dir) : dir_(std::move(dir)) {}
  ~ScratchFiles() {
    for (const auto& p : paths_) {
      std::remove(p.c_str());
    }
  }
  ScratchFiles(const ScratchFiles&) = delete;
  ScratchFiles& operator=(const ScratchFiles&) = delete;
  std::string next(int64_t index) {
    paths_.push_back(dir_ + "/moeprune-merged-" + std::to_string(::getpid()) + "-" +
                     std::to_string(index) + ".safetensors");
    std::remove(paths_.back().c_str());  // a leftover of a killed run with the same pid
    return paths_.back();
  }

 private:
  std::string dir_;
  std::vector<std::string> paths_;
};

}  // namespace

compression::ExpertUsage streamed_expert_usage(
    const CheckpointLayers& checkpoint, const torch::Tensor& calibration, int64_t batch_size,
    const StreamOptions& options, const std::function<void(int64_t, int64_t)>& progress) {
  compression::ExpertUsage usage;
  const auto total = static_cast<int64_t>(checkpoint.info().layers.size());
  int64_t done = 0;
  detail::stream_moe_layers(
      checkpoint, calibration, batch_size, options,
      [&](const hf::MoELayerRef& ref, const MoELayerEntry& entry,
          const std::function<void()>& run) {
        MoECapture capture({entry}, /*with_inputs=*/false);
        run();
        compression::add_expert_usage(usage, entry, capture.calls(ref.index));
        if (progress) progress(++done, total);
      },
      "merging");
  return usage;
}

MergeCheckpointResult merge_checkpoint(const CheckpointLayers& checkpoint,
                                       const compression::ExpertUsage& usage,
                                       const std::string& out,
                                       const MergeCheckpointOptions& options,
                                       const hf::WriteOptions& write,
                                       const std::function<void(int64_t, int64_t)>& progress) {
  TORCH_CHECK((options.groups_per_layer() >= 1) != (options.total_groups() >= 1),
              "merge_checkpoint: give groups_per_layer or total_groups (one of them, >= 1)");
  const auto& info = checkpoint.info();
  const auto& source = checkpoint.checkpoint();
  for (const auto& ref : info.layers) {
    TORCH_CHECK(!ref.fused, checkpoint.directory(), ": ", ref.prefix,
                " stores its experts fused (transformers 5.x); merging writes the per-expert "
                "layout only");
    TORCH_CHECK(ref.state.is_plain(), checkpoint.directory(), ": ", ref.prefix,
                " is already pruned or merged; merge the original checkpoint");
    TORCH_CHECK(usage.frequency.count(ref.index) == 1 && usage.router_logits.count(ref.index) == 1,
                "merge_checkpoint: no usage for MoE layer ", ref.prefix);
  }
  const auto routers = hf::router_view(checkpoint.source());
  const auto counts =
      options.groups_per_layer() >= 1
          ? compression::same_group_count(*routers, options.groups_per_layer())
          : compression::global_group_counts(*routers, usage, options.total_groups());
  MergeCheckpointResult result;
  result.usage = usage;
  std::map<int64_t, hf::MergedLayer> merged;
  ScratchFiles scratch(options.scratch_dir());
  const auto total = static_cast<int64_t>(info.layers.size());
  for (const auto& ref : info.layers) {
    torch::NoGradGuard no_grad;
    auto layer = hf::load_moe_layer(source, info, ref, hf::LoadOptions().dtype(torch::kFloat));
    const auto view = LayerMapView::of({{ref.index, layer}});
    const auto groups = compression::group_experts(
        *view, usage, {{ref.index, counts.at(ref.index)}}, options.similarity());
    compression::merge_experts(*view, groups, usage, options.align());
    result.groups[ref.index] = groups.at(ref.index);

    // The merged experts, one per group (bank row i is group i), as the checkpoint stores an
    // expert: [out, in] in the tensor's own dtype, under the group's first expert's names.
    hf::MergedLayer m;
    m.state = layer->state();
    m.weights = scratch.next(ref.index);
    safetensors::Writer writer(m.weights);
    const auto& bank = layer->experts();
    const std::vector<torch::Tensor> weights{bank->w1, bank->w2, bank->w3};
    for (size_t i = 0; i < m.state.bank.groups.size(); ++i) {
      const auto names = ref.expert_tensors(m.state.bank.groups[i].front());
      TORCH_CHECK(names.size() <= weights.size(), "merge_checkpoint: ", ref.prefix,
                  " has an expert layout moeprune does not merge");
      for (size_t w = 0; w < names.size(); ++w) {
        const auto type = source.file(source.shard_of(names[w])).info(names[w]).scalar_type;
        writer.add(names[w], weights[w][static_cast<int64_t>(i)].t().contiguous().to(type));
      }
    }
    writer.finish();
    merged.emplace(ref.index, std::move(m));
    if (progress) progress(ref.index + 1, total);
  }
  result.report = hf::write_merged_checkpoint(checkpoint.source(), merged, out, "m-smoe", write);
  return result;
}

}  // namespace moeprune::lm

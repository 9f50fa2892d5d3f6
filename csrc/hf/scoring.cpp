#include <moeprune/hf/scoring.h>

#include <torch/torch.h>

#include <memory>
#include <utility>

namespace moeprune::hf {

HiddenStateFile::HiddenStateFile(std::string path) : path_(std::move(path)) {}

void HiddenStateFile::visit_layers(const Source& source, const LoadOptions& load, bool with_inputs,
                                   const LayerCallsVisitor& visit) const {
  const safetensors::File file(path_);
  const auto& info = source.info();
  for (const auto& ref : info.layers) {
    TORCH_CHECK(file.contains(ref.prefix), path_, ": no hidden states for MoE layer '", ref.prefix,
                "'");
    const auto& ci = file.info(ref.prefix);
    TORCH_CHECK(!ci.shape.empty() && ci.shape.back() == info.d_model, path_, ": tensor '",
                ref.prefix, "' has last dimension ", ci.shape.empty() ? 0 : ci.shape.back(),
                ", the model's hidden size is ", info.d_model);
    // The view routes the tokens as one batch ([N, d]) and records the calls.
    const LayerMapView view(
        {{ref.index, ref.prefix, load_moe_layer(source.checkpoint(), info, ref, load)}},
        [&](const auto& tokens) {
          // In the layer's dtype, and a copy in memory, not the file's mapped bytes: BLAS takes
          // other paths for data at the tensor's 8-byte file alignment, and the router's logits
          // differ in the last bits.
          tokens(ref.index, file.tensor(ref.prefix)
                                .to(load.dtype(), /*non_blocking=*/false,
                                    /*copy=*/true));
        });
    view.walk(with_inputs, [&](const MoELayerEntry& entry, const LayerCalls& calls) {
      visit(ref, entry, calls);
    });
  }
}

pruning::ExpertScores score_checkpoint(const Source& finetuned, const pruning::Criterion& criterion,
                                       const ScoringOptions& options) {
  const auto& name = criterion.name();
  const auto& info = finetuned.info();
  TORCH_CHECK(!criterion.needs_pretrained() || options.pretrained != nullptr, name,
              " compares with the pre-trained model: give its checkpoint (--pretrained)");
  const bool data = criterion.needs_data() || criterion.needs_inputs();
  TORCH_CHECK(!data || options.inputs != nullptr, name,
              " needs calibration data: ScoringOptions::inputs (moeprune --calibration FILE "
              "streams tokens through a language model; --moe-inputs reads each MoE layer's "
              "hidden states from a safetensors file; docs/checkpoints.md)");
  const auto load =
      LoadOptions().expert_weights(criterion.needs_expert_weights()).dtype(options.dtype);
  if (criterion.needs_pretrained()) {
    const auto& pre = options.pretrained->info();
    TORCH_CHECK(pre.layers.size() == info.layers.size(), options.pretrained->directory(), " has ",
                pre.layers.size(), " MoE layers, ", finetuned.directory(), " has ",
                info.layers.size());
  }
  // The pre-trained layer at the same position (the two may use different layouts: hub and
  // fused Mixtral name their layers alike but their experts differently).
  const auto pretrained_entry = [&](const MoELayerRef& ref) {
    const auto& pre_info = options.pretrained->info();
    const auto& pre_ref = pre_info.layers[static_cast<size_t>(ref.index)];
    TORCH_CHECK(pre_ref.num_experts == ref.num_experts, "MoE layer ", ref.index, " has ",
                pre_ref.num_experts, " experts in ", options.pretrained->directory(), " (",
                pre_ref.prefix, ") and ", ref.num_experts, " in ", finetuned.directory(), " (",
                ref.prefix, ")");
    return MoELayerEntry{ref.index, pre_ref.prefix,
                         load_moe_layer(options.pretrained->checkpoint(), pre_info, pre_ref, load)};
  };
  pruning::ExpertScores scores = options.done;
  const auto total = static_cast<int64_t>(info.layers.size());
  auto done = static_cast<int64_t>(scores.size());
  // One layer at a time, so memory holds at most one layer (two with a pre-trained model).
  const auto score = [&](const MoELayerRef& ref, const MoELayerEntry& entry,
                         const LayerCalls& calls) {
    MoELayerEntry pre;
    if (criterion.needs_pretrained()) pre = pretrained_entry(ref);
    scores[ref.index] = pruning::score_layer(
        criterion, {entry, criterion.needs_pretrained() ? &pre : nullptr, calls, options.seed});
    if (options.on_scored) options.on_scored(ref.index, scores[ref.index]);
    if (options.progress) options.progress(++done, total);
  };
  if (data) {
    options.inputs->visit_layers(finetuned, load, criterion.needs_inputs(), score);
  } else {
    const LayerCalls none;
    for (const auto& ref : info.layers) {
      score(ref, {ref.index, ref.prefix, load_moe_layer(finetuned.checkpoint(), info, ref, load)},
            none);
    }
  }
  for (const auto& ref : info.layers) {
    TORCH_CHECK(scores.count(ref.index) == 1, data ? options.inputs->describe() : name,
                " reached no calls for MoE layer ", ref.prefix);
  }
  return scores;
}

}  // namespace moeprune::hf

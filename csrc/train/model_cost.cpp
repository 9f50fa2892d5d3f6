#include <moeprune/train/model_cost.h>

#include <torch/torch.h>

namespace moeprune::compression {

int64_t stored_parameters(const VisionTransformer& model) {
  int64_t total = 0;
  for (const auto& p : model->parameters()) {
    total += p.numel();
  }
  for (auto& [block, layer] : model->moe_layers()) {
    auto bank = layer->experts();
    total -= bank->num_parameters(/*stored=*/false) - bank->num_parameters(/*stored=*/true);
  }
  return total;
}

double flops_per_image(const VisionTransformer& model, const EvalResult& eval) {
  const auto& o = model->options;
  const double d = static_cast<double>(o.d_model());
  const int64_t side = o.image_size() / o.patch_size();
  const double patches = static_cast<double>(side * side);
  const double members = static_cast<double>(o.ensemble_size());
  const auto& moe_blocks = o.moe_blocks();
  const int64_t first_moe =
      moe_blocks.empty() ? o.depth() : *std::min_element(moe_blocks.begin(), moe_blocks.end());
  const auto layers = model->moe_layers();
  TORCH_CHECK(eval.routing.size() == layers.size() && eval.images > 0,
              "flops_per_image: the evaluation has routing statistics for ", eval.routing.size(),
              " MoE layers, the model has ", layers.size(), " (evaluate this model first)");

  double flops =
      2.0 * patches * static_cast<double>(o.channels() * o.patch_size() * o.patch_size()) * d;
  size_t moe_index = 0;
  for (int64_t i = 0; i < o.depth(); ++i) {
    const auto& block = model->blocks[static_cast<size_t>(i)];
    // Tokens per image in this block: E3-MoE replicates the batch before its first MoE block;
    // each copy attends within its own sequence.
    const double copies = i >= first_moe ? members : 1.0;
    const double seq = patches + 1, n = seq * copies;
    if (block->has_attention) {
      flops += 2.0 * n * d * 3 * d + copies * 4.0 * seq * seq * d + 2.0 * n * d * d;
    }
    if (!block->has_mlp) {
      continue;
    }
    if (block->is_moe()) {
      const auto& stats = eval.routing[moe_index];
      auto bank = layers[moe_index].second->experts();
      ++moe_index;
      flops += 2.0 * n * d * static_cast<double>(block->moe->router().num_experts());
      for (size_t e = 0; e < stats.rows_per_expert.size(); ++e) {
        flops += static_cast<double>(stats.rows_per_expert[e]) / static_cast<double>(eval.images) *
                 bank->row_flops(static_cast<int64_t>(e));
      }
    } else {
      flops += 2.0 * n * d * static_cast<double>(o.mlp_dim()) * 2;
    }
  }
  return flops + 2.0 * members * d * static_cast<double>(o.num_classes());
}

}  // namespace moeprune::compression

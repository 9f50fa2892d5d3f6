#include <moeprune/models/lm/model_cost.h>
#include <moeprune/models/lm/moe_view.h>

#include <torch/torch.h>

#include <functional>
#include <map>

namespace moeprune::compression {
namespace {

double linear_flops(const torch::nn::Linear& linear) {
  return linear.is_empty() ? 0.0 : 2.0 * static_cast<double>(linear->weight.numel());
}

double mlp_flops(const lm::GatedMLP& mlp) {
  return mlp.is_empty() ? 0.0
                        : linear_flops(mlp->gate_proj) + linear_flops(mlp->up_proj) +
                              linear_flops(mlp->down_proj);
}

}  // namespace

int64_t stored_parameters(const lm::CausalLM& model) {
  int64_t total = 0;
  for (const auto& p : model->parameters()) {
    total += p.numel();
  }
  for (const auto& [index, layer] : model->moe_layers()) {
    auto bank = layer->experts();
    total -= bank->num_parameters(/*stored=*/false) - bank->num_parameters(/*stored=*/true);
  }
  return total;
}

double flops_per_token(lm::CausalLM& model, const torch::Tensor& input_ids) {
  TORCH_CHECK(input_ids.dim() == 2 && input_ids.numel() > 0,
              "flops_per_token: input_ids should be [B, S] token ids, got ", input_ids.sizes());
  const double tokens = static_cast<double>(input_ids.numel());
  const double seq = static_cast<double>(input_ids.size(1));
  // Expert rows per MoE layer on these tokens, from the routing the layers compute.
  const auto view = lm::moe_view(
      model, [&](const std::function<void(const torch::Tensor&)>& visit) { visit(input_ids); });
  std::map<int64_t, double> expert_flops;
  view->walk(/*with_inputs=*/false, [&](const MoELayerEntry& entry, const LayerCalls& calls) {
    auto bank = entry.layer->experts();
    double sum = 0.0;
    for (const auto& call : calls) {
      const auto counts = call.plan.expert_counts.cpu();
      for (int64_t e = 0; e < counts.size(0); ++e) {
        sum += static_cast<double>(counts[e].item<int64_t>()) * bank->row_flops(e);
      }
    }
    expert_flops[entry.key] = sum / tokens;
  });

  double flops = 0.0;
  for (size_t i = 0; i < model->layers->size(); ++i) {
    const auto layer = model->layers[i]->as<lm::DecoderLayerImpl>();
    const auto& attn = layer->self_attn;
    const auto& a = attn->options;
    for (const auto* linear :
         {&attn->q_proj, &attn->k_proj, &attn->v_proj, &attn->o_proj, &attn->q_a_proj,
          &attn->q_b_proj, &attn->kv_a_proj_with_mqa, &attn->kv_b_proj}) {
      flops += linear_flops(*linear);
    }
    // q.k over the p + 1 visible positions and the weighted sum of as many values, per head;
    // the mean of p + 1 over positions 0 .. S-1 is (S + 1) / 2.
    flops += 2.0 * static_cast<double>(a.num_heads() * (a.head_dim() + a.value_dim())) *
             (seq + 1.0) / 2.0;
    flops += mlp_flops(layer->mlp);
    if (layer->is_moe()) {
      const auto& block = layer->moe_block;
      flops += 2.0 * static_cast<double>(layer->options.hidden_size() *
                                         block->moe->router().num_experts());
      flops += expert_flops.at(static_cast<int64_t>(i));
      flops += mlp_flops(block->shared_expert) + linear_flops(block->shared_expert_gate);
    }
  }
  return flops +
         2.0 * static_cast<double>(model->options.vocab_size() * model->options.hidden_size());
}

}  // namespace moeprune::compression

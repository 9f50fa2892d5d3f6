#include <moeprune/models/lm/decoder_layer.h>

#include <torch/torch.h>

#include <algorithm>

namespace moeprune::lm {

DecoderLayerImpl::DecoderLayerImpl(CausalLMOptions options_, int64_t index_)
    : options(std::move(options_)), index(index_) {
  reset();
}

void DecoderLayerImpl::reset() {
  options.validate();
  TORCH_CHECK(index >= 0 && index < options.num_layers(), "DecoderLayer: index ", index,
              " is outside [0, ", options.num_layers(), ")");
  const auto norm = RMSNormOptions(options.hidden_size()).eps(options.rms_norm_eps());
  input_layernorm = register_module("input_layernorm", RMSNorm(norm));
  self_attn = register_module("self_attn", Attention(options.attention()));
  post_attention_layernorm = nullptr;
  mlp = nullptr;
  moe_block = nullptr;
  const auto& dropped = options.dropped_mlp_layers();
  if (std::find(dropped.begin(), dropped.end(), index) != dropped.end()) {
    return;
  }
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(norm));
  if (options.moe_layers()[static_cast<size_t>(index)]) {
    moe_block =
        register_module("mlp", SparseMoeBlock(SparseMoeBlockOptions(*options.moe())
                                                  .shared_expert_size(options.shared_expert_size())
                                                  .shared_expert_gate(options.shared_expert_gate())
                                                  .activation(options.activation())));
  } else {
    mlp = register_module(
        "mlp", GatedMLP(GatedMLPOptions(options.hidden_size(), options.intermediate_size())
                            .activation(options.activation())));
  }
}

void DecoderLayerImpl::drop_mlp() {
  TORCH_CHECK(options.moe_layers()[static_cast<size_t>(index)], "DecoderLayer ", index,
              ": Layer Drop removes MoE blocks; this layer's MLP is dense");
  TORCH_CHECK(is_moe(), "DecoderLayer ", index, ": the MoE block was dropped already");
  unregister_module("mlp");
  unregister_module("post_attention_layernorm");
  moe_block = nullptr;
  post_attention_layernorm = nullptr;
  auto dropped = options.dropped_mlp_layers();
  dropped.insert(std::upper_bound(dropped.begin(), dropped.end(), index), index);
  options.dropped_mlp_layers(dropped);
}

void DecoderLayerImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::lm::DecoderLayer(" << index
         << (is_moe()    ? ", moe"
             : has_mlp() ? ", dense"
                         : ", MoE block dropped")
         << ")";
}

DecoderLayerOutput DecoderLayerImpl::forward(const torch::Tensor& hidden,
                                             const RotaryAngles& angles, KVCache* cache) {
  auto h = hidden + self_attn(input_layernorm(hidden), angles, cache, index);
  DecoderLayerOutput out;
  out.attention_hidden = h;
  if (!has_mlp()) {
    out.hidden = h;
    return out;
  }
  const auto x = post_attention_layernorm(h);
  if (is_moe()) {
    auto moe = moe_block(x);
    out.hidden = h + moe.output;
    out.aux_loss = std::move(moe.aux_loss);
  } else {
    out.hidden = h + mlp(x);
  }
  return out;
}

}  // namespace moeprune::lm

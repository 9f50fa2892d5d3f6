#include <moeprune/models/seq2seq/switch_block.h>

#include "layers/activation.h"

#include <torch/torch.h>

namespace moeprune::seq2seq {
namespace {

torch::Tensor maybe_dropout(const torch::Tensor& x, double p, bool training) {
  return training && p > 0.0 ? torch::dropout(x, p, /*train=*/true) : x;
}

}  // namespace

DenseActDenseImpl::DenseActDenseImpl(int64_t d_model_, int64_t d_ff_, ExpertActivation activation_,
                                     double dropout_)
    : d_model(d_model_), d_ff(d_ff_), activation(activation_), dropout(dropout_) {
  reset();
}

void DenseActDenseImpl::reset() {
  TORCH_CHECK(d_model >= 1 && d_ff >= 1, "DenseActDense: sizes should be >= 1, got d_model ",
              d_model, ", d_ff ", d_ff);
  using torch::nn::LinearOptions;
  wi = register_module("wi", torch::nn::Linear(LinearOptions(d_model, d_ff).bias(false)));
  wo = register_module("wo", torch::nn::Linear(LinearOptions(d_ff, d_model).bias(false)));
}

torch::Tensor DenseActDenseImpl::forward(const torch::Tensor& x) {
  return wo(maybe_dropout(moeprune::detail::activate(wi(x), activation), dropout, is_training()));
}

SwitchFeedForwardImpl::SwitchFeedForwardImpl(const SwitchTransformerOptions& options_, bool sparse_)
    : options(options_), is_sparse(sparse_) {
  reset();
}

void SwitchFeedForwardImpl::reset() {
  layer_norm =
      register_module("layer_norm", T5LayerNorm(options.d_model(), options.layer_norm_epsilon()));
  mlp = nullptr;
  moe = nullptr;
  if (is_sparse) {
    moe = register_module("moe", MoELayer(options.moe()));
  } else {
    mlp = register_module("mlp", DenseActDense(options.d_model(), options.d_ff(),
                                               options.activation(), options.dropout_rate()));
  }
}

void SwitchFeedForwardImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::seq2seq::SwitchFeedForward(" << (is_sparse ? "MoE" : "dense") << ")";
}

void SwitchFeedForwardImpl::set_moe(MoELayer layer) {
  TORCH_CHECK(is_sparse, "SwitchFeedForward: a dense block has no MoE layer to replace");
  TORCH_CHECK(layer->options.d_model() == options.d_model(),
              "SwitchFeedForward: the new MoE layer has width ", layer->options.d_model(),
              ", the model ", options.d_model());
  moe = replace_module("moe", std::move(layer));
}

torch::Tensor SwitchFeedForwardImpl::forward(const torch::Tensor& hidden, SparseCall* call) {
  const auto normed = layer_norm(hidden);
  torch::Tensor out;
  if (is_sparse) {
    // [B, S, d]: the layer routes each sequence as its own group (capacity per sequence).
    auto routed = moe->forward(normed);
    out = routed.output;
    if (call != nullptr) {
      const auto& plan = routed.plan;
      const int64_t batch = hidden.size(0), length = hidden.size(1);
      auto reached = plan.slot_row.ge(0);
      const auto& bank = moe->experts();
      if (!bank->is_merged() && bank->num_held() != moe->router().num_experts()) {
        // Removed experts (router columns kept): their slots were not dropped at capacity.
        const auto map = bank->expert_map(plan.expert_index.device());
        const auto used = plan.expert_index.ge(0);
        reached = reached | (used & map.index({plan.expert_index.clamp_min(0)}).lt(0));
      }
      call->selected =
          torch::where(reached, plan.expert_index, torch::zeros_like(plan.expert_index))
              .view({batch, length, -1});
      call->router_logits = plan.router_logits.view({batch, length, -1});
      call->plan = routed.plan;
    }
  } else {
    out = mlp(normed);
  }
  return hidden + maybe_dropout(out, options.dropout_rate(), is_training());
}

SwitchBlockImpl::SwitchBlockImpl(const SwitchTransformerOptions& options_, bool decoder_,
                                 int64_t index_)
    : options(options_), decoder(decoder_), index(index_) {
  reset();
}

void SwitchBlockImpl::reset() {
  const auto& o = options;
  const auto norm = [&] { return T5LayerNorm(o.d_model(), o.layer_norm_epsilon()); };
  const auto attention = [&](bool relative) {
    return RelativeAttention(RelativeAttentionOptions(o.d_model(), o.d_kv(), o.num_heads())
                                 .has_relative_bias(relative)
                                 .bidirectional(!decoder)
                                 .num_buckets(o.relative_attention_num_buckets())
                                 .max_distance(o.relative_attention_max_distance())
                                 .dropout(o.dropout_rate()));
  };
  self_norm = register_module("self_norm", norm());
  // Only block 0 holds the bias table; it computes the bias every block of its stack adds.
  self_attention = register_module("self_attention", attention(index == 0));
  cross_norm = nullptr;
  cross_attention = nullptr;
  if (decoder) {
    cross_norm = register_module("cross_norm", norm());
    cross_attention = register_module("cross_attention", attention(false));
  }
  feed_forward = register_module("feed_forward", SwitchFeedForward(o, o.is_sparse(decoder, index)));
}

void SwitchBlockImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::seq2seq::SwitchBlock(" << (decoder ? "decoder" : "encoder") << " " << index
         << (feed_forward->is_sparse ? ", sparse" : ", dense") << ")";
}

torch::Tensor SwitchBlockImpl::forward(const torch::Tensor& hidden, const torch::Tensor& self_bias,
                                       const torch::Tensor& encoder_hidden,
                                       const torch::Tensor& cross_bias, BlockCache* cache,
                                       SparseCall* call) {
  TORCH_CHECK(cache == nullptr || decoder, "SwitchBlock: only decoder blocks take a cache");
  const bool training = is_training();
  const double p = options.dropout_rate();

  const auto normed = self_norm(hidden);
  auto keys = self_attention->project_keys(normed);
  auto values = self_attention->project_values(normed);
  if (cache != nullptr) {
    if (cache->self_keys.defined()) {
      keys = torch::cat({cache->self_keys, keys}, 2);
      values = torch::cat({cache->self_values, values}, 2);
    }
    cache->self_keys = keys;
    cache->self_values = values;
  }
  auto h = hidden + maybe_dropout(self_attention(normed, keys, values, self_bias), p, training);

  if (decoder) {
    TORCH_CHECK(encoder_hidden.defined(), "SwitchBlock: decoder block ", index,
                " needs the encoder output");
    const auto cross_in = cross_norm(h);
    torch::Tensor cross_keys, cross_values;
    if (cache != nullptr && cache->cross_keys.defined()) {
      cross_keys = cache->cross_keys;
      cross_values = cache->cross_values;
    } else {
      cross_keys = cross_attention->project_keys(encoder_hidden);
      cross_values = cross_attention->project_values(encoder_hidden);
      if (cache != nullptr) {
        cache->cross_keys = cross_keys;
        cache->cross_values = cross_values;
      }
    }
    h = h +
        maybe_dropout(cross_attention(cross_in, cross_keys, cross_values, cross_bias), p, training);
  }
  return feed_forward(h, call);
}

}  // namespace moeprune::seq2seq

#include <moeprune/models/seq2seq/switch_transformer.h>

#include "layers/error_context.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

namespace moeprune::seq2seq {
namespace {

// z and load-balancing losses of [B, S, E] logits and [B, S, K] selections
// (modeling_switch_transformers.py: router_z_loss_func, load_balancing_loss_func).
RouterLosses losses_of(const torch::Tensor& logits, const torch::Tensor& selected) {
  const int64_t experts = logits.size(-1);
  RouterLosses out;
  out.z_loss = torch::logsumexp(logits, -1).pow(2).mean();
  const auto probs = torch::softmax(logits, -1);
  const auto mask = torch::one_hot(selected, experts).amax(-2).to(torch::kFloat);
  const auto tokens_per_expert = mask.mean(-2);
  const auto prob_per_expert = probs.mean(-2);
  out.aux_loss =
      (tokens_per_expert * prob_per_expert).mean() * static_cast<double>(experts * experts);
  return out;
}

// torch.finfo(dtype).min: what transformers fills masked scores with.
double lowest_of(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kBFloat16:
      return -3.3895313892515355e38;
    case torch::kHalf:
      return -65504.0;
    case torch::kDouble:
      return std::numeric_limits<double>::lowest();
    default:
      return std::numeric_limits<float>::lowest();
  }
}

// The additive mask of padding: 0 where attention_mask is 1, the dtype's lowest value where 0
// ((1 - mask) * finfo.min, as transformers' invert_attention_mask), [B, 1, 1, S].
torch::Tensor padding_bias(const torch::Tensor& attention_mask, torch::Dtype dtype) {
  const auto keep = attention_mask.to(dtype).unsqueeze(1).unsqueeze(1);
  return (1.0 - keep) * lowest_of(dtype);
}

void check_ids(const torch::Tensor& ids, const char* what, int64_t vocab) {
  TORCH_CHECK(ids.defined() && ids.dim() == 2 && ids.scalar_type() == torch::kLong,
              "SwitchTransformer: ", what, " should be [B, S] int64, got ",
              ids.defined() ? ids.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(ids.size(1) >= 1, "SwitchTransformer: ", what, " is empty");
  if (ids.numel() > 0) {
    const auto lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < vocab, "SwitchTransformer: ", what, " holds ids in [", lo, ", ", hi,
                "], outside the vocabulary of ", vocab);
  }
}

}  // namespace

RouterLosses router_losses(const std::vector<SparseCall>& calls) {
  RouterLosses out;
  if (calls.empty()) {
    return out;
  }
  bool same_width = true;
  for (const auto& c : calls) {
    same_width = same_width && c.router_logits.size(-1) == calls.front().router_logits.size(-1) &&
                 c.router_logits.size(0) == calls.front().router_logits.size(0);
  }
  if (same_width) {
    std::vector<torch::Tensor> logits, selected;
    for (const auto& c : calls) {
      logits.push_back(c.router_logits);
      selected.push_back(c.selected);
    }
    return losses_of(torch::cat(logits, 1), torch::cat(selected, 1));
  }
  std::vector<torch::Tensor> z, aux;
  for (const auto& c : calls) {
    const auto l = losses_of(c.router_logits, c.selected);
    z.push_back(l.z_loss);
    aux.push_back(l.aux_loss);
  }
  out.z_loss = torch::stack(z).mean();
  out.aux_loss = torch::stack(aux).mean();
  return out;
}

SwitchTransformerImpl::SwitchTransformerImpl(SwitchTransformerOptions options_)
    : options(std::move(options_)) {
  reset();
}

void SwitchTransformerImpl::reset() {
  options.validate();
  const auto& o = options;
  shared = register_module("shared", torch::nn::Embedding(o.vocab_size(), o.d_model()));
  encoder_blocks = register_module("encoder", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers(); ++i) {
    encoder_blocks->push_back(SwitchBlock(o, /*decoder=*/false, i));
  }
  decoder_blocks = register_module("decoder", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_decoder_layers(); ++i) {
    decoder_blocks->push_back(SwitchBlock(o, /*decoder=*/true, i));
  }
  encoder_final_norm =
      register_module("encoder_final_norm", T5LayerNorm(o.d_model(), o.layer_norm_epsilon()));
  decoder_final_norm =
      register_module("decoder_final_norm", T5LayerNorm(o.d_model(), o.layer_norm_epsilon()));
  lm_head = nullptr;
  if (!o.tie_word_embeddings()) {
    lm_head = register_module(
        "lm_head",
        torch::nn::Linear(torch::nn::LinearOptions(o.d_model(), o.vocab_size()).bias(false)));
  }
}

void SwitchTransformerImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "moeprune::seq2seq::SwitchTransformer(vocab=" << o.vocab_size()
         << ", d_model=" << o.d_model() << ", encoder " << o.num_layers() << " blocks ("
         << o.num_sparse(false) << " sparse), decoder " << o.num_decoder_layers() << " blocks ("
         << o.num_sparse(true) << " sparse), experts=" << o.moe().num_experts() << ")";
}

SwitchBlock SwitchTransformerImpl::encoder_block(int64_t index) const {
  TORCH_CHECK(index >= 0 && index < options.num_layers(), "SwitchTransformer: encoder block ",
              index, " does not exist (", options.num_layers(), " blocks)");
  return encoder_blocks->ptr<SwitchBlockImpl>(index);
}

SwitchBlock SwitchTransformerImpl::decoder_block(int64_t index) const {
  TORCH_CHECK(index >= 0 && index < options.num_decoder_layers(),
              "SwitchTransformer: decoder block ", index, " does not exist (",
              options.num_decoder_layers(), " blocks)");
  return decoder_blocks->ptr<SwitchBlockImpl>(index);
}

std::vector<std::pair<std::string, MoELayer>> SwitchTransformerImpl::moe_layers() const {
  std::vector<std::pair<std::string, MoELayer>> out;
  for (int64_t i = 0; i < options.num_layers(); ++i) {
    const auto ff = encoder_block(i)->feed_forward;
    if (ff->is_sparse) {
      out.emplace_back("encoder.block." + std::to_string(i) + ".layer.1.mlp", ff->moe);
    }
  }
  for (int64_t i = 0; i < options.num_decoder_layers(); ++i) {
    const auto ff = decoder_block(i)->feed_forward;
    if (ff->is_sparse) {
      out.emplace_back("decoder.block." + std::to_string(i) + ".layer.2.mlp", ff->moe);
    }
  }
  return out;
}

torch::Tensor SwitchTransformerImpl::encode(const torch::Tensor& input_ids,
                                            const torch::Tensor& attention_mask,
                                            std::vector<SparseCall>* calls) {
  check_ids(input_ids, "input_ids", options.vocab_size());
  TORCH_CHECK(!attention_mask.defined() || attention_mask.sizes() == input_ids.sizes(),
              "SwitchTransformer: attention_mask ", attention_mask.sizes(),
              " should match input_ids ", input_ids.sizes());
  const bool training = is_training();
  const double p = options.dropout_rate();
  auto hidden = shared(input_ids);
  if (training && p > 0.0) {
    hidden = torch::dropout(hidden, p, true);
  }
  const int64_t length = input_ids.size(1);
  // Block 0's table gives the bias every encoder block adds (bidirectional buckets).
  auto bias =
      encoder_block(0)->self_attention->compute_bias(0, length, length).to(hidden.scalar_type());
  if (attention_mask.defined()) {
    bias = bias + padding_bias(attention_mask, hidden.scalar_type());
  }
  for (int64_t i = 0; i < options.num_layers(); ++i) {
    auto block = encoder_block(i);
    SparseCall call;
    hidden = detail::in_block("encoder.block." + std::to_string(i), [&] {
      return block->forward(hidden, bias, {}, {}, nullptr, calls != nullptr ? &call : nullptr);
    });
    if (calls != nullptr && block->feed_forward->is_sparse) {
      calls->push_back(std::move(call));
    }
  }
  hidden = encoder_final_norm(hidden);
  return training && p > 0.0 ? torch::dropout(hidden, p, true) : hidden;
}

torch::Tensor SwitchTransformerImpl::decode(const torch::Tensor& decoder_input_ids,
                                            const torch::Tensor& encoder_hidden,
                                            const torch::Tensor& attention_mask,
                                            Seq2SeqCache* cache, std::vector<SparseCall>* calls) {
  check_ids(decoder_input_ids, "decoder_input_ids", options.vocab_size());
  const auto& memory =
      cache != nullptr && cache->encoder_hidden.defined() ? cache->encoder_hidden : encoder_hidden;
  TORCH_CHECK(
      memory.defined() && memory.dim() == 3 && memory.size(0) == decoder_input_ids.size(0) &&
          memory.size(2) == options.d_model(),
      "SwitchTransformer: the encoder output should be [", decoder_input_ids.size(0), ", S, ",
      options.d_model(), "], got ", memory.defined() ? memory.sizes() : c10::IntArrayRef{});
  const bool training = is_training();
  const double p = options.dropout_rate();
  auto hidden = shared(decoder_input_ids);
  if (training && p > 0.0) {
    hidden = torch::dropout(hidden, p, true);
  }
  const auto dtype = hidden.scalar_type();
  const int64_t past = cache != nullptr ? cache->length : 0;
  const int64_t length = decoder_input_ids.size(1), keys = past + length;
  // Causal: query at position past + i sees keys 0 .. past + i.
  const auto positions = torch::arange(keys, torch::dtype(torch::kLong).device(hidden.device()));
  const auto future = positions.unsqueeze(0) > (positions.slice(0, past).unsqueeze(1));
  const auto causal = (future.to(dtype) * lowest_of(dtype)).unsqueeze(0).unsqueeze(0);
  const auto self_bias =
      decoder_block(0)->self_attention->compute_bias(past, length, keys).to(dtype) + causal;

  torch::Tensor cross_bias;
  if (cache != nullptr && cache->cross_bias.defined()) {
    cross_bias = cache->cross_bias;
  } else if (attention_mask.defined()) {
    TORCH_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == memory.size(0) &&
                    attention_mask.size(1) == memory.size(1),
                "SwitchTransformer: attention_mask ", attention_mask.sizes(),
                " should be [B, S] of the encoder output ", memory.sizes());
    cross_bias = padding_bias(attention_mask, dtype);
  }
  if (cache != nullptr) {
    cache->blocks.resize(options.num_decoder_layers());
  }
  for (int64_t i = 0; i < options.num_decoder_layers(); ++i) {
    auto block = decoder_block(i);
    SparseCall call;
    hidden = detail::in_block("decoder.block." + std::to_string(i), [&] {
      return block->forward(hidden, self_bias, memory, cross_bias,
                            cache != nullptr ? &cache->blocks[i] : nullptr,
                            calls != nullptr ? &call : nullptr);
    });
    if (calls != nullptr && block->feed_forward->is_sparse) {
      calls->push_back(std::move(call));
    }
  }
  if (cache != nullptr) {
    cache->length = keys;
  }
  hidden = decoder_final_norm(hidden);
  return training && p > 0.0 ? torch::dropout(hidden, p, true) : hidden;
}

torch::Tensor SwitchTransformerImpl::logits(const torch::Tensor& hidden) {
  if (lm_head.is_empty()) {
    // Tied head: T5 rescales the decoder output by d_model^-0.5 before the shared embedding.
    return torch::matmul(hidden * std::pow(static_cast<double>(options.d_model()), -0.5),
                         shared->weight.t());
  }
  return lm_head(hidden);
}

Seq2SeqCache SwitchTransformerImpl::start_cache(const torch::Tensor& input_ids,
                                                const torch::Tensor& attention_mask) {
  torch::NoGradGuard no_grad;
  Seq2SeqCache cache;
  cache.encoder_hidden = encode(input_ids, attention_mask);
  if (attention_mask.defined()) {
    cache.cross_bias = padding_bias(attention_mask, cache.encoder_hidden.scalar_type());
  }
  return cache;
}

torch::Tensor SwitchTransformerImpl::shift_right(const torch::Tensor& labels) const {
  TORCH_CHECK(labels.defined() && labels.dim() == 2 && labels.scalar_type() == torch::kLong,
              "SwitchTransformer: labels should be [B, T] int64");
  auto shifted = torch::empty_like(labels);
  shifted.select(1, 0).fill_(options.decoder_start_token_id());
  shifted.slice(1, 1).copy_(labels.slice(1, 0, labels.size(1) - 1));
  return shifted.masked_fill(shifted.eq(-100), options.pad_token_id());
}

Seq2SeqOutput SwitchTransformerImpl::forward(const torch::Tensor& input_ids,
                                             const torch::Tensor& attention_mask,
                                             const torch::Tensor& decoder_input_ids,
                                             const torch::Tensor& labels) {
  TORCH_CHECK(decoder_input_ids.defined() || labels.defined(),
              "SwitchTransformer: forward needs decoder_input_ids or labels");
  if (labels.defined()) {
    TORCH_CHECK(labels.dim() == 2 && labels.scalar_type() == torch::kLong &&
                    labels.size(0) == input_ids.size(0),
                "SwitchTransformer: labels should be [B, T] int64 with B = ", input_ids.size(0),
                ", got ", labels.sizes(), " ", labels.scalar_type());
    const auto bad = labels.ne(-100) & (labels.lt(0) | labels.ge(options.vocab_size()));
    TORCH_CHECK(!bad.any().item<bool>(),
                "SwitchTransformer: labels hold ids outside the "
                "vocabulary of ",
                options.vocab_size(), " (other than -100)");
  }
  const bool want_losses = labels.defined();
  std::vector<SparseCall> encoder_calls, decoder_calls;
  const auto memory = encode(input_ids, attention_mask, want_losses ? &encoder_calls : nullptr);
  const auto targets = decoder_input_ids.defined() ? decoder_input_ids : shift_right(labels);
  const auto hidden =
      decode(targets, memory, attention_mask, nullptr, want_losses ? &decoder_calls : nullptr);
  Seq2SeqOutput out;
  out.logits = logits(hidden);
  if (want_losses) {
    TORCH_CHECK(labels.size(1) == out.logits.size(1), "SwitchTransformer: labels have ",
                labels.size(1), " positions, the decoder inputs ", out.logits.size(1));
    out.lm_loss = torch::nn::functional::cross_entropy(
        out.logits.reshape({-1, options.vocab_size()}).to(torch::kFloat), labels.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
    out.encoder_losses = router_losses(encoder_calls);
    out.decoder_losses = router_losses(decoder_calls);
    out.loss = out.lm_loss;
    for (const auto* l : {&out.encoder_losses, &out.decoder_losses}) {
      if (l->z_loss.defined()) {
        out.loss = out.loss + options.router_z_loss_coef() * l->z_loss +
                   options.router_aux_loss_coef() * l->aux_loss;
      }
    }
  }
  return out;
}

}  // namespace moeprune::seq2seq

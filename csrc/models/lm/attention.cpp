#include <moeprune/models/lm/attention.h>

#include <torch/torch.h>

#include <cmath>

namespace moeprune::lm {

AttentionImpl::AttentionImpl(AttentionOptions options_) : options(std::move(options_)) {
  reset();
}

void AttentionImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(
      o.hidden_size() >= 1 && o.num_heads() >= 1 && o.num_kv_heads() >= 1 && o.head_dim() >= 2,
      "Attention: sizes should be positive (hidden ", o.hidden_size(), ", heads ", o.num_heads(),
      ", kv heads ", o.num_kv_heads(), ", head_dim ", o.head_dim(), ")");
  TORCH_CHECK(o.num_heads() % o.num_kv_heads() == 0, "Attention: num_heads ", o.num_heads(),
              " is not a multiple of num_kv_heads ", o.num_kv_heads());
  TORCH_CHECK(o.rotary_dim() >= 0 && o.rotary_dim() <= o.head_dim(),
              "Attention: rotary_dim should be in [0, head_dim = ", o.head_dim(), "], got ",
              o.rotary_dim());
  TORCH_CHECK(o.rotary_width() % 2 == 0, "Attention: the rotary width should be even, got ",
              o.rotary_width());
  TORCH_CHECK(o.clip_qkv() >= 0.0, "Attention: clip_qkv should be >= 0, got ", o.clip_qkv());
  TORCH_CHECK(o.softmax_scale() >= 0.0, "Attention: softmax_scale should be >= 0, got ",
              o.softmax_scale());
  using torch::nn::LinearOptions;
  const auto linear = [](int64_t in, int64_t out, bool bias) {
    return torch::nn::Linear(LinearOptions(in, out).bias(bias));
  };
  const int64_t d = o.hidden_size(), H = o.num_heads();
  if (o.latent()) {
    const auto& l = *o.latent();
    TORCH_CHECK(l.kv_lora_rank() >= 1 && l.qk_nope_head_dim() >= 0 && l.qk_rope_head_dim() >= 2 &&
                    l.v_head_dim() >= 1 && l.q_lora_rank() >= 0,
                "Attention: latent sizes should be positive (kv_lora_rank ", l.kv_lora_rank(),
                ", qk_nope_head_dim ", l.qk_nope_head_dim(), ", qk_rope_head_dim ",
                l.qk_rope_head_dim(), ", v_head_dim ", l.v_head_dim(), ", q_lora_rank ",
                l.q_lora_rank(), ")");
    TORCH_CHECK(o.head_dim() == l.qk_nope_head_dim() + l.qk_rope_head_dim(),
                "Attention: latent attention's head_dim should be qk_nope_head_dim + "
                "qk_rope_head_dim = ",
                l.qk_nope_head_dim() + l.qk_rope_head_dim(), ", got ", o.head_dim());
    TORCH_CHECK(o.num_kv_heads() == H,
                "Attention: latent attention expands keys and values for "
                "every head; num_kv_heads should be num_heads = ",
                H, ", got ", o.num_kv_heads());
    TORCH_CHECK(o.qk_norm() == QKNorm::kNone && o.clip_qkv() == 0.0 && o.rotary_dim() == 0,
                "Attention: latent attention has no q/k norm, clip_qkv or rotary_dim (its rotary "
                "part is qk_rope_head_dim)");
    if (l.q_lora_rank() > 0) {
      q_a_proj = register_module("q_a_proj", linear(d, l.q_lora_rank(), o.qkv_bias()));
      q_a_layernorm = register_module("q_a_layernorm",
                                      RMSNorm(RMSNormOptions(l.q_lora_rank()).eps(l.norm_eps())));
      q_b_proj = register_module("q_b_proj", linear(l.q_lora_rank(), H * o.head_dim(), false));
    } else {
      q_proj = register_module("q_proj", linear(d, H * o.head_dim(), false));
    }
    kv_a_proj_with_mqa = register_module(
        "kv_a_proj_with_mqa", linear(d, l.kv_lora_rank() + l.qk_rope_head_dim(), o.qkv_bias()));
    kv_a_layernorm = register_module("kv_a_layernorm",
                                     RMSNorm(RMSNormOptions(l.kv_lora_rank()).eps(l.norm_eps())));
    kv_b_proj = register_module(
        "kv_b_proj", linear(l.kv_lora_rank(), H * (l.qk_nope_head_dim() + l.v_head_dim()), false));
    o_proj = register_module("o_proj", linear(H * l.v_head_dim(), d, o.output_bias()));
    return;
  }
  const int64_t q_width = H * o.head_dim();
  const int64_t kv_width = o.num_kv_heads() * o.head_dim();
  q_proj = register_module("q_proj", linear(d, q_width, o.qkv_bias()));
  k_proj = register_module("k_proj", linear(d, kv_width, o.qkv_bias()));
  v_proj = register_module("v_proj", linear(d, kv_width, o.qkv_bias()));
  o_proj = register_module("o_proj", linear(q_width, d, o.output_bias()));
  if (o.qk_norm() == QKNorm::kPerHead) {
    q_norm = register_module("q_norm", RMSNorm(RMSNormOptions(o.head_dim()).eps(o.rms_norm_eps())));
    k_norm = register_module("k_norm", RMSNorm(RMSNormOptions(o.head_dim()).eps(o.rms_norm_eps())));
  } else if (o.qk_norm() == QKNorm::kWhole) {
    q_norm = register_module("q_norm", RMSNorm(RMSNormOptions(q_width).eps(o.rms_norm_eps())));
    k_norm = register_module("k_norm", RMSNorm(RMSNormOptions(kv_width).eps(o.rms_norm_eps())));
  }
}

void AttentionImpl::pretty_print(std::ostream& stream) const {
  if (is_latent()) {
    const auto& l = *options.latent();
    stream << "moeprune::lm::Attention(latent, heads=" << options.num_heads()
           << ", q_lora_rank=" << l.q_lora_rank() << ", kv_lora_rank=" << l.kv_lora_rank()
           << ", qk_head_dim=" << options.head_dim() << ", v_head_dim=" << l.v_head_dim() << ")";
    return;
  }
  stream << "moeprune::lm::Attention(heads=" << options.num_heads()
         << ", kv_heads=" << options.num_kv_heads() << ", head_dim=" << options.head_dim() << ")";
}

AttentionImpl::QKV AttentionImpl::grouped_qkv(const torch::Tensor& x, const RotaryAngles& angles) {
  const int64_t B = x.size(0), S = x.size(1);
  const int64_t H = options.num_heads(), Hkv = options.num_kv_heads(), hd = options.head_dim();
  auto q = q_proj(x);
  auto k = k_proj(x);
  auto v = v_proj(x);
  if (options.qk_norm() == QKNorm::kWhole) {  // OLMoE: norm over the projection, then clip
    q = q_norm(q);
    k = k_norm(k);
  }
  if (options.clip_qkv() > 0.0) {
    q = q.clamp(-options.clip_qkv(), options.clip_qkv());
    k = k.clamp(-options.clip_qkv(), options.clip_qkv());
    v = v.clamp(-options.clip_qkv(), options.clip_qkv());
  }
  q = q.view({B, S, H, hd});
  k = k.view({B, S, Hkv, hd});
  v = v.view({B, S, Hkv, hd});
  if (options.qk_norm() == QKNorm::kPerHead) {  // Qwen3, GLM-4.5: norm over each head
    q = q_norm(q);
    k = k_norm(k);
  }
  q = q.transpose(1, 2);
  k = k.transpose(1, 2);
  const int64_t r = options.rotary_width();
  const bool interleaved = options.rope_interleaved();
  if (r == hd) {
    q = apply_rotary(q, angles, interleaved);
    k = apply_rotary(k, angles, interleaved);
  } else {  // GLM-4.5: the first r features turn, the rest pass (modeling_glm4_moe.py)
    q = torch::cat({apply_rotary(q.narrow(-1, 0, r), angles, interleaved), q.narrow(-1, r, hd - r)},
                   -1);
    k = torch::cat({apply_rotary(k.narrow(-1, 0, r), angles, interleaved), k.narrow(-1, r, hd - r)},
                   -1);
  }
  return {q, k, v.transpose(1, 2)};
}

AttentionImpl::QKV AttentionImpl::latent_qkv(const torch::Tensor& x, const RotaryAngles& angles) {
  // DeepseekV3Attention.forward (modeling_deepseek_v3.py), DeepseekV2Attention likewise.
  const auto& l = *options.latent();
  const int64_t B = x.size(0), S = x.size(1), H = options.num_heads();
  const int64_t nope = l.qk_nope_head_dim(), rope = l.qk_rope_head_dim(), vd = l.v_head_dim();
  auto q = l.q_lora_rank() > 0 ? q_b_proj(q_a_layernorm(q_a_proj(x))) : q_proj(x);
  q = q.view({B, S, H, nope + rope}).transpose(1, 2);
  const auto compressed = kv_a_proj_with_mqa(x);
  const auto kv = kv_b_proj(kv_a_layernorm(compressed.narrow(-1, 0, l.kv_lora_rank())))
                      .view({B, S, H, nope + vd})
                      .transpose(1, 2);
  // One rotary key part [B, 1, S, rope] for every head.
  auto k_rot = compressed.narrow(-1, l.kv_lora_rank(), rope).view({B, 1, S, rope});
  const bool interleaved = options.rope_interleaved();
  const auto q_rot = apply_rotary(q.narrow(-1, nope, rope), angles, interleaved);
  k_rot = apply_rotary(k_rot, angles, interleaved).expand({B, H, S, rope});
  return {torch::cat({q.narrow(-1, 0, nope), q_rot}, -1),
          torch::cat({kv.narrow(-1, 0, nope), k_rot}, -1), kv.narrow(-1, nope, vd)};
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const RotaryAngles& angles,
                                     KVCache* cache, int64_t layer) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == options.hidden_size(),
              "Attention: input should be [B, S, ", options.hidden_size(), "], got ", x.sizes());
  const int64_t B = x.size(0), S = x.size(1), H = options.num_heads();
  TORCH_CHECK(angles.cos.size(0) == S, "Attention: rotary angles for ", angles.cos.size(0),
              " positions, input has ", S);
  auto [q, k, v] = is_latent() ? latent_qkv(x, angles) : grouped_qkv(x, angles);
  if (cache != nullptr) {
    std::tie(k, v) = cache->append(layer, k, v);
  }
  // Queries are the last S of the T positions: query i sees keys 0 .. T - S + i.
  const int64_t T = k.size(2);
  std::optional<torch::Tensor> mask;
  bool is_causal = false;
  if (S > 1 && T == S) {
    is_causal = true;
  } else if (S > 1) {
    const auto keys =
        torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(x.device()));
    const auto last =
        torch::arange(T - S, T, torch::TensorOptions().dtype(torch::kLong).device(x.device()));
    mask = keys.unsqueeze(0) <= last.unsqueeze(1);
  }
  const double scale = options.softmax_scale() > 0.0
                           ? options.softmax_scale()
                           : 1.0 / std::sqrt(static_cast<double>(options.head_dim()));
  const auto out = at::scaled_dot_product_attention(q, k, v, mask, 0.0, is_causal, scale,
                                                    /*enable_gqa=*/H != options.num_kv_heads());
  return o_proj(out.transpose(1, 2).reshape({B, S, H * options.value_dim()}));
}

}  // namespace moeprune::lm

#include <moeprune/models/lm/attention.h>

#include <torch/torch.h>

#include <cmath>

namespace moeprune::lm {

RotaryAngles rotary_angles(int64_t start, int64_t length, int64_t head_dim, double theta,
                           torch::ScalarType dtype, const torch::Device& device) {
  TORCH_CHECK(head_dim % 2 == 0, "rotary embedding: head_dim should be even, got ", head_dim);
  TORCH_CHECK(theta > 0.0, "rotary embedding: rope_theta should be > 0, got ", theta);
  // inv_freq = 1 / theta^(arange(0, d, 2) / d) in fp32, then angle = position * inv_freq
  // (LlamaRotaryEmbedding / _compute_default_rope_parameters).
  const auto exponent =
      torch::arange(0, head_dim, 2, torch::kLong).to(torch::kFloat) / static_cast<double>(head_dim);
  const auto inv_freq = 1.0 / torch::pow(theta, exponent);
  const auto positions = torch::arange(start, start + length, torch::kLong).to(torch::kFloat);
  const auto freqs = positions.unsqueeze(1) * inv_freq.unsqueeze(0);
  const auto angles = torch::cat({freqs, freqs}, -1);
  return {angles.cos().to(device, dtype), angles.sin().to(device, dtype)};
}

namespace {

// The other half of each head's features, the first half negated: (-x2, x1).
torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryAngles& a) {
  return x * a.cos + rotate_half(x) * a.sin;
}

}  // namespace

AttentionImpl::AttentionImpl(AttentionOptions options_) : options(options_) {
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
  TORCH_CHECK(o.head_dim() % 2 == 0, "Attention: head_dim should be even (rotary), got ",
              o.head_dim());
  TORCH_CHECK(o.clip_qkv() >= 0.0, "Attention: clip_qkv should be >= 0, got ", o.clip_qkv());
  const int64_t q_width = o.num_heads() * o.head_dim();
  const int64_t kv_width = o.num_kv_heads() * o.head_dim();
  using torch::nn::LinearOptions;
  q_proj = register_module(
      "q_proj", torch::nn::Linear(LinearOptions(o.hidden_size(), q_width).bias(o.qkv_bias())));
  k_proj = register_module(
      "k_proj", torch::nn::Linear(LinearOptions(o.hidden_size(), kv_width).bias(o.qkv_bias())));
  v_proj = register_module(
      "v_proj", torch::nn::Linear(LinearOptions(o.hidden_size(), kv_width).bias(o.qkv_bias())));
  o_proj = register_module(
      "o_proj", torch::nn::Linear(LinearOptions(q_width, o.hidden_size()).bias(o.output_bias())));
  if (o.qk_norm() == QKNorm::kPerHead) {
    q_norm = register_module("q_norm", RMSNorm(RMSNormOptions(o.head_dim()).eps(o.rms_norm_eps())));
    k_norm = register_module("k_norm", RMSNorm(RMSNormOptions(o.head_dim()).eps(o.rms_norm_eps())));
  } else if (o.qk_norm() == QKNorm::kWhole) {
    q_norm = register_module("q_norm", RMSNorm(RMSNormOptions(q_width).eps(o.rms_norm_eps())));
    k_norm = register_module("k_norm", RMSNorm(RMSNormOptions(kv_width).eps(o.rms_norm_eps())));
  }
}

void AttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::lm::Attention(heads=" << options.num_heads()
         << ", kv_heads=" << options.num_kv_heads() << ", head_dim=" << options.head_dim() << ")";
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const RotaryAngles& angles,
                                     KVCache* cache, int64_t layer) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == options.hidden_size(),
              "Attention: input should be [B, S, ", options.hidden_size(), "], got ", x.sizes());
  const int64_t B = x.size(0), S = x.size(1);
  const int64_t H = options.num_heads(), Hkv = options.num_kv_heads(), hd = options.head_dim();
  TORCH_CHECK(angles.cos.size(0) == S, "Attention: rotary angles for ", angles.cos.size(0),
              " positions, input has ", S);
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
  if (options.qk_norm() == QKNorm::kPerHead) {  // Qwen3: norm over each head's features
    q = q_norm(q);
    k = k_norm(k);
  }
  q = apply_rotary(q.transpose(1, 2), angles);
  k = apply_rotary(k.transpose(1, 2), angles);
  v = v.transpose(1, 2);
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
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const auto out = at::scaled_dot_product_attention(q, k, v, mask, 0.0, is_causal, scale,
                                                    /*enable_gqa=*/H != Hkv);
  return o_proj(out.transpose(1, 2).reshape({B, S, H * hd}));
}

}  // namespace moeprune::lm

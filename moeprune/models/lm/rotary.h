#pragma once

// Rotary position embedding (RoFormer, Su et al. 2021) as the language families compute it:
// over the whole head or its first features, halves or interleaved pairs, with YaRN scaling.
#include <moeprune/models/lm/options.h>

#include <torch/types.h>

#include <cstdint>

namespace moeprune::lm {

/// cos and sin of the rotary embedding for a run of positions, [S, rotary width] each in the
/// model's dtype (fp32 with rotary_in_fp32): inv_freq = theta^(-2i/r) in fp32 (YaRN-blended when
/// set), the angles duplicated over both halves, times YaRN's attention factor (transformers'
/// LlamaRotaryEmbedding and _compute_default_rope_parameters / _compute_yarn_parameters).
struct RotaryAngles {
  torch::Tensor cos, sin;
};
RotaryAngles rotary_angles(const AttentionOptions& attention, int64_t start, int64_t length,
                           torch::ScalarType dtype, const torch::Device& device);

/// The inverse frequencies [rotary width / 2] (fp32) of `attention`'s rotary embedding.
torch::Tensor rotary_inverse_frequencies(const AttentionOptions& attention);

/// YaRN's scale of cos and sin: attention_factor, or m(factor, mscale) / m(factor,
/// mscale_all_dim) with both set, or m(factor, 1); m(s, x) = 0.1 x ln s + 1, 1 for s <= 1.
double yarn_attention_factor(const YarnScaling& yarn);
/// m(s, x) above (modeling_rope_utils.get_mscale, modeling_deepseek_v3.yarn_get_mscale).
double yarn_mscale(double scale, double mscale);

/// Turns x [..., S, r] (r the angles' width) by the angles [S, r]. Halves: x cos + (-x2, x1) sin,
/// x1 and x2 the first and second half of the features. Interleaved: pairs (2i, 2i + 1) are
/// turned together; the result lists the pairs' first elements, then their second ones
/// (transformers' apply_rotary_pos_emb_interleave), a fixed permutation of the complex rotation
/// of DeepSeek-V2 that leaves q.k unchanged when queries and keys both get it.
/// Angles of another dtype than x (rotary_in_fp32) turn x in theirs, the result cast back.
torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryAngles& angles, bool interleaved);

}  // namespace moeprune::lm

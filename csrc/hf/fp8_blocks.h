#pragma once

// Checkpoints stored in block-scaled FP8, as DeepSeek-V3/R1, Kimi-K2 and many GLM and Qwen3
// releases ship them: config.json's quantization_config {"quant_method": "fp8", "fmt": "e4m3",
// "weight_block_size": [bo, bi], ...}; each quantised X.weight [out, in] is float8_e4m3fn with
// X.weight_scale_inv [ceil(out / bo), ceil(in / bi)] (fp32 or bf16), and the weight is
//   W[r, c] = float(X.weight[r, c]) * X.weight_scale_inv[r / bo, c / bi]
// in fp32 (DeepSeek-V3's inference/kernel.py weight_dequant; transformers' Fp8Dequantize), the
// last blocks of a dimension that bo or bi does not divide cut short. Everything else (norms,
// embeddings, the router, the LM head) is stored in high precision.
#include "hf/config.h"

#include <moeprune/io/safetensors.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>

namespace moeprune::hf::detail {

/// [bo, bi] of an "fp8" quantization_config (refusing, by field, what moeprune does not read:
/// another fmt, static activation scales, a block size that is not two positive integers);
/// nothing for any other config.
std::optional<std::array<int64_t, 2>> fp8_block_size(const Config& config);

/// The dense weight [out, in] that an FP8 weight and its block scales store, in `dtype`
/// (computed in fp32); `name` goes into the errors (scales of the wrong shape or dtype).
torch::Tensor dequantize_fp8_blocks(const torch::Tensor& weight, const torch::Tensor& scale_inv,
                                    std::array<int64_t, 2> block, torch::Dtype dtype,
                                    const std::string& name);

/// For an fp8 config: adds every X.weight stored float8_e4m3fn with X.weight_scale_inv as a
/// tensor decoded under its own name (Checkpoint::add_decoded), in the scales' dtype when it
/// is 16 or 32 bits wide (else bf16), as transformers' dequantisation gives it. Refuses an FP8
/// weight without scales and scales of the wrong shape, naming them. Returns how many.
int64_t add_fp8_block_weights(const Config& config, safetensors::Checkpoint& checkpoint);

}  // namespace moeprune::hf::detail

#pragma once

// compressed-tensors' "pack-quantized" format (the compressed-tensors package,
// compressors/quantized_compressors/pack_quantized.py, 0.14.0.1; what llm-compressor writes for
// W4A16 and vLLM loads): a weight `X.weight` [rows, cols] quantised to b-bit signed codes q in
// [-2^(b-1), 2^(b-1) - 1] with group scales is stored as
//   X.weight_packed      int32 [rows, ceil(cols / (32 / b))]: q + 2^(b-1) (unsigned), 32 / b
//                        codes per word along the row, the first in the lowest bits, the last
//                        word zero-padded (pack_to_int32);
//   X.weight_scale       [rows, groups], the model's dtype;
//   X.weight_zero_point  int32 [ceil(rows / (32 / b)), groups], asymmetric only: the signed zero
//                        points packed the same way down each column (packed_dim=0);
//   X.weight_g_idx       int32 [cols], act-order only: each input's group;
//   X.weight_shape       int32 [2]: rows, cols;
// and W = scale[r, g(j)] * (q[r, j] - zero[r, g(j)]).
#include <moeprune/hf/pruning.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace moeprune::hf::detail {

/// pack_to_int32: signed codes `codes` [rows, cols] (int8, b bits) packed 32 / b to a word along
/// `dim` (1: along each row; 0: down each column). Refuses a code out of range.
torch::Tensor pack_int32(const torch::Tensor& codes, int64_t bits, int64_t dim = 1);

/// unpack_from_int32: the signed codes [rows, cols] (int8) that `packed` holds along `dim`.
torch::Tensor unpack_int32(const torch::Tensor& packed, int64_t bits, int64_t rows, int64_t cols,
                           int64_t dim = 1);

struct PackQuantized {
  torch::Tensor weight_packed, weight_scale, weight_zero_point, weight_g_idx, weight_shape;
};

/// Encodes codes [rows, cols] (int8), scales and zero points [rows, groups] and g_idx [cols]
/// (undefined: input j in group j / (cols / groups)); zero points are stored only when not
/// `symmetric`, g_idx only when given. `name` goes into the errors.
PackQuantized encode_pack_quantized(const torch::Tensor& codes, const torch::Tensor& scales,
                                    const torch::Tensor& zeros, const torch::Tensor& g_idx,
                                    int64_t bits, bool symmetric, torch::Dtype scale_dtype,
                                    const std::string& name);

/// The dense weight [rows, cols] in `dtype` that `parts` stores (checked: shapes, dtypes and the
/// groups agree with weight_shape). Without g_idx input j is in group j / group_size
/// (group_size 0: cols / groups, which must divide cols).
torch::Tensor decode_pack_quantized(const PackQuantized& parts, int64_t bits, bool symmetric,
                                    torch::Dtype dtype, const std::string& name,
                                    int64_t group_size = 0);

/// config.json's "quantization_config" for a checkpoint whose linear modules hold weights stored
/// pack-quantized with `scheme`, except the `ignore`d ones: one config group targeting "Linear",
/// as llm-compressor writes it (vLLM's MoE paths look the scheme up under "Linear"), with the
/// fields compressed-tensors 0.14.0.1's QuantizationConfig serialises (weights only, int, minmax
/// observer).
nlohmann::ordered_json pack_quantized_config(const PackedQuantization& scheme,
                                             const std::vector<std::string>& ignore);

}  // namespace moeprune::hf::detail

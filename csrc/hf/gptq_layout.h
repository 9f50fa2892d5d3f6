#pragma once

// Reading checkpoints in the GPTQ layout (AutoGPTQ / GPTQModel, what most "-GPTQ-Int4" releases
// ship; config.json's quantization_config {"quant_method": "gptq", "bits", "group_size",
// "desc_act", "sym", "checkpoint_format"}): each quantised linear X stores
//   X.qweight  int32 [in * b / 32, out]: unsigned b-bit codes packed 32 / b to a word down each
//              column (input i in word i / (32 / b), bits b * (i % (32 / b)) and up);
//   X.qzeros   int32 [groups, out * b / 32]: the zero points packed the same way along the row,
//              stored minus 1 in the original format ("gptq"; "gptq_v2" stores them as they are);
//   X.scales   [groups, out] (fp16);
//   X.g_idx    int32 [in], each input's group (desc_act; i / group_size when absent);
// and W[o, i] = scales[g(i), o] * (q[i, o] - z[g(i), o]) (GPTQModel's dequantize_weight).
#include "hf/config.h"

#include <moeprune/io/safetensors.h>

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>

namespace moeprune::hf::detail {

struct GPTQLayout {
  int64_t bits = 4;
  int64_t group_size = 128;  ///< 0: one group per column (group_size -1 in the config)
  int64_t zero_offset = 1;   ///< added to the stored zero points ("gptq": 1, "gptq_v2": 0)
};

/// The layout of a "gptq" quantization_config (refusing, by field, bits other than 2, 4 or 8,
/// an unknown checkpoint_format, another packing); nothing for any other config.
std::optional<GPTQLayout> gptq_layout(const Config& config);

/// The dense weight [out, in] in the scales' dtype that X's four tensors store (g_idx may be
/// undefined); `name` goes into the errors (shapes that disagree).
torch::Tensor dequantize_gptq(const torch::Tensor& qweight, const torch::Tensor& qzeros,
                              const torch::Tensor& scales, const torch::Tensor& g_idx,
                              const GPTQLayout& layout, const std::string& name);

/// For a gptq config: adds every X.weight stored as X.qweight and its parts as a decoded tensor.
/// Returns how many; 0 for any other config.
int64_t add_gptq_weights(const Config& config, safetensors::Checkpoint& checkpoint);

}  // namespace moeprune::hf::detail

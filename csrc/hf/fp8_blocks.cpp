#include "hf/fp8_blocks.h"

#include <torch/torch.h>

#include <vector>

namespace moeprune::hf::detail {

std::optional<std::array<int64_t, 2>> fp8_block_size(const Config& config) {
  if (!config.is_set("quantization_config")) return std::nullopt;
  const auto& q = config.json().at("quantization_config");
  if (!q.is_object() || q.value("quant_method", std::string()) != "fp8") return std::nullopt;
  const auto where = config.path() + ": quantization_config.";
  const auto fmt =
      q.contains("fmt") && q["fmt"].is_string() ? q["fmt"].get<std::string>() : std::string("e4m3");
  TORCH_CHECK(fmt == "e4m3", where, "fmt is \"", fmt,
              "\"; moeprune reads float8_e4m3fn weights (fmt e4m3)");
  const auto activations = q.contains("activation_scheme") && q["activation_scheme"].is_string()
                               ? q["activation_scheme"].get<std::string>()
                               : std::string("dynamic");
  TORCH_CHECK(activations == "dynamic", where, "activation_scheme is \"", activations,
              "\": static activation scales are not read (moeprune computes the activations "
              "unquantised, as a dynamic scheme's reference does)");
  TORCH_CHECK(q.contains("weight_block_size") && q["weight_block_size"].is_array() &&
                  q["weight_block_size"].size() == 2 &&
                  q["weight_block_size"][0].is_number_integer() &&
                  q["weight_block_size"][1].is_number_integer() &&
                  q["weight_block_size"][0].get<int64_t>() >= 1 &&
                  q["weight_block_size"][1].get<int64_t>() >= 1,
              where,
              "weight_block_size should be two positive integers [rows, cols] (per-tensor FP8 "
              "scales are not read)");
  return std::array<int64_t, 2>{q["weight_block_size"][0].get<int64_t>(),
                                q["weight_block_size"][1].get<int64_t>()};
}

torch::Tensor dequantize_fp8_blocks(const torch::Tensor& weight, const torch::Tensor& scale_inv,
                                    std::array<int64_t, 2> block, torch::Dtype dtype,
                                    const std::string& name) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kFloat8_e4m3fn, name,
              ": an FP8 weight should be float8_e4m3fn [out, in], got ", weight.scalar_type(), " ",
              weight.sizes());
  const int64_t rows = weight.size(0), cols = weight.size(1);
  const int64_t br = (rows + block[0] - 1) / block[0], bc = (cols + block[1] - 1) / block[1];
  TORCH_CHECK(scale_inv.dim() == 2 && scale_inv.size(0) == br && scale_inv.size(1) == bc, name,
              "_scale_inv is ", scale_inv.sizes(), ", expected [", br, ", ", bc, "] for a ", rows,
              " x ", cols, " weight in blocks of ", block[0], " x ", block[1]);
  TORCH_CHECK(scale_inv.is_floating_point() && scale_inv.element_size() >= 2, name,
              "_scale_inv is ", scale_inv.scalar_type(),
              "; moeprune reads fp32, bf16 or fp16 "
              "block scales");
  // Each scale over its block: repeat along both dimensions, cut to the weight's shape.
  const auto s = scale_inv.to(torch::kFloat)
                     .repeat_interleave(block[0], 0)
                     .narrow(0, 0, rows)
                     .repeat_interleave(block[1], 1)
                     .narrow(1, 0, cols);
  return (weight.to(torch::kFloat) * s).to(dtype);
}

int64_t add_fp8_block_weights(const Config& config, safetensors::Checkpoint& checkpoint) {
  const auto block = fp8_block_size(config);
  if (!block) return 0;
  int64_t added = 0;
  for (const auto& name : checkpoint.names()) {
    const auto& info = checkpoint.info(name);
    if (info.scalar_type != torch::kFloat8_e4m3fn) continue;
    const auto scales = name + "_scale_inv";
    TORCH_CHECK(checkpoint.contains(scales), checkpoint.directory(), ": ", name,
                " is stored in FP8 but ", scales, " (its block scales) is missing");
    const auto& si = checkpoint.info(scales);
    TORCH_CHECK(info.shape.size() == 2, checkpoint.directory(), ": ", name, " is FP8 ",
                c10::IntArrayRef(info.shape), "; block scales apply to [out, in] weights");
    const int64_t rows = info.shape[0], cols = info.shape[1];
    const std::vector<int64_t> want{(rows + (*block)[0] - 1) / (*block)[0],
                                    (cols + (*block)[1] - 1) / (*block)[1]};
    TORCH_CHECK(si.shape == want, checkpoint.directory(), ": ", scales, " is ",
                c10::IntArrayRef(si.shape), ", expected ", c10::IntArrayRef(want), " for the ",
                rows, " x ", cols, " weight ", name, " in blocks of ", (*block)[0], " x ",
                (*block)[1], " (quantization_config.weight_block_size)");
    const auto out = c10::isFloatingType(si.scalar_type) && c10::elementSize(si.scalar_type) >= 2
                         ? si.scalar_type
                         : torch::kBFloat16;
    safetensors::Checkpoint::Decoded d;
    d.info = info;
    d.info.begin = d.info.end = 0;  // decoded: no byte range
    d.info.scalar_type = out;
    d.info.dtype = out == torch::kFloat ? "F32" : out == torch::kBFloat16 ? "BF16" : "F16";
    d.parts = {name, scales};
    const auto b = *block;
    d.decode = [name, scales, b, out](const safetensors::Checkpoint& c) {
      return dequantize_fp8_blocks(c.stored_tensor(name), c.stored_tensor(scales), b, out, name);
    };
    checkpoint.add_decoded(std::move(d));
    ++added;
  }
  return added;
}

}  // namespace moeprune::hf::detail

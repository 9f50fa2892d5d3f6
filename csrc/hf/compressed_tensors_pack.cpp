#include "hf/compressed_tensors_pack.h"

#include <vector>

namespace moeprune::hf::detail {
namespace {

void check_bits(int64_t bits, const char* what) {
  TORCH_CHECK(bits >= 1 && bits <= 8, what, ": pack-quantized stores 1 to 8 bits, got ", bits);
}

}  // namespace

torch::Tensor pack_int32(const torch::Tensor& codes, int64_t bits, int64_t dim) {
  check_bits(bits, "pack_int32");
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == torch::kChar,
              "pack_int32: codes should be int8 [rows, cols], got ", codes.scalar_type(), " ",
              codes.sizes());
  TORCH_CHECK(dim == 0 || dim == 1, "pack_int32: dim should be 0 or 1, got ", dim);
  const int64_t offset = int64_t{1} << (bits - 1);
  const auto lo = codes.min().item<int64_t>(), hi = codes.max().item<int64_t>();
  TORCH_CHECK(lo >= -offset && hi < offset, "pack_int32: ", bits, "-bit codes should be in [",
              -offset, ", ", offset - 1, "], found ", lo < -offset ? lo : hi);
  // Along a row; dim 0 packs the transpose and transposes back, as pack_to_int32 does.
  const auto c = (dim == 0 ? codes.t() : codes).contiguous();
  const int64_t rows = c.size(0), cols = c.size(1), per_word = 32 / bits;
  const int64_t words = (cols + per_word - 1) / per_word;
  auto packed = torch::zeros({rows, words}, torch::kInt);
  const auto in = c.accessor<int8_t, 2>();
  auto out = packed.accessor<int32_t, 2>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t w = 0; w < words; ++w) {
      uint32_t word = 0;
      for (int64_t i = 0; i < per_word && w * per_word + i < cols; ++i) {
        const auto u = static_cast<uint32_t>(in[r][w * per_word + i] + offset);
        word |= u << (i * bits);
      }
      out[r][w] = static_cast<int32_t>(word);
    }
  }
  return dim == 0 ? packed.t().contiguous() : packed;
}

torch::Tensor unpack_int32(const torch::Tensor& packed, int64_t bits, int64_t rows, int64_t cols,
                           int64_t dim) {
  check_bits(bits, "unpack_int32");
  TORCH_CHECK(dim == 0 || dim == 1, "unpack_int32: dim should be 0 or 1, got ", dim);
  const int64_t per_word = 32 / bits;
  // In the orientation packed along the row: [lines, length].
  const int64_t lines = dim == 1 ? rows : cols, length = dim == 1 ? cols : rows;
  const int64_t words = (length + per_word - 1) / per_word;
  const std::vector<int64_t> want =
      dim == 1 ? std::vector<int64_t>{lines, words} : std::vector<int64_t>{words, lines};
  TORCH_CHECK(packed.scalar_type() == torch::kInt && packed.sizes() == want, "unpack_int32: ", rows,
              " x ", cols, " ", bits, "-bit codes packed along dim ", dim, " should be int32 ",
              c10::IntArrayRef(want), ", got ", packed.scalar_type(), " ", packed.sizes());
  const auto p = (dim == 0 ? packed.t() : packed).contiguous();
  const int64_t offset = int64_t{1} << (bits - 1);
  const uint32_t mask = (uint32_t{1} << bits) - 1;
  auto codes = torch::empty({lines, length}, torch::kChar);
  const auto in = p.accessor<int32_t, 2>();
  auto out = codes.accessor<int8_t, 2>();
  for (int64_t r = 0; r < lines; ++r) {
    for (int64_t j = 0; j < length; ++j) {
      const auto word = static_cast<uint32_t>(in[r][j / per_word]);
      const auto u = (word >> ((j % per_word) * bits)) & mask;
      out[r][j] = static_cast<int8_t>(static_cast<int64_t>(u) - offset);
    }
  }
  return dim == 0 ? codes.t().contiguous() : codes;
}

PackQuantized encode_pack_quantized(const torch::Tensor& codes, const torch::Tensor& scales,
                                    const torch::Tensor& zeros, const torch::Tensor& g_idx,
                                    int64_t bits, bool symmetric, torch::Dtype scale_dtype,
                                    const std::string& name) {
  TORCH_CHECK(
      codes.dim() == 2 && scales.dim() == 2 && scales.size(0) == codes.size(0) &&
          scales.size(1) >= 1 && codes.size(1) % scales.size(1) == 0,
      name, ": ", codes.sizes(), " codes with ", scales.sizes(),
      " scales: pack-quantized needs [rows, groups] scales with groups dividing the inputs");
  PackQuantized p;
  p.weight_packed = pack_int32(codes, bits, 1);
  p.weight_scale = scales.to(scale_dtype).contiguous();
  if (!symmetric) {
    TORCH_CHECK(zeros.defined() && zeros.sizes() == scales.sizes(), name,
                ": asymmetric codes need zero points shaped like the scales ", scales.sizes());
    p.weight_zero_point = pack_int32(zeros.to(torch::kChar), bits, 0);
  }
  if (g_idx.defined()) {
    TORCH_CHECK(g_idx.dim() == 1 && g_idx.size(0) == codes.size(1), name, ": g_idx should be [",
                codes.size(1), "], got ", g_idx.sizes());
    p.weight_g_idx = g_idx.to(torch::kInt).contiguous();
  }
  p.weight_shape = torch::tensor({codes.size(0), codes.size(1)}, torch::kInt);
  return p;
}

torch::Tensor decode_pack_quantized(const PackQuantized& parts, int64_t bits, bool symmetric,
                                    torch::Dtype dtype, const std::string& name,
                                    int64_t group_size) {
  TORCH_CHECK(parts.weight_shape.defined() && parts.weight_shape.numel() == 2, name,
              ": weight_shape should hold rows and cols");
  const auto shape = parts.weight_shape.to(torch::kLong);
  const int64_t rows = shape[0].item<int64_t>(), cols = shape[1].item<int64_t>();
  TORCH_CHECK(rows >= 1 && cols >= 1, name, ": weight_shape [", rows, ", ", cols, "]");
  const auto codes = unpack_int32(parts.weight_packed, bits, rows, cols, 1);
  const auto& scale = parts.weight_scale;
  TORCH_CHECK(scale.defined() && scale.dim() == 2 && scale.size(0) == rows && scale.size(1) >= 1,
              name, ": weight_scale should be [", rows, ", groups], got ",
              scale.defined() ? scale.sizes() : c10::IntArrayRef{});
  const int64_t groups = scale.size(1);
  torch::Tensor g;
  if (parts.weight_g_idx.defined()) {
    g = parts.weight_g_idx.to(torch::kLong);
    TORCH_CHECK(g.dim() == 1 && g.size(0) == cols && g.min().item<int64_t>() >= 0 &&
                    g.max().item<int64_t>() < groups,
                name, ": weight_g_idx should give each of the ", cols, " inputs a group below ",
                groups);
  } else if (group_size > 0) {
    TORCH_CHECK((cols + group_size - 1) / group_size == groups, name, ": ", groups,
                " groups of scales for ", cols, " inputs in groups of ", group_size);
    g = torch::arange(cols, torch::kLong).div(group_size, "floor");
  } else {
    TORCH_CHECK(cols % groups == 0, name, ": ", groups, " groups do not divide ", cols, " inputs");
    g = torch::arange(cols, torch::kLong).div(cols / groups, "floor");
  }
  auto zero = torch::zeros({rows, groups}, torch::kFloat);
  if (!symmetric) {
    TORCH_CHECK(parts.weight_zero_point.defined(), name,
                ": asymmetric codes need weight_zero_point");
    zero = unpack_int32(parts.weight_zero_point, bits, rows, groups, 0).to(torch::kFloat);
  }
  const auto s = scale.to(torch::kFloat).index_select(1, g);
  return (s * (codes.to(torch::kFloat) - zero.index_select(1, g))).to(dtype);
}

nlohmann::ordered_json pack_quantized_config(const PackedQuantization& scheme,
                                             const std::vector<std::string>& ignore) {
  check_bits(scheme.bits, "pack_quantized_config");
  TORCH_CHECK(scheme.group_size >= 0, "pack_quantized_config: group_size should be >= 0, got ",
              scheme.group_size);
  TORCH_CHECK(scheme.actorder.empty() || scheme.actorder == "group" || scheme.actorder == "weight",
              "pack_quantized_config: actorder should be \"\", \"group\" or \"weight\", got \"",
              scheme.actorder, "\"");
  const bool grouped = scheme.group_size > 0;
  TORCH_CHECK(grouped || scheme.actorder.empty(),
              "pack_quantized_config: actorder needs groups (compressed-tensors refuses it with "
              "one scale per row)");
  const auto null = nlohmann::ordered_json();
  nlohmann::ordered_json weights{
      {"actorder", scheme.actorder.empty() ? null : nlohmann::ordered_json(scheme.actorder)},
      {"block_structure", null},
      {"dynamic", false},
      {"group_size", grouped ? nlohmann::ordered_json(scheme.group_size) : null},
      {"num_bits", scheme.bits},
      {"observer", "minmax"},
      {"observer_kwargs", nlohmann::ordered_json::object()},
      {"scale_dtype", null},
      {"strategy", grouped ? "group" : "channel"},
      {"symmetric", scheme.symmetric},
      {"type", "int"},
      {"zp_dtype", null}};
  nlohmann::ordered_json group{{"format", "pack-quantized"},
                               {"input_activations", null},
                               {"output_activations", null},
                               {"targets", nlohmann::ordered_json::array({"Linear"})},
                               {"weights", weights}};
  return {{"config_groups", {{"group_0", group}}},
          {"format", "pack-quantized"},
          {"global_compression_ratio", null},
          {"ignore", ignore},
          {"kv_cache_scheme", null},
          {"quant_method", "compressed-tensors"},
          {"quantization_status", "compressed"},
          {"sparsity_config", nlohmann::ordered_json::object()},
          {"transform_config", nlohmann::ordered_json::object()},
          {"version", "0.14.0.1"}};
}

}  // namespace moeprune::hf::detail

// compressed-tensors' sparse-24-bitmask encoding (compressed_tensors_sparse.h).
#include "hf/compressed_tensors_sparse.h"

#include <cstdint>

namespace moeprune::hf::detail {

Sparse24Bitmask encode_sparse24_bitmask(const torch::Tensor& weight, const std::string& name) {
  TORCH_CHECK(weight.dim() == 2, name, ": sparse-24-bitmask stores 2-D weights, this one is ",
              weight.sizes());
  const int64_t rows = weight.size(0), cols = weight.size(1);
  TORCH_CHECK(cols % 4 == 0, name, ": sparse-24-bitmask needs a multiple of 4 columns, found ",
              cols);
  const auto w = weight.contiguous();
  // Non-zero as compared in float, so -0.0 counts as a zero like compressed-tensors' abs().topk.
  const auto nonzero = (w != 0).to(torch::kUInt8).contiguous();
  const auto* nz = nonzero.data_ptr<uint8_t>();
  const int64_t packed = (cols + 7) / 8;
  auto bitmask = torch::zeros({rows, packed}, torch::kUInt8);
  auto* bits = bitmask.data_ptr<uint8_t>();
  // Which columns each row keeps: its non-zeros, then its first zeros up to two per group.
  auto keep = torch::zeros({rows, cols}, torch::kBool);
  auto* kept = keep.data_ptr<bool>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < cols; g += 4) {
      const int64_t at = r * cols + g;
      const int count = nz[at] + nz[at + 1] + nz[at + 2] + nz[at + 3];
      TORCH_CHECK(count <= 2, name, " is not 2:4 sparse: row ", r, ", columns ", g, "..", g + 3,
                  " hold ", count, " non-zeros (sparse-24-bitmask stores 2 of every 4)");
      int zeros_to_keep = 2 - count;
      for (int i = 0; i < 4; ++i) {
        bool take = nz[at + i] != 0;
        if (!take && zeros_to_keep > 0) {
          take = true;
          --zeros_to_keep;
        }
        if (take) {
          kept[at + i] = true;
          const int64_t c = g + i;
          bits[r * packed + c / 8] |= static_cast<uint8_t>(1u << (c % 8));
        }
      }
    }
  }
  Sparse24Bitmask out;
  out.compressed = w.masked_select(keep).reshape({rows, cols / 2});
  out.bitmask = bitmask;
  out.shape = torch::tensor({rows, cols}, torch::kInt64).reshape({2, 1});
  return out;
}

torch::Tensor decode_sparse24_bitmask(const Sparse24Bitmask& encoded, const std::string& name) {
  TORCH_CHECK(encoded.shape.numel() == 2 && encoded.shape.scalar_type() == torch::kInt64, name,
              ".shape should hold 2 int64 values (rows, cols), found ", encoded.shape.numel(), " ",
              encoded.shape.scalar_type());
  const auto shape = encoded.shape.flatten().contiguous();
  const int64_t rows = shape[0].item<int64_t>(), cols = shape[1].item<int64_t>();
  TORCH_CHECK(rows >= 0 && cols >= 0 && cols % 4 == 0, name, ".shape is [", rows, ", ", cols,
              "]: expected non-negative sizes and a multiple of 4 columns");
  const int64_t packed = (cols + 7) / 8;
  TORCH_CHECK(encoded.bitmask.scalar_type() == torch::kUInt8 &&
                  encoded.bitmask.sizes() == torch::IntArrayRef({rows, packed}),
              name, ".bitmask should be uint8 [", rows, ", ", packed, "], found ",
              encoded.bitmask.scalar_type(), " ", encoded.bitmask.sizes());
  TORCH_CHECK(encoded.compressed.sizes() == torch::IntArrayRef({rows, cols / 2}), name,
              ".compressed should be [", rows, ", ", cols / 2, "], found ",
              encoded.compressed.sizes());
  const auto b = encoded.bitmask.contiguous();
  const auto* bits = b.data_ptr<uint8_t>();
  auto keep = torch::zeros({rows, cols}, torch::kBool);
  auto* kept = keep.data_ptr<bool>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < cols; g += 4) {
      int count = 0;
      for (int i = 0; i < 4; ++i) {
        const int64_t c = g + i;
        kept[r * cols + c] = ((bits[r * packed + c / 8] >> (c % 8)) & 1u) != 0;
        count += kept[r * cols + c] ? 1 : 0;
      }
      TORCH_CHECK(count == 2, name, ".bitmask: row ", r, ", columns ", g, "..", g + 3, " keep ",
                  count, " entries, sparse-24-bitmask keeps 2 of every 4");
    }
  }
  auto dense = torch::zeros({rows, cols}, encoded.compressed.options());
  dense.masked_scatter_(keep, encoded.compressed.contiguous());
  return dense;
}

nlohmann::ordered_json sparse24_quantization_config(const std::vector<std::string>& targets,
                                                    double global_sparsity) {
  // The fields compressed-tensors' ModelCompressor.update_config writes for a sparse-only model.
  nlohmann::ordered_json sparsity{{"format", "sparse-24-bitmask"},
                                  {"global_sparsity", global_sparsity},
                                  {"ignore", nlohmann::ordered_json::array()},
                                  {"registry_requires_subclass", false},
                                  {"sparsity_structure", "2:4"},
                                  {"targets", targets}};
  return {{"quant_method", "compressed-tensors"},
          {"sparsity_config", sparsity},
          {"transform_config", nlohmann::ordered_json::object()}};
}

}  // namespace moeprune::hf::detail

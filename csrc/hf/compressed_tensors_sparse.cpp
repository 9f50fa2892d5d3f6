// compressed-tensors' sparse formats (compressed_tensors_sparse.h): the sparse-24-bitmask
// encoding, and reading both bitmask formats.
#include "hf/compressed_tensors_sparse.h"

#include "hf/config.h"

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

namespace {

// The kept positions a packed bitmask marks (numpy.packbits, bitorder=little), [rows, cols].
torch::Tensor unpack_bitmask(const torch::Tensor& bitmask, int64_t rows, int64_t cols,
                             const std::string& name) {
  const int64_t packed = (cols + 7) / 8;
  TORCH_CHECK(bitmask.scalar_type() == torch::kUInt8 &&
                  bitmask.sizes() == torch::IntArrayRef({rows, packed}),
              name, ".bitmask should be uint8 [", rows, ", ", packed, "], found ",
              bitmask.scalar_type(), " ", bitmask.sizes());
  const auto shifts = torch::arange(8, torch::kUInt8);
  const auto bits = bitmask.contiguous().unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and(1);
  return bits.reshape({rows, packed * 8}).narrow(1, 0, cols).to(torch::kBool);
}

// rows and cols from X.shape (2 int64 values, as [2] or [2, 1]).
std::pair<int64_t, int64_t> dense_shape(const torch::Tensor& shape, const std::string& name) {
  TORCH_CHECK(shape.numel() == 2 && shape.scalar_type() == torch::kInt64, name,
              ".shape should hold 2 int64 values (rows, cols), found ", shape.numel(), " ",
              shape.scalar_type());
  const auto s = shape.flatten().contiguous();
  const int64_t rows = s[0].item<int64_t>(), cols = s[1].item<int64_t>();
  TORCH_CHECK(rows >= 0 && cols >= 0, name, ".shape is [", rows, ", ", cols, "]");
  return {rows, cols};
}

}  // namespace

torch::Tensor decode_sparse24_bitmask(const Sparse24Bitmask& encoded, const std::string& name) {
  const auto [rows, cols] = dense_shape(encoded.shape, name);
  TORCH_CHECK(cols % 4 == 0, name, ".shape is [", rows, ", ", cols,
              "]: sparse-24-bitmask needs a multiple of 4 columns");
  const auto keep = unpack_bitmask(encoded.bitmask, rows, cols, name);
  TORCH_CHECK(encoded.compressed.sizes() == torch::IntArrayRef({rows, cols / 2}), name,
              ".compressed should be [", rows, ", ", cols / 2, "], found ",
              encoded.compressed.sizes());
  const auto per_group = keep.reshape({rows, cols / 4, 4}).sum(2);
  const auto bad = per_group.ne(2).nonzero();
  if (bad.size(0) > 0) {
    const int64_t r = bad[0][0].item<int64_t>(), g = 4 * bad[0][1].item<int64_t>();
    TORCH_CHECK(false, name, ".bitmask: row ", r, ", columns ", g, "..", g + 3, " keep ",
                per_group[r][g / 4].item<int64_t>(),
                " entries, sparse-24-bitmask keeps 2 of every 4");
  }
  auto dense = torch::zeros({rows, cols}, encoded.compressed.options());
  dense.masked_scatter_(keep, encoded.compressed.contiguous());
  return dense;
}

torch::Tensor decode_sparse_bitmask(const torch::Tensor& compressed, const torch::Tensor& bitmask,
                                    const torch::Tensor& row_offsets, const torch::Tensor& shape,
                                    const std::string& name) {
  const auto [rows, cols] = dense_shape(shape, name);
  const auto keep = unpack_bitmask(bitmask, rows, cols, name);
  const auto per_row = keep.sum(1);
  const int64_t marked = per_row.sum().item<int64_t>();
  TORCH_CHECK(compressed.dim() == 1 && compressed.numel() == marked, name, ".bitmask marks ",
              marked, " weights, ", name, ".compressed holds ", compressed.numel(), " values (",
              compressed.sizes(), ")");
  TORCH_CHECK(row_offsets.scalar_type() == torch::kInt64 && row_offsets.numel() == rows &&
                  torch::equal(row_offsets.flatten(), per_row.cumsum(0) - per_row),
              name, ".row_offsets do not agree with the rows' marks in ", name, ".bitmask");
  auto dense = torch::zeros({rows, cols}, compressed.options());
  dense.masked_scatter_(keep, compressed.contiguous());
  return dense;
}

std::string compressed_tensors_sparse_format(const Config& config) {
  if (!config.is_set("quantization_config")) return {};
  const auto& q = config.json().at("quantization_config");
  if (!q.is_object() || q.value("quant_method", std::string()) != "compressed-tensors") return {};
  // Quantisation (config_groups with schemes) is not read.
  if (q.contains("config_groups") && !q["config_groups"].is_null() && !q["config_groups"].empty()) {
    return {};
  }
  if (!q.contains("sparsity_config") || !q["sparsity_config"].is_object()) return {};
  const auto format = q["sparsity_config"].value("format", std::string());
  return format == "sparse-bitmask" || format == "sparse-24-bitmask" ? format : std::string();
}

int64_t add_compressed_tensors_weights(const Config& config, safetensors::Checkpoint& checkpoint) {
  const auto format = compressed_tensors_sparse_format(config);
  if (format.empty()) return 0;
  const bool two_four = format == "sparse-24-bitmask";
  int64_t added = 0;
  for (const auto& name : checkpoint.names()) {
    const std::string suffix = ".compressed";
    if (name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    const auto module = name.substr(0, name.size() - suffix.size());
    std::vector<std::string> parts = {module + ".compressed", module + ".bitmask",
                                      module + ".shape"};
    if (!two_four) parts.push_back(module + ".row_offsets");
    for (const auto& part : parts) {
      TORCH_CHECK(checkpoint.contains(part), checkpoint.directory(), ": ", format, " stores ",
                  module, ".weight as ", name, " and others, but ", part, " is missing");
    }
    const auto [rows, cols] = dense_shape(checkpoint.tensor(module + ".shape"), module);
    const auto& values = checkpoint.info(name);
    safetensors::Checkpoint::Decoded d;
    d.info.name = module + ".weight";
    d.info.dtype = values.dtype;
    d.info.scalar_type = values.scalar_type;
    d.info.shape = {rows, cols};
    d.parts = parts;
    d.decode = [module, two_four](const safetensors::Checkpoint& c) {
      const auto shape = c.tensor(module + ".shape");
      if (two_four) {
        return decode_sparse24_bitmask(
            {c.tensor(module + ".compressed"), c.tensor(module + ".bitmask"), shape}, module);
      }
      return decode_sparse_bitmask(c.tensor(module + ".compressed"), c.tensor(module + ".bitmask"),
                                   c.tensor(module + ".row_offsets"), shape, module);
    };
    checkpoint.add_decoded(std::move(d));
    ++added;
  }
  return added;
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

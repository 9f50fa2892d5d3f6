#pragma once

// compressed-tensors' "sparse-24-bitmask" format (the compressed-tensors package,
// compressors/sparse_compressors/sparse_24_bitmask.py, 0.14.0.1, the last release with sparse
// compressors): a 2:4-sparse [rows, cols] weight `X.weight` is stored as three tensors,
//   X.compressed  [rows, cols/2]        the kept values of each row in column order,
//   X.bitmask     uint8 [rows, ceil(cols/8)]  which columns were kept, 8 per byte, least
//                                        significant bit first (numpy.packbits, bitorder=little),
//   X.shape       int64 [2, 1]           rows and cols,
// and config.json's "quantization_config" names the format and the modules stored so.
#include "hf/config.h"

#include <moeprune/io/safetensors.h>

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace moeprune::hf::detail {

struct Sparse24Bitmask {
  torch::Tensor compressed;  // [rows, cols / 2], the weight's dtype
  torch::Tensor bitmask;     // uint8 [rows, ceil(cols / 8)]
  torch::Tensor shape;       // int64 [2, 1]
};

/// Encodes `weight` ([rows, cols], cols a multiple of 4, at most 2 non-zeros in every 4
/// consecutive entries of a row); `name` goes into the errors. A group with fewer than two
/// non-zeros keeps its first zeros, so every row keeps exactly cols / 2 entries.
Sparse24Bitmask encode_sparse24_bitmask(const torch::Tensor& weight, const std::string& name);

/// The dense [rows, cols] weight that `encoded` stores (checked: shapes agree, two bits in every
/// group of four).
torch::Tensor decode_sparse24_bitmask(const Sparse24Bitmask& encoded, const std::string& name);

/// compressed-tensors' unstructured "sparse-bitmask" (sparse_bitmask.py): X.compressed holds the
/// non-zeros of the whole weight row by row, X.bitmask marks them as above, X.row_offsets
/// [rows] says where each row starts in X.compressed, X.shape is int64 [2]. The dense weight
/// (checked: as many marks as values, offsets that agree with the marks).
torch::Tensor decode_sparse_bitmask(const torch::Tensor& compressed, const torch::Tensor& bitmask,
                                    const torch::Tensor& row_offsets, const torch::Tensor& shape,
                                    const std::string& name);

/// The format of a compressed-tensors quantization_config that only sparsifies
/// ("sparse-bitmask" or "sparse-24-bitmask", no quantisation), else "".
std::string compressed_tensors_sparse_format(const Config& config);

/// For such a config: adds every weight X.weight that `checkpoint` stores as X.compressed,
/// X.bitmask and X.shape (and X.row_offsets) as a decoded tensor (Checkpoint::add_decoded), so
/// the readers see dense weights. Returns how many; 0 for any other config.
int64_t add_compressed_tensors_weights(const Config& config, safetensors::Checkpoint& checkpoint);

/// config.json's "quantization_config" for a checkpoint whose modules `targets` (compressed-
/// tensors target strings: module names or "re:" regular expressions matched from the start)
/// are stored as sparse-24-bitmask; `global_sparsity` is the zeros' share of the whole model.
nlohmann::ordered_json sparse24_quantization_config(const std::vector<std::string>& targets,
                                                    double global_sparsity);

}  // namespace moeprune::hf::detail

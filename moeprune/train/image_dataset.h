#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace moeprune::data {

/// Images as stored (uint8 [N, C, H, W]) with int64 labels [N]. Batches are converted to float
/// and normalised on the way out (see normalize_batch), so a data set costs one byte per pixel.
struct ImageDataset {
  torch::Tensor images;  ///< uint8 [N, C, H, W]
  torch::Tensor labels;  ///< int64 [N]
  int64_t num_classes = 0;
  std::vector<std::string> class_names;  ///< optional, size num_classes when known

  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
  /// Rows `index` (int64 [n]) of the data set.
  ImageDataset subset(const torch::Tensor& index) const;
};

/// A downstream task built from a data set: mapping[old_label] is the new label, or -1 to drop
/// the class. A subset of classes maps them to 0..n-1; a grouping maps several to one label.
/// Throws if the mapping does not cover every class or leaves no class.
ImageDataset remap_labels(const ImageDataset& dataset, const std::vector<int64_t>& mapping,
                          std::vector<std::string> new_class_names = {});

/// Parses a mapping written as "0,2,-1,1,..." (one entry per class).
std::vector<int64_t> parse_label_mapping(const std::string& text);

/// uint8 [B, C, H, W] -> float [B, C, H, W], (x / 255 - mean) / std per channel.
torch::Tensor normalize_batch(const torch::Tensor& images, const std::vector<double>& mean,
                              const std::vector<double>& std);

/// Random crop with zero padding (pad on each side, then crop back to H x W at a random offset),
/// per image, drawn from `generator`.
torch::Tensor random_crop(const torch::Tensor& images, int64_t padding, at::Generator& generator);

/// Flips each image left-right with probability 1/2, drawn from `generator`.
torch::Tensor random_flip(const torch::Tensor& images, at::Generator& generator);

}  // namespace moeprune::data

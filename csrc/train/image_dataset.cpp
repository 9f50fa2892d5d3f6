#include <moeprune/train/image_dataset.h>

#include <torch/torch.h>

#include <sstream>

namespace moeprune::data {

ImageDataset ImageDataset::subset(const torch::Tensor& index) const {
  ImageDataset out;
  out.images = images.index_select(0, index);
  out.labels = labels.index_select(0, index);
  out.num_classes = num_classes;
  out.class_names = class_names;
  return out;
}

ImageDataset remap_labels(const ImageDataset& dataset, const std::vector<int64_t>& mapping,
                          std::vector<std::string> new_class_names) {
  TORCH_CHECK(static_cast<int64_t>(mapping.size()) == dataset.num_classes,
              "remap_labels: the mapping has ", mapping.size(), " entries but the data set has ",
              dataset.num_classes, " classes");
  int64_t new_classes = 0;
  for (const auto m : mapping) {
    TORCH_CHECK(m >= -1, "remap_labels: labels map to -1 (drop) or >= 0, got ", m);
    new_classes = std::max(new_classes, m + 1);
  }
  TORCH_CHECK(new_classes > 0, "remap_labels: the mapping drops every class");
  for (int64_t c = 0; c < new_classes; ++c) {
    TORCH_CHECK(std::find(mapping.begin(), mapping.end(), c) != mapping.end(),
                "remap_labels: new label ", c, " receives no class (new labels must be 0..",
                new_classes - 1, ")");
  }
  TORCH_CHECK(
      new_class_names.empty() || static_cast<int64_t>(new_class_names.size()) == new_classes,
      "remap_labels: ", new_class_names.size(), " class names for ", new_classes, " classes");
  const auto table = torch::tensor(mapping, torch::kLong);
  const auto new_labels = table.index_select(0, dataset.labels);
  const auto keep = new_labels.ge(0).nonzero().view({-1});
  ImageDataset out;
  out.images = dataset.images.index_select(0, keep);
  out.labels = new_labels.index_select(0, keep);
  out.num_classes = new_classes;
  out.class_names = std::move(new_class_names);
  return out;
}

std::vector<int64_t> parse_label_mapping(const std::string& text) {
  std::vector<int64_t> mapping;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      mapping.push_back(std::stoll(item, &used));
      TORCH_CHECK(used == item.size() || item.find_first_not_of(' ', used) == std::string::npos,
                  "trailing characters");
    } catch (const std::exception&) {
      TORCH_CHECK(false, "label mapping '", text, "': '", item, "' is not an integer");
    }
  }
  TORCH_CHECK(!mapping.empty(), "label mapping is empty");
  return mapping;
}

torch::Tensor normalize_batch(const torch::Tensor& images, const std::vector<double>& mean,
                              const std::vector<double>& std) {
  TORCH_CHECK(images.dim() == 4, "normalize_batch: images should be [B, C, H, W], got ",
              images.sizes());
  const int64_t C = images.size(1);
  TORCH_CHECK(static_cast<int64_t>(mean.size()) == C && static_cast<int64_t>(std.size()) == C,
              "normalize_batch: ", C, " channels but ", mean.size(), " means and ", std.size(),
              " stds");
  const auto m = torch::tensor(mean, torch::kFloat).view({1, C, 1, 1});
  const auto s = torch::tensor(std, torch::kFloat).view({1, C, 1, 1});
  return (images.to(torch::kFloat).div(255.0) - m) / s;
}

torch::Tensor random_crop(const torch::Tensor& images, int64_t padding, at::Generator& generator) {
  TORCH_CHECK(images.dim() == 4, "random_crop: images should be [B, C, H, W], got ",
              images.sizes());
  TORCH_CHECK(padding >= 0, "random_crop: padding should be >= 0, got ", padding);
  if (padding == 0) {
    return images;
  }
  const int64_t B = images.size(0), H = images.size(2), W = images.size(3);
  const auto padded = torch::constant_pad_nd(images, {padding, padding, padding, padding}, 0);
  const auto offsets = torch::randint(0, 2 * padding + 1, {B, 2}, generator, torch::kLong);
  auto out = torch::empty_like(images);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t dy = offsets[b][0].item<int64_t>(), dx = offsets[b][1].item<int64_t>();
    out[b].copy_(padded[b].narrow(1, dy, H).narrow(2, dx, W));
  }
  return out;
}

torch::Tensor random_flip(const torch::Tensor& images, at::Generator& generator) {
  TORCH_CHECK(images.dim() == 4, "random_flip: images should be [B, C, H, W], got ",
              images.sizes());
  const auto flip = torch::rand({images.size(0)}, generator).lt(0.5).view({-1, 1, 1, 1});
  return torch::where(flip, images.flip({3}), images);
}

}  // namespace moeprune::data

#pragma once

#include <moeprune/train/image_dataset.h>

#include <string>

namespace moeprune::data {

/// Where Debian's dataset-fashion-mnist package puts the files.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

/// Reads an IDX file (optionally gzip-compressed: the name ends in .gz) of uint8 values:
/// images (magic 2051, [N, rows, cols]) or labels (magic 2049, [N]). Every failure names the
/// file and what is wrong.
torch::Tensor read_idx(const std::string& path);

/// Fashion-MNIST from the IDX files in `dir` (train-images-idx3-ubyte.gz, ...): 28x28 grey
/// images, 10 classes. `train` picks the 60000-image training split, else the 10000-image test
/// split. A missing file names the Debian package that provides it.
ImageDataset load_fashion_mnist(const std::string& dir = kFashionMnistDir, bool train = true);

/// CIFAR-10 or CIFAR-100 in the binary format (cifar-10-batches-bin: data_batch_1..5.bin,
/// test_batch.bin, records of 1 label byte + 3072 pixel bytes; cifar-100-binary: train.bin,
/// test.bin, records of coarse label + fine label + 3072 bytes; the fine label is used).
/// `classes` is 10 or 100.
ImageDataset load_cifar(const std::string& dir, int64_t classes, bool train = true);

}  // namespace moeprune::data

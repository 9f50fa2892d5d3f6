#include <moeprune/train/readers.h>

#include <c10/util/StringUtil.h>
#include <torch/torch.h>
#include <zlib.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <memory>

namespace moeprune::data {
namespace {

// Whole-file read, through zlib for .gz names (gzread also reads uncompressed files).
std::vector<uint8_t> read_file(const std::string& path) {
  TORCH_CHECK(std::filesystem::exists(path), path, ": file not found");
  std::unique_ptr<gzFile_s, int (*)(gzFile)> file(gzopen(path.c_str(), "rb"), gzclose);
  TORCH_CHECK(file != nullptr, path, ": cannot open");
  std::vector<uint8_t> bytes;
  std::array<uint8_t, 1 << 16> chunk;
  while (true) {
    const int n = gzread(file.get(), chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int code = 0;
      const char* message = gzerror(file.get(), &code);
      TORCH_CHECK(false, path, ": corrupt or truncated (", message, ")");
    }
    if (n == 0) {
      break;
    }
    bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + n);
  }
  return bytes;
}

uint32_t big_endian(const std::vector<uint8_t>& b, size_t at) {
  return (uint32_t{b[at]} << 24) | (uint32_t{b[at + 1]} << 16) | (uint32_t{b[at + 2]} << 8) |
         uint32_t{b[at + 3]};
}

}  // namespace

torch::Tensor read_idx(const std::string& path) {
  const auto bytes = read_file(path);
  TORCH_CHECK(bytes.size() >= 8, path, ": ", bytes.size(), " bytes is too short for an IDX header");
  const uint32_t magic = big_endian(bytes, 0);
  TORCH_CHECK(magic == 2049 || magic == 2051, path, ": not an IDX file of uint8 labels or images ",
              "(magic ", magic, ", expected 2049 or 2051)");
  const size_t dims = magic == 2051 ? 3 : 1;
  TORCH_CHECK(bytes.size() >= 4 + 4 * dims, path, ": header truncated");
  std::vector<int64_t> shape;
  size_t expected = 1;
  bool overflow = false;
  for (size_t i = 0; i < dims; ++i) {
    shape.push_back(big_endian(bytes, 4 + 4 * i));
    overflow =
        overflow || __builtin_mul_overflow(expected, static_cast<size_t>(shape.back()), &expected);
  }
  const size_t header = 4 + 4 * dims;
  TORCH_CHECK(!overflow, path, ": header promises [", c10::Join(", ", shape),
              "] values, more than a 64-bit size can count");
  TORCH_CHECK(bytes.size() - header == expected, path, ": header promises ", expected, " values ([",
              c10::Join(", ", shape), "]) but the file holds ", bytes.size() - header);
  auto out = torch::empty(shape, torch::kUInt8);
  if (expected != 0) {  // an empty tensor may have no storage to copy into
    std::memcpy(out.data_ptr<uint8_t>(), bytes.data() + header, expected);
  }
  return out;
}

ImageDataset load_fashion_mnist(const std::string& dir, bool train) {
  const std::string prefix = train ? "train" : "t10k";
  const auto images_path = dir + "/" + prefix + "-images-idx3-ubyte.gz";
  const auto labels_path = dir + "/" + prefix + "-labels-idx1-ubyte.gz";
  for (const auto& p : {images_path, labels_path}) {
    TORCH_CHECK(std::filesystem::exists(p), "Fashion-MNIST: ", p,
                " not found; install Debian's dataset-fashion-mnist package "
                "(apt-get install dataset-fashion-mnist) or pass the folder holding the files");
  }
  ImageDataset out;
  const auto images = read_idx(images_path);
  out.labels = read_idx(labels_path).to(torch::kLong);
  TORCH_CHECK(images.dim() == 3 && out.labels.dim() == 1, "Fashion-MNIST: ", images_path,
              " should hold images and ", labels_path, " labels");
  TORCH_CHECK(images.size(0) == out.labels.size(0), "Fashion-MNIST: ", images.size(0),
              " images in ", images_path, " but ", out.labels.size(0), " labels in ", labels_path);
  TORCH_CHECK(out.labels.numel() == 0 || out.labels.max().item<int64_t>() < 10,
              "Fashion-MNIST: ", labels_path, " has labels above 9");
  out.images = images.unsqueeze(1);
  out.num_classes = 10;
  out.class_names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return out;
}

ImageDataset load_cifar(const std::string& dir, int64_t classes, bool train) {
  TORCH_CHECK(classes == 10 || classes == 100, "CIFAR: classes should be 10 or 100, got ", classes);
  std::vector<std::string> files;
  if (classes == 10) {
    if (train) {
      for (int i = 1; i <= 5; ++i) {
        files.push_back(dir + "/data_batch_" + std::to_string(i) + ".bin");
      }
    } else {
      files.push_back(dir + "/test_batch.bin");
    }
  } else {
    files.push_back(dir + (train ? "/train.bin" : "/test.bin"));
  }
  const size_t label_bytes = classes == 10 ? 1 : 2, pixels = 3 * 32 * 32;
  const size_t record = label_bytes + pixels;
  std::vector<uint8_t> all_pixels;
  std::vector<int64_t> labels;
  for (const auto& path : files) {
    TORCH_CHECK(std::filesystem::exists(path), "CIFAR-", classes, ": ", path,
                " not found (expected the binary version, e.g. cifar-10-batches-bin)");
    std::ifstream in(path, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                               std::istreambuf_iterator<char>());
    TORCH_CHECK(!bytes.empty() && bytes.size() % record == 0, "CIFAR-", classes, ": ", path,
                " has ", bytes.size(), " bytes, not a whole number of ", record, "-byte records");
    for (size_t at = 0; at < bytes.size(); at += record) {
      const int64_t label = bytes[at + label_bytes - 1];  // CIFAR-100: the fine label
      TORCH_CHECK(label < classes, "CIFAR-", classes, ": ", path, " record ", at / record,
                  " has label ", label);
      labels.push_back(label);
      all_pixels.insert(all_pixels.end(), bytes.begin() + static_cast<long>(at + label_bytes),
                        bytes.begin() + static_cast<long>(at + record));
    }
  }
  ImageDataset out;
  const auto n = static_cast<int64_t>(labels.size());
  out.images = torch::empty({n, 3, 32, 32}, torch::kUInt8);
  std::memcpy(out.images.data_ptr<uint8_t>(), all_pixels.data(), all_pixels.size());
  out.labels = torch::tensor(labels, torch::kLong);
  out.num_classes = classes;
  if (classes == 10) {
    out.class_names = {"airplane", "automobile", "bird",  "cat",  "deer",
                       "dog",      "frog",       "horse", "ship", "truck"};
  }
  return out;
}

}  // namespace moeprune::data

#include <moeprune/train/image_dataset.h>
#include <moeprune/train/readers.h>

#include <torch/torch.h>
#include <zlib.h>
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
namespace data = moeprune::data;

namespace {

// A fresh folder per call, removed when the test binary exits. (std::filesystem::remove_all is
// not used: libtorch.so exports its own copy of the filesystem symbols, and that one crashes
// while iterating a folder.)
fs::path scratch_dir(const std::string& name) {
  // Never destroyed, so the exit handler can still read it.
  static const std::string& root = *new std::string([] {
    std::string tmpl = (fs::temp_directory_path() / "moeprune_test_XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    std::atexit([] { std::system(("rm -rf '" + root + "'").c_str()); });
    return tmpl;
  }());
  static int counter = 0;
  auto dir = fs::path(root) / (name + std::to_string(++counter));
  fs::create_directories(dir);
  return dir;
}

std::vector<uint8_t> be32(uint32_t v) {
  return {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)};
}

// An IDX file written byte by byte from the format description (big-endian header).
std::vector<uint8_t> idx_bytes(uint32_t magic, const std::vector<uint32_t>& dims,
                               const std::vector<uint8_t>& values) {
  std::vector<uint8_t> out = be32(magic);
  for (auto d : dims) {
    auto b = be32(d);
    out.insert(out.end(), b.begin(), b.end());
  }
  out.insert(out.end(), values.begin(), values.end());
  return out;
}

void write_file(const fs::path& path, const std::vector<uint8_t>& bytes, bool gzip) {
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
  }
}

std::vector<uint8_t> iota_bytes(size_t n, uint8_t start = 0) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) {
    v[i] = static_cast<uint8_t>(start + i);
  }
  return v;
}

}  // namespace

TEST_CASE("IDX reader reads gzip and plain files written from the format description") {
  const auto dir = scratch_dir("idx");
  const auto pixels = iota_bytes(2 * 3 * 3);
  for (const bool gz : {true, false}) {
    const auto path = dir / (gz ? "images.gz" : "images");
    write_file(path, idx_bytes(2051, {2, 3, 3}, pixels), gz);
    const auto t = data::read_idx(path.string());
    REQUIRE(t.sizes() == torch::IntArrayRef({2, 3, 3}));
    CHECK(t[1][2][0].item<uint8_t>() == 15);  // image 1, row 2, column 0: 9 + 6
  }
  write_file(dir / "labels.gz", idx_bytes(2049, {4}, {3, 1, 4, 1}), true);
  CHECK(torch::equal(data::read_idx((dir / "labels.gz").string()),
                     torch::tensor({3, 1, 4, 1}, torch::kUInt8)));
}

TEST_CASE("IDX reader refuses bad files, naming the file and the problem") {
  const auto dir = scratch_dir("idx_bad");
  write_file(dir / "magic.gz", idx_bytes(2050, {1}, {0}), true);
  REQUIRE_THROWS_WITH(data::read_idx((dir / "magic.gz").string()),
                      Catch::Contains("magic.gz: not an IDX file") && Catch::Contains("2050"));
  write_file(dir / "short.gz", idx_bytes(2051, {2, 3, 3}, iota_bytes(10)), true);
  REQUIRE_THROWS_WITH(
      data::read_idx((dir / "short.gz").string()),
      Catch::Contains("short.gz: header promises 18 values ([2, 3, 3]) but the file holds 10"));
  // Found by fuzzing (test/fuzz/regressions/idx_reader): an empty shape is read, not copied
  // from a null pointer; a shape whose product overflows is refused.
  write_file(dir / "empty", idx_bytes(2051, {0, 28, 28}, {}), false);
  CHECK(data::read_idx((dir / "empty").string()).sizes() == torch::IntArrayRef({0, 28, 28}));
  write_file(dir / "huge", idx_bytes(2051, {0xffffffff, 0xffffffff, 0xffffffff}, {}), false);
  REQUIRE_THROWS_WITH(data::read_idx((dir / "huge").string()),
                      Catch::Contains("more than a 64-bit size can count"));
  write_file(dir / "tiny", {0, 0}, false);
  REQUIRE_THROWS_WITH(data::read_idx((dir / "tiny").string()), Catch::Contains("too short"));
  REQUIRE_THROWS_WITH(data::read_idx((dir / "missing.gz").string()),
                      Catch::Contains("missing.gz: file not found"));
  // A gzip stream cut in the middle.
  write_file(dir / "whole.gz", idx_bytes(2051, {50, 28, 28}, std::vector<uint8_t>(50 * 784, 7)),
             true);
  std::ifstream in(dir / "whole.gz", std::ios::binary);
  std::vector<char> gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream(dir / "cut.gz", std::ios::binary)
      .write(gz.data(), static_cast<std::streamsize>(gz.size() / 2));
  REQUIRE_THROWS_WITH(data::read_idx((dir / "cut.gz").string()), Catch::Contains("cut.gz"));
}

TEST_CASE(
    "Fashion-MNIST loader reads the four IDX files and names the Debian package when missing") {
  const auto dir = scratch_dir("fmnist");
  for (const std::string split : {"train", "t10k"}) {
    write_file(dir / (split + "-images-idx3-ubyte.gz"),
               idx_bytes(2051, {3, 28, 28}, iota_bytes(3 * 784)), true);
    write_file(dir / (split + "-labels-idx1-ubyte.gz"), idx_bytes(2049, {3}, {9, 0, 5}), true);
  }
  const auto d = data::load_fashion_mnist(dir.string(), false);
  CHECK(d.images.sizes() == torch::IntArrayRef({3, 1, 28, 28}));
  CHECK(torch::equal(d.labels, torch::tensor({9, 0, 5}, torch::kLong)));
  CHECK(d.num_classes == 10);
  CHECK(d.class_names[9] == "Ankle boot");
  REQUIRE_THROWS_WITH(data::load_fashion_mnist((dir / "nowhere").string()),
                      Catch::Contains("install Debian's dataset-fashion-mnist package"));
  write_file(dir / "t10k-labels-idx1-ubyte.gz", idx_bytes(2049, {2}, {1, 2}), true);
  REQUIRE_THROWS_WITH(data::load_fashion_mnist(dir.string(), false),
                      Catch::Contains("3 images in") && Catch::Contains("but 2 labels"));
}

TEST_CASE("Fashion-MNIST from Debian's package has 10000 balanced test images") {
  if (!fs::exists(std::string(data::kFashionMnistDir) + "/t10k-labels-idx1-ubyte.gz")) {
    WARN("[moeprune-skip] dataset-fashion-mnist is not installed");
    return;
  }
  const auto d = data::load_fashion_mnist(data::kFashionMnistDir, false);
  REQUIRE(d.size() == 10000);
  // The published test split has exactly 1000 images of each class.
  CHECK(torch::equal(torch::bincount(d.labels), torch::full({10}, 1000, torch::kLong)));
}

TEST_CASE("CIFAR readers parse records written from the binary format description") {
  const auto dir = scratch_dir("cifar");
  SECTION("CIFAR-10: 1 label byte + 3072 pixels, five training batches") {
    for (int b = 1; b <= 5; ++b) {
      std::vector<uint8_t> bytes;
      for (int r = 0; r < 2; ++r) {
        bytes.push_back(static_cast<uint8_t>((b + r) % 10));
        auto px = iota_bytes(3072, static_cast<uint8_t>(b));
        bytes.insert(bytes.end(), px.begin(), px.end());
      }
      write_file(dir / ("data_batch_" + std::to_string(b) + ".bin"), bytes, false);
    }
    const auto d = data::load_cifar(dir.string(), 10, true);
    REQUIRE(d.images.sizes() == torch::IntArrayRef({10, 3, 32, 32}));
    CHECK(d.labels[2].item<int64_t>() == 2);  // batch 2, record 0
    // Record pixels are the red plane, then green, then blue, each row-major 32x32.
    CHECK(d.images[2][1][0][0].item<uint8_t>() == static_cast<uint8_t>(2 + 1024));
    CHECK(d.images[2][0][1][2].item<uint8_t>() == static_cast<uint8_t>(2 + 34));
    REQUIRE_THROWS_WITH(data::load_cifar(dir.string(), 10, false),
                        Catch::Contains("test_batch.bin not found"));
    write_file(dir / "test_batch.bin", iota_bytes(3000), false);
    REQUIRE_THROWS_WITH(data::load_cifar(dir.string(), 10, false),
                        Catch::Contains("not a whole number of 3073-byte records"));
  }
  SECTION("CIFAR-100: coarse and fine label bytes, the fine label is used") {
    std::vector<uint8_t> bytes = {3, 77};
    auto px = iota_bytes(3072);
    bytes.insert(bytes.end(), px.begin(), px.end());
    write_file(dir / "test.bin", bytes, false);
    const auto d = data::load_cifar(dir.string(), 100, false);
    CHECK(d.labels[0].item<int64_t>() == 77);
    CHECK(d.num_classes == 100);
  }
}

TEST_CASE("label remapping builds subsets and groupings of classes") {
  data::ImageDataset d;
  d.images = torch::arange(6, torch::kUInt8).view({6, 1, 1, 1});
  d.labels = torch::tensor({0, 1, 2, 3, 2, 1}, torch::kLong);
  d.num_classes = 4;
  const auto grouped = data::remap_labels(d, {0, 1, 1, 0});
  CHECK(torch::equal(grouped.labels, torch::tensor({0, 1, 1, 0, 1, 1}, torch::kLong)));
  CHECK(grouped.num_classes == 2);
  const auto subset = data::remap_labels(d, {-1, 0, 1, -1});
  CHECK(torch::equal(subset.labels, torch::tensor({0, 1, 1, 0}, torch::kLong)));
  CHECK(torch::equal(subset.images.view({-1}), torch::tensor({1, 2, 4, 5}, torch::kUInt8)));
  REQUIRE_THROWS_WITH(data::remap_labels(d, {0, 1}), Catch::Contains("has 2 entries but"));
  REQUIRE_THROWS_WITH(data::remap_labels(d, {0, 2, 2, 0}),
                      Catch::Contains("new label 1 receives no class"));
  REQUIRE_THROWS_WITH(data::remap_labels(d, {-1, -1, -1, -1}),
                      Catch::Contains("drops every class"));
  CHECK(data::parse_label_mapping("0, 1,-1") == std::vector<int64_t>{0, 1, -1});
  REQUIRE_THROWS_WITH(data::parse_label_mapping("0,x"), Catch::Contains("'x' is not an integer"));
}

TEST_CASE("augmentations crop within the padding and flip whole images") {
  auto gen = at::detail::createCPUGenerator(1);
  const auto images = torch::randint(1, 255, {16, 2, 5, 5}, torch::kLong).to(torch::kUInt8);
  const auto cropped = data::random_crop(images, 2, gen);
  REQUIRE(cropped.sizes() == images.sizes());
  const auto padded = torch::constant_pad_nd(images, {2, 2, 2, 2}, 0);
  int64_t moved = 0;
  for (int64_t b = 0; b < 16; ++b) {
    bool found = false;
    for (int64_t dy = 0; dy <= 4 && !found; ++dy) {
      for (int64_t dx = 0; dx <= 4 && !found; ++dx) {
        found = torch::equal(cropped[b], padded[b].narrow(1, dy, 5).narrow(2, dx, 5));
        if (found && (dy != 2 || dx != 2)) {
          ++moved;
        }
      }
    }
    CHECK(found);
  }
  CHECK(moved > 0);
  const auto flipped = data::random_flip(images, gen);
  int64_t flips = 0;
  for (int64_t b = 0; b < 16; ++b) {
    const bool same = torch::equal(flipped[b], images[b]);
    const bool mirrored = torch::equal(flipped[b], images[b].flip({2}));
    CHECK((same || mirrored));
    flips += mirrored ? 1 : 0;
  }
  CHECK(flips > 0);
  CHECK(flips < 16);
  const auto normalized =
      data::normalize_batch(torch::full({1, 1, 1, 1}, 255, torch::kUInt8), {0.5}, {0.25});
  CHECK(normalized.item<float>() == Approx(2.0));
}

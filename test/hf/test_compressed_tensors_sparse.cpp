// compressed-tensors' sparse-24-bitmask encoding (csrc/hf/compressed_tensors_sparse.h) on a
// hand-computed case: which positions each row keeps, the bytes of its bitmask (least significant
// bit first, rows padded to whole bytes) and its kept values; the unstructured sparse-bitmask
// decoded from hand-made parts; and the refusals. That the PyPI package decodes our files to our
// weights, and that moeprune reads the package's, is compressed_tensors_sparse.sh's.
#include <torch/torch.h>
#include <catch2/catch.hpp>

#include "../scratch_dir.h"
#include "hf/compressed_tensors_sparse.h"

#include <moeprune/hf/pruning.h>
#include <moeprune/io/safetensors.h>

#include <fstream>

namespace compressed_tensors_sparse_test {

using moeprune::hf::detail::decode_sparse24_bitmask;
using moeprune::hf::detail::decode_sparse_bitmask;
using moeprune::hf::detail::encode_sparse24_bitmask;

TEST_CASE("sparse-24-bitmask encodes a 2:4 weight as its kept half and a bitmask",
          "[compressed-tensors]") {
  // 12 columns: three groups of four, two bytes of mask per row (the second half empty).
  const auto w = torch::tensor({{0.f, 3.f, 0.f, -1.f, 5.f, 0.f, 0.f, 0.f, 0.f, 0.f, 4.f, 4.f},
                                {0.f, 0.f, 0.f, 0.f, 2.f, 0.f, 0.f, 7.f, 1.f, 0.f, 0.f, 0.f}});
  const auto e = encode_sparse24_bitmask(w, "w");
  // Row 0 keeps columns 1, 3 | 4 and its first zero 5 | 10, 11:
  //   byte 0 = 2 + 8 + 16 + 32 = 58, byte 1 = 4 + 8 = 12.
  // Row 1 keeps its first two zeros 0, 1 | 4, 7 | 8 and its first zero 9:
  //   byte 0 = 1 + 2 + 16 + 128 = 147, byte 1 = 1 + 2 = 3.
  const auto bits = torch::tensor({{58, 12}, {147, 3}}, torch::kUInt8);
  CHECK(torch::equal(e.bitmask, bits));
  CHECK(torch::equal(e.compressed, torch::tensor({{3.f, -1.f, 5.f, 0.f, 4.f, 4.f},
                                                  {0.f, 0.f, 2.f, 7.f, 1.f, 0.f}})));
  CHECK(e.shape.scalar_type() == torch::kInt64);
  CHECK(torch::equal(e.shape, torch::tensor({2, 12}, torch::kInt64).reshape({2, 1})));
  CHECK(torch::equal(decode_sparse24_bitmask(e, "w"), w));

  // bf16 stays bf16, values bit for bit.
  const auto b = torch::randn({8, 16}).to(torch::kBFloat16);
  const auto sparse = b.reshape({8, 4, 4}).index_fill(2, torch::tensor({0, 2}), 0).reshape({8, 16});
  const auto eb = encode_sparse24_bitmask(sparse, "b");
  CHECK(eb.compressed.scalar_type() == torch::kBFloat16);
  CHECK(torch::equal(decode_sparse24_bitmask(eb, "b"), sparse));
}

TEST_CASE("sparse-24-bitmask refuses what it cannot store and a corrupt mask",
          "[compressed-tensors]") {
  auto w = torch::zeros({2, 8});
  w.index_put_({1, torch::indexing::Slice(4, 7)}, 1.0);
  CHECK_THROWS_WITH(encode_sparse24_bitmask(w, "experts.0.w1.weight"),
                    Catch::Contains("experts.0.w1.weight is not 2:4 sparse: row 1, columns 4..7 "
                                    "hold 3 non-zeros"));
  CHECK_THROWS_WITH(encode_sparse24_bitmask(torch::zeros({2, 6}), "x"),
                    Catch::Contains("x: sparse-24-bitmask needs a multiple of 4 columns, found 6"));
  CHECK_THROWS_WITH(encode_sparse24_bitmask(torch::zeros({8}), "x"),
                    Catch::Contains("stores 2-D weights"));

  auto e = encode_sparse24_bitmask(torch::zeros({1, 8}), "x");
  e.bitmask[0][0] = 1 + 2 + 4;  // three of the first four kept
  CHECK_THROWS_WITH(decode_sparse24_bitmask(e, "x"),
                    Catch::Contains("x.bitmask: row 0, columns 0..3 keep 3 entries"));
  e.bitmask = torch::zeros({1, 2}, torch::kUInt8);
  CHECK_THROWS_WITH(decode_sparse24_bitmask(e, "x"),
                    Catch::Contains("x.bitmask should be uint8 [1, 1]"));
  auto f = encode_sparse24_bitmask(torch::zeros({1, 8}), "y");
  f.compressed = torch::zeros({1, 3});
  CHECK_THROWS_WITH(decode_sparse24_bitmask(f, "y"),
                    Catch::Contains("y.compressed should be [1, 4], found [1, 3]"));
  f.shape = torch::tensor({1, 6}, torch::kInt64);
  CHECK_THROWS_WITH(decode_sparse24_bitmask(f, "y"),
                    Catch::Contains("y.shape is [1, 6]: sparse-24-bitmask needs a multiple of 4"));
  f.shape = torch::tensor({-1, 8}, torch::kInt64);
  CHECK_THROWS_WITH(decode_sparse24_bitmask(f, "y"), Catch::Contains("y.shape is [-1, 8]"));
  CHECK_THROWS_WITH(moeprune::hf::parse_sparse_format("bitmask"),
                    Catch::Contains("unknown sparse format 'bitmask' (dense, compressed-tensors)"));
}

TEST_CASE("sparse-bitmask (unstructured) decodes a hand-encoded weight and checks its parts",
          "[compressed-tensors]") {
  // [[0, 2, 0, 0, 0, 0, 0, 0, 0, 3], [0, ..., 0], [4, 0, ..., 0, 5, 6]]: 10 columns, two bytes
  // per row; row 0 marks columns 1 and 9 (byte 0 = 2, byte 1 = 2), row 2 columns 0, 8 and 9
  // (1; 1 + 2 = 3). The values row by row, and where each row starts in them.
  const auto values = torch::tensor({2.f, 3.f, 4.f, 5.f, 6.f});
  const auto bits = torch::tensor({{2, 2}, {0, 0}, {1, 3}}, torch::kUInt8);
  const auto offsets = torch::tensor({0, 2, 2}, torch::kInt64);
  const auto shape = torch::tensor({3, 10}, torch::kInt64);
  auto expected = torch::zeros({3, 10});
  expected[0][1] = 2;
  expected[0][9] = 3;
  expected[2][0] = 4;
  expected[2][8] = 5;
  expected[2][9] = 6;
  CHECK(torch::equal(decode_sparse_bitmask(values, bits, offsets, shape, "m"), expected));
  CHECK_THROWS_WITH(decode_sparse_bitmask(values.narrow(0, 0, 4), bits, offsets, shape, "m"),
                    Catch::Contains("m.bitmask marks 5 weights, m.compressed holds 4 values"));
  CHECK_THROWS_WITH(
      decode_sparse_bitmask(values, bits, torch::tensor({0, 1, 2}, torch::kInt64), shape, "m"),
      Catch::Contains("m.row_offsets do not agree with the rows' marks"));
  CHECK_THROWS_WITH(
      decode_sparse_bitmask(values, bits, offsets, torch::tensor({3, 10, 1}, torch::kInt64), "m"),
      Catch::Contains("m.shape should hold 2 int64 values"));
}

TEST_CASE(
    "a checkpoint reads a tensor stored encoded in others as itself, and refuses a "
    "confused encoding",
    "[compressed-tensors]") {
  namespace st = moeprune::safetensors;
  const auto dir = test::scratch_dir("moeprune-decoded-test");
  const auto w = torch::tensor({{1.f, 0.f, 2.f, 0.f}, {0.f, 0.f, 3.f, 4.f}});
  const auto e = encode_sparse24_bitmask(w, "m.weight");
  st::save_file(dir + "/model.safetensors", {{"m.compressed", e.compressed},
                                             {"m.bitmask", e.bitmask},
                                             {"m.shape", e.shape},
                                             {"n.weight", torch::ones({2})}});
  st::Checkpoint c(dir);
  const auto decoded = [&](const std::string& name, std::vector<std::string> parts) {
    st::Checkpoint::Decoded d;
    d.info.name = name;
    d.info.dtype = "F32";
    d.info.scalar_type = torch::kFloat;
    d.info.shape = {2, 4};
    d.parts = std::move(parts);
    d.decode = [](const st::Checkpoint& ck) {
      return decode_sparse24_bitmask(
          {ck.tensor("m.compressed"), ck.tensor("m.bitmask"), ck.tensor("m.shape")}, "m");
    };
    return d;
  };
  c.add_decoded(decoded("m.weight", {"m.compressed", "m.bitmask", "m.shape"}));
  CHECK(c.names() == std::vector<std::string>{"m.weight", "n.weight"});
  CHECK(c.contains("m.weight"));
  CHECK(c.info("m.weight").shape == std::vector<int64_t>{2, 4});
  CHECK(torch::equal(c.tensor("m.weight"), w));
  CHECK(c.shard_of("m.weight") == "model.safetensors");
  c.release("m.weight");
  CHECK(torch::equal(c.tensor("m.weight"), w));
  CHECK_THROWS_WITH(c.add_decoded(decoded("n.weight", {"m.bitmask"})),
                    Catch::Contains("tensor 'n.weight' is stored both as itself and encoded"));
  CHECK_THROWS_WITH(c.add_decoded(decoded("o.weight", {"m.bitmask"})),
                    Catch::Contains("m.bitmask is a part of two encoded tensors"));
  CHECK_THROWS_WITH(c.add_decoded(decoded("p.weight", {"p.compressed"})),
                    Catch::Contains("'p.weight' is stored encoded but p.compressed is missing"));
  auto no_decoder = decoded("r.weight", {"n.weight"});
  no_decoder.decode = nullptr;
  CHECK_THROWS_WITH(c.add_decoded(std::move(no_decoder)),
                    Catch::Contains("decoded tensor 'r.weight' needs its parts and a decoder"));
  // A decoder that disagrees with the shape its parts gave is caught when read.
  auto wrong = decoded("q.weight", {"n.weight"});
  wrong.info.shape = {4, 2};
  c.add_decoded(std::move(wrong));
  CHECK_THROWS_WITH(c.tensor("q.weight"), Catch::Contains("'q.weight' decodes to Float [2, 4]"));
}

TEST_CASE("a compressed-tensors folder missing a part of an encoded weight is refused by name",
          "[compressed-tensors]") {
  const auto dir = test::scratch_dir("moeprune-ct-missing-part");
  const auto e = encode_sparse24_bitmask(torch::zeros({2, 4}), "m.weight");
  moeprune::safetensors::save_file(dir + "/model.safetensors",
                                   {{"m.compressed", e.compressed}, {"m.shape", e.shape}});
  std::ofstream(dir + "/config.json") << R"({"quantization_config": {
      "quant_method": "compressed-tensors",
      "sparsity_config": {"format": "sparse-24-bitmask", "targets": ["m"]}}})";
  const moeprune::hf::Config config(dir);
  CHECK(moeprune::hf::detail::compressed_tensors_sparse_format(config) == "sparse-24-bitmask");
  moeprune::safetensors::Checkpoint checkpoint(dir);
  CHECK_THROWS_WITH(moeprune::hf::detail::add_compressed_tensors_weights(config, checkpoint),
                    Catch::Contains("sparse-24-bitmask stores m.weight as m.compressed and "
                                    "others, but m.bitmask is missing"));
}

}  // namespace compressed_tensors_sparse_test

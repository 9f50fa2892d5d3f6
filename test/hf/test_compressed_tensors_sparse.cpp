// compressed-tensors' sparse-24-bitmask encoding (csrc/hf/compressed_tensors_sparse.h) on a
// hand-computed case: which positions each row keeps, the bytes of its bitmask (least significant
// bit first, rows padded to whole bytes) and its kept values; and the refusals. That the PyPI
// package decodes our files to our weights is compressed_tensors_sparse.sh's.
#include <torch/torch.h>
#include <catch2/catch.hpp>

#include "hf/compressed_tensors_sparse.h"

namespace compressed_tensors_sparse_test {

using moeprune::hf::detail::decode_sparse24_bitmask;
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
}

}  // namespace compressed_tensors_sparse_test

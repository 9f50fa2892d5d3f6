// compressed-tensors' pack-quantized format (hf/compressed_tensors_pack.h) against words packed by
// hand from the format's definition (pack_quantized.py: q + 2^(b-1), 32 / b codes a word, the
// first in the lowest bits, zero padding; zero points packed down each column).
#include "hf/compressed_tensors_pack.h"

#include <moeprune/compression/weight_quantization.h>
#include <moeprune/io/safetensors.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace compressed_tensors_pack_test {

namespace d = moeprune::hf::detail;

TEST_CASE("pack-quantized words of hand-packed codes") {
  // 4 bits, 9 codes: unsigned 0 7 8 15 9 10 11 12 | 13 (padded).
  const auto codes = torch::tensor({-8, -1, 0, 7, 1, 2, 3, 4, 5}, torch::kChar).view({1, 9});
  const uint32_t word0 =
      0u | 7u << 4 | 8u << 8 | 15u << 12 | 9u << 16 | 10u << 20 | 11u << 24 | 12u << 28;
  const auto packed = d::pack_int32(codes, 4);
  REQUIRE(packed.sizes() == std::vector<int64_t>{1, 2});
  CHECK(static_cast<uint32_t>(packed[0][0].item<int32_t>()) == word0);
  CHECK(packed[0][1].item<int32_t>() == 13);
  CHECK(torch::equal(d::unpack_int32(packed, 4, 1, 9), codes));

  // 3 bits: ten codes a word (30 bits), unsigned = code + 4.
  const auto three =
      torch::tensor({-4, 3, 0, 1, -1, 2, -2, -3, 0, 3, 1}, torch::kChar).view({1, 11});
  uint32_t w3 = 0;
  const int u3[] = {0, 7, 4, 5, 3, 6, 2, 1, 4, 7};
  for (int i = 0; i < 10; ++i) w3 |= static_cast<uint32_t>(u3[i]) << (3 * i);
  const auto p3 = d::pack_int32(three, 3);
  CHECK(static_cast<uint32_t>(p3[0][0].item<int32_t>()) == w3);
  CHECK(p3[0][1].item<int32_t>() == 5);  // 1 + 4
  CHECK(torch::equal(d::unpack_int32(p3, 3, 1, 11), three));

  // 8 bits down each column (zero points): rows 0..4 of column 0 are -128, 127, 0, 1, 2.
  const auto zp = torch::tensor({-128, 5, 127, 6, 0, 7, 1, 8, 2, 9}, torch::kChar).view({5, 2});
  const auto p8 = d::pack_int32(zp, 8, 0);
  REQUIRE(p8.sizes() == std::vector<int64_t>{2, 2});
  const uint32_t col0 = 0u | 255u << 8 | 128u << 16 | 129u << 24;
  CHECK(static_cast<uint32_t>(p8[0][0].item<int32_t>()) == col0);
  CHECK(p8[1][0].item<int32_t>() == 130);
  CHECK(torch::equal(d::unpack_int32(p8, 8, 5, 2, 0), zp));
}

TEST_CASE("pack-quantized weights decode to scale * (q - zero) by group") {
  const auto codes = torch::tensor({-8, 7, 1, 2, 0, -1, 3, -3}, torch::kChar).view({2, 4});
  const auto scales = torch::tensor({0.5f, 2.0f, 1.0f, 0.25f}).view({2, 2});
  const auto zeros = torch::tensor({1, -2, 0, 3}, torch::kChar).view({2, 2});
  const auto parts =
      d::encode_pack_quantized(codes, scales, zeros, {}, 4, false, torch::kBFloat16, "x");
  CHECK(parts.weight_scale.scalar_type() == torch::kBFloat16);
  CHECK(torch::equal(parts.weight_shape, torch::tensor({2, 4}, torch::kInt)));
  CHECK(!parts.weight_g_idx.defined());
  const auto w = d::decode_pack_quantized(parts, 4, false, torch::kFloat, "x");
  // Row 0: groups (0.5, z 1) and (2, z -2); row 1: (1, z 0) and (0.25, z 3).
  CHECK(torch::equal(
      w, torch::tensor({-4.5f, 3.0f, 6.0f, 8.0f, 0.0f, -1.0f, 0.0f, -1.5f}).view({2, 4})));
  // Symmetric with act-order's g_idx: no zero points stored.
  const auto g = torch::tensor({1, 0, 1, 0}, torch::kInt);
  const auto sym = d::encode_pack_quantized(codes, scales, {}, g, 4, true, torch::kFloat, "y");
  CHECK(!sym.weight_zero_point.defined());
  CHECK(torch::equal(
      d::decode_pack_quantized(sym, 4, true, torch::kFloat, "y"),
      torch::tensor({-16.0f, 3.5f, 2.0f, 1.0f, 0.0f, -1.0f, 0.75f, -3.0f}).view({2, 4})));
  CHECK_THROWS_WITH(d::pack_int32(torch::tensor({8}, torch::kChar).view({1, 1}), 4),
                    Catch::Contains("4-bit codes should be in [-8, 7], found 8"));
  auto bad = parts;
  bad.weight_packed = bad.weight_packed.narrow(1, 0, 0);
  CHECK_THROWS_WITH(d::decode_pack_quantized(bad, 4, false, torch::kFloat, "x"),
                    Catch::Contains("should be int32 [2, 1]"));
  bad = parts;
  bad.weight_scale = bad.weight_scale.narrow(0, 0, 1);
  CHECK_THROWS_WITH(d::decode_pack_quantized(bad, 4, false, torch::kFloat, "x"),
                    Catch::Contains("x: weight_scale should be [2, groups]"));
}

// Not run by default: compressed_tensors_pack.sh runs it to write RTN-quantised samples in
// pack-quantized for check_compressed_tensors_pack.py to compare with the PyPI package.
TEST_CASE("write pack-quantized samples for compressed-tensors", "[.ct_pack_export]") {
  const char* path = std::getenv("MOEPRUNE_CT_PACK_OUT");
  REQUIRE(path != nullptr);
  namespace cm = moeprune::compression;
  torch::manual_seed(3);
  std::map<std::string, torch::Tensor> out;
  for (const int64_t bits : {4, 8}) {
    for (const bool symmetric : {true, false}) {
      const auto w = torch::randn({24, 64});
      const auto q =
          cm::rtn_quantize(w, cm::QuantScheme().bits(bits).group_size(16).symmetric(symmetric));
      const auto p = d::encode_pack_quantized(q.codes, q.scales, q.zeros, {}, bits, symmetric,
                                              torch::kFloat, "sample");
      const std::string k = "w" + std::to_string(bits) + (symmetric ? "_sym." : "_asym.");
      out[k + "weight"] = w;
      out[k + "codes"] = q.codes;
      out[k + "zeros"] = q.zeros;
      out[k + "dequantized"] = q.dequantize();
      out[k + "weight_packed"] = p.weight_packed;
      out[k + "weight_scale"] = p.weight_scale;
      out[k + "weight_shape"] = p.weight_shape;
      if (!symmetric) out[k + "weight_zero_point"] = p.weight_zero_point;
    }
  }
  moeprune::safetensors::save_file(path, out);
}

}  // namespace compressed_tensors_pack_test

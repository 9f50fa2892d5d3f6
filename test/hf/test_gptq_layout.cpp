// The GPTQ layout (hf/gptq_layout.h) on words packed by hand from the format's definition
// (unsigned codes down each column, lowest bits first; zero points minus 1 along each row), with
// and without act-order's g_idx, and its refusals. Whole checkpoints against their dense twins
// and transformers: gptq_layout.sh.
#include <torch/torch.h>
#include <catch2/catch.hpp>

#include "../scratch_dir.h"
#include "hf/gptq_layout.h"

#include <sys/stat.h>

#include <fstream>
#include <string>

namespace gptq_layout_test {

namespace d = moeprune::hf::detail;

TEST_CASE("the GPTQ layout dequantises hand-packed words", "[gptq]") {
  // 8 inputs, 8 outputs, 4 bits, groups of 4. Output 0's codes down the column, inputs 0..7:
  // 8 9 7 15 0 8 8 10 -> 0xA880F798; every other output all 8 -> 0x88888888.
  auto qweight = torch::full({1, 8}, static_cast<int32_t>(0x88888888u), torch::kInt);
  qweight[0][0] = static_cast<int32_t>(0xA880F798u);
  // Zero points stored minus 1: 7 (zero 8) everywhere, 6 (zero 7) for output 0 in group 1.
  const auto qzeros =
      torch::tensor({static_cast<int32_t>(0x77777777u), static_cast<int32_t>(0x77777776u)},
                    torch::kInt)
          .view({2, 1});
  auto scales = torch::full({2, 8}, 0.5).to(torch::kHalf);
  scales[1].fill_(2.0);
  const d::GPTQLayout layout{4, 4, 1};
  auto want = torch::zeros({8, 8});
  // Group 0: 0.5 * (q - 8); group 1: 2 * (q - 7) for output 0.
  want[0] = torch::tensor({0.f, 0.5f, -0.5f, 3.5f, -14.f, 2.f, 2.f, 6.f});
  CHECK(torch::equal(d::dequantize_gptq(qweight, qzeros, scales, {}, layout, "x"),
                     want.to(torch::kHalf)));
  // act-order: inputs 0-3 in group 1, 4-7 in group 0.
  const auto g_idx = torch::tensor({1, 1, 1, 1, 0, 0, 0, 0}, torch::kInt);
  auto shuffled = torch::zeros({8, 8});
  shuffled[0] = torch::tensor({2.f, 4.f, 0.f, 16.f, -4.f, 0.f, 0.f, 1.f});
  // (Outputs 1-7: code 8, zero 8 in both groups: 0.)
  CHECK(torch::equal(d::dequantize_gptq(qweight, qzeros, scales, g_idx, layout, "x"),
                     shuffled.to(torch::kHalf)));
  // gptq_v2 stores the zero points as they are: 7 and 6.
  const auto v2 = d::dequantize_gptq(qweight, qzeros, scales, {}, {4, 4, 0}, "x");
  CHECK(v2[0][0].item<float>() == 0.5f);   // 0.5 * (8 - 7)
  CHECK(v2[0][4].item<float>() == -12.f);  // 2 * (0 - 6)

  CHECK_THROWS_WITH(d::dequantize_gptq(qweight, qzeros, scales.narrow(1, 0, 4), {}, layout, "x"),
                    Catch::Contains("x.scales should be floating [groups, 8]"));
  CHECK_THROWS_WITH(d::dequantize_gptq(qweight, qzeros.narrow(0, 0, 1), scales, {}, layout, "x"),
                    Catch::Contains("x.qzeros should be int32 [2, 1]"));
  CHECK_THROWS_WITH(d::dequantize_gptq(qweight, qzeros, scales, g_idx + 1, layout, "x"),
                    Catch::Contains("x.g_idx should give each of the 8 inputs a group below 2"));
  CHECK_THROWS_WITH(d::dequantize_gptq(qweight, qzeros, scales, {}, {4, 2, 1}, "x"),
                    Catch::Contains("x: 2 groups of scales for 8 inputs in groups of 2"));
}

TEST_CASE("a GPTQ config moeprune cannot read is refused by field", "[gptq]") {
  const auto layout_of = [](const std::string& name, const std::string& quantization) {
    const auto dir = test::scratch_dir("moeprune-gptq") + "/gptq-" + name;
    ::mkdir(dir.c_str(), 0755);
    std::ofstream(dir + "/config.json") << R"({"quantization_config": )" << quantization << "}";
    return d::gptq_layout(moeprune::hf::Config(dir));
  };
  const auto ok = layout_of("ok", R"({"quant_method": "gptq", "bits": 4, "group_size": -1,
                                      "checkpoint_format": "gptq_v2"})");
  REQUIRE(ok.has_value());
  CHECK(ok->group_size == 0);
  CHECK(ok->zero_offset == 0);
  CHECK_FALSE(layout_of("awq", R"({"quant_method": "awq", "bits": 4})").has_value());
  CHECK_THROWS_WITH(layout_of("bits", R"({"quant_method": "gptq", "bits": 3})"),
                    Catch::Contains("quantization_config.bits is 3"));
  CHECK_THROWS_WITH(
      layout_of("format", R"({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"})"),
      Catch::Contains("checkpoint_format is \"marlin\"; moeprune reads gptq and gptq_v2"));
  CHECK_THROWS_WITH(layout_of("dynamic", R"({"quant_method": "gptq", "bits": 4,
                               "dynamic": {"+:.*down_proj": {"bits": 8}}})"),
                    Catch::Contains("dynamic (per-module bits or group sizes) is set"));
  CHECK_THROWS_WITH(
      layout_of("pack", R"({"quant_method": "gptq", "bits": 4, "pack_dtype": "int16"})"),
      Catch::Contains("pack_dtype is \"int16\"; moeprune reads int32 words"));
}

}  // namespace gptq_layout_test

// Reading a folder whose weights compressed-tensors stores pack-quantized
// (hf/compressed_tensors_quantized.h): a hand-made weight read back as its hand-computed
// dequantised values, the config group chosen by target, and each refusal by name. That the
// package's own folders (llm-compressor's) read as it decompresses them is
// llmcompressor_gptq_compare.sh's; our folders, compressed_tensors_quantized.sh's.
#include <torch/torch.h>
#include <catch2/catch.hpp>

#include "../scratch_dir.h"
#include "hf/compressed_tensors_pack.h"
#include "hf/compressed_tensors_quantized.h"

#include <moeprune/io/safetensors.h>

#include <sys/stat.h>

#include <fstream>
#include <map>
#include <string>

namespace compressed_tensors_quantized_test {

namespace d = moeprune::hf::detail;

// A folder `name` holding config.json with one config group (`group`: its JSON without targets,
// format pack-quantized unless it says otherwise, targeting `target`) and `tensors`.
std::string folder(const std::string& name, const std::string& group, const std::string& target,
                   const std::map<std::string, torch::Tensor>& tensors) {
  const auto dir = test::scratch_dir("moeprune-ct-quantized") + "/ct-quantized-" + name;
  ::mkdir(dir.c_str(), 0755);
  moeprune::safetensors::save_file(dir + "/model.safetensors", tensors);
  std::ofstream(dir + "/config.json")
      << R"({"quantization_config": {"quant_method": "compressed-tensors",
          "format": "pack-quantized", "config_groups": {"group_0": {"targets": [")"
      << target << R"("], )" << group << "}}}}";
  return dir;
}

// m.weight [2, 8], 4-bit symmetric, groups of 4: codes and scales by hand.
std::map<std::string, torch::Tensor> packed_m() {
  const auto codes =
      torch::tensor({1, -2, 3, 0, 7, -8, 0, 1, 0, 0, 0, 0, -1, -1, 2, 2}, torch::kChar)
          .view({2, 8});
  return {{"m.weight_packed", d::pack_int32(codes, 4)},
          {"m.weight_scale", torch::tensor({0.5f, 0.25f, 1.0f, 2.0f}).view({2, 2})},
          {"m.weight_shape", torch::tensor({2, 8}, torch::kLong)},
          {"other.weight", torch::ones({2, 2})}};
}

const char* kW4g4 =
    R"("weights": {"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group",
       "group_size": 4})";

int64_t read(const std::string& dir, moeprune::safetensors::Checkpoint* out = nullptr) {
  const moeprune::hf::Config config(dir);
  moeprune::safetensors::Checkpoint checkpoint(dir);
  const auto added = d::add_pack_quantized_weights(config, checkpoint);
  if (out != nullptr) *out = std::move(checkpoint);
  return added;
}

TEST_CASE("a pack-quantized folder reads as its dequantised weights", "[compressed-tensors]") {
  const auto dir = folder("ok", kW4g4, "re:.*m$", packed_m());
  moeprune::safetensors::Checkpoint checkpoint(dir);
  const moeprune::hf::Config config(dir);
  CHECK(d::pack_quantized_groups(config).size() == 1);
  CHECK(d::add_pack_quantized_weights(config, checkpoint) == 1);
  CHECK(checkpoint.contains("m.weight"));
  CHECK(checkpoint.info("m.weight").shape == std::vector<int64_t>{2, 8});
  // Row 0: 0.5 * (1, -2, 3, 0), 0.25 * (7, -8, 0, 1); row 1: 1 * 0, 2 * (-1, -1, 2, 2).
  CHECK(torch::equal(checkpoint.tensor("m.weight"),
                     torch::tensor({0.5f, -1.f, 1.5f, 0.f, 1.75f, -2.f, 0.f, 0.25f, 0.f, 0.f, 0.f,
                                    0.f, -2.f, -2.f, 4.f, 4.f})
                         .view({2, 8})));
  CHECK(torch::equal(checkpoint.tensor("other.weight"), torch::ones({2, 2})));
  // The exact name and the class name target it too. A regex matches from the start of the
  // name (Python's re.match): "re:m" does not target "a.m".
  CHECK(read(folder("exact", kW4g4, "m", packed_m())) == 1);
  CHECK(read(folder("class", kW4g4, "Linear", packed_m())) == 1);
  std::map<std::string, torch::Tensor> nested;
  for (const auto& [name, t] : packed_m()) nested["a." + name] = t;
  CHECK(read(folder("nested", kW4g4, "re:a\\\\.m", nested)) == 1);
  CHECK_THROWS_WITH(read(folder("later", kW4g4, "re:m", nested)),
                    Catch::Contains("a.m.weight_packed is stored pack-quantized but no config "
                                    "group of ") &&
                        Catch::Contains("targets a.m"));
}

TEST_CASE("a pack-quantized folder the reader does not understand is refused by name",
          "[compressed-tensors]") {
  const auto refused = [](const std::string& name, const std::string& group,
                          std::map<std::string, torch::Tensor> tensors) {
    return read(folder(name, group, "re:.*m$", tensors));
  };
  CHECK_THROWS_WITH(
      refused("float", R"("format": "float-quantized", )" + std::string(kW4g4), packed_m()),
      Catch::Contains("group_0.format is \"float-quantized\"; moeprune reads "
                      "pack-quantized weights only"));
  CHECK_THROWS_WITH(
      refused("act", R"("input_activations": {"num_bits": 8}, )" + std::string(kW4g4), packed_m()),
      Catch::Contains("group_0.input_activations is set: activation quantisation is not read"));
  CHECK_THROWS_WITH(
      refused("bits", R"("weights": {"num_bits": 9, "strategy": "channel"})", packed_m()),
      Catch::Contains("group_0.weights.num_bits is 9; pack-quantized stores 1 to 8"));
  CHECK_THROWS_WITH(
      refused("tensor", R"("weights": {"num_bits": 4, "strategy": "tensor"})", packed_m()),
      Catch::Contains("group_0.weights.strategy is \"tensor\"; moeprune reads group and channel"));
  // Scales for groups of 4 read with a config of groups of 2.
  CHECK_THROWS_WITH(
      refused("groups", R"("weights": {"num_bits": 4, "strategy": "group", "group_size": 2})",
              packed_m()),
      Catch::Contains("m.weight_scale is [2, 2], expected [2, 4] for a 2 x 8 weight with "
                      "group_0's groups of 2"));
  CHECK_THROWS_WITH(
      refused("zero",
              R"("weights": {"num_bits": 4, "symmetric": false, "strategy": "group",
                 "group_size": 4})",
              packed_m()),
      Catch::Contains("pack-quantized m.weight needs m.weight_zero_point, which is missing"));
  CHECK_THROWS_WITH(
      refused("g_idx",
              R"("weights": {"num_bits": 4, "strategy": "group", "group_size": 4,
                 "actorder": "group"})",
              packed_m()),
      Catch::Contains("m is quantised with group_0's actorder \"group\", but m.weight_g_idx "
                      "(each input's group) is missing"));
  auto both = packed_m();
  both["m.weight"] = torch::zeros({2, 8});
  CHECK_THROWS_WITH(refused("both", kW4g4, both),
                    Catch::Contains("m holds both .weight and .weight_packed"));
}

TEST_CASE("pack-quantized groups that do not divide the inputs decode by the group size",
          "[compressed-tensors]") {
  // 10 inputs in groups of 4: 3 scales, the last group 2 wide (cols / groups would say 3.33).
  d::PackQuantized p;
  p.weight_packed =
      d::pack_int32(torch::tensor({1, 2, 3, 4, 1, 2, 3, 4, 1, 2}, torch::kChar).view({1, 10}), 4);
  p.weight_scale = torch::tensor({1.f, 2.f, 4.f}).view({1, 3});
  p.weight_shape = torch::tensor({1, 10}, torch::kInt);
  CHECK(torch::equal(
      d::decode_pack_quantized(p, 4, true, torch::kFloat, "m", 4),
      torch::tensor({1.f, 2.f, 3.f, 4.f, 2.f, 4.f, 6.f, 8.f, 4.f, 8.f}).view({1, 10})));
  CHECK_THROWS_WITH(d::decode_pack_quantized(p, 4, true, torch::kFloat, "m"),
                    Catch::Contains("m: 3 groups do not divide 10 inputs"));
  CHECK_THROWS_WITH(d::decode_pack_quantized(p, 4, true, torch::kFloat, "m", 3),
                    Catch::Contains("m: 3 groups of scales for 10 inputs in groups of 3"));
}

}  // namespace compressed_tensors_quantized_test

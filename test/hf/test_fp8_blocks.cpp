// Block-scaled FP8 weights (hf/fp8_blocks.h), as DeepSeek-V3 ships them: a hand-made weight whose
// blocks do not divide it, read back as the hand-computed products; a folder read through
// hf::Source's decoding (the weight decoded under its own name, its stored bytes still there);
// and the refusals by name. That transformers' own dequantisation agrees on a whole model is
// fp8_checkpoint.sh's.
#include <torch/torch.h>
#include <catch2/catch.hpp>

#include "../scratch_dir.h"
#include "hf/config.h"
#include "hf/fp8_blocks.h"

#include <moeprune/io/safetensors.h>

#include <sys/stat.h>

#include <fstream>
#include <map>
#include <string>

namespace fp8_blocks_test {

namespace d = moeprune::hf::detail;

// [3, 5] in e4m3 (every value exact in it), blocks of 2 x 4: scales [2, 2].
torch::Tensor fp8_weight() {
  return torch::tensor(
             {1.f, -2.f, 0.5f, 1.5f, 3.f, 0.f, 4.f, -0.25f, 6.f, 1.f, -1.f, 2.f, 8.f, -3.f, 0.75f})
      .view({3, 5})
      .to(torch::kFloat8_e4m3fn);
}
torch::Tensor fp8_scales() {
  return torch::tensor({2.f, 0.5f, 4.f, 1.f}).view({2, 2});
}
// Rows 0-1 x columns 0-3 by 2, column 4 by 0.5; row 2 x columns 0-3 by 4, column 4 by 1.
torch::Tensor fp8_expected() {
  return torch::tensor({2.f, -4.f, 1.f, 3.f, 1.5f, 0.f, 8.f, -0.5f, 12.f, 0.5f, -4.f, 8.f, 32.f,
                        -12.f, 0.75f})
      .view({3, 5});
}

std::string folder(const std::string& name, const std::string& quantization,
                   const std::map<std::string, torch::Tensor>& tensors) {
  const auto dir = test::scratch_dir("moeprune-fp8") + "/fp8-" + name;
  ::mkdir(dir.c_str(), 0755);
  moeprune::safetensors::save_file(dir + "/model.safetensors", tensors);
  std::ofstream(dir + "/config.json") << R"({"quantization_config": )" << quantization << "}";
  return dir;
}

const char* kBlocks2x4 =
    R"({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
        "weight_block_size": [2, 4]})";

int64_t read(const std::string& dir) {
  const moeprune::hf::Config config(dir);
  moeprune::safetensors::Checkpoint checkpoint(dir);
  return d::add_fp8_block_weights(config, checkpoint);
}

TEST_CASE("block-scaled FP8 weights dequantise block by block, the last blocks cut short",
          "[fp8]") {
  CHECK(
      torch::equal(d::dequantize_fp8_blocks(fp8_weight(), fp8_scales(), {2, 4}, torch::kFloat, "w"),
                   fp8_expected()));
  CHECK(torch::equal(d::dequantize_fp8_blocks(fp8_weight(), fp8_scales().to(torch::kBFloat16),
                                              {2, 4}, torch::kBFloat16, "w"),
                     fp8_expected().to(torch::kBFloat16)));
  CHECK_THROWS_WITH(
      d::dequantize_fp8_blocks(fp8_weight(), torch::ones({1, 2}), {2, 4}, torch::kFloat, "w"),
      Catch::Contains("w_scale_inv is [1, 2], expected [2, 2] for a 3 x 5 weight in blocks of "
                      "2 x 4"));
  CHECK_THROWS_WITH(d::dequantize_fp8_blocks(fp8_weight().to(torch::kFloat), fp8_scales(), {2, 4},
                                             torch::kFloat, "w"),
                    Catch::Contains("w: an FP8 weight should be float8_e4m3fn"));
}

TEST_CASE("an FP8 folder reads each weight decoded under its own name", "[fp8]") {
  const auto dir = folder("ok", kBlocks2x4,
                          {{"m.weight", fp8_weight()},
                           {"m.weight_scale_inv", fp8_scales()},
                           {"norm.weight", torch::ones({5})}});
  const moeprune::hf::Config config(dir);
  moeprune::safetensors::Checkpoint checkpoint(dir);
  CHECK(d::add_fp8_block_weights(config, checkpoint) == 1);
  CHECK(checkpoint.is_decoded("m.weight"));
  CHECK(checkpoint.names() == std::vector<std::string>{"m.weight", "norm.weight"});
  CHECK(checkpoint.info("m.weight").scalar_type == torch::kFloat);
  CHECK(torch::equal(checkpoint.tensor("m.weight"), fp8_expected()));
  CHECK(checkpoint.stored_tensor("m.weight").scalar_type() == torch::kFloat8_e4m3fn);
  CHECK(checkpoint.file(checkpoint.shard_of("m.weight")).contains("m.weight"));
  checkpoint.release("m.weight");
  // Not an fp8 config: nothing decoded.
  CHECK(read(folder("other", R"({"quant_method": "gptq"})",
                    {{"m.weight", fp8_weight()}, {"m.weight_scale_inv", fp8_scales()}})) == 0);
}

TEST_CASE("an FP8 folder moeprune cannot read is refused by name", "[fp8]") {
  const std::map<std::string, torch::Tensor> ok{{"m.weight", fp8_weight()},
                                                {"m.weight_scale_inv", fp8_scales()}};
  CHECK_THROWS_WITH(read(folder("e5m2", R"({"quant_method": "fp8", "fmt": "e5m2",
                                  "weight_block_size": [2, 4]})",
                                ok)),
                    Catch::Contains("quantization_config.fmt is \"e5m2\""));
  CHECK_THROWS_WITH(read(folder("static", R"({"quant_method": "fp8", "activation_scheme":
                                  "static", "weight_block_size": [2, 4]})",
                                ok)),
                    Catch::Contains("activation_scheme is \"static\": static activation scales "
                                    "are not read"));
  CHECK_THROWS_WITH(read(folder("tensor", R"({"quant_method": "fp8"})", ok)),
                    Catch::Contains("weight_block_size should be two positive integers"));
  CHECK_THROWS_WITH(read(folder("noscale", kBlocks2x4, {{"m.weight", fp8_weight()}})),
                    Catch::Contains("m.weight is stored in FP8 but m.weight_scale_inv (its block "
                                    "scales) is missing"));
  CHECK_THROWS_WITH(
      read(folder("shape", kBlocks2x4,
                  {{"m.weight", fp8_weight()}, {"m.weight_scale_inv", torch::ones({3, 2})}})),
      Catch::Contains("m.weight_scale_inv is [3, 2], expected [2, 2] for the 3 x 5 "
                      "weight m.weight in blocks of 2 x 4"));
}

}  // namespace fp8_blocks_test

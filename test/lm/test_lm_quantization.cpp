// Quantisation of a checkpoint, streamed (models/lm/streamed_quantization.h), against the same
// method run on the model loaded whole through its MoE view (compression/expert_quantization.h,
// itself checked against gptq() on naive Gram matrices in test_expert_sparsity): the written
// folder, reloaded, must hold the in-memory result's weights bit for bit and give its logits.
#include "lm_test_helpers.h"

#include <moeprune/compression/expert_quantization.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/moe_view.h>
#include <moeprune/models/lm/streamed_quantization.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <string>

namespace lm_quantization_test {

namespace lm = moeprune::lm;
namespace cm = moeprune::compression;

TEST_CASE("a streamed quantize of a checkpoint equals the in-memory one", "[lm][quantization]") {
  for (const std::string family : {"qwen2_moe", "deepseek"}) {
    for (const auto method :
         {cm::QuantMethod::kGPTQ, cm::QuantMethod::kRTN, cm::QuantMethod::kAWQ}) {
      INFO(family << " " << cm::to_string(method));
      const std::string dir = lm_test::kFixtures + "/" + family;
      auto model = lm::load_causal_lm(dir);
      const lm::CheckpointLayers checkpoint(dir);
      auto gen = at::detail::createCPUGenerator(9);
      const auto calibration =
          torch::randint(model->options.vocab_size(), {6, 12}, gen, torch::kLong);
      const auto options =
          cm::QuantizeOptions()
              .method(method)
              .scheme(cm::QuantScheme().bits(4).group_size(8).symmetric(false))
              .calibration(cm::ExpertSparsityOptions().targets(cm::SparsityTargets::parse("all")));
      auto view = lm::moe_view(model, [&](const auto& visit) {
        visit(calibration.narrow(0, 0, 4));
        visit(calibration.narrow(0, 4, 2));
      });
      const auto in_memory = cm::quantize(*view, options);
      const auto out = test::scratch_dir() + "/quant_" + family + "_" + cm::to_string(method);
      const auto result = lm::quantize_checkpoint(
          checkpoint, method != cm::QuantMethod::kRTN ? calibration : torch::Tensor(), out,
          lm::QuantizeCheckpointOptions().quantize(options).batch_size(4).stream(
              lm::StreamOptions().scratch_dir(test::scratch_dir())));
      REQUIRE(result.layers.size() == in_memory.layers.size());
      REQUIRE(result.linears.size() == in_memory.linears.size());
      auto reloaded = lm::load_causal_lm(out);
      const auto want = view->linears();
      const auto got = lm::moe_view(reloaded)->linears();
      REQUIRE(got.size() == want.size());
      for (size_t i = 0; i < want.size(); ++i) {
        INFO(want[i].name);
        CHECK(torch::equal(got[i].linear->weight, want[i].linear->weight));
      }
      const auto moe_want = view->layers(), moe_got = lm::moe_view(reloaded)->layers();
      for (size_t i = 0; i < moe_want.size(); ++i) {
        CHECK(torch::equal(moe_got[i].layer->experts()->w2, moe_want[i].layer->experts()->w2));
        CHECK(torch::equal(moe_got[i].layer->experts()->w1, moe_want[i].layer->experts()->w1));
      }
      const auto ids = lm_test::input_ids(family);
      CHECK(lm_test::max_diff(lm_test::logits_of(reloaded, ids), lm_test::logits_of(model, ids)) ==
            0.0);
      const auto config = lm_test::read_json(out + "/config.json");
      REQUIRE(config["moeprune"]["quantization"].size() == 1);
      CHECK(config["moeprune"]["quantization"][0]["method"] == cm::to_string(method));
      CHECK(config["moeprune"]["quantization"][0]["bits"] == 4);
      CHECK(config["moeprune"]["quantization"][0]["stored"] == "dequantised");
    }
  }
}

TEST_CASE("a streamed quantize refuses bad requests before writing", "[lm][quantization]") {
  const lm::CheckpointLayers checkpoint(lm_test::kFixtures + "/mixtral");
  const auto out = test::scratch_dir() + "/quant_refused";
  const auto with = [](cm::QuantScheme scheme, cm::QuantMethod method) {
    return lm::QuantizeCheckpointOptions().quantize(
        cm::QuantizeOptions().method(method).scheme(scheme));
  };
  CHECK_THROWS_WITH(
      lm::quantize_checkpoint(checkpoint, {}, out,
                              with(cm::QuantScheme().group_size(8), cm::QuantMethod::kGPTQ)),
      Catch::Contains("gptq needs calibration token ids"));
  CHECK_THROWS_WITH(
      lm::quantize_checkpoint(checkpoint, {}, out,
                              with(cm::QuantScheme().group_size(8), cm::QuantMethod::kAWQ)),
      Catch::Contains("awq needs calibration token ids"));
  CHECK_THROWS_WITH(
      lm::quantize_checkpoint(checkpoint, torch::zeros({1, 4}, torch::kLong), out,
                              with(cm::QuantScheme().group_size(8), cm::QuantMethod::kAWQ)
                                  .format(lm::QuantFormat::kCompressedTensors)),
      Catch::Contains("moeprune writes AWQ dense (--format dense) for now"));
  CHECK_THROWS_WITH(
      lm::quantize_checkpoint(checkpoint, {}, out,
                              with(cm::QuantScheme().group_size(12), cm::QuantMethod::kRTN)),
      Catch::Contains("have 32 inputs, not a whole number of groups of 12"));
  CHECK_THROWS_WITH(
      lm::quantize_checkpoint(checkpoint, {}, out,
                              with(cm::QuantScheme().bits(5).group_size(8), cm::QuantMethod::kRTN)),
      Catch::Contains("bits should be 2, 3, 4 or 8, got 5"));
  CHECK_FALSE(test::path_exists(out));
}

}  // namespace lm_quantization_test

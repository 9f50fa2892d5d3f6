// M-SMoE on a checkpoint, streamed (models/lm/streamed_merge.h), against the same merge done on
// the model loaded whole (compression/merging.h on its MoE view): the usage must be equal, the
// groups the same, and the written checkpoint, reloaded, must give the in-memory merged model's
// logits. transformers' view of the written folder is checked by test/lm/cli_merge.sh.
#include "lm_test_helpers.h"

#include <moeprune/compression/merging.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/moe_view.h>
#include <moeprune/models/lm/streamed_merge.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <map>
#include <string>

namespace {

namespace lm = moeprune::lm;
namespace compression = moeprune::compression;

torch::Tensor random_tokens(std::vector<int64_t> shape, int64_t vocab, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randint(vocab, shape, gen, torch::kLong);
}

}  // namespace

TEST_CASE("a streamed merge of a checkpoint equals the in-memory M-SMoE merge", "[lm][merge]") {
  // Mixtral (every layer MoE), Qwen2-MoE (shared experts beside the merged ones), DeepSeek
  // (a dense first layer: MoE keys differ from decoder-layer keys), DeepSeek-V3 and GLM-4.5
  // (group-limited routers with a correction bias: merge groups cross routing groups, the router
  // keeps its columns and bias).
  for (const std::string family : {"mixtral", "qwen2_moe", "deepseek", "deepseek_v3", "glm4_moe"}) {
    for (const bool global : {false, true}) {
      INFO(family << (global ? " global budget" : " same count"));
      const std::string dir = lm_test::kFixtures + "/" + family;
      auto model = lm::load_causal_lm(dir);
      const lm::CheckpointLayers checkpoint(dir);
      const auto calibration = random_tokens({6, 10}, model->options.vocab_size(), 5);
      const int64_t batch_size = 4;  // batches of 4 and 2
      auto view = lm::moe_view(model, [&](const auto& visit) {
        for (int64_t start = 0; start < calibration.size(0); start += batch_size) {
          visit(calibration.slice(0, start, std::min(start + batch_size, calibration.size(0))));
        }
      });
      const auto usage = compression::collect_expert_usage(*view);
      const auto streamed_usage = lm::streamed_expert_usage(checkpoint, calibration, batch_size);
      const auto& refs = checkpoint.info().layers;
      for (const auto& ref : refs) {
        INFO("MoE layer " << ref.prefix);
        // In memory the layers are keyed by decoder layer, on checkpoints by MoE-layer position.
        CHECK(torch::equal(streamed_usage.frequency.at(ref.index),
                           usage.frequency.at(ref.decoder_layer)));
        CHECK(torch::equal(streamed_usage.router_logits.at(ref.index),
                           usage.router_logits.at(ref.decoder_layer)));
      }
      const int64_t E = refs.front().num_experts;
      const int64_t total = static_cast<int64_t>(refs.size()) * 2 + 1;
      const auto counts = global ? compression::global_group_counts(*view, usage, total)
                                 : compression::same_group_count(*view, 2);
      const auto groups = compression::group_experts(*view, usage, counts);
      compression::merge_experts(*view, groups, usage);

      const auto out = test::scratch_dir() + "/" + family + (global ? "_global" : "_same");
      auto options = lm::MergeCheckpointOptions().scratch_dir(test::scratch_dir());
      if (global) {
        options.total_groups(total);
      } else {
        options.groups_per_layer(2);
      }
      const auto result = lm::merge_checkpoint(checkpoint, streamed_usage, out, options);
      int64_t merged_tensors = 0;
      for (const auto& ref : refs) {
        INFO("MoE layer " << ref.prefix);
        CHECK(result.groups.at(ref.index) == groups.at(ref.decoder_layer));
        merged_tensors += 3 * E;
      }
      CHECK(result.report.tensors_merged == static_cast<uint64_t>(merged_tensors));

      // Reloaded: one expert per group, and the in-memory merged model's logits.
      auto reloaded = lm::load_causal_lm(out);
      for (const auto& [index, layer] : reloaded->moe_layers()) {
        INFO("decoder layer " << index);
        CHECK(layer->experts()->num_held() == static_cast<int64_t>(groups.at(index).size()));
      }
      const auto ids = lm_test::input_ids(family);
      // The merge ran in fp32 on both sides and the fixture is fp32: the same numbers.
      CHECK(lm_test::max_diff(lm_test::logits_of(reloaded, ids), lm_test::logits_of(model, ids)) ==
            0.0);
    }
  }
}

TEST_CASE("a streamed merge refuses bad requests before writing", "[lm][merge]") {
  const lm::CheckpointLayers checkpoint(lm_test::kFixtures + "/mixtral");
  const auto calibration = random_tokens({2, 8}, 96, 1);
  const auto usage = lm::streamed_expert_usage(checkpoint, calibration, 2);
  const auto out = test::scratch_dir() + "/refused";
  REQUIRE_THROWS_WITH(lm::merge_checkpoint(checkpoint, usage, out, lm::MergeCheckpointOptions()),
                      Catch::Contains("give groups_per_layer or total_groups"));
  REQUIRE_THROWS_WITH(lm::merge_checkpoint(checkpoint, usage, out,
                                           lm::MergeCheckpointOptions().groups_per_layer(99)),
                      Catch::Contains("99"));
  REQUIRE_THROWS_WITH(
      lm::merge_checkpoint(checkpoint, {}, out, lm::MergeCheckpointOptions().groups_per_layer(2)),
      Catch::Contains("no usage for MoE layer"));
  CHECK_FALSE(test::path_exists(out));
  REQUIRE_THROWS_WITH(lm::streamed_expert_usage(checkpoint, torch::Tensor(), 2),
                      Catch::Contains("calibration data"));
}

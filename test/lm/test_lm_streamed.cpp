// Layer-streamed work on checkpoints (models/lm/streamed.h) against transformers' per-token NLL
// (the fixtures of scripts/make_lm_fixtures.py) and against the same work on the model loaded
// whole: the same batches go through the same operations, so the numbers must be equal, not
// close.
#include "lm_test_helpers.h"

#include <moeprune/hf/scoring.h>
#include <moeprune/io/safetensors.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/moe_view.h>
#include <moeprune/models/lm/streamed.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <map>
#include <string>

using namespace lm_test;

namespace {

namespace lm = moeprune::lm;
namespace pruning = moeprune::pruning;

torch::Tensor random_tokens(std::vector<int64_t> shape, int64_t vocab, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randint(vocab, shape, gen, torch::kLong);
}

// What `moeprune score --calibration` runs: hf::score_checkpoint with the tokens streamed through
// the checkpoint (none when `tokens` is undefined).
pruning::ExpertScores streamed_scores(const lm::CheckpointLayers& checkpoint,
                                      const pruning::Criterion& criterion,
                                      const torch::Tensor& tokens, int64_t batch_size,
                                      uint64_t seed) {
  const lm::StreamedCalibration inputs(tokens, batch_size, checkpoint.dtype());
  moeprune::hf::ScoringOptions options;
  options.inputs = tokens.defined() ? &inputs : nullptr;
  options.seed = seed;
  options.dtype = checkpoint.dtype();
  return moeprune::hf::score_checkpoint(checkpoint.source(), criterion, options);
}

}  // namespace

TEST_CASE("layer-streamed NLL equals transformers' on every family", "[lm][streamed]") {
  for (const std::string family : kFamilies) {
    INFO(family);
    const auto ref = reference(family);
    const lm::CheckpointLayers checkpoint(kFixtures + "/" + family);
    const auto ids = ref.at("input_ids");
    const auto hidden = lm::streamed_hidden_states(checkpoint, {ids});
    const auto nll = lm::nll_of_logits(checkpoint.logits(hidden[0]), ids);
    // fp32 against transformers' fp32: the tolerance of the whole-model parity tests.
    CHECK((nll - ref.at("nll")).abs().max().item<double>() < 1e-5);
  }
}

TEST_CASE("layer-streamed perplexity equals the in-memory model's exactly", "[lm][streamed]") {
  for (const std::string family : kFamilies) {
    INFO(family);
    const std::string dir = kFixtures + "/" + family;
    auto model = lm::load_causal_lm(dir);
    const lm::CheckpointLayers checkpoint(dir);
    // 101 tokens in windows of 16 with stride 12, 3 windows per batch: batches of different
    // sizes and a shorter last window.
    const auto stream = random_tokens({101}, model->options.vocab_size(), 7);
    const auto options = lm::PerplexityOptions().context(16).stride(12).batch_size(3);
    const auto whole = lm::perplexity(model, stream, options);
    const auto streamed = lm::streamed_perplexity(checkpoint, stream, options);
    CHECK(streamed.tokens == whole.tokens);
    CHECK(streamed.nll_sum == whole.nll_sum);
    // Activations in the scratch file instead of memory: the same numbers.
    const auto spilled = lm::streamed_perplexity(checkpoint, stream, options,
                                                 lm::StreamOptions().activation_budget_bytes(0));
    CHECK(spilled.nll_sum == whole.nll_sum);
  }
}

TEST_CASE("layer-streamed expert scores equal the in-memory model's for every criterion",
          "[lm][streamed]") {
  const auto registry = pruning::CriterionRegistry::with_builtins();
  for (const std::string family : {"mixtral", "deepseek", "deepseek_v3"}) {
    const std::string dir = kFixtures + "/" + family;
    auto model = lm::load_causal_lm(dir);
    const lm::CheckpointLayers checkpoint(dir);
    const auto calibration = random_tokens({5, 12}, model->options.vocab_size(), 3);
    const int64_t batch_size = 2;  // batches of 2, 2 and 1 sequences
    auto view = lm::moe_view(model, [&](const auto& visit) {
      for (int64_t start = 0; start < calibration.size(0); start += batch_size) {
        visit(calibration.slice(0, start, std::min(start + batch_size, calibration.size(0))));
      }
    });
    for (const auto& name : registry.names()) {
      const auto criterion = registry.create(name);
      if (criterion->needs_pretrained()) continue;  // the fixtures are one model each
      INFO(family << " " << name);
      if (name == "naee" && family == "deepseek_v3") {
        // NAEE is defined for token-choice top-k; both paths refuse group-limited layers.
        CHECK_THROWS_WITH(pruning::score_experts(*criterion, *view, nullptr, 11),
                          Catch::Contains("does not route token-choice top-k"));
        CHECK_THROWS_WITH(streamed_scores(checkpoint, *criterion, calibration, batch_size, 11),
                          Catch::Contains("does not route token-choice top-k"));
        continue;
      }
      // In memory the layers are keyed by decoder layer, on checkpoints by MoE-layer position.
      const auto in_memory = pruning::score_experts(*criterion, *view, nullptr, 11);
      const auto streamed = streamed_scores(checkpoint, *criterion, calibration, batch_size, 11);
      REQUIRE(streamed.size() == in_memory.size());
      for (const auto& ref : checkpoint.info().layers) {
        INFO("MoE layer " << ref.prefix);
        // random draws from a generator seeded with the seed and the layer's key, so it agrees
        // only where the two keys coincide (not after DeepSeek's leading dense layer).
        if (name == "random" && ref.index != ref.decoder_layer) continue;
        CHECK(torch::equal(streamed.at(ref.index), in_memory.at(ref.decoder_layer)));
      }
    }
  }
}

TEST_CASE("calibration given as tokens or as each MoE layer's hidden states scores alike",
          "[lm][streamed]") {
  // The two inputs of the one scoring engine (moeprune --calibration and --moe-inputs): the
  // hidden states entering each MoE layer, as the model loaded whole computes them, written
  // where --moe-inputs reads them, score every data criterion exactly as the tokens streamed
  // through the checkpoint do (one batch, so the layers see one call either way).
  const auto registry = pruning::CriterionRegistry::with_builtins();
  const std::string dir = kFixtures + "/mixtral";
  auto model = lm::load_causal_lm(dir);
  const lm::CheckpointLayers checkpoint(dir);
  const auto calibration = random_tokens({4, 12}, model->options.vocab_size(), 5);
  const auto view = lm::moe_view(model, [&](const auto& visit) { visit(calibration); });
  std::map<std::string, torch::Tensor> hidden;
  view->walk(/*with_inputs=*/true,
             [&](const moeprune::MoELayerEntry& entry, const moeprune::LayerCalls& calls) {
               REQUIRE(calls.size() == 1);
               hidden[checkpoint.moe_name(entry.key)] = calls.front().input;
             });
  REQUIRE(hidden.size() == checkpoint.info().layers.size());
  const auto path = test::scratch_dir() + "/mixtral_moe_inputs.safetensors";
  moeprune::safetensors::save_file(path, hidden);
  const moeprune::hf::HiddenStateFile file(path);
  for (const std::string name : {"frequency", "importance", "reap", "ean", "naee"}) {
    INFO(name);
    const auto criterion = registry.create(name);
    moeprune::hf::ScoringOptions options;
    options.inputs = &file;
    const auto from_file = moeprune::hf::score_checkpoint(checkpoint.source(), *criterion, options);
    const auto streamed = streamed_scores(checkpoint, *criterion, calibration, 4, 0);
    for (const auto& ref : checkpoint.info().layers) {
      INFO(ref.prefix);
      CHECK(torch::equal(from_file.at(ref.index), streamed.at(ref.index)));
    }
  }
}

TEST_CASE("layer-streamed work refuses bad input, naming it", "[lm][streamed]") {
  const lm::CheckpointLayers checkpoint(kFixtures + "/mixtral");
  const auto registry = pruning::CriterionRegistry::with_builtins();
  REQUIRE_THROWS_WITH(streamed_scores(checkpoint, *registry.create("reap"), torch::Tensor(), 2, 0),
                      Catch::Contains("needs calibration data"));
  REQUIRE_THROWS_WITH(
      streamed_scores(checkpoint, *registry.create("router_norm_change"), torch::Tensor(), 2, 0),
      Catch::Contains("give its checkpoint"));
  REQUIRE_THROWS_WITH(checkpoint.embed(torch::full({1, 3}, 1000, torch::kLong)),
                      Catch::Contains("token ids should be in [0, 96), found 1000"));
  REQUIRE_THROWS_WITH(checkpoint.layer(9), Catch::Contains("decoder layer 9 is outside"));
  REQUIRE_THROWS_WITH(
      lm::streamed_perplexity(
          checkpoint, torch::ones({8}, torch::kLong), lm::PerplexityOptions(),
          lm::StreamOptions().activation_budget_bytes(0).scratch_dir("/nonexistent-folder")),
      Catch::Contains("cannot create a scratch file"));
}

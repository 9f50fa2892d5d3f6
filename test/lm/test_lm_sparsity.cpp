// Sparsity inside the experts of a checkpoint, streamed (models/lm/streamed_sparsity.h), against
// the same method run on the model loaded whole through its MoE view
// (compression/expert_sparsity.h, itself checked against naive loops in test_expert_sparsity):
// the written checkpoint, reloaded, must hold the in-memory result's expert weights bit for bit
// and give its logits.
#include "lm_test_helpers.h"

#include <moeprune/compression/expert_sparsity.h>
#include <moeprune/compression/model_sparsity.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/moe_view.h>
#include <moeprune/models/lm/streamed_sparsity.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <string>

namespace lm_sparsity_test {

namespace lm = moeprune::lm;
namespace cm = moeprune::compression;

// The MoE layer of decoder layer `index`.
moeprune::MoELayer moe_layer(const lm::CausalLM& model, int64_t index) {
  for (const auto& [i, layer] : model->moe_layers()) {
    if (i == index) return layer;
  }
  FAIL("no MoE layer in decoder layer " << index);
  return nullptr;
}

torch::Tensor calibration_tokens(int64_t vocab) {
  auto gen = at::detail::createCPUGenerator(7);
  return torch::randint(vocab, {6, 12}, gen, torch::kLong);
}

TEST_CASE("a streamed sparsify of a checkpoint equals the in-memory one", "[lm][sparsity]") {
  // Mixtral (every layer MoE), Qwen2-MoE (a shared expert beside the routed ones, left dense),
  // DeepSeek (a dense first layer: MoE keys differ from decoder-layer keys).
  for (const std::string family : {"mixtral", "qwen2_moe", "deepseek"}) {
    for (const bool sequential : {true, false}) {
      for (const auto method : {cm::SparsityMethod::kWanda, cm::SparsityMethod::kSparseGPT}) {
        INFO(family << " " << cm::to_string(method) << (sequential ? " sequential" : ""));
        const std::string dir = lm_test::kFixtures + "/" + family;
        auto model = lm::load_causal_lm(dir);
        const lm::CheckpointLayers checkpoint(dir);
        const auto calibration = calibration_tokens(model->options.vocab_size());
        const int64_t batch_size = 4;  // batches of 4 and 2
        const auto options = cm::ExpertSparsityOptions()
                                 .method(method)
                                 .pattern(cm::SparsityPattern::unstructured(0.5))
                                 .sequential(sequential);
        auto view = lm::moe_view(model, [&](const auto& visit) {
          for (int64_t start = 0; start < calibration.size(0); start += batch_size) {
            visit(calibration.slice(0, start, std::min(start + batch_size, calibration.size(0))));
          }
        });
        const auto in_memory = cm::sparsify_experts(*view, options);

        const auto out = test::scratch_dir() + "/sparse_" + family + "_" + cm::to_string(method) +
                         (sequential ? "_seq" : "_basic");
        const auto result = lm::sparsify_checkpoint(
            checkpoint, calibration, out,
            lm::SparsifyCheckpointOptions()
                .sparsity(options)
                .batch_size(batch_size)
                .stream(lm::StreamOptions().scratch_dir(test::scratch_dir())));
        REQUIRE(result.layers.size() == in_memory.size());
        for (size_t i = 0; i < in_memory.size(); ++i) {
          CHECK(result.layers[i].routed_tokens == in_memory[i].routed_tokens);
          CHECK(result.layers[i].zeros == in_memory[i].zeros);
          CHECK(result.layers[i].relative_error == in_memory[i].relative_error);
        }
        auto reloaded = lm::load_causal_lm(out);
        for (const auto& [index, layer] : reloaded->moe_layers()) {
          INFO("decoder layer " << index);
          const auto want = moe_layer(model, index)->experts();
          CHECK(torch::equal(layer->experts()->w1, want->w1));
          CHECK(torch::equal(layer->experts()->w2, want->w2));
          CHECK(torch::equal(layer->experts()->w3, want->w3));
        }
        const auto ids = lm_test::input_ids(family);
        CHECK(lm_test::max_diff(lm_test::logits_of(reloaded, ids),
                                lm_test::logits_of(model, ids)) == 0.0);
        const auto config = lm_test::read_json(out + "/config.json");
        REQUIRE(config["moeprune"]["sparsity"].size() == 1);
        CHECK(config["moeprune"]["sparsity"][0]["method"] == cm::to_string(method));
        CHECK(config["moeprune"]["sparsity"][0]["sequential"] == sequential);
      }
    }
  }
}

TEST_CASE("a streamed sparsify of chosen layers leaves the others as they were", "[lm][sparsity]") {
  const std::string dir = lm_test::kFixtures + "/mixtral";
  const lm::CheckpointLayers checkpoint(dir);
  const auto out = test::scratch_dir() + "/sparse_layer1";
  const auto result = lm::sparsify_checkpoint(
      checkpoint, {}, out,
      lm::SparsifyCheckpointOptions().sparsity(
          cm::ExpertSparsityOptions().method(cm::SparsityMethod::kMagnitude).layers({1})));
  REQUIRE(result.layers.size() == 1);
  auto original = lm::load_causal_lm(dir);
  auto sparse = lm::load_causal_lm(out);
  const auto& before = moe_layer(original, 0)->experts();
  CHECK(torch::equal(moe_layer(sparse, 0)->experts()->w1, before->w1));
  // Layer 1: every row of every expert linear keeps its larger half by |w|.
  const auto w = moe_layer(original, 1)->experts()->w2[0].t();
  const auto kept = moe_layer(sparse, 1)->experts()->w2[0].t().ne(0);
  const auto half = w.size(1) / 2;
  const auto threshold = std::get<0>(w.abs().sort(1)).select(1, half - 1).unsqueeze(1);
  CHECK(torch::equal(kept, w.abs().gt(threshold)));
}

TEST_CASE("a streamed sparsify refuses bad requests before writing", "[lm][sparsity]") {
  const lm::CheckpointLayers checkpoint(lm_test::kFixtures + "/mixtral");
  const auto out = test::scratch_dir() + "/sparse_refused";
  CHECK_THROWS_WITH(lm::sparsify_checkpoint(checkpoint, {}, out),
                    Catch::Contains("wanda needs calibration token ids"));
  CHECK_THROWS_WITH(
      lm::sparsify_checkpoint(
          checkpoint, {}, out,
          lm::SparsifyCheckpointOptions().sparsity(
              cm::ExpertSparsityOptions().method(cm::SparsityMethod::kMagnitude).layers({5}))),
      Catch::Contains("MoE layer 5 is asked for"));
  CHECK_THROWS_WITH(lm::sparsify_checkpoint(checkpoint, {}, out,
                                            lm::SparsifyCheckpointOptions().sparsity(
                                                cm::ExpertSparsityOptions()
                                                    .method(cm::SparsityMethod::kMagnitude)
                                                    .pattern(cm::SparsityPattern::n_of_m(2, 7)))),
                    Catch::Contains("whole groups of 7"));
  // transformers 5.x's fused experts: written per expert only.
  const lm::CheckpointLayers fused(lm_test::kFixtures + "/mixtral_fused");
  CHECK_THROWS_WITH(lm::sparsify_checkpoint(
                        fused, {}, out,
                        lm::SparsifyCheckpointOptions().sparsity(
                            cm::ExpertSparsityOptions().method(cm::SparsityMethod::kMagnitude))),
                    Catch::Contains("stores its experts fused"));
  // SparseGPT with no damping on an expert that saw fewer tokens than its inputs: the Hessian
  // is singular, and the error names the layer and the expert.
  CHECK_THROWS_WITH(lm::sparsify_checkpoint(
                        checkpoint, calibration_tokens(96).narrow(0, 0, 1).narrow(1, 0, 4), out,
                        lm::SparsifyCheckpointOptions().sparsity(
                            cm::ExpertSparsityOptions()
                                .method(cm::SparsityMethod::kSparseGPT)
                                .sparsegpt(cm::SparseGPTOptions().percdamp(0.0)))),
                    Catch::Contains("MoE layer model.layers.0.block_sparse_moe, expert 0") &&
                        Catch::Contains("not positive definite"));
  // The writer's own checks: the record must be a JSON object, the layers the checkpoint's.
  CHECK_THROWS_WITH(moeprune::hf::write_sparsified_checkpoint(checkpoint.source(), {}, out, "{x"),
                    Catch::Contains("the record is not JSON"));
  CHECK_THROWS_WITH(moeprune::hf::write_sparsified_checkpoint(checkpoint.source(), {}, out, "[]"),
                    Catch::Contains("should be a JSON object"));
  CHECK_THROWS_WITH(moeprune::hf::write_sparsified_checkpoint(checkpoint.source(),
                                                              {{7, "none.safetensors"}}, out, "{}"),
                    Catch::Contains("MoE layer 7 was sparsified"));
  CHECK_FALSE(test::path_exists(out));
}

TEST_CASE("a language model's dense layers, by their Hugging Face names", "[lm][sparsity]") {
  auto deepseek = lm::load_causal_lm(lm_test::kFixtures + "/deepseek");
  std::vector<std::string> names;
  std::vector<int64_t> blocks;
  for (const auto& entry : lm::moe_view(deepseek)->linears()) {
    if (entry.block == 0 || entry.block == 1) {
      names.push_back(entry.name + ":" + moeprune::to_string(entry.role));
    }
  }
  const std::string a = "model.layers.0.self_attn.", b = "model.layers.1.self_attn.";
  const std::string m0 = "model.layers.0.mlp.", s1 = "model.layers.1.mlp.shared_experts.";
  CHECK(names == std::vector<std::string>{
                     a + "q_proj:attention", a + "k_proj:attention", a + "v_proj:attention",
                     a + "o_proj:attention", m0 + "gate_proj:dense", m0 + "up_proj:dense",
                     m0 + "down_proj:dense", b + "q_proj:attention", b + "k_proj:attention",
                     b + "v_proj:attention", b + "o_proj:attention",
                     s1 + "gate_proj:shared_experts", s1 + "up_proj:shared_experts",
                     s1 + "down_proj:shared_experts"});
  // Every name is a weight of the checkpoint.
  const moeprune::safetensors::Checkpoint files(lm_test::kFixtures + "/deepseek");
  for (const auto& entry : lm::moe_view(deepseek)->linears()) {
    CHECK(files.contains(entry.name + ".weight"));
  }
}

TEST_CASE("Wanda on a language model's attention keeps what wanda_mask keeps on its inputs",
          "[lm][sparsity]") {
  auto model = lm::load_causal_lm(lm_test::kFixtures + "/qwen2_moe");
  const auto tokens = calibration_tokens(model->options.vocab_size());
  auto layer0 = model->layer(0);
  torch::Tensor x;
  {
    // Layer 0's attention input, from the model's parts: the normed token embeddings.
    torch::NoGradGuard no_grad;
    x = layer0->input_layernorm(model->embed_tokens(tokens)).reshape({tokens.numel(), -1});
  }
  const auto norms = x.to(torch::kDouble).square().sum(0).sqrt();
  std::map<std::string, torch::Tensor> before;
  for (const auto& [name, linear] :
       {std::pair<const char*, torch::nn::Linear>{"q", layer0->self_attn->q_proj},
        {"k", layer0->self_attn->k_proj},
        {"v", layer0->self_attn->v_proj}}) {
    before[name] = linear->weight.detach().clone();
  }
  const auto experts = moe_layer(model, 0)->experts()->w1.detach().clone();
  auto view = lm::moe_view(model, [&](const auto& visit) { visit(tokens); });
  const auto report = cm::sparsify(
      *view, cm::ExpertSparsityOptions().targets(cm::SparsityTargets::parse("attention")));
  REQUIRE(report.linears.size() == static_cast<size_t>(model->options.num_layers()));
  CHECK(report.linears[0].name == "model.layers.0.self_attn");
  CHECK(report.linears[0].tokens == tokens.numel());
  const auto pattern = cm::SparsityPattern::unstructured(0.5);
  for (const auto& [name, linear] :
       {std::pair<const char*, torch::nn::Linear>{"q", layer0->self_attn->q_proj},
        {"k", layer0->self_attn->k_proj},
        {"v", layer0->self_attn->v_proj}}) {
    INFO(name);
    const auto& w = before.at(name);
    CHECK(torch::equal(linear->weight, w * cm::wanda_mask(w, norms, pattern).to(w.scalar_type())));
  }
  CHECK(torch::equal(moe_layer(model, 0)->experts()->w1, experts));
}

TEST_CASE("a streamed sparsify beyond the experts equals the in-memory one", "[lm][sparsity]") {
  // Qwen2-MoE (a shared expert), DeepSeek (a dense first layer and shared experts).
  for (const std::string family : {"qwen2_moe", "deepseek"}) {
    for (const bool sequential : {true, false}) {
      INFO(family << (sequential ? " sequential" : ""));
      const std::string dir = lm_test::kFixtures + "/" + family;
      auto model = lm::load_causal_lm(dir);
      const lm::CheckpointLayers checkpoint(dir);
      const auto calibration = calibration_tokens(model->options.vocab_size());
      const auto options = cm::ExpertSparsityOptions()
                               .method(cm::SparsityMethod::kSparseGPT)
                               .pattern(cm::SparsityPattern::n_of_m(2, 4))
                               .sequential(sequential)
                               .targets(cm::SparsityTargets::parse("all"));
      auto view = lm::moe_view(model, [&](const auto& visit) {
        visit(calibration.narrow(0, 0, 4));
        visit(calibration.narrow(0, 4, 2));
      });
      const auto in_memory = cm::sparsify(*view, options);
      const auto out = test::scratch_dir() + "/sparse_all_" + family + (sequential ? "_seq" : "");
      const auto result = lm::sparsify_checkpoint(
          checkpoint, calibration, out,
          lm::SparsifyCheckpointOptions().sparsity(options).batch_size(4).stream(
              lm::StreamOptions().scratch_dir(test::scratch_dir())));
      REQUIRE(result.layers.size() == in_memory.layers.size());
      REQUIRE(result.linears.size() == in_memory.linears.size());
      for (size_t i = 0; i < in_memory.linears.size(); ++i) {
        CHECK(result.linears[i].name == in_memory.linears[i].name);
        CHECK(result.linears[i].zeros == in_memory.linears[i].zeros);
        CHECK(result.linears[i].relative_error == in_memory.linears[i].relative_error);
      }
      auto reloaded = lm::load_causal_lm(out);
      const auto want = view->linears();
      const auto got = lm::moe_view(reloaded)->linears();
      REQUIRE(got.size() == want.size());
      for (size_t i = 0; i < want.size(); ++i) {
        INFO(want[i].name);
        CHECK(torch::equal(got[i].linear->weight, want[i].linear->weight));
        // 2:4 in every row.
        CHECK(got[i].linear->weight.ne(0).reshape({-1, 4}).sum(1).eq(2).all().item<bool>());
      }
      for (const auto& [index, layer] : reloaded->moe_layers()) {
        CHECK(torch::equal(layer->experts()->w2, moe_layer(model, index)->experts()->w2));
      }
      const auto ids = lm_test::input_ids(family);
      CHECK(lm_test::max_diff(lm_test::logits_of(reloaded, ids), lm_test::logits_of(model, ids)) ==
            0.0);
      const auto config = lm_test::read_json(out + "/config.json");
      CHECK(config["moeprune"]["sparsity"][0]["targets"] == "all");
    }
  }
}

TEST_CASE("sparsify beyond the experts refuses what it cannot do", "[lm][sparsity]") {
  const lm::CheckpointLayers mixtral(lm_test::kFixtures + "/mixtral");
  const auto out = test::scratch_dir() + "/sparse_targets_refused";
  const auto magnitude = [](const std::string& targets) {
    return lm::SparsifyCheckpointOptions().sparsity(
        cm::ExpertSparsityOptions()
            .method(cm::SparsityMethod::kMagnitude)
            .targets(cm::SparsityTargets::parse(targets)));
  };
  CHECK_THROWS_WITH(lm::sparsify_checkpoint(mixtral, {}, out, magnitude("shared_experts")),
                    Catch::Contains("the target shared_experts has no linear layers in"));
  CHECK_THROWS_WITH(lm::sparsify_checkpoint(mixtral, {}, out, magnitude("experts,dense")),
                    Catch::Contains("the target dense has no linear layers in"));
  // "all" takes what the model has (Mixtral: experts and attention).
  const auto all = lm::sparsify_checkpoint(mixtral, {}, out + "_all", magnitude("all"));
  CHECK(all.layers.size() == 2);
  CHECK(all.linears.size() == 2);
  auto layers = magnitude("attention");
  layers.sparsity().layers({0});
  CHECK_THROWS_WITH(lm::sparsify_checkpoint(mixtral, {}, out, layers),
                    Catch::Contains("leave the layers out"));
  CHECK_FALSE(test::path_exists(out));
  // The writer refuses a replaced tensor the source does not have.
  const auto bogus = test::scratch_dir() + "/bogus_linear.safetensors";
  moeprune::safetensors::save_file(
      bogus, {{"model.layers.9.self_attn.q_proj.weight", torch::zeros({2, 2})}});
  CHECK_THROWS_WITH(
      moeprune::hf::write_sparsified_checkpoint(mixtral.source(), {}, out, "{}", {}, {bogus}),
      Catch::Contains("holds model.layers.9.self_attn.q_proj.weight, which"));
  CHECK_FALSE(test::path_exists(out));
}

}  // namespace lm_sparsity_test

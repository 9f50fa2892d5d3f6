// Layer Drop, Block Drop, M-SMoE merging and MC-SMoE low rank on whole language models (the
// transformers fixtures of scripts/make_lm_fixtures.py). References: the residual-stream cosines
// recomputed here from the decoder layers' parts, layers made exactly the identity (so dropping
// them must leave the logits as they were), identical experts (so merging them must too), and
// the truncated SVD of the original weights (Eckart-Young).
#include "lm_test_helpers.h"

#include <moeprune/compression/low_rank.h>
#include <moeprune/compression/merging.h>
#include <moeprune/compression/residual_similarity.h>
#include <moeprune/io/safetensors.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/moe_view.h>
#include <moeprune/models/lm/trimming.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

namespace cm = moeprune::compression;
namespace lm = moeprune::lm;
using namespace lm_test;

namespace {

moeprune::CalibrationData one_batch(const torch::Tensor& ids) {
  return [ids](const std::function<void(const torch::Tensor&)>& visit) { visit(ids); };
}

int64_t parameter_count(const lm::CausalLM& model) {
  int64_t n = 0;
  for (const auto& p : model->parameters()) {
    n += p.numel();
  }
  return n;
}

// Mean over tokens of a . b / (|a| |b|), written out in float64.
double mean_cosine(const torch::Tensor& a, const torch::Tensor& b) {
  const auto x = a.reshape({-1, a.size(-1)}).to(torch::kDouble);
  const auto y = b.reshape({-1, b.size(-1)}).to(torch::kDouble);
  const auto cos = (x * y).sum(1) / (x.norm(2, 1) * y.norm(2, 1));
  return cos.mean().item<double>();
}

// The residual stream entering every decoder layer and leaving the last, and each layer's state
// after attention, computed from the layers' parts (not through CausalLM::hidden_states).
struct Streams {
  std::vector<torch::Tensor> inputs;     // num_layers + 1
  std::vector<torch::Tensor> attention;  // num_layers
  std::vector<torch::Tensor> mlp;        // num_layers: what the MLP adds (undefined: none)
};
Streams streams_of(lm::CausalLM& model, const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  model->eval();
  Streams s;
  auto h = model->embed_tokens(ids);
  const auto& a = model->options.attention();
  const auto angles = lm::rotary_angles(a, 0, ids.size(1), h.scalar_type(), h.device());
  for (int64_t i = 0; i < model->options.num_layers(); ++i) {
    auto layer = model->layer(i);
    s.inputs.push_back(h);
    h = h + layer->self_attn(layer->input_layernorm(h), angles, nullptr, i);
    s.attention.push_back(h);
    torch::Tensor added;
    if (layer->is_moe()) {
      added = layer->moe_block(layer->post_attention_layernorm(h)).output;
    } else if (layer->has_mlp()) {
      added = layer->mlp(layer->post_attention_layernorm(h));
    }
    s.mlp.push_back(added);
    if (added.defined()) {
      h = h + added;
    }
  }
  s.inputs.push_back(h);
  return s;
}

// Makes layer `i`'s MoE block add exactly zero: routed experts' and shared expert's down
// projections zero.
void silence_moe(lm::CausalLM& model, int64_t i) {
  torch::NoGradGuard no_grad;
  auto block = model->layer(i)->moe_block;
  block->moe->experts()->w2.zero_();
  if (!block->shared_expert.is_empty()) {
    block->shared_expert->down_proj->weight.zero_();
  }
}

// Makes decoder layer `i` the identity: attention output projection and MLP output zero.
void make_identity(lm::CausalLM& model, int64_t i) {
  torch::NoGradGuard no_grad;
  const auto layer = model->layer(i);
  layer->self_attn->o_proj->weight.zero_();
  if (layer->self_attn->o_proj->bias.defined()) {
    layer->self_attn->o_proj->bias.zero_();
  }
  if (layer->is_moe()) {
    silence_moe(model, i);
  } else {
    layer->mlp->down_proj->weight.zero_();
  }
}

// Mean next-token cross-entropy, with a graph.
torch::Tensor next_token_loss(lm::CausalLM& model, const torch::Tensor& ids) {
  const int64_t s = ids.size(1);
  const auto logits = model->forward(ids.narrow(1, 0, s - 1)).logits;
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                              ids.narrow(1, 1, s - 1).reshape({-1}));
}

// Decoding token by token through the cache gives the full forward's logits.
double cache_vs_full(lm::CausalLM& model, const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  model->eval();
  const auto full = model->forward(ids).logits;
  auto cache = model->make_cache();
  std::vector<torch::Tensor> steps;
  for (int64_t t = 0; t < ids.size(1); ++t) {
    steps.push_back(model->forward(ids.narrow(1, t, 1), &cache).logits);
  }
  return max_diff(torch::cat(steps, 1), full);
}

}  // namespace

TEST_CASE("Layer Drop scores are the cosine across each MoE block and it removes the silent one",
          "[lm]") {
  // Qwen2-MoE: layers 0 and 2 are MoE with a gated shared expert, layer 1 is dense.
  auto model = lm::load_causal_lm(kFixtures + "/qwen2_moe");
  const auto ids = input_ids("qwen2_moe");
  silence_moe(model, 2);
  const auto before = logits_of(model, ids);
  const auto streams = streams_of(model, ids);

  const auto sim = cm::moe_layer_similarity(model, one_batch(ids));
  REQUIRE(sim.size() == 2);
  CHECK(sim.at(0) ==
        Approx(mean_cosine(streams.attention[0], streams.attention[0] + streams.mlp[0]))
            .epsilon(1e-12));
  CHECK(sim.at(0) < 0.9999);
  CHECK(sim.at(2) == Approx(1.0).epsilon(1e-12));

  const int64_t d = 32, experts = 6, width = 16, shared = 40;
  const int64_t block_params = d /* post-attention norm */ + experts * d /* router */ +
                               experts * 3 * d * width + 3 * d * shared +
                               d /* shared expert gate */;
  const int64_t params = parameter_count(model);
  CHECK(cm::layer_drop(model, one_batch(ids), 1) == std::vector<int64_t>{2});
  CHECK(model->options.dropped_mlp_layers() == std::vector<int64_t>{2});
  CHECK_FALSE(model->layer(2)->has_mlp());
  CHECK(model->moe_layers().size() == 1);
  CHECK(lm::moe_view(model)->layers().size() == 1);
  CHECK(parameter_count(model) == params - block_params);
  CHECK(max_diff(logits_of(model, ids), before) < 1e-6);
  CHECK(cache_vs_full(model, ids) < 1e-5);

  CHECK_THROWS_WITH(cm::layer_drop(model, one_batch(ids), 2),
                    Catch::Contains("cannot drop 2 of the 1 MoE blocks"));
  CHECK_THROWS_WITH(model->drop_mlp(1), Catch::Contains("this layer's MLP is dense"));
  CHECK_THROWS_WITH(model->drop_mlp(2), Catch::Contains("dropped already"));

  // Saved as a Qwen2-MoE whose layer 2 block is all zeros (transformers computes the same; the
  // ctest lm_transformers_load_*_layer-drop checks it), recorded so moeprune reloads it dropped.
  const auto out = test::scratch_dir() + "/layer_drop_qwen2";
  lm::save_causal_lm(model, out);
  const auto config = read_json(out + "/config.json");
  CHECK(config.at("num_hidden_layers") == 3);
  CHECK(config.at("moeprune").at("dropped_mlp_layers") == nlohmann::json::array({2}));
  const auto tensors = moeprune::safetensors::load_file(out + "/model.safetensors");
  CHECK(tensors.at("model.layers.2.mlp.experts.5.down_proj.weight").abs().max().item<double>() ==
        0.0);
  CHECK(tensors.at("model.layers.2.mlp.shared_expert.up_proj.weight").sizes() ==
        torch::IntArrayRef({shared, d}));
  auto loaded = lm::load_causal_lm(out);
  CHECK(loaded->options.dropped_mlp_layers() == std::vector<int64_t>{2});
  CHECK(parameter_count(loaded) == params - block_params);
  CHECK(max_diff(logits_of(loaded, ids), before) < 1e-6);
}

TEST_CASE("Block Drop scores are the cosine across each span and it removes the identity layer",
          "[lm]") {
  // Qwen3-MoE: 4 layers, MoE at 1 and 3 (decoder_sparse_step 2).
  auto model = lm::load_causal_lm(kFixtures + "/qwen3_moe");
  const auto ids = input_ids("qwen3_moe");
  make_identity(model, 2);
  const auto before = logits_of(model, ids);
  const auto streams = streams_of(model, ids);
  for (const int64_t span : {1, 2}) {
    const auto sim = cm::block_similarity(model, one_batch(ids), span);
    REQUIRE(sim.size() == static_cast<size_t>(4 - span + 1));
    for (int64_t i = 0; i + span <= 4; ++i) {
      CHECK(sim[static_cast<size_t>(i)] ==
            Approx(mean_cosine(streams.inputs[static_cast<size_t>(i)],
                               streams.inputs[static_cast<size_t>(i + span)]))
                .epsilon(1e-12));
    }
  }
  CHECK(cm::block_similarity(model, one_batch(ids))[2] == Approx(1.0).epsilon(1e-12));

  CHECK(cm::block_drop(model, one_batch(ids), 1) == std::vector<int64_t>{2});
  CHECK(model->options.num_layers() == 3);
  CHECK(model->options.moe_layers() == std::vector<bool>{false, true, true});
  CHECK(model->layer(2)->index == 2);
  CHECK(model->moe_layers().front().first == 1);
  CHECK(model->moe_layers().back().first == 2);
  CHECK(model->named_parameters().contains("layers.2.input_layernorm.weight"));
  CHECK_FALSE(model->named_parameters().contains("layers.3.input_layernorm.weight"));
  CHECK(max_diff(logits_of(model, ids), before) < 1e-6);
  CHECK(cache_vs_full(model, ids) < 1e-5);

  // A smaller Qwen3-MoE: the dense layer left is listed in mlp_only_layers.
  const auto out = test::scratch_dir() + "/block_drop_qwen3";
  lm::save_causal_lm(model, out);
  const auto config = read_json(out + "/config.json");
  CHECK(config.at("num_hidden_layers") == 3);
  CHECK(config.at("mlp_only_layers") == nlohmann::json::array({0}));
  CHECK(config.at("decoder_sparse_step") == 1);
  auto loaded = lm::load_causal_lm(out);
  CHECK(max_diff(logits_of(loaded, ids), before) < 1e-6);

  CHECK_THROWS_WITH(cm::block_drop(model, one_batch(ids), 3),
                    Catch::Contains("cannot drop 3 of the 3 decoder layers"));
}

TEST_CASE("consecutive Block Drop removes the run that changes the stream least", "[lm]") {
  auto model = lm::load_causal_lm(kFixtures + "/qwen3_moe");
  const auto ids = input_ids("qwen3_moe");
  make_identity(model, 1);  // a MoE layer
  make_identity(model, 2);  // a dense one
  const auto before = logits_of(model, ids);
  CHECK(cm::block_drop(model, one_batch(ids), 2, true) == std::vector<int64_t>{1, 2});
  CHECK(model->options.moe_layers() == std::vector<bool>{false, true});
  CHECK(max_diff(logits_of(model, ids), before) < 1e-6);
}

TEST_CASE("Layer Drop and Block Drop compose and the result fine-tunes", "[lm]") {
  // Mixtral (2 MoE layers): drop layer 1's block, then layer 0 whole; one decoder layer without
  // MLP is left, and a training step moves its attention.
  auto model = lm::load_causal_lm(kFixtures + "/mixtral");
  const auto ids = input_ids("mixtral");
  model->drop_mlp(1);
  model->remove_layers({0});
  CHECK(model->options.num_layers() == 1);
  CHECK(model->options.dropped_mlp_layers() == std::vector<int64_t>{0});
  CHECK(model->moe_layers().empty());
  CHECK_THROWS_WITH(cm::moe_layer_similarity(model, one_batch(ids)),
                    Catch::Contains("no MoE blocks left"));
  model->train();
  auto q = model->layer(0)->self_attn->q_proj->weight;
  const auto q0 = q.detach().clone();
  torch::optim::SGD sgd(model->parameters(), 0.1);
  next_token_loss(model, ids).backward();
  sgd.step();
  CHECK(max_diff(q.detach(), q0) > 0);
  CHECK_THROWS_WITH(model->remove_layers({0}), Catch::Contains("cannot remove all 1 layers"));
}

TEST_CASE("M-SMoE merging of identical experts through the LM view keeps the logits", "[lm]") {
  auto model = lm::load_causal_lm(kFixtures + "/mixtral");
  const auto ids = input_ids("mixtral");
  {
    // Experts 1 and 4 become copies of expert 0 in every layer (their router rows differ).
    torch::NoGradGuard no_grad;
    for (auto& [index, layer] : model->moe_layers()) {
      auto bank = layer->experts();
      for (auto* w : {&bank->w1, &bank->w2, &bank->w3}) {
        (*w)[1].copy_((*w)[0]);
        (*w)[4].copy_((*w)[0]);
      }
    }
  }
  const auto before = logits_of(model, ids);
  const auto view = lm::moe_view(model, one_batch(ids));
  const auto usage = cm::collect_expert_usage(*view);
  cm::MergeGroups groups;
  for (const auto& entry : view->layers()) {
    groups[entry.key] = {{0, 1, 4}, {2}, {3}, {5}};
  }
  cm::merge_experts(*view, groups, usage);
  for (const auto& [index, layer] : model->moe_layers()) {
    CHECK(layer->experts()->num_held() == 4);
  }
  CHECK(max_diff(logits_of(model, ids), before) < 1e-5);
  // Saved with each merged expert written under all its ids; reloads to the same logits.
  const auto out = test::scratch_dir() + "/merged_mixtral";
  lm::save_causal_lm(model, out);
  auto loaded = lm::load_causal_lm(out);
  CHECK(max_diff(logits_of(loaded, ids), before) < 1e-5);
}

TEST_CASE("MC-SMoE low rank through the LM view: L R is the truncated SVD and L R + S the expert",
          "[lm]") {
  auto model = lm::load_causal_lm(kFixtures + "/olmoe");
  const auto ids = input_ids("olmoe");
  const auto before = logits_of(model, ids);
  const auto bank = model->moe_layers().front().second->experts();
  const auto w1 = bank->w1.detach().clone().to(torch::kDouble);  // [E, in, out]
  const int64_t rank = 4;
  const auto view = lm::moe_view(model, one_batch(ids));
  cm::factorize_experts(*view, rank);
  CHECK(max_diff(logits_of(model, ids), before) < 1e-4);
  for (int64_t e = 0; e < w1.size(0); ++e) {
    const auto [u, s, vh] = torch::linalg_svd(w1[e], false);
    const auto truncated =
        torch::matmul(u.narrow(1, 0, rank) * s.narrow(0, 0, rank), vh.narrow(0, 0, rank));
    const auto lr = torch::matmul(bank->w1_left[e], bank->w1_right[e]).to(torch::kDouble);
    CHECK(max_diff(lr, truncated) < 1e-4);
  }
  // One importance pass prunes half of each sparse part's output units; the model still runs.
  cm::prune_sparse_once(
      *view,
      [&] {
        model->train();
        next_token_loss(model, ids).backward();
      },
      0.5);
  // One threshold over every layer's sparse parts: half of all their output units stay.
  int64_t units = 0, kept = 0;
  for (const auto& [index, layer] : model->moe_layers()) {
    const auto b = layer->experts();
    for (const auto& mask : {b->w1_mask, b->w2_mask, b->w3_mask}) {
      units += mask.numel();
      kept += mask.to(torch::kLong).sum().item<int64_t>();
    }
  }
  CHECK(kept == units - units / 2);
  CHECK(torch::isfinite(logits_of(model, ids)).all().item<bool>());
  CHECK_THROWS_WITH(lm::save_causal_lm(model, test::scratch_dir() + "/factorised"),
                    Catch::Contains("factorised"));
}

TEST_CASE("bad Layer and Block Drop inputs are refused by name", "[lm]") {
  auto model = lm::load_causal_lm(kFixtures + "/qwen3_moe");  // MoE at 1 and 3
  const auto ids = input_ids("qwen3_moe");
  CHECK_THROWS_WITH(cm::block_similarity(model, one_batch(ids), 0),
                    Catch::Contains("span should be in [1, 4], got 0"));
  CHECK_THROWS_WITH(cm::block_similarity(model, one_batch(ids), 5),
                    Catch::Contains("span should be in [1, 4], got 5"));
  CHECK_THROWS_WITH(cm::layer_drop(model, {}, 1), Catch::Contains("no calibration tokens"));
  const moeprune::CalibrationData empty = [](const auto&) {};
  CHECK_THROWS_WITH(cm::moe_layer_similarity(model, empty),
                    Catch::Contains("the calibration data gave no batch"));
  CHECK_THROWS_WITH(model->remove_layers({2, 2}), Catch::Contains("layer 2 is listed twice"));
  CHECK_THROWS_WITH(model->remove_layers({4}), Catch::Contains("outside [0, 4)"));
  CHECK(model->options.num_layers() == 4);  // nothing was removed

  auto options = model->options;
  CHECK_THROWS_WITH(lm::CausalLMOptions(options).dropped_mlp_layers({3, 1}).validate(),
                    Catch::Contains("should be increasing layer indices below 4, found 1 after 3"));
  CHECK_THROWS_WITH(lm::CausalLMOptions(options).dropped_mlp_layers({0}).validate(),
                    Catch::Contains("lists 0, a dense layer"));

  // The checkpoint record of dropped blocks.
  const auto record = [&](const std::string& name, const nlohmann::json& value) {
    return edited_copy("qwen3_moe", name,
                       [&](nlohmann::json& c) { c["moeprune"]["dropped_mlp_layers"] = value; });
  };
  CHECK_THROWS_WITH(lm::load_causal_lm(record("record_not_list", 3)),
                    Catch::Contains("\"dropped_mlp_layers\" should be a list of layer indices"));
  CHECK_THROWS_WITH(lm::load_causal_lm(record("record_text", nlohmann::json::array({"1"}))),
                    Catch::Contains("holds \"1\", not a layer index"));
  CHECK_THROWS_WITH(lm::load_causal_lm(record("record_dense", nlohmann::json::array({2}))),
                    Catch::Contains("lists 2, which is not a MoE layer of the 4"));
  CHECK_THROWS_WITH(lm::load_causal_lm(record("record_order", nlohmann::json::array({3, 1}))),
                    Catch::Contains("lists 1, which is not a MoE layer of the 4"));
  auto loaded = lm::load_causal_lm(record("record_ok", nlohmann::json::array({3})));
  CHECK(loaded->options.dropped_mlp_layers() == std::vector<int64_t>{3});
  CHECK_FALSE(loaded->layer(3)->has_mlp());
}

TEST_CASE("the residual-stream cosine names states that do not match", "[lm]") {
  cm::CosineMean mean;
  CHECK(mean.mean() == 0.0);
  CHECK_THROWS_WITH(mean.add(torch::ones({2, 4}), torch::ones({2, 5})),
                    Catch::Contains("do not match"));
  CHECK_THROWS_WITH(mean.add(torch::ones({2, 4}), torch::ones({3, 4})),
                    Catch::Contains("a batch of 3 is not a multiple of 2"));
  // Hand-computed: cos((1, 0), (1, 1)) = 1 / sqrt(2), cos((0, 2), (0, 3)) = 1; a repeated to b's
  // batch: cos((1, 0), (1, 0)) = 1 twice.
  mean.add(torch::tensor({{1.0, 0.0}, {0.0, 2.0}}), torch::tensor({{1.0, 1.0}, {0.0, 3.0}}));
  mean.add(torch::tensor({{1.0, 0.0}}), torch::tensor({{1.0, 0.0}, {2.0, 0.0}}));
  CHECK(mean.tokens() == 4);
  CHECK(mean.mean() == Approx((1.0 / std::sqrt(2.0) + 3.0) / 4.0).epsilon(1e-12));
  CHECK(cm::highest_scores({{4, 0.5}, {7, 0.9}, {1, 0.5}, {2, 0.1}}, 2) ==
        std::vector<int64_t>{4, 7});
  CHECK_THROWS_WITH(cm::highest_scores({{1, 0.5}}, 2), Catch::Contains("2 of 1 scores"));
}

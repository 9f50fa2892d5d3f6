// Saving language models back to Hugging Face folders, pruning them through the MoE view, the
// refusals of config values moeprune does not implement, and training with gradient
// checkpointing.
#include "lm_test_helpers.h"

#include <moeprune/hf/pruning.h>
#include <moeprune/io/safetensors.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/evaluation.h>
#include <moeprune/models/lm/generation.h>
#include <moeprune/models/lm/moe_view.h>
#include <moeprune/pruning/criterion.h>
#include <moeprune/pruning/pruning_plan.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <fstream>
#include <map>
#include <string>

using namespace lm_test;

TEST_CASE("a saved model holds the source checkpoint's tensors and reloads to the same logits",
          "[lm]") {
  // The fused 5.x folders are written in the hub's per-expert layout: the v4 folders of the
  // same weights are the reference.
  for (const std::string source :
       {"deepseek", "qwen2_moe", "qwen3_moe_fused", "mixtral_fused", "deepseek_v2",
        "deepseek_v2_greedy", "deepseek_v3", "glm4_moe"}) {
    SECTION(source) {
      const auto plain = source.substr(0, source.find("_fused"));
      auto model = moeprune::lm::load_causal_lm(kFixtures + "/" + source);
      const auto out = test::scratch_dir() + "/saved_" + source;
      moeprune::lm::save_causal_lm(model, out);
      const auto want =
          moeprune::safetensors::load_file(kFixtures + "/" + plain + "/model.safetensors");
      const auto got = moeprune::safetensors::load_file(out + "/model.safetensors");
      std::vector<std::string> want_names, got_names;
      for (const auto& [name, t] : want) {
        want_names.push_back(name);
      }
      for (const auto& [name, t] : got) {
        got_names.push_back(name);
      }
      REQUIRE(got_names == want_names);
      for (const auto& [name, t] : want) {
        INFO(name);
        CHECK(torch::equal(got.at(name), t));
      }
      const auto config = read_json(out + "/config.json");
      CHECK(config.at("model_type") ==
            read_json(kFixtures + "/" + plain + "/config.json").at("model_type"));
      auto again = moeprune::lm::load_causal_lm(out);
      const auto ids = input_ids(plain);
      CHECK(torch::equal(logits_of(again, ids), logits_of(model, ids)));
      // An existing folder is refused unless overwriting, which swaps in a complete new one.
      CHECK_THROWS_WITH(moeprune::lm::save_causal_lm(model, out),
                        Catch::Contains("already exists"));
      moeprune::lm::save_causal_lm(again, out, moeprune::lm::SaveOptions().overwrite(true));
      CHECK(test::temporaries_in(test::scratch_dir()).empty());
    }
  }
}

TEST_CASE("layers pruned differently with the router kept compute the masked model after reload",
          "[lm]") {
  const auto ids = input_ids("qwen2_moe");
  auto pruned = moeprune::lm::load_causal_lm(kFixtures + "/qwen2_moe");
  auto masked = moeprune::lm::load_causal_lm(kFixtures + "/qwen2_moe");
  // The reference: the same model with the removed experts' weights zeroed (a removed expert's
  // slot outputs zero, its router column stays in the softmax).
  const std::map<int64_t, std::vector<int64_t>> keep{{0, {0, 2, 3, 5}}, {2, {1, 2, 4}}};
  {
    torch::NoGradGuard no_grad;
    for (const auto& [index, experts] : keep) {
      auto bank = masked->layer(index)->moe_block->moe->experts();
      for (int64_t j = 0; j < 6; ++j) {
        if (std::find(experts.begin(), experts.end(), j) == experts.end()) {
          bank->w1[j].zero_();
          bank->w2[j].zero_();
          bank->w3[j].zero_();
        }
      }
    }
  }
  for (const auto& [index, experts] : keep) {
    pruned->layer(index)->moe_block->moe->keep_experts(experts);
  }
  const auto want = logits_of(masked, ids);
  CHECK(max_diff(logits_of(pruned, ids), want) < 1e-6);
  const auto out = test::scratch_dir() + "/pruned_keep";
  moeprune::lm::save_causal_lm(pruned, out);
  const auto config = read_json(out + "/config.json");
  CHECK(config.at("num_experts") == 6);
  CHECK(config.at("moeprune").at("router") == "keep");
  auto again = moeprune::lm::load_causal_lm(out);
  CHECK(again->layer(0)->moe_block->moe->experts()->num_held() == 4);
  CHECK(again->layer(2)->moe_block->moe->experts()->num_held() == 3);
  CHECK(max_diff(logits_of(again, ids), want) < 1e-6);
}

TEST_CASE("router rows dropped in every layer save as a smaller model with renormalised top-k",
          "[lm]") {
  const auto ids = input_ids("olmoe");
  auto model = moeprune::lm::load_causal_lm(kFixtures + "/olmoe");
  for (auto [index, layer] : model->moe_layers()) {
    layer->keep_experts({0, 1, 3, 4}, /*drop_router_columns=*/true);
  }
  const auto out = test::scratch_dir() + "/pruned_cut";
  moeprune::lm::save_causal_lm(model, out);
  const auto config = read_json(out + "/config.json");
  CHECK(config.at("num_experts") == 4);
  CHECK(config.at("norm_topk_prob") == true);
  auto again = moeprune::lm::load_causal_lm(out);
  CHECK(max_diff(logits_of(again, ids), logits_of(model, ids)) < 1e-6);
  // Different counts per layer cannot be one config's expert count.
  auto uneven = moeprune::lm::load_causal_lm(kFixtures + "/olmoe");
  uneven->layer(0)->moe_block->moe->keep_experts({0, 1, 3}, true);
  uneven->layer(1)->moe_block->moe->keep_experts({0, 1, 3, 5}, true);
  CHECK_THROWS_WITH(moeprune::lm::save_causal_lm(uneven, test::scratch_dir() + "/uneven"),
                    Catch::Contains("same number"));
  CHECK(!test::path_exists(test::scratch_dir() + "/uneven"));
}

TEST_CASE("config values that change the math are refused by name", "[lm]") {
  const auto refused = [](const std::string& family, const std::string& name,
                          const std::function<void(nlohmann::json&)>& edit,
                          const std::string& message) {
    const auto dir = edited_copy(family, name, edit);
    CHECK_THROWS_WITH(moeprune::lm::load_causal_lm(dir), Catch::Contains(message));
  };
  refused(
      "mixtral", "dynamic",
      [](auto& c) {
        c["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 4.0}};
      },
      "rope type \"dynamic\"");
  refused(
      "deepseek_v3", "latent_gqa", [](auto& c) { c["num_key_value_heads"] = 2; },
      "num_key_value_heads = 2 differs from num_attention_heads = 4");
  refused(
      "deepseek_v2", "yarn_without_factor",
      [](auto& c) {
        c["rope_scaling"] = {{"type", "yarn"}};
      },
      "yarn without a factor");
  // Found by fuzzing (test/fuzz/regressions/hf_config): a value of another JSON type inside
  // rope_scaling escaped as nlohmann's type_error; now refused with the key, and any type error
  // the readers do not check names config.json.
  refused(
      "deepseek_v2", "yarn_factor_object",
      [](auto& c) {
        c["rope_scaling"] = {
            {"type", "yarn"}, {"factor", 4.0}, {"beta_fast", nlohmann::json::object()}};
      },
      "\"rope_scaling\" \"beta_fast\" is {}, not a number");
  refused(
      "deepseek_v2", "yarn_type_number",
      [](auto& c) {
        c["rope_scaling"] = {{"type", 2}, {"factor", 4.0}};
      },
      "\"rope_scaling\" \"type\" is 2, not a string");
  refused(
      "deepseek_v2", "yarn_original_length",
      [](auto& c) {
        c["rope_scaling"] = {
            {"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 1e300}};
      },
      "original_max_position_embeddings is 1e+300, not a length");
  refused(
      "mixtral", "window", [](auto& c) { c["sliding_window"] = 4096; }, "sliding_window");
  refused(
      "qwen2_moe", "qwen_window", [](auto& c) { c["use_sliding_window"] = true; },
      "use_sliding_window");
  refused(
      "qwen3_moe", "partial", [](auto& c) { c["partial_rotary_factor"] = 0.5; },
      "partial_rotary_factor");
  refused(
      "deepseek", "grouped", [](auto& c) { c["topk_method"] = "group_limited_greedy"; },
      "topk_method");
  refused(
      "deepseek", "sigmoid", [](auto& c) { c["scoring_func"] = "sigmoid"; }, "scoring_func");
  refused(
      "qwen3_moe", "gpt_oss", [](auto& c) { c["model_type"] = "gpt_oss"; }, "gpt_oss");
  const auto missing = edited_copy(
      "olmoe", "missing", [](auto&) {},
      [](auto& t) { t.erase("model.layers.1.self_attn.k_norm.weight"); });
  CHECK_THROWS_WITH(moeprune::lm::load_causal_lm(missing),
                    Catch::Contains("'model.layers.1.self_attn.k_norm.weight' is missing"));
  const auto extra = edited_copy(
      "olmoe", "extra", [](auto&) {},
      [](auto& t) { t["model.layers.0.mlp.bias"] = torch::zeros({2}); });
  CHECK_THROWS_WITH(moeprune::lm::load_causal_lm(extra),
                    Catch::Contains("model.layers.0.mlp.bias"));
  const auto shape = edited_copy("mixtral", "shape", [](auto& c) { c["num_key_value_heads"] = 4; });
  CHECK_THROWS_WITH(moeprune::lm::load_causal_lm(shape), Catch::Contains("k_proj.weight"));
}

TEST_CASE("DeepSeek-V3's multi-token-prediction layer is skipped on load as transformers does",
          "[lm]") {
  // A V3 checkpoint holds num_nextn_predict_layers more decoder layers after the last one (layer
  // 61 of DeepSeek-V3); transformers ignores their tensors. Here: a fake layer 3 of 3.
  const auto add_layer = [](std::map<std::string, torch::Tensor>& t) {
    t["model.layers.3.eh_proj.weight"] = torch::ones({32, 64});
    t["model.layers.3.mlp.gate.weight"] = torch::ones({8, 32});
    t["model.layers.3.mlp.gate.e_score_correction_bias"] = torch::zeros({8});
  };
  const auto with_mtp = edited_copy(
      "deepseek_v3", "mtp", [](auto& c) { c["num_nextn_predict_layers"] = 1; }, add_layer);
  auto model = moeprune::lm::load_causal_lm(with_mtp);
  auto plain = moeprune::lm::load_causal_lm(kFixtures + "/deepseek_v3");
  const auto ids = input_ids("deepseek_v3");
  CHECK(torch::equal(logits_of(model, ids), logits_of(plain, ids)));
  CHECK(model->options.num_layers() == 3);
  // Without num_nextn_predict_layers the same tensors are unexpected, and refused by name.
  const auto without = edited_copy(
      "deepseek_v3", "no_mtp", [](auto&) {}, add_layer);
  CHECK_THROWS_WITH(moeprune::lm::load_causal_lm(without),
                    Catch::Contains("3 tensors are not part of a deepseek_v3") &&
                        Catch::Contains("model.layers.3."));
}

TEST_CASE("criteria and plans prune a language model through its MoE view and keep shared experts",
          "[lm]") {
  auto finetuned = moeprune::lm::load_causal_lm(kFixtures + "/deepseek");
  const auto ids = input_ids("deepseek");
  auto view = moeprune::lm::moe_view(finetuned, [&](const auto& visit) { visit(ids); });
  const auto layers = view->layers();
  // DeepSeek: layer 0 is dense (first_k_dense_replace = 1); the shared experts are not in the
  // view, so no criterion scores them and no plan can name them.
  REQUIRE(layers.size() == 2);
  CHECK(layers[0].key == 1);
  CHECK(layers[0].name == "model.layers.1.mlp");
  const auto criterion = moeprune::pruning::CriterionRegistry::with_builtins().create("frequency");
  const auto scores = moeprune::pruning::score_experts(*criterion, *view);
  // Frequency counts routed slots: 2 x 10 calibration tokens x k = 2 per layer.
  for (const auto& [key, s] : scores) {
    CHECK(s.sum().item<double>() == 40.0);
  }
  auto plan = moeprune::pruning::PruningPlan::same_count(scores, *view, 2);
  auto dense = plan;
  dense.layers[0].key = 0;
  CHECK_THROWS(dense.validate(*view));
  const auto shared_before =
      finetuned->layer(1)->moe_block->shared_expert->gate_proj->weight.clone();
  moeprune::pruning::apply_plan(*view, plan);
  CHECK(finetuned->layer(1)->moe_block->moe->experts()->num_held() == 4);
  CHECK(torch::equal(finetuned->layer(1)->moe_block->shared_expert->gate_proj->weight,
                     shared_before));

  // The pruned model fine-tunes: a few AdamW steps lower the next-token loss on the batch.
  finetuned->train();
  torch::optim::AdamW opt(finetuned->parameters(), torch::optim::AdamWOptions(3e-3));
  const auto loss_of = [&] {
    const auto out = finetuned->forward(ids.narrow(1, 0, ids.size(1) - 1));
    return torch::cross_entropy_loss(out.logits.reshape({-1, out.logits.size(-1)}),
                                     ids.narrow(1, 1, ids.size(1) - 1).reshape({-1})) +
           out.aux_loss;
  };
  const double before = loss_of().item<double>();
  for (int step = 0; step < 5; ++step) {
    opt.zero_grad();
    loss_of().backward();
    opt.step();
  }
  CHECK(loss_of().item<double>() < before);
}

TEST_CASE("gradient checkpointing gives the gradients of the plain backward pass", "[lm]") {
  for (const std::string family : {"qwen2_moe", "deepseek_v2", "deepseek_v3"}) {
    SECTION(family) {
      const auto ids = input_ids(family);
      const auto grads = [&](bool checkpointing) {
        auto model = moeprune::lm::load_causal_lm(kFixtures + "/" + family);
        model->train();
        model->set_gradient_checkpointing(checkpointing);
        const auto out = model->forward(ids);
        (out.logits.pow(2).mean() + out.aux_loss).backward();
        std::vector<torch::Tensor> g;
        for (const auto& p : model->parameters()) {
          g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
        }
        return g;
      };
      const auto plain = grads(false), checkpointed = grads(true);
      REQUIRE(plain.size() == checkpointed.size());
      double worst = 0.0, largest = 0.0;
      for (size_t i = 0; i < plain.size(); ++i) {
        worst = std::max(worst, max_diff(plain[i], checkpointed[i]));
        largest = std::max(largest, plain[i].abs().max().item<double>());
      }
      INFO("max gradient difference " << worst << ", largest gradient " << largest);
      CHECK(largest > 0.0);
      // The recomputation runs the same ops on the same inputs: equal up to summation order.
      CHECK(worst <= 1e-6 * std::max(1.0, largest));
    }
  }
}

TEST_CASE(
    "the streamed checkpoint pruner's output for Qwen, DeepSeek and GLM equals in-memory pruning",
    "[lm]") {
  // hf::write_pruned_checkpoint (the `moeprune prune` command) cuts or zeroes experts on disk;
  // applying the same plan to the in-memory model must give the same logits after loading.
  // GLM-4.5's 8 experts form 2 groups of 4: each plan below takes one from each group.
  for (const std::string family : {"qwen2_moe", "deepseek", "glm4_moe"}) {
    for (const bool cut : {true, false}) {
      SECTION(family + (cut ? " cut" : " keep")) {
        const auto source = kFixtures + "/" + family;
        const moeprune::safetensors::Checkpoint checkpoint(source);
        const auto info = moeprune::hf::describe(source, checkpoint);
        REQUIRE(info.layers.size() == 2);
        moeprune::pruning::PruningPlan on_disk, in_memory;
        const std::vector<std::vector<int64_t>> pruned{{1, 4}, {0, 5}};
        const int64_t experts = info.num_experts;
        for (size_t i = 0; i < 2; ++i) {
          on_disk.layers.push_back({info.layers[i].index, experts, pruned[i], {}});
          in_memory.layers.push_back({info.layers[i].decoder_layer, experts, pruned[i], {}});
        }
        const auto out = test::scratch_dir() + "/streamed_" + family + (cut ? "_cut" : "_keep");
        moeprune::hf::WriteOptions options;
        options.router = cut ? moeprune::hf::RouterRows::kCut : moeprune::hf::RouterRows::kKeep;
        moeprune::hf::write_pruned_checkpoint(moeprune::hf::Source(source), on_disk, out, options);

        auto model = moeprune::lm::load_causal_lm(source);
        moeprune::pruning::apply_plan(*moeprune::lm::moe_view(model), in_memory, cut);
        auto loaded = moeprune::lm::load_causal_lm(out);
        const auto ids = input_ids(family);
        CHECK(max_diff(logits_of(loaded, ids), logits_of(model, ids)) < 1e-6);
        CHECK(loaded->layer(info.layers[0].decoder_layer)->moe_block->moe->experts()->num_held() ==
              experts - 2);
      }
    }
  }
}

TEST_CASE("bad arguments to the language-model API are refused with the problem named", "[lm]") {
  auto model = moeprune::lm::load_causal_lm(kFixtures + "/mixtral");
  const auto ids = input_ids("mixtral");
  using moeprune::lm::GenerationOptions;
  CHECK_THROWS_WITH(model->forward(ids.to(torch::kInt)), Catch::Contains("should be int64"));
  CHECK_THROWS_WITH(model->forward(ids + 96), Catch::Contains("token ids should be in [0, 96)"));
  CHECK_THROWS_WITH(moeprune::lm::generate(model, ids, GenerationOptions().top_p(0.0)),
                    Catch::Contains("top_p should be in (0, 1]"));
  CHECK_THROWS_WITH(moeprune::lm::generate(model, ids, GenerationOptions().temperature(-1.0)),
                    Catch::Contains("temperature should be >= 0"));
  CHECK_THROWS_WITH(moeprune::lm::perplexity(
                        model, ids[0], moeprune::lm::PerplexityOptions().context(8).stride(9)),
                    Catch::Contains("stride should be in [1, 8]"));
  CHECK_THROWS_WITH(
      moeprune::lm::perplexity(model, ids[0], moeprune::lm::PerplexityOptions().batch_size(0)),
      Catch::Contains("batch_size should be >= 1, got 0"));
  auto cache = model->make_cache();
  model->forward(ids.narrow(1, 0, 3), &cache);
  CHECK_THROWS_WITH(model->forward(ids.narrow(0, 0, 1).narrow(1, 3, 1), &cache),
                    Catch::Contains("KVCache: layer 0 holds [2, "));
  auto other = moeprune::lm::KVCache(5);
  CHECK_THROWS_WITH(model->forward(ids, &other), Catch::Contains("the cache has 5 layers"));
  // Factorised experts have no Hugging Face form; nothing is written.
  model->layer(0)->moe_block->moe->experts()->factorize(2);
  CHECK_THROWS_WITH(moeprune::lm::save_causal_lm(model, test::scratch_dir() + "/factorised"),
                    Catch::Contains("factorised"));
  CHECK(!test::path_exists(test::scratch_dir() + "/factorised"));
}

TEST_CASE("gradient checkpointing refuses a layer whose routing is noisy while training", "[lm]") {
  auto model = moeprune::lm::load_causal_lm(kFixtures + "/mixtral");  // router_jitter_noise 0
  model->set_gradient_checkpointing(true);
  model->set_gradient_checkpointing(false);
  auto [index, moe] = model->moe_layers().back();
  moe->options.router_as<moeprune::TopKRouterConfig>().jitter(0.01);  // Switch's jitter
  REQUIRE_THROWS_WITH(model->set_gradient_checkpointing(true),
                      Catch::Contains("layer " + std::to_string(index)) &&
                          Catch::Contains("adds routing noise or jitter"));
}

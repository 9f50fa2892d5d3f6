// NaN and inf: each place they can enter (input tokens, a router's weight, an expert's weight,
// an fp32 overflow, a criterion's scores) is refused with an error naming it and, inside a model,
// the block; with check_finite(false) NaN propagates as torch's operators do.
#include <moeprune/io/safetensors.h>
#include <moeprune/layers/moe_layer.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/seq2seq/checkpoint.h>
#include <moeprune/models/vision/moe_view.h>
#include <moeprune/models/vision/vision_transformer.h>
#include <moeprune/pruning/builtin_criteria.h>
#include <moeprune/train/lm_trainer.h>
#include <moeprune/train/optimization.h>
#include <moeprune/train/trainer.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <limits>
#include <string>
#include <utility>
#include <vector>

using Catch::Contains;
using moeprune::MoELayer;
using moeprune::MoELayerOptions;
namespace pr = moeprune::pruning;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Top-3 of 3 experts: every token reaches every expert, so a bad expert is always used.
MoELayer every_expert_layer() {
  torch::manual_seed(0);
  auto options = MoELayerOptions::preset("top_k_gated", 6, 10, 3);
  options.routing().k(3);
  return MoELayer(options);
}

moeprune::VisionTransformer tiny_vit() {
  torch::manual_seed(0);
  return moeprune::VisionTransformer(moeprune::VisionTransformerOptions::small("small_vmoe", 4)
                                         .d_model(16)
                                         .mlp_dim(24)
                                         .depth(2)
                                         .heads(2)
                                         .moe_blocks({1}));
}

}  // namespace

TEST_CASE("NaN in a MoE layer's input is refused naming the token and feature") {
  auto layer = every_expert_layer();
  auto x = torch::randn({5, 6});
  x[2][3] = kNaN;
  REQUIRE_THROWS_WITH(layer(x), Contains("TopKRouter: the input tokens hold NaN or inf") &&
                                    Contains("token 2, feature 3: nan"));
}

TEST_CASE("inf in a router's weight is refused naming the expert") {
  auto layer = every_expert_layer();
  {
    torch::NoGradGuard no_grad;
    layer->router().router_weight()[1][4] = -kInf;
  }
  REQUIRE_THROWS_WITH(layer(torch::randn({4, 6})),
                      Contains("the router weight holds NaN or inf (expert 1, feature 4: -inf)"));
}

TEST_CASE("router logits that overflow float32 are told apart from bad inputs") {
  auto layer = every_expert_layer();
  {
    torch::NoGradGuard no_grad;
    layer->router().router_weight().fill_(1e30);
  }
  // 6 features of 1e10 x 1e30 = 6e40 > float32's 3.4e38.
  REQUIRE_THROWS_WITH(layer(torch::full({2, 6}, 1e10)),
                      Contains("router logits overflow float32") &&
                          Contains("the tokens and the router weight are finite"));
}

TEST_CASE("NaN in an expert's weight is refused naming the expert and the parameter") {
  auto layer = every_expert_layer();
  {
    torch::NoGradGuard no_grad;
    layer->experts()->w3[2][0][1] = kNaN;
  }
  REQUIRE_THROWS_WITH(layer(torch::randn({4, 6})),
                      Contains("MoELayer: expert 2 output NaN or inf") &&
                          Contains("its parameters w3 hold NaN or inf"));
}

TEST_CASE("an expert whose activations overflow is told apart from bad weights") {
  torch::manual_seed(0);
  auto options = MoELayerOptions::preset("top_k_gated", 6, 10, 3);
  options.routing().k(3);
  MoELayer layer(options);
  layer->to(torch::kHalf);
  {
    torch::NoGradGuard no_grad;
    layer->router().router_weight().zero_();
    layer->experts()->w1.fill_(100);
    layer->experts()->w3.fill_(100);
    layer->experts()->w2.fill_(100);
  }
  // fp16: 6 x 10 x 100 = 6000 per unit, its SwiGLU ~3.6e7 > 65504.
  REQUIRE_THROWS_WITH(layer(torch::full({2, 6}, 10.0, torch::kHalf)),
                      Contains("its parameters are finite, so its activations overflowed Half"));
}

TEST_CASE("check_finite(false) lets NaN propagate") {
  torch::manual_seed(0);
  auto options = MoELayerOptions::preset("top_k_gated", 6, 10, 3).check_finite(false);
  options.routing().k(3);
  MoELayer layer(options);
  {
    torch::NoGradGuard no_grad;
    layer->experts()->w1[0][0][0] = kNaN;
  }
  const auto out = layer(torch::randn({4, 6})).output;
  CHECK(torch::isnan(out).all().item<bool>());  // every token reaches expert 0
}

TEST_CASE("a model names the block whose layer refused NaN") {
  auto vit = tiny_vit();
  {
    torch::NoGradGuard no_grad;
    vit->blocks[1]->moe->router().router_weight()[3][0] = kNaN;
  }
  REQUIRE_THROWS_WITH(vit(torch::randn({2, 1, 28, 28})),
                      Contains("block1: ") && Contains("router weight holds NaN or inf (expert 3"));
}

TEST_CASE("a criterion's NaN score is refused naming the layer and the NaN parameters") {
  auto vit = tiny_vit();
  {
    torch::NoGradGuard no_grad;
    vit->blocks[1]->moe->router().router_weight()[5][2] = kNaN;
  }
  pr::CriterionContext ctx;
  ctx.finetuned = moeprune::moe_view(vit);
  REQUIRE_THROWS_WITH(pr::score_experts(pr::RouterMagnitude(), ctx),
                      Contains("router_magnitude scored expert 5 of MoE layer block1.moe NaN") &&
                          Contains("these parameters hold NaN or inf: router.weight"));
}

TEST_CASE("a language model names the decoder layer whose router refused NaN") {
  auto model = moeprune::lm::load_causal_lm(MOEPRUNE_TEST_FIXTURES "/lm/mixtral");
  {
    torch::NoGradGuard no_grad;
    model->layer(1)->moe_block->moe->router().router_weight()[2][5] = kNaN;
  }
  torch::NoGradGuard no_grad;
  REQUIRE_THROWS_WITH(model->forward(torch::randint(0, 96, {1, 6})),
                      Contains("model.layers.1: ") &&
                          Contains("router weight holds NaN or inf (expert 2, feature 5"));
}

TEST_CASE("the Trainer refuses a NaN loss before the step, keeping the weights") {
  auto vit = tiny_vit();
  {
    torch::NoGradGuard no_grad;
    vit->head->bias[0] = kNaN;  // after the MoE blocks: only the loss sees it
  }
  moeprune::data::ImageDataset d;
  d.images = torch::randint(0, 255, {16, 1, 28, 28}, torch::kLong).to(torch::kUInt8);
  d.labels = torch::randint(0, 4, {16}, torch::kLong);
  d.num_classes = 4;
  moeprune::Trainer trainer(
      vit, moeprune::TrainerOptions().epochs(1).batch_size(8).lr(1e-2).progress(false));
  const auto before = vit->blocks[0]->qkv->weight.clone();
  REQUIRE_THROWS_WITH(trainer.fit(d), Contains("Trainer: the loss became ") &&
                                          Contains("nan at step 0") &&
                                          Contains("keeps the weights from before this step"));
  CHECK(torch::equal(vit->blocks[0]->qkv->weight, before));
}

TEST_CASE("train_lm refuses a NaN loss before the step, keeping every weight") {
  auto model = moeprune::lm::load_causal_lm(MOEPRUNE_TEST_FIXTURES "/lm/mixtral");
  {
    torch::NoGradGuard no_grad;
    // The final norm comes after every MoE layer: only the loss sees the NaN.
    model->named_parameters()["norm.weight"][3] = kNaN;
  }
  std::vector<std::pair<std::string, torch::Tensor>> before;
  for (const auto& p : model->named_parameters()) {
    before.emplace_back(p.key(), p.value().detach().clone());
  }
  const auto stream = torch::randint(0, 96, {64}, torch::kLong);
  REQUIRE_THROWS_WITH(
      moeprune::train_lm(
          model, stream, {},
          moeprune::LMTrainerOptions().steps(2).batch_size(2).context(8).lr(1e-2).progress(false)),
      Contains("train_lm: the loss became ") && Contains("nan at step 0") &&
          Contains("keeps the weights from before this step"));
  // Unchanged, the planted NaN included (a step with a NaN loss would make every weight NaN).
  const auto after = model->named_parameters();
  for (const auto& [name, value] : before) {
    INFO(name);
    CHECK(torch::isclose(after[name], value, 0.0, 0.0, /*equal_nan=*/true).all().item<bool>());
  }
}

TEST_CASE(
    "a Switch model's optimisation step refuses a NaN loss before the step, keeping weights") {
  // examples/switch_compress trains through OptimizationStep, as the Trainer and train_lm do.
  const std::string dir = MOEPRUNE_TEST_FIXTURES "/seq2seq";
  const auto batch =
      moeprune::safetensors::load_file(dir + "/switch_transformers_reference.safetensors");
  for (const bool planted : {true, false}) {
    INFO((planted ? "NaN in the decoder's final norm" : "finite"));
    auto model = moeprune::seq2seq::load_switch_transformer(dir + "/switch_transformers");
    if (planted) {
      torch::NoGradGuard no_grad;
      // After every MoE layer: only the loss sees it.
      model->named_parameters()["decoder_final_norm.weight"][2] = kNaN;
    }
    std::vector<std::pair<std::string, torch::Tensor>> before;
    for (const auto& p : model->named_parameters()) {
      before.emplace_back(p.key(), p.value().detach().clone());
    }
    int64_t hooks = 0;
    auto options = moeprune::TrainingOptions().lr(1e-2);
    options.after_backward([&](int64_t, int64_t) { ++hooks; }).after_step([&](int64_t, int64_t) {
      ++hooks;
    });
    const auto optimizer = moeprune::make_optimizer(model->parameters(), options);
    moeprune::OptimizationStep optimize(*optimizer, model->parameters(), {}, options, 2, "switch");
    model->train();
    const auto out =
        model->forward(batch.at("input_ids"), batch.at("attention_mask"), {}, batch.at("labels"));
    if (planted) {
      REQUIRE_THROWS_WITH(optimize.apply(0, out.loss),
                          Contains("switch: the loss became nan at step 0") &&
                              Contains("keeps the weights from before this step"));
      CHECK(hooks == 0);
    } else {
      CHECK(optimize.apply(0, out.loss)[0] == Approx(out.loss.item<double>()));
      CHECK(hooks == 2);
    }
    // Unchanged after the refusal (the planted NaN included); a finite step moves them.
    const auto after = model->named_parameters();
    bool unchanged = true;
    for (const auto& [name, value] : before) {
      unchanged =
          unchanged &&
          torch::isclose(after[name], value, 0.0, 0.0, /*equal_nan=*/true).all().item<bool>();
    }
    CHECK(unchanged == planted);
  }
}

TEST_CASE(
    "the optimisation step refuses a run of no steps, a negative rate and a non-scalar loss") {
  auto w = torch::ones({3}, torch::requires_grad());
  REQUIRE_THROWS_WITH(moeprune::make_optimizer({w}, moeprune::TrainingOptions().lr(-1e-3)),
                      Contains("the learning rate should be >= 0, got -0.001"));
  const auto options = moeprune::TrainingOptions().lr(0.5);
  const auto optimizer = moeprune::make_optimizer({w}, options);
  REQUIRE_THROWS_WITH(moeprune::OptimizationStep(*optimizer, {w}, {}, options, 0, "toy"),
                      Contains("toy: a run needs at least one step, got 0"));
  moeprune::OptimizationStep optimize(*optimizer, {w}, {}, options, 1, "toy");
  REQUIRE_THROWS_WITH(optimize.apply(0, w * 2.0), Contains("toy: the loss should be a scalar"));
  CHECK(torch::equal(w, torch::ones({3})));
  // A scalar loss steps: AdamW's first step moves each weight by lr (its update is lr * sign).
  optimize.apply(0, (w * w).sum());
  CHECK(torch::allclose(w, torch::full({3}, 0.5), 0.0, 1e-6));
}

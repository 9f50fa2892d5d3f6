#include <moeprune/io/checkpoint.h>
#include <moeprune/models/vision/checkpoint.h>
#include <moeprune/models/vision/moe_view.h>
#include <moeprune/pruning/builtin_criteria.h>
#include <moeprune/pruning/pruning_plan.h>
#include <moeprune/train/trainer.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>

using moeprune::VisionTransformer;
using moeprune::VisionTransformerOptions;
namespace pr = moeprune::pruning;

namespace {

VisionTransformerOptions tiny(const std::string& preset = "small_vmoe") {
  return VisionTransformerOptions::small(preset, 4)
      .d_model(16)
      .mlp_dim(24)
      .depth(2)
      .heads(2)
      .moe_blocks({1});
}

int64_t parameter_count(const VisionTransformer& m) {
  int64_t n = 0;
  for (const auto& p : m->parameters()) {
    n += p.numel();
  }
  return n;
}

// The model's MoE view (with calibration images when given).
std::shared_ptr<moeprune::VisionTransformerMoEView> view(const VisionTransformer& m,
                                                         pr::CalibrationData data = {}) {
  return moeprune::moe_view(m, std::move(data));
}

// Calibration data: one fixed batch of 6 images.
pr::CalibrationData one_batch(const torch::Tensor& images) {
  return [images](const std::function<void(const torch::Tensor&)>& visit) { visit(images); };
}

// A model whose router is all zeros: every gate is 1/E, and ties send every token to experts 0
// and 1 (the lower ids).
VisionTransformer uniform_router_model() {
  torch::manual_seed(1);
  VisionTransformer m(tiny());
  torch::NoGradGuard no_grad;
  m->blocks[1]->moe->router().router_weight().zero_();
  return m;
}

}  // namespace

TEST_CASE("router_norm_change and router_magnitude score the router columns' norms") {
  torch::manual_seed(0);
  VisionTransformer pre(tiny()), ft(tiny());
  {
    torch::NoGradGuard no_grad;
    auto wp = pre->blocks[1]->moe->router().router_weight();
    auto wf = ft->blocks[1]->moe->router().router_weight();
    wp.copy_(torch::randn_like(wp));
    wp.div_(wp.norm(2, 1, true));  // every pre-trained column has norm 1
    const auto scale = torch::tensor({1.5, 0.9, 2.0, 1.0, 1.2, 0.5, 1.0, 3.0}).unsqueeze(1);
    wf.copy_(wp * scale);
  }
  pr::CriterionContext ctx;
  ctx.finetuned = view(ft);
  ctx.pretrained = view(pre);
  const auto change = pr::score_experts(pr::RouterNormChange(), ctx).at(1);
  CHECK(torch::allclose(change,
                        torch::tensor({0.5, -0.1, 1.0, 0.0, 0.2, -0.5, 0.0, 2.0}, torch::kDouble),
                        1e-6, 1e-6));
  const auto magnitude = pr::score_experts(pr::RouterMagnitude(), ctx).at(1);
  CHECK(torch::allclose(magnitude,
                        torch::tensor({1.5, 0.9, 2.0, 1.0, 1.2, 0.5, 1.0, 3.0}, torch::kDouble),
                        1e-6, 1e-6));
  // The paper prunes the smallest change first: experts 5 and 1.
  const auto plan = pr::PruningPlan::same_count({{1, change}}, *view(ft), 2);
  CHECK(plan.layers.at(0).pruned == std::vector<int64_t>{1, 5});
  ctx.pretrained = nullptr;
  REQUIRE_THROWS_WITH(pr::score_experts(pr::RouterNormChange(), ctx),
                      Catch::Contains("needs the pre-trained model"));
}

TEST_CASE("neuron_magnitude_change averages the change of the neurons' input-weight norms") {
  torch::manual_seed(2);
  VisionTransformer pre(tiny()), ft(tiny());
  {
    torch::NoGradGuard no_grad;
    auto w1p = pre->blocks[1]->moe->experts()->w1;  // [E, d, F]
    w1p.copy_(torch::randn_like(w1p));
    w1p.div_(w1p.norm(2, 1, true));  // every neuron's input weights have norm 1
    const auto factor = torch::arange(8, torch::kFloat).mul(0.25).add(0.5).view({8, 1, 1});
    ft->blocks[1]->moe->experts()->w1.copy_(w1p * factor);
  }
  pr::CriterionContext ctx;
  ctx.finetuned = view(ft);
  ctx.pretrained = view(pre);
  const auto s = pr::score_experts(pr::NeuronMagnitudeChange(), ctx).at(1);
  // factor - 1 for expert e: 0.5 + 0.25 e - 1.
  CHECK(torch::allclose(s, torch::arange(8, torch::kDouble).mul(0.25).sub(0.5), 1e-5, 1e-6));
}

TEST_CASE("data criteria on a router that ties every expert") {
  auto model = uniform_router_model();
  const auto images = torch::randn({6, 1, 28, 28});
  const double tokens = 6 * 50;
  pr::CriterionContext ctx;
  ctx.finetuned = view(model, one_batch(images));
  SECTION("importance: every expert gets T/E") {
    const auto s = pr::score_experts(pr::Importance(), ctx).at(1);
    CHECK(torch::allclose(s, torch::full({8}, tokens / 8, torch::kDouble), 1e-6, 1e-6));
  }
  SECTION("frequency: ties send all tokens to experts 0 and 1") {
    const auto s = pr::score_experts(pr::Frequency(), ctx).at(1);
    CHECK(torch::equal(s, torch::tensor({tokens, tokens, 0., 0., 0., 0., 0., 0.}, torch::kDouble)));
  }
  SECTION("reap: an expert whose output is zero scores zero, unrouted experts score zero") {
    {
      torch::NoGradGuard no_grad;
      auto& bank = model->blocks[1]->moe->experts();
      bank->w2[1].zero_();
      bank->b2[1].zero_();
    }
    model->set_capacity_factor(100.0);  // no drops: every token reaches both experts
    const auto s = pr::score_experts(pr::Reap(), ctx).at(1);
    CHECK(s[0].item<double>() > 0.0);
    CHECK(s.narrow(0, 1, 7).eq(0).all().item<bool>());
  }
  SECTION("data criteria refuse to run without data") {
    ctx.finetuned = view(model);
    REQUIRE_THROWS_WITH(pr::score_experts(pr::Importance(), ctx),
                        Catch::Contains("needs calibration data"));
  }
}

TEST_CASE("random criterion is a seeded permutation") {
  pr::CriterionContext ctx;
  ctx.finetuned = view(VisionTransformer(tiny()));
  ctx.seed = 3;
  const auto a = pr::score_experts(pr::RandomCriterion(), ctx).at(1);
  const auto b = pr::score_experts(pr::RandomCriterion(), ctx).at(1);
  ctx.seed = 4;
  const auto c = pr::score_experts(pr::RandomCriterion(), ctx).at(1);
  CHECK(torch::equal(a, b));
  CHECK_FALSE(torch::equal(a, c));
  CHECK(torch::equal(std::get<0>(a.sort()), torch::arange(8, torch::kDouble)));
}

TEST_CASE("the registry holds the built-in criteria and takes new ones") {
  auto registry = pr::CriterionRegistry::with_builtins();
  CHECK(registry.names() == std::vector<std::string>{"ean", "frequency", "importance", "naee",
                                                     "neuron_magnitude_change", "random", "reap",
                                                     "router_magnitude", "router_norm_change"});
  REQUIRE_THROWS_WITH(registry.create("magic"),
                      Catch::Contains("unknown pruning criterion 'magic'"));
  struct LastFirst : pr::Criterion {
    std::string name() const override { return "last_first"; }
    std::string description() const override { return "prunes the highest ids"; }
    torch::Tensor score_layer(const pr::LayerScoringContext& c) const override {
      return -torch::arange(c.finetuned.layer->router().num_experts(), torch::kDouble);
    }
  };
  registry.add("last_first", [] { return std::make_unique<LastFirst>(); });
  pr::CriterionContext ctx;
  ctx.finetuned = view(VisionTransformer(tiny()));
  const auto plan = pr::PruningPlan::same_count(
      pr::score_experts(*registry.create("last_first"), ctx), *ctx.finetuned, 3);
  CHECK(plan.layers[0].pruned == std::vector<int64_t>{5, 6, 7});
}

TEST_CASE("pruning experts that are never routed to leaves the output bitwise unchanged") {
  auto model = uniform_router_model();
  model->eval();
  const auto images = torch::randn({4, 1, 28, 28});
  torch::NoGradGuard no_grad;
  const auto before = model(images).logits;
  pr::apply_plan(*view(model),
                 pr::PruningPlan::per_layer({{1, torch::arange(8, torch::kDouble).neg()}},
                                            *view(model), {{1, 6}}));
  REQUIRE(model->blocks[1]->moe->experts()->expert_ids() == std::vector<int64_t>{0, 1});
  CHECK(torch::equal(model(images).logits, before));
}

TEST_CASE("pruning frees exactly the pruned experts' parameters") {
  const int64_t d = 16, F = 24;
  const int64_t per_expert = d * F + F + F * d + d;
  torch::manual_seed(5);
  SECTION("router columns kept (the paper's token-choice semantics)") {
    VisionTransformer m(tiny());
    const auto before = parameter_count(m);
    pr::apply_plan(*view(m), pr::PruningPlan::same_count({{1, torch::arange(8, torch::kDouble)}},
                                                         *view(m), 3));
    CHECK(parameter_count(m) == before - 3 * per_expert);
    CHECK(m->blocks[1]->moe->experts()->w1.nbytes() == static_cast<size_t>(5 * d * F * 4));
    CHECK(m->blocks[1]->moe->router().router_weight().size(0) == 8);
  }
  SECTION("router columns dropped (Expert Drop)") {
    VisionTransformer m(tiny());
    const auto before = parameter_count(m);
    pr::apply_plan(
        *view(m), pr::PruningPlan::same_count({{1, torch::arange(8, torch::kDouble)}}, *view(m), 3),
        /*drop_router_columns=*/true);
    CHECK(parameter_count(m) == before - 3 * per_expert - 3 * d);
    CHECK(m->blocks[1]->moe->router().router_weight().size(0) == 5);
    CHECK(m(torch::randn({2, 1, 28, 28})).plans[0].router_probs.size(1) == 5);
  }
  SECTION("expert choice drops the router columns") {
    VisionTransformer m(tiny("small_expert_choice"));
    pr::apply_plan(*view(m), pr::PruningPlan::same_count({{1, torch::arange(8, torch::kDouble)}},
                                                         *view(m), 4));
    CHECK(m->blocks[1]->moe->router().router_weight().size(0) == 4);
    CHECK(m(torch::randn({2, 1, 28, 28})).plans[0].num_bank_experts() == 4);
  }
}

TEST_CASE("E3-MoE prunes within members and keeps every member") {
  VisionTransformer m(tiny("small_e3moe"));
  const auto scores = torch::tensor({0., 1., 2., 3., 10., 11., 12., 13.}, torch::kDouble);
  const auto plan = pr::PruningPlan::same_count({{1, scores}}, *view(m), 4);
  // Expert 3 would empty member 0, so the fourth pruned expert comes from member 1.
  CHECK(plan.layers[0].pruned == std::vector<int64_t>{0, 1, 2, 4});
  // 4 experts per member, k = 1: at most 3 per member, 6 in all.
  REQUIRE_THROWS_WITH(pr::PruningPlan::same_count({{1, scores}}, *view(m), 7),
                      Catch::Contains("fewer than the 2 its router needs (k = 1 in each of its 2 "
                                      "ensemble members)"));
  pr::apply_plan(*view(m), plan);
  const auto out = m(torch::randn({2, 1, 28, 28}));
  CHECK(out.member_logits.size(1) == 2);
  pr::PruningPlan bad =
      pr::PruningPlan::same_count({{1, scores}}, *view(VisionTransformer(tiny("small_e3moe"))), 0);
  bad.layers[0].pruned = {0, 1, 2, 3};
  REQUIRE_THROWS_WITH(bad.validate(*view(VisionTransformer(tiny("small_e3moe")))),
                      Catch::Contains("would leave ensemble member 0 with 0 experts"));
}

TEST_CASE("bad pruning plans are refused with a clear message") {
  const auto m = view(VisionTransformer(tiny()));
  const pr::ExpertScores scores = {{1, torch::arange(8, torch::kDouble)}};
  REQUIRE_THROWS_WITH(pr::PruningPlan::same_count(scores, *m, 8),
                      Catch::Contains("pruning 8 leaves 0"));
  REQUIRE_THROWS_WITH(pr::PruningPlan::same_count(scores, *m, 7),
                      Catch::Contains("fewer than the 2 its router needs (k = 2)"));
  REQUIRE_THROWS_WITH(pr::PruningPlan::per_layer(scores, *m, {{0, 1}}),
                      Catch::Contains("no MoE layer keyed 0"));
  auto plan = pr::PruningPlan::same_count(scores, *m, 2);
  plan.layers[0].pruned = {0, 1, 2, 3, 4, 5, 6, 7};
  REQUIRE_THROWS_WITH(plan.validate(*m), Catch::Contains("would prune every expert"));
  plan.layers[0].pruned = {0, 9};
  REQUIRE_THROWS_WITH(plan.validate(*m), Catch::Contains("expert 9 is outside [0, 8)"));
  plan.layers[0].pruned = {0};
  plan.layers[0].key = 0;
  REQUIRE_THROWS_WITH(plan.validate(*m), Catch::Contains("no MoE layer keyed 0"));
  const auto other_plan =
      pr::PruningPlan::same_count(scores, *view(VisionTransformer(tiny().d_model(32))), 1);
  REQUIRE_THROWS_WITH(other_plan.validate(*m), Catch::Contains("made for another model"));
  REQUIRE_THROWS_WITH(pr::PruningPlan::global_budget(scores, *m, 7),
                      Catch::Contains("more than the 6"));
}

TEST_CASE("plans come in three forms, print as a table and round-trip through JSON") {
  torch::manual_seed(6);
  const auto m = view(VisionTransformer(
      VisionTransformerOptions::small_vmoe(4).d_model(16).mlp_dim(24)));  // MoE in blocks 1, 3
  const pr::ExpertScores scores = {
      {1, torch::tensor({5., 1., 7., 3., 9., 2., 8., 6.}, torch::kDouble)},
      {3, torch::tensor({0.5, 0.4, 0.3, 0.2, 10., 11., 12., 13.}, torch::kDouble)}};
  const auto same = pr::PruningPlan::same_count(scores, *m, 2, {3});
  REQUIRE(same.layers.size() == 1);
  CHECK(same.layers[0].pruned == std::vector<int64_t>{2, 3});
  const auto per = pr::PruningPlan::per_layer(scores, *m, {{1, 3}, {3, 1}});
  CHECK(per.layers[0].pruned == std::vector<int64_t>{1, 3, 5});
  CHECK(per.layers[1].pruned == std::vector<int64_t>{3});
  // Globally the 5 lowest are 0.2, 0.3, 0.4, 0.5 (block 3) and 1 (block 1); a floor of 5 caps
  // block 3 at 3 pruned, so block 1 gives its 1 and 2.
  const auto global = pr::PruningPlan::global_budget(scores, *m, 5, 5);
  CHECK(global.layers[0].pruned == std::vector<int64_t>{1, 5});
  CHECK(global.layers[1].pruned == std::vector<int64_t>{1, 2, 3});
  const auto back = pr::PruningPlan::from_json(global.to_json());
  CHECK(back.to_json() == global.to_json());
  INFO(global.table());
  CHECK(global.table().find(" 6/8 ") != std::string::npos);  // block 1 keeps 6 of 8
  CHECK(global.table().find(" 5/8 ") != std::string::npos);  // block 3 keeps 5 of 8
}

TEST_CASE("a pruned model trains, and its checkpoint loads into the pruned shapes") {
  torch::manual_seed(7);
  VisionTransformer m(tiny());
  pr::apply_plan(*view(m),
                 pr::PruningPlan::same_count({{1, torch::arange(8, torch::kDouble)}}, *view(m), 4));
  moeprune::data::ImageDataset d;
  d.images = torch::randint(0, 255, {64, 1, 28, 28}, torch::kLong).to(torch::kUInt8);
  d.labels = (d.images.to(torch::kFloat).mean({1, 2, 3}) > 127).to(torch::kLong);
  d.num_classes = 4;
  moeprune::Trainer trainer(
      m,
      moeprune::TrainerOptions().epochs(6).batch_size(16).lr(3e-3).warmup_steps(2).progress(false));
  // The optimizer holds the kept experts only.
  int64_t optimized = 0;
  for (const auto& p : trainer.optimizer().param_groups()[0].params()) {
    optimized += p.numel();
  }
  CHECK(optimized == parameter_count(m));
  const double before = trainer.evaluate(d).loss;
  trainer.fit(d);
  CHECK(trainer.evaluate(d).loss < before);

  const auto path = (std::filesystem::temp_directory_path() /
                     ("moeprune_pruned_" + std::to_string(::getpid()) + ".pt"))
                        .string();
  moeprune::save_vision_transformer(path, m);
  auto loaded = moeprune::load_vision_transformer(path);
  CHECK(loaded->blocks[1]->moe->experts()->expert_ids() == std::vector<int64_t>{4, 5, 6, 7});
  std::remove(path.c_str());
  m->eval();
  loaded->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({3, 1, 28, 28});
  CHECK(torch::equal(m(x).logits, loaded(x).logits));
}

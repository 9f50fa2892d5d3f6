#include <moeprune/compression/low_rank.h>
#include <moeprune/train/model_cost.h>
#include <moeprune/train/trainer.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include "compression_helpers.h"

namespace cm = moeprune::compression;
using moeprune::ExpertBank;
using moeprune::ExpertBankOptions;
using moeprune::VisionTransformer;

TEST_CASE("factorising keeps the experts' function and L R is the best rank-r approximation") {
  for (const auto kind : {moeprune::ExpertKind::kMlp, moeprune::ExpertKind::kGated}) {
    torch::manual_seed(1);
    ExpertBank bank(ExpertBankOptions(3, 8, 12).kind(kind));
    const auto rows = torch::randn({9, 8});
    const auto w1 = bank->w1.clone();
    torch::NoGradGuard no_grad;
    const auto before = bank->forward(rows, {2, 3, 4});
    bank->factorize(3);
    CHECK(bank->options.rank() == 3);
    CHECK(torch::allclose(bank->forward(rows, {2, 3, 4}), before, 1e-5, 1e-6));
    // Eckart-Young: ||W - L R||_F^2 is the sum of the discarded squared singular values.
    for (int64_t e = 0; e < 3; ++e) {
      const auto low = bank->w1_left[e].mm(bank->w1_right[e]);
      CHECK(torch::allclose(low + bank->w1[e], w1[e], 1e-5, 1e-6));
      const auto s = torch::linalg_svdvals(w1[e].to(torch::kDouble));
      const double rest = s.narrow(0, 3, s.size(0) - 3).pow(2).sum().item<double>();
      CHECK((w1[e] - low).pow(2).sum().item<double>() == Approx(rest).epsilon(1e-4));
      // The factors split the singular values evenly: L^T L = R R^T = diag(s_1..s_r).
      const auto ltl = bank->w1_left[e].t().mm(bank->w1_left[e]).to(torch::kDouble);
      CHECK(torch::allclose(ltl, torch::diag(s.narrow(0, 0, 3)), 1e-4, 1e-4));
    }
  }
  ExpertBank bank(ExpertBankOptions(2, 4, 6));
  CHECK_THROWS_WITH(bank->factorize(5), Catch::Contains("rank should be in [1, 4]"));
  bank->factorize(2);
  CHECK_THROWS_WITH(bank->factorize(2), Catch::Contains("already factorised"));
  CHECK_THROWS_WITH(bank->keep_experts({0}), Catch::Contains("factorised"));
  CHECK_THROWS_WITH(bank->merge_experts({{0, 1}}), Catch::Contains("factorised"));
}

TEST_CASE("the cubic schedule holds, falls and settles at the final density") {
  torch::manual_seed(2);
  VisionTransformer m(test::tiny_vit());
  cm::factorize_experts(*test::view(m), 4);
  cm::SparsePruner pruner(*test::view(m),
                          cm::SparsePruningOptions().final_density(0.1).warmup_steps(10));
  // total 100: dense for 10 steps, final for the last 40, a cubic between (MC-SMoE's schedule).
  CHECK(pruner.density_at(0, 100) == 1.0);
  CHECK(pruner.density_at(9, 100) == 1.0);
  CHECK(pruner.density_at(10, 100) == Approx(1.0));
  CHECK(pruner.density_at(35, 100) == Approx(0.1 + 0.9 * 0.125));
  CHECK(pruner.density_at(59, 100) == Approx(0.1));
  CHECK(pruner.density_at(60, 100) == Approx(0.1));
  CHECK(pruner.density_at(99, 100) == Approx(0.1));
  // Too short a run for the warm-ups: straight to the final density after the first.
  CHECK(pruner.density_at(10, 30) == Approx(0.1));
  // No final warm-up: the last step still reaches the final density.
  cm::SparsePruner no_tail(*test::view(m),
                           cm::SparsePruningOptions().final_warmup(0).warmup_steps(10));
  CHECK(no_tail.density_at(99, 100) == Approx(0.1));
  CHECK(no_tail.density_at(98, 100) > 0.1);
  CHECK_THROWS_WITH(pruner.density_at(100, 100), Catch::Contains("outside a run of 100 steps"));
  CHECK_THROWS_WITH(cm::SparsePruner(*test::view(VisionTransformer(test::tiny_vit()))),
                    Catch::Contains("no factorised experts"));
  CHECK_THROWS_WITH(cm::SparsePruner(*test::view(m), cm::SparsePruningOptions().final_density(0)),
                    Catch::Contains("final_density"));
}

TEST_CASE("sparse pruning removes the output units with the lowest mean |w * grad|") {
  torch::manual_seed(3);
  VisionTransformer m(test::tiny_vit());
  cm::factorize_experts(*test::view(m), 4);
  cm::SparsePruner pruner(*test::view(m),
                          cm::SparsePruningOptions().beta1(0.0));  // importance = this step's
  const auto x = torch::randn({4, 1, 28, 28});
  m->train();
  m->forward(x).logits.pow(2).sum().backward();
  pruner.after_backward(0, 1);
  // The reference: every unit's mean |S * dS| over its inputs, all parts of all experts.
  auto bank = m->blocks[1]->moe->experts();
  std::vector<double> units;
  for (const auto& [w, mask] : bank->sparse_parts()) {
    const auto s = (w * w.grad()).abs().mean(1).reshape({-1});
    for (int64_t i = 0; i < s.size(0); ++i) units.push_back(s[i].item<double>());
  }
  const auto n = static_cast<int64_t>(units.size());
  const int64_t pruned = n * 3 / 4;
  pruner.prune_to(0.25);
  CHECK(pruner.density() == Approx(static_cast<double>(n - pruned) / static_cast<double>(n)));
  // Every pruned unit scores at most what every kept unit scores (ties may go either way), and
  // a pruned unit's column of S is zero.
  double lowest_kept = 1e300, highest_pruned = -1e300;
  int64_t i = 0, count = 0;
  for (const auto& [w, mask] : bank->sparse_parts()) {
    const auto flat_mask = mask.reshape({-1});
    const int64_t out = mask.size(1);
    for (int64_t u = 0; u < flat_mask.size(0); ++u, ++i) {
      const double score = units[static_cast<size_t>(i)];
      if (flat_mask[u].item<double>() > 0) {
        lowest_kept = std::min(lowest_kept, score);
      } else {
        ++count;
        highest_pruned = std::max(highest_pruned, score);
        CHECK(w[u / out].select(1, u % out).abs().max().item<double>() == 0.0);
      }
    }
  }
  CHECK(count == pruned);
  CHECK(highest_pruned <= lowest_kept);
  // Inference computes only the kept units of S, and gets what the dense S gives.
  m->eval();
  torch::Tensor sparse_out, dense_out;
  {
    torch::NoGradGuard no_grad;
    sparse_out = m->forward(x).logits;
  }
  dense_out = m->forward(x).logits.detach();  // grad mode: the dense path
  CHECK(torch::allclose(sparse_out, dense_out, 1e-5, 1e-6));
}

TEST_CASE("stored parameters and FLOPs count what a compressed model keeps") {
  torch::manual_seed(4);
  VisionTransformer m(test::tiny_vit());
  const int64_t d = 16, F = 24, E = 8, r = 4;
  const int64_t all = test::parameter_count(m);
  CHECK(cm::stored_parameters(m) == all);
  cm::factorize_experts(*test::view(m), r);
  // Each expert gains L and R for w1 and w2 and keeps S dense until pruned.
  const int64_t factors = E * 2 * r * (d + F);
  CHECK(cm::stored_parameters(m) == all + factors);
  cm::SparsePruner pruner(*test::view(m));
  pruner.prune_to(0.5);
  auto bank = m->blocks[1]->moe->experts();
  const auto kept1 = static_cast<int64_t>(bank->w1_mask.sum().item<double>());
  const auto kept2 = static_cast<int64_t>(bank->w2_mask.sum().item<double>());
  CHECK(kept1 + kept2 == (E * F + E * d) / 2);
  CHECK(cm::stored_parameters(m) == all + factors - d * (E * F - kept1) - F * (E * d - kept2));
  // FLOPs of one row of expert 0: 2 * r * (d + F) per linear for L R, 2 * in * kept for S.
  const double kept0 =
      bank->w1_mask[0].sum().item<double>() * d * 2 + bank->w2_mask[0].sum().item<double>() * F * 2;
  CHECK(bank->row_flops(0) == Approx(2.0 * 2 * r * (d + F) + kept0));

  // flops_per_image on a hand-made evaluation: 100 rows on expert 0 over 10 images.
  VisionTransformer plain(test::tiny_vit());
  moeprune::EvalResult eval;
  eval.images = 10;
  eval.routing.push_back({1, {100, 0, 0, 0, 0, 0, 0, 0}, 0.0, 0.0});
  const double n = 50;  // tokens per image
  const double attention = 2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d;
  const double expected = 2 * 49 * 16 * d         // patch embedding
                          + 2 * attention         // two blocks
                          + 2 * n * d * 24 * 2    // block 0's dense MLP (mlp_dim 24)
                          + 2 * n * d * E         // router
                          + 10 * 2 * (2 * d * F)  // 10 rows per image
                          + 2 * d * 4;            // head
  CHECK(cm::flops_per_image(plain, eval) == Approx(expected));

  // E3-MoE: two copies of each image from the first MoE block on, each attending within itself.
  VisionTransformer e3(test::tiny_vit(2, {1}, "small_e3moe"));
  const double e3_expected = 2 * 49 * 16 * d + attention + 2 * n * d * 24 * 2  // block 0, 1 copy
                             + 2 * (2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d)  // block 1
                             + 2 * (2 * n) * d * E + 10 * 2 * (2 * d * F) + 2 * 2 * d * 4;
  CHECK(cm::flops_per_image(e3, eval) == Approx(e3_expected));
}

TEST_CASE("a factorised model without a pruner keeps its pruned units at zero while training") {
  torch::manual_seed(6);
  VisionTransformer m(test::tiny_vit());
  cm::factorize_experts(*test::view(m), 4);
  cm::SparsePruner(*test::view(m)).prune_to(0.5);
  auto bank = m->blocks[1]->moe->experts();
  const auto pruned = bank->w1_mask.eq(0).unsqueeze(1).expand_as(bank->w1);
  moeprune::data::ImageDataset d;
  d.images = torch::randint(0, 255, {32, 1, 28, 28}, torch::kLong).to(torch::kUInt8);
  d.labels = torch::randint(0, 4, {32}, torch::kLong);
  d.num_classes = 4;
  moeprune::Trainer(m, moeprune::TrainerOptions().epochs(2).batch_size(16).progress(false)).fit(d);
  CHECK(bank->w1.masked_select(pruned).abs().max().item<double>() == 0.0);
}

TEST_CASE("MC-SMoE: a factorised model distils, prunes to the final density and reloads") {
  torch::manual_seed(5);
  VisionTransformer teacher(test::tiny_vit()), m(test::tiny_vit());
  cm::factorize_experts(*test::view(m), 4);
  cm::SparsePruner pruner(*test::view(m),
                          cm::SparsePruningOptions().final_density(0.2).warmup_steps(1));
  moeprune::data::ImageDataset d;
  d.images = torch::randint(0, 255, {64, 1, 28, 28}, torch::kLong).to(torch::kUInt8);
  d.labels = torch::randint(0, 4, {64}, torch::kLong);
  d.num_classes = 4;
  moeprune::Trainer trainer(
      m, moeprune::TrainerOptions()
             .epochs(3)
             .batch_size(16)
             .warmup_steps(2)
             .progress(false)
             .teacher(teacher)
             .after_backward([&](int64_t s, int64_t t) { pruner.after_backward(s, t); })
             .after_step([&](int64_t s, int64_t t) { pruner.after_step(s, t); }));
  trainer.fit(d);
  CHECK(pruner.density() == Approx(0.2).margin(1.0 / 320));
  auto loaded = test::round_trip(m, "factorised");
  CHECK(loaded->blocks[1]->moe->experts()->options.rank() == 4);
  CHECK(torch::equal(loaded->blocks[1]->moe->experts()->w1_mask,
                     m->blocks[1]->moe->experts()->w1_mask));
  CHECK(torch::equal(loaded->blocks[1]->moe->experts()->w2_mask,
                     m->blocks[1]->moe->experts()->w2_mask));
  CHECK(cm::stored_parameters(loaded) == cm::stored_parameters(m));
  const auto x = torch::randn({3, 1, 28, 28});
  CHECK(torch::equal(test::eval_logits(loaded, x), test::eval_logits(m, x)));
}

TEST_CASE("a teacher that reads other images or predicts other classes is refused") {
  VisionTransformer m(test::tiny_vit());
  VisionTransformer classes(test::tiny_vit().num_classes(5));
  CHECK_THROWS_WITH(moeprune::Trainer(m, moeprune::TrainerOptions().teacher(classes)),
                    Catch::Contains("the teacher has 5 classes, the model 4"));
  VisionTransformer colour(test::tiny_vit().channels(3).image_size(32));
  CHECK_THROWS_WITH(moeprune::Trainer(m, moeprune::TrainerOptions().teacher(colour)),
                    Catch::Contains("the teacher reads 3x32x32 images, the model 1x28x28"));
}

TEST_CASE("the distillation term is the KL divergence from the teacher's tempered softmax") {
  // Hand case, temperature 2: student logits (0, 0) -> (1/2, 1/2); teacher (2 ln 3, 0) -> (3/4,
  // 1/4). KL = 3/4 ln(3/2) + 1/4 ln(1/2).
  const auto student = torch::tensor({{0.0, 0.0}});
  const auto teacher = torch::tensor({{2.0 * std::log(3.0), 0.0}});
  const double kl = 0.75 * std::log(1.5) + 0.25 * std::log(0.5);
  CHECK(moeprune::distillation_kl(student, teacher, 2.0).item<double>() == Approx(kl));
  // Identical logits: zero; the batch is averaged.
  const auto both = torch::cat({student, teacher});
  CHECK(moeprune::distillation_kl(both, both, 2.0).item<double>() == Approx(0.0).margin(1e-12));
  CHECK(moeprune::distillation_kl(both, torch::cat({teacher, teacher}), 2.0).item<double>() ==
        Approx(kl / 2));
}

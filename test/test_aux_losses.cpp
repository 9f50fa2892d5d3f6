#include <moeprune/routing/functional/aux_losses.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <cmath>

namespace fn = moeprune::functional;

TEST_CASE("importance loss is the squared coefficient of variation of summed gates") {
  // Two tokens, two experts: importance = (1.0, 0.5) + ... computed by hand.
  const auto probs = torch::tensor({{0.8, 0.2}, {0.4, 0.6}}, torch::kDouble);
  // imp = (1.2, 0.8): mean 1.0, population variance 0.04 -> loss 0.04.
  CHECK(fn::importance_loss(probs).item<double>() == Approx(0.04));
  // Groups of one token: imp = (0.8, 0.2) -> 0.09/0.25 = 0.36; (0.4, 0.6) -> 0.01/0.25 = 0.04.
  CHECK(fn::importance_loss(probs, 1).item<double>() == Approx(0.2));
  // Perfect balance costs nothing.
  CHECK(fn::importance_loss(torch::full({4, 4}, 0.25, torch::kDouble)).item<double>() ==
        Approx(0.0).margin(1e-12));
}

TEST_CASE("load loss uses the normal tail above the k-th noisy logit") {
  const auto logits = torch::tensor({{1.0, 0.0}}, torch::kDouble);
  const auto noisy = torch::tensor({{1.5, 0.2}}, torch::kDouble);
  // k = 1: threshold 1.5; p = 1 - Phi((1.5 - l) / s) with s = 0.5.
  const double s = 0.5;
  const auto tail = [&](double z) { return 0.5 * std::erfc(z / std::sqrt(2.0)); };
  const double p0 = tail((1.5 - 1.0) / s), p1 = tail((1.5 - 0.0) / s);
  const double mean = (p0 + p1) / 2,
               var = ((p0 - mean) * (p0 - mean) + (p1 - mean) * (p1 - mean)) / 2;
  CHECK(fn::load_loss(logits, noisy, 1, s).item<double>() == Approx(var / (mean * mean)));
  REQUIRE_THROWS_WITH(fn::load_loss(logits, noisy, 1, 0.0),
                      Catch::Contains("noise_std should be > 0"));
}

TEST_CASE("load-balance loss is E sum f P and equals 1 when balanced") {
  // Switch, k = 1: tokens 0,1 -> expert 0, token 2,3 -> expert 1; P = mean probs.
  const auto probs =
      torch::tensor({{0.7, 0.3}, {0.6, 0.4}, {0.2, 0.8}, {0.1, 0.9}}, torch::kDouble);
  const auto idx = torch::tensor({{0}, {0}, {1}, {1}}, torch::kLong);
  // f = (0.5, 0.5), P = (0.4, 0.6): 2 * (0.2 + 0.3) = 1.0
  CHECK(fn::load_balance_loss(probs, idx).item<double>() == Approx(1.0));
  // All tokens to expert 0: f = (1, 0) -> 2 * 0.4 = 0.8.
  CHECK(fn::load_balance_loss(probs, torch::zeros({4, 1}, torch::kLong)).item<double>() ==
        Approx(0.8));
  // Mixtral form, k = 2: sum over both choices.
  const auto idx2 = torch::tensor({{0, 1}, {0, 1}, {1, 0}, {1, 0}}, torch::kLong);
  CHECK(fn::load_balance_loss(probs, idx2).item<double>() == Approx(2.0));
}

TEST_CASE("z-loss is the mean squared logsumexp") {
  const auto logits = torch::tensor({{0.0, 0.0}, {1.0, 1.0}}, torch::kDouble);
  const double a = std::log(2.0), b = 1.0 + std::log(2.0);
  CHECK(fn::z_loss(logits).item<double>() == Approx((a * a + b * b) / 2));
}

TEST_CASE("weighted_sum adds the losses with their weights") {
  fn::AuxLosses l{torch::tensor(1.0), torch::tensor(2.0), torch::tensor(3.0), torch::tensor(4.0)};
  CHECK(fn::weighted_sum(l, fn::AuxLossWeights().importance(0.5).z_loss(0.25)).item<double>() ==
        Approx(1.5));
}

#include <moeprune/layers/expert_bank.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

using moeprune::ExpertActivation;
using moeprune::ExpertBank;
using moeprune::ExpertBankOptions;
using moeprune::ExpertKind;

namespace {

// One expert, written out.
torch::Tensor naive_expert(ExpertBank& bank, int64_t e, const torch::Tensor& x) {
  auto& o = bank->options;
  if (o.kind() == ExpertKind::kGated) {
    return (torch::silu(x.matmul(bank->w1[e])) * x.matmul(bank->w3[e])).matmul(bank->w2[e]);
  }
  auto h = x.matmul(bank->w1[e]) + bank->b1[e];
  h = 0.5 * h * (1 + torch::erf(h / std::sqrt(2.0)));
  return h.matmul(bank->w2[e]) + bank->b2[e];
}

int64_t parameter_count(ExpertBank& bank) {
  int64_t n = 0;
  for (const auto& p : bank->parameters()) {
    n += p.numel();
  }
  return n;
}

}  // namespace

TEST_CASE("expert bank runs each expert on its block of rows") {
  torch::manual_seed(2);
  for (const auto kind : {ExpertKind::kMlp, ExpertKind::kGated}) {
    ExpertBank bank(ExpertBankOptions(3, 5, 7).kind(kind).activation(
        kind == ExpertKind::kGated ? ExpertActivation::kSilu : ExpertActivation::kGelu));
    const auto rows = torch::randn({6, 5});
    const std::vector<int64_t> counts = {2, 0, 4};
    const auto out = bank(rows, counts);
    CHECK(torch::allclose(out.narrow(0, 0, 2), naive_expert(bank, 0, rows.narrow(0, 0, 2)), 1e-5,
                          1e-6));
    CHECK(torch::allclose(out.narrow(0, 2, 4), naive_expert(bank, 2, rows.narrow(0, 2, 4)), 1e-5,
                          1e-6));
  }
}

TEST_CASE("expert bank keeps a subset of experts and frees the rest") {
  torch::manual_seed(4);
  ExpertBank bank(ExpertBankOptions(4, 6, 10));
  const auto before = parameter_count(bank);
  // Per expert: w1 6x10 + b1 10 + w2 10x6 + b2 6 = 136 parameters.
  REQUIRE(before == 4 * 136);
  const auto w1_of_3 = bank->w1[3].clone();
  const auto rows = torch::randn({3, 6});
  const auto out_of_3 = bank->forward(rows, {0, 0, 0, 3});
  const auto* w1_identity = bank->w1.unsafeGetTensorImpl();

  bank->keep_experts({3, 1});
  CHECK(bank->expert_ids() == std::vector<int64_t>{1, 3});
  CHECK(parameter_count(bank) == 2 * 136);
  CHECK(bank->w1.unsafeGetTensorImpl() == w1_identity);  // the same parameter, shrunk
  CHECK(torch::equal(bank->w1[1], w1_of_3));
  CHECK(torch::equal(bank->forward(rows, {0, 3}), out_of_3));
  CHECK(bank->expert_map().eq(torch::tensor({-1, 0, -1, 1}, torch::kLong)).all().item<bool>());

  SECTION("bad subsets are refused") {
    REQUIRE_THROWS_AS(bank->keep_experts({}), c10::Error);
    REQUIRE_THROWS_WITH(bank->keep_experts({}), Catch::Contains("empty subset"));
    REQUIRE_THROWS_WITH(bank->keep_experts({0}), Catch::Contains("expert 0 is not in the bank"));
    REQUIRE_THROWS_WITH(bank->keep_experts({1, 1}), Catch::Contains("name one expert twice"));
  }
  SECTION("a clone keeps the subset") {
    auto copy = std::dynamic_pointer_cast<moeprune::ExpertBankImpl>(bank->clone());
    CHECK(copy->expert_ids() == std::vector<int64_t>{1, 3});
    CHECK(torch::equal(copy->w2, bank->w2));
  }
}

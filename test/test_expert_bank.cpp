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

TEST_CASE("bf16 and fp16 experts equal an fp64 reference at decode and prefill row counts") {
  // Widths off every vector and block size of the CPU kernels (8 lanes, 4 rows per pass, 512
  // columns per task): d 523, F 1041.
  torch::manual_seed(11);
  const int64_t d = 523, f = 1041;
  for (const auto dtype : {torch::kBFloat16, torch::kHalf}) {
    ExpertBank bank(ExpertBankOptions(3, d, f)
                        .kind(ExpertKind::kGated)
                        .activation(ExpertActivation::kSilu)
                        .bias(false));
    bank->to(dtype);
    // The reference: the same (rounded) weights and inputs in fp64, no rounding in between.
    const auto w64 = [&](const torch::Tensor& w, int64_t e) { return w[e].to(torch::kDouble); };
    const auto reference = [&](int64_t e, const torch::Tensor& x) {
      const auto x64 = x.to(torch::kDouble);
      return (torch::silu(x64.matmul(w64(bank->w1, e))) * x64.matmul(w64(bank->w3, e)))
          .matmul(w64(bank->w2, e));
    };
    for (const auto& counts : std::vector<std::vector<int64_t>>{
             {1, 0, 0}, {0, 3, 5}, {8, 1, 2}, {9, 0, 16}, {33, 0, 2}}) {
      const int64_t total = counts[0] + counts[1] + counts[2];
      const auto rows = torch::randn({total, d}).to(dtype);
      for (const bool grad : {false, true}) {
        torch::AutoGradMode mode(grad);
        const auto out = bank->forward(rows, counts);
        REQUIRE(out.scalar_type() == dtype);
        int64_t offset = 0;
        for (int64_t e = 0; e < 3; ++e) {
          const int64_t n = counts[static_cast<size_t>(e)];
          if (n == 0) {
            continue;
          }
          const auto want = reference(e, rows.narrow(0, offset, n));
          const auto got = out.narrow(0, offset, n).to(torch::kDouble);
          offset += n;
          const double scale = want.abs().max().item<double>();
          const double err = (got - want).abs().max().item<double>();
          INFO(dtype << " expert " << e << ", " << n << " rows, grad " << grad << ": max error "
                     << err << " of values up to " << scale);
          // Each of the four products rounds to the dtype once (bf16: 8 significant bits), so a
          // few steps of the largest value; a wrong column or row would be off by the values.
          CHECK(err < scale * (dtype == torch::kBFloat16 ? 4.0 / 256 : 4.0 / 2048));
        }
      }
    }
    // The decode path sums in the same order on any thread count.
    torch::NoGradGuard no_grad;
    const auto rows = torch::randn({5, d}).to(dtype);
    const int threads = at::get_num_threads();
    at::set_num_threads(1);
    const auto one = bank->forward(rows, {2, 3, 0});
    at::set_num_threads(std::max(2, threads));
    const auto many = bank->forward(rows, {2, 3, 0});
    at::set_num_threads(threads);
    CHECK(torch::equal(one, many));
  }
}

TEST_CASE("expert bank takes experts back in id order (the inverse of keep_experts)") {
  torch::manual_seed(5);
  ExpertBank whole(ExpertBankOptions(4, 6, 10));
  ExpertBank bank(ExpertBankOptions(4, 6, 10));
  for (const auto& p : whole->named_parameters()) {
    bank->named_parameters()[p.key()].data().copy_(p.value());
  }
  bank->keep_experts({1, 3});
  const auto* w1_identity = bank->w1.unsafeGetTensorImpl();
  const auto rows = torch::randn({4, 6});
  bank->forward(rows, {2, 2}).sum().backward();
  REQUIRE(bank->w1.grad().defined());

  // Experts 2 and 0 (in that order), as another process would send them: [n, ...] each.
  const auto index = torch::tensor({2, 0}, torch::kLong);
  std::map<std::string, torch::Tensor> weights;
  for (const auto& p : whole->named_parameters()) {
    weights[p.key()] = p.value().detach().index_select(0, index);
  }
  bank->add_experts({2, 0}, weights);
  CHECK(bank->expert_ids() == std::vector<int64_t>{0, 1, 2, 3});
  CHECK(bank->holds_all());
  CHECK(bank->w1.unsafeGetTensorImpl() == w1_identity);  // the same parameter, regrown
  CHECK_FALSE(bank->w1.grad().defined());
  for (const auto& p : whole->named_parameters()) {
    CHECK(torch::equal(bank->named_parameters()[p.key()], p.value()));
  }
  CHECK(torch::equal(bank->forward(rows, {1, 1, 1, 1}), whole->forward(rows, {1, 1, 1, 1})));

  SECTION("bad additions are refused, naming the problem") {
    ExpertBank part(ExpertBankOptions(4, 6, 10));
    part->keep_experts({1});
    auto one = weights;
    for (auto& [name, w] : one) {
      w = w.narrow(0, 0, 1).contiguous();
    }
    REQUIRE_THROWS_WITH(part->add_experts({1}, one),
                        Catch::Contains("the bank already holds expert 1"));
    REQUIRE_THROWS_WITH(part->add_experts({4}, one), Catch::Contains("expert 4 is outside [0, 4)"));
    REQUIRE_THROWS_WITH(part->add_experts({0, 0}, weights),
                        Catch::Contains("expert 0 is named twice"));
    REQUIRE_THROWS_WITH(
        part->add_experts({0, 2}, one),
        Catch::Contains("'w1' of 2 experts should be [2, 6, 10], found [1, 6, 10]"));
    auto missing = one;
    missing.erase("w2");
    REQUIRE_THROWS_WITH(part->add_experts({0}, missing),
                        Catch::Contains("no weights for parameter 'w2'"));
    auto extra = one;
    extra["w3"] = one["w1"];
    REQUIRE_THROWS_WITH(part->add_experts({0}, extra),
                        Catch::Contains("the bank has no parameter 'w3'"));
    auto doubles = one;
    doubles["w1"] = doubles["w1"].to(torch::kDouble);
    REQUIRE_THROWS_WITH(part->add_experts({0}, doubles), Catch::Contains("'w1' is double"));
    CHECK(part->expert_ids() == std::vector<int64_t>{1});  // nothing changed
    part->merge_experts({{1}});
    REQUIRE_THROWS_WITH(part->add_experts({0}, one), Catch::Contains("merged"));
  }
}

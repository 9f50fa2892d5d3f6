#include <moeprune/compression/expert_alignment.h>
#include <moeprune/compression/linear_assignment.h>
#include <moeprune/compression/merging.h>
#include <moeprune/layers/moe_layer.h>
#include <moeprune/train/trainer.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <string>

#include "compression_helpers.h"
#include "layer_variants.h"

namespace cm = moeprune::compression;
using moeprune::ExpertBank;
using moeprune::ExpertBankOptions;
using moeprune::VisionTransformer;

namespace {

// Every permutation, for a brute-force reference.
double best_by_enumeration(const torch::Tensor& cost, bool maximize) {
  const int64_t n = cost.size(0);
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  double best = maximize ? -1e300 : 1e300;
  do {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += cost[i][p[i]].item<double>();
    best = maximize ? std::max(best, s) : std::min(best, s);
  } while (std::next_permutation(p.begin(), p.end()));
  return best;
}

double total(const torch::Tensor& cost, const std::vector<int64_t>& p) {
  double s = 0;
  for (size_t i = 0; i < p.size(); ++i) s += cost[static_cast<int64_t>(i)][p[i]].item<double>();
  return s;
}

std::vector<int64_t> inverse(const std::vector<int64_t>& p) {
  std::vector<int64_t> inv(p.size());
  for (size_t i = 0; i < p.size(); ++i) inv[static_cast<size_t>(p[i])] = static_cast<int64_t>(i);
  return inv;
}

// Expert `to` of the bank becomes expert `from` with its hidden neurons shuffled by `shuffle`
// (neuron i of `to` is neuron shuffle[i] of `from`).
void shuffled_copy(ExpertBank& bank, int64_t from, int64_t to,
                   const std::vector<int64_t>& shuffle) {
  torch::NoGradGuard no_grad;
  const auto idx = torch::tensor(shuffle, torch::kLong);
  bank->w1[to].copy_(bank->w1[from].index_select(1, idx));
  bank->w2[to].copy_(bank->w2[from].index_select(0, idx));
  if (bank->b1.defined()) {
    bank->b1[to].copy_(bank->b1[from].index_select(0, idx));
    bank->b2[to].copy_(bank->b2[from]);
  }
  if (bank->w3.defined()) {
    bank->w3[to].copy_(bank->w3[from].index_select(1, idx));
  }
}

std::vector<int64_t> random_permutation(int64_t n, uint64_t seed) {
  auto g = at::detail::createCPUGenerator(seed);
  const auto p = torch::randperm(n, g, torch::kLong);
  return {p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + n};
}

cm::ExpertUsage usage_of(int64_t block, std::vector<double> frequency, torch::Tensor logits = {}) {
  cm::ExpertUsage u;
  u.frequency[block] = torch::tensor(frequency, torch::kDouble);
  if (logits.defined()) u.router_logits[block] = logits;
  return u;
}

}  // namespace

TEST_CASE("linear_assignment solves a hand case and agrees with enumeration") {
  // Rows pick columns 1, 0, 2 for a minimum of 1 + 2 + 2 = 5.
  const auto cost = torch::tensor({{4.0, 1.0, 3.0}, {2.0, 0.0, 5.0}, {3.0, 2.0, 2.0}});
  CHECK(cm::linear_assignment(cost) == std::vector<int64_t>{1, 0, 2});
  // Maximum: 4 + 5 + 2 = 11 (columns 0, 2, 1).
  CHECK(cm::linear_assignment(cost, /*maximize=*/true) == std::vector<int64_t>{0, 2, 1});
  for (uint64_t seed = 0; seed < 5; ++seed) {
    torch::manual_seed(seed);
    const auto c = torch::randn({6, 6}, torch::kDouble);
    for (const bool maximize : {false, true}) {
      const auto p = cm::linear_assignment(c, maximize);
      auto sorted = p;
      std::sort(sorted.begin(), sorted.end());
      CHECK(sorted == std::vector<int64_t>{0, 1, 2, 3, 4, 5});
      CHECK(total(c, p) == Approx(best_by_enumeration(c, maximize)).epsilon(1e-12));
    }
  }
  CHECK(cm::linear_assignment(torch::zeros({0, 0})).empty());
  CHECK_THROWS_WITH(cm::linear_assignment(torch::zeros({2, 3})),
                    Catch::Contains("square [n, n] matrix"));
  CHECK_THROWS_WITH(
      cm::linear_assignment(torch::tensor({1.0, std::nan(""), 0.0, 1.0}).view({2, 2})),
      Catch::Contains("non-finite"));
}

TEST_CASE("alignment recovers a permutation of an expert's neurons exactly") {
  for (const auto kind : {moeprune::ExpertKind::kMlp, moeprune::ExpertKind::kGated}) {
    INFO((kind == moeprune::ExpertKind::kMlp ? "MLP" : "SwiGLU"));
    torch::manual_seed(3);
    ExpertBank bank(ExpertBankOptions(3, 8, 32).kind(kind));
    const auto shuffle = random_permutation(32, 11);
    shuffled_copy(bank, 0, 2, shuffle);
    const auto p = cm::neuron_alignment(bank, 0, 2);
    CHECK(p == inverse(shuffle));
    cm::permute_neurons(bank, 2, p);
    CHECK(torch::equal(bank->w1[2], bank->w1[0]));
    CHECK(torch::equal(bank->w2[2], bank->w2[0]));
    if (kind == moeprune::ExpertKind::kGated) {
      CHECK(torch::equal(bank->w3[2], bank->w3[0]));
    } else {
      CHECK(torch::equal(bank->b1[2], bank->b1[0]));
    }
  }
}

TEST_CASE("permuting an expert's neurons leaves its outputs unchanged") {
  for (const auto kind : {moeprune::ExpertKind::kMlp, moeprune::ExpertKind::kGated}) {
    torch::manual_seed(4);
    ExpertBank bank(ExpertBankOptions(2, 8, 16).kind(kind).activation(
        kind == moeprune::ExpertKind::kGated ? moeprune::ExpertActivation::kSilu
                                             : moeprune::ExpertActivation::kGeluTanh));
    const auto rows = torch::randn({10, 8});
    torch::NoGradGuard no_grad;
    const auto before = bank->forward(rows, {4, 6});
    cm::permute_neurons(bank, 1, random_permutation(16, 5));
    cm::align_experts(bank, 0, {1});
    CHECK(torch::allclose(bank->forward(rows, {4, 6}), before, 1e-5, 1e-6));
  }
  ExpertBank bank(ExpertBankOptions(2, 4, 3));
  CHECK_THROWS_WITH(cm::permute_neurons(bank, 1, {0, 0, 1}), Catch::Contains("not a permutation"));
  CHECK_THROWS_WITH(cm::permute_neurons(bank, 1, {0, 1}), Catch::Contains("2 indices for 3"));
  CHECK_THROWS_WITH(cm::neuron_alignment(bank, 0, 5),
                    Catch::Contains("expert 5 is not in the bank"));
}

TEST_CASE("grouping picks the most used experts and joins the others by router-logit cosine") {
  torch::manual_seed(0);
  VisionTransformer m(test::tiny_vit());
  // Logit columns: experts 0, 3, 6 follow direction a; 1, 2, 4, 5, 7 follow b (orthogonal).
  const auto a = torch::tensor({1.0f, 0.0f, 1.0f, 0.0f}),
             b = torch::tensor({0.0f, 1.0f, 0.0f, 1.0f});
  auto logits = torch::zeros({4, 8});
  for (int64_t e = 0; e < 8; ++e) {
    // Powers of two keep the normalised columns exactly equal within a direction.
    logits.select(1, e).copy_((e % 3 == 0 ? a : b) * static_cast<float>(1 << (e % 4)));
  }
  const auto usage = usage_of(1, {0.05, 0.10, 0.30, 0.04, 0.20, 0.06, 0.15, 0.10}, logits);
  // Two groups: dominants 2 (0.30) and 4 (0.20) both lie on b, so every expert has cosine 1 (b)
  // or 0 (a) with both, and ties go to the first dominant.
  auto groups = cm::group_experts(*test::view(m), usage, {{1, 2}});
  CHECK(groups.at(1) == std::vector<std::vector<int64_t>>{{2, 0, 1, 3, 5, 6, 7}, {4}});
  // Three groups: dominants 2, 4, 6; the a-experts 0 and 3 join 6, the b-experts join 2.
  groups = cm::group_experts(*test::view(m), usage, {{1, 3}});
  CHECK(groups.at(1) == std::vector<std::vector<int64_t>>{{2, 1, 5, 7}, {4}, {6, 0, 3}});
  // Equal frequencies go to the lower id.
  groups = cm::group_experts(*test::view(m), usage_of(1, std::vector<double>(8, 0.125), logits),
                             {{1, 2}});
  CHECK(groups.at(1).at(0).front() == 0);
  CHECK(groups.at(1).at(1).front() == 1);
  CHECK_THROWS_WITH(cm::group_experts(*test::view(m), usage, {{1, 9}}),
                    Catch::Contains("cannot make 9 groups"));
  CHECK_THROWS_WITH(cm::group_experts(*test::view(m), usage, {{0, 2}}),
                    Catch::Contains("no MoE layer keyed 0"));
  CHECK_THROWS_WITH(cm::group_experts(*test::view(m), cm::ExpertUsage{}, {{1, 2}}),
                    Catch::Contains("no usage frequencies for MoE layer 1"));
}

TEST_CASE("weight similarity groups an aligned copy with its original") {
  torch::manual_seed(2);
  VisionTransformer m(test::tiny_vit());
  auto bank = m->blocks[1]->moe->experts();
  shuffled_copy(bank, 3, 6, random_permutation(24, 1));
  // Frequencies make 3 and 5 dominant; 6 is 3 with its neurons shuffled, which grouping aligns
  // before comparing (cosine 1).
  const auto usage = usage_of(1, {0.1, 0.1, 0.1, 0.3, 0.05, 0.2, 0.1, 0.05});
  const auto groups =
      cm::group_experts(*test::view(m), usage, {{1, 2}}, cm::MergeSimilarity::kWeights);
  const auto& g = groups.at(1);
  CHECK(g.at(0).front() == 3);
  CHECK(std::find(g.at(0).begin(), g.at(0).end(), 6) != g.at(0).end());
}

TEST_CASE("a global group budget goes to the most used experts across layers") {
  torch::manual_seed(0);
  VisionTransformer m(test::tiny_vit(4, {1, 3}));
  cm::ExpertUsage usage;
  usage.frequency[1] =
      torch::tensor({0.40, 0.30, 0.10, 0.05, 0.05, 0.04, 0.03, 0.03}, torch::kDouble);
  usage.frequency[3] =
      torch::tensor({0.13, 0.13, 0.12, 0.12, 0.13, 0.12, 0.13, 0.12}, torch::kDouble);
  // 4 groups: each layer's top expert is forced (block 1's 0.40, block 3's first 0.13), then the
  // highest others: block 1's 0.30 and a 0.13 of block 3.
  const auto counts = cm::global_group_counts(*test::view(m), usage, 4);
  CHECK(counts == std::map<int64_t, int64_t>{{1, 2}, {3, 2}});
  // 3 groups: block 1's 0.40 and block 3's top are forced; the third is block 1's 0.30.
  CHECK(cm::global_group_counts(*test::view(m), usage, 3) ==
        std::map<int64_t, int64_t>{{1, 2}, {3, 1}});
  // 2 groups: one per layer, even though block 3's experts are used less than block 1's second.
  CHECK(cm::global_group_counts(*test::view(m), usage, 2) ==
        std::map<int64_t, int64_t>{{1, 1}, {3, 1}});
  CHECK_THROWS_WITH(cm::global_group_counts(*test::view(m), usage, 1),
                    Catch::Contains("between 2 and 16"));
  CHECK_THROWS_WITH(cm::global_group_counts(*test::view(m), usage, 17),
                    Catch::Contains("between 2 and 16"));
}

TEST_CASE("two identical experts merge to that same expert and the outputs do not change") {
  torch::manual_seed(5);
  VisionTransformer m(test::tiny_vit());
  auto bank = m->blocks[1]->moe->experts();
  {
    torch::NoGradGuard no_grad;
    for (auto& p : bank->parameters(false)) p[5].copy_(p[2]);
  }
  const auto expert2 = bank->w1[2].clone();
  const auto x = torch::randn({4, 1, 28, 28});
  const auto before = test::eval_logits(m, x);
  const auto params_before = test::parameter_count(m);
  std::vector<std::vector<int64_t>> groups = {{0}, {1}, {2, 5}, {3}, {4}, {6}, {7}};
  cm::merge_experts(*test::view(m), {{1, groups}},
                    usage_of(1, {0.1, 0.1, 0.3, 0.1, 0.1, 0.1, 0.1, 0.1}));
  CHECK(bank->num_held() == 7);
  CHECK(bank->expert_groups().at(2) == std::vector<int64_t>{2, 5});
  CHECK(torch::allclose(bank->w1[2], expert2, 0, 1e-7));
  CHECK(torch::allclose(test::eval_logits(m, x), before, 1e-5, 1e-6));
  // One expert's parameters are gone.
  const int64_t per_expert = 16 * 24 + 24 + 24 * 16 + 16;
  CHECK(test::parameter_count(m) == params_before - per_expert);
}

TEST_CASE("merging aligns a permuted copy before averaging") {
  const auto build = [] {
    torch::manual_seed(6);
    VisionTransformer m(test::tiny_vit());
    shuffled_copy(m->blocks[1]->moe->experts(), 1, 4, random_permutation(24, 9));
    return m;
  };
  auto aligned = build(), unaligned = build();
  const auto original = aligned->blocks[1]->moe->experts()->w1[1].clone();
  const auto usage = usage_of(1, {0.1, 0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1});
  const cm::MergeGroups groups = {{1, {{1, 4}, {0}, {2}, {3}, {5}, {6}, {7}}}};
  cm::merge_experts(*test::view(aligned), groups, usage, /*align=*/true);
  cm::merge_experts(*test::view(unaligned), groups, usage, /*align=*/false);
  // Bank order follows the groups: the merged expert is bank expert 0.
  CHECK(torch::allclose(aligned->blocks[1]->moe->experts()->w1[0], original, 0, 1e-6));
  CHECK_FALSE(torch::allclose(unaligned->blocks[1]->moe->experts()->w1[0], original, 0, 1e-3));
}

TEST_CASE("the merge is the frequency-weighted average of the members") {
  torch::manual_seed(8);
  VisionTransformer m(test::tiny_vit());
  auto bank = m->blocks[1]->moe->experts();
  std::map<std::string, torch::Tensor> before;
  for (const auto& p : bank->named_parameters(false)) before[p.key()] = p.value().clone();
  // Frequencies 0.3 / 0.1 for experts 0 / 3: weights 3/4 and 1/4; experts 6 and 7 were never
  // used, so their group averages them uniformly.
  const auto usage = usage_of(1, {0.3, 0.2, 0.2, 0.1, 0.1, 0.1, 0.0, 0.0});
  cm::merge_experts(*test::view(m), {{1, {{0, 3}, {1}, {2}, {4, 5}, {6, 7}}}}, usage,
                    /*align=*/false);
  REQUIRE(bank->num_held() == 5);
  for (const auto& p : bank->named_parameters(false)) {
    INFO(p.key());
    const auto& w = before.at(p.key());
    CHECK(torch::allclose(p.value()[0], 0.75 * w[0] + 0.25 * w[3], 1e-6, 1e-7));
    CHECK(torch::equal(p.value()[1], w[1]));
    CHECK(torch::allclose(p.value()[3], 0.5 * w[4] + 0.5 * w[5], 1e-6, 1e-7));
    CHECK(torch::allclose(p.value()[4], 0.5 * w[6] + 0.5 * w[7], 1e-6, 1e-7));
  }
}

TEST_CASE("a merged layer sends every slot to its group's expert with the slot's own gate") {
  torch::manual_seed(9);
  auto options = moeprune::MoELayerOptions::preset("vmoe", 8, 12, 4);
  options.routing().capacity_factor(8.0);  // no slot dropped
  moeprune::MoELayer layer(options);
  layer->eval();
  const auto tokens = torch::randn({20, 8});
  torch::NoGradGuard no_grad;
  const auto plan = layer->forward(tokens).plan;  // the unmerged routing
  // Reference experts: the frequency-free average of groups {0, 2} and {1, 3}.
  auto bank = layer->experts();
  std::vector<torch::Tensor> w1, b1, w2, b2;
  for (const auto& g : std::vector<std::vector<int64_t>>{{0, 2}, {1, 3}}) {
    w1.push_back((bank->w1[g[0]] + bank->w1[g[1]]) / 2);
    b1.push_back((bank->b1[g[0]] + bank->b1[g[1]]) / 2);
    w2.push_back((bank->w2[g[0]] + bank->w2[g[1]]) / 2);
    b2.push_back((bank->b2[g[0]] + bank->b2[g[1]]) / 2);
  }
  layer->merge_experts({{0, 2}, {1, 3}});
  for (int64_t g = 0; g < 2; ++g) {
    bank->w1[g].copy_(w1[g]);
    bank->b1[g].copy_(b1[g]);
    bank->w2[g].copy_(w2[g]);
    bank->b2[g].copy_(b2[g]);
  }
  const auto out = layer->forward(tokens);
  CHECK(torch::equal(out.plan.expert_index, plan.expert_index));
  const int64_t group_of[] = {0, 1, 0, 1};
  for (int64_t t = 0; t < 20; ++t) {
    auto expected = torch::zeros({8});
    for (int64_t j = 0; j < 2; ++j) {
      const int64_t g = group_of[plan.expert_index[t][j].item<int64_t>()];
      const auto h = torch::gelu(tokens[t].unsqueeze(0).mm(w1[g]) + b1[g], "tanh");
      expected += plan.combine_weight[t][j] * (h.mm(w2[g]) + b2[g]).squeeze(0);
    }
    INFO("token " << t);
    CHECK(torch::allclose(out.output[t], expected, 1e-5, 1e-6));
  }
}

TEST_CASE("a merged group-limited layer routes as before, across groups and with its bias") {
  // DeepSeek-V3's gate: 8 experts in 2 routing groups of 4, one group per token, sigmoid scores
  // with a non-zero correction bias. Merging keeps the router's 8 columns and its bias, so every
  // member still belongs to its own routing group and is chosen exactly as before, even when its
  // merge partners sit in the other group ({0, 4}, {1, 2, 7}); only the weights are shared. The
  // reference is an unmerged layer whose members each hold their group's weights.
  const std::string variant = "group_limited_sigmoid+groups";
  const int64_t d = 16, F = 24, E = 8;
  torch::manual_seed(3);
  moeprune::MoELayer merged(test::layer_options(variant, d, F, E));
  moeprune::MoELayer reference(test::layer_options(variant, d, F, E));
  test::init_variant(merged, variant);
  torch::NoGradGuard no_grad;
  {
    auto to = reference->named_parameters();
    for (const auto& p : merged->named_parameters()) {
      to[p.key()].copy_(p.value());
    }
    auto buffers = reference->named_buffers();
    for (const auto& b : merged->named_buffers()) {
      buffers[b.key()].copy_(b.value());
    }
  }
  merged->eval();
  reference->eval();
  const auto tokens = torch::randn({64, d});
  const auto before = merged->forward(tokens).plan;
  const auto bias = merged->named_buffers()["router.e_score_correction_bias"].clone();

  const std::vector<std::vector<int64_t>> groups = {{0, 4}, {1, 2, 7}, {3}, {5, 6}};
  std::map<std::string, std::vector<torch::Tensor>> means;
  auto to = reference->experts()->named_parameters();
  for (const auto& p : merged->experts()->named_parameters()) {
    REQUIRE(p.value().size(0) == E);
    for (const auto& g : groups) {
      const auto mean = p.value().index_select(0, torch::tensor(g)).mean(0);
      means[p.key()].push_back(mean);
      for (const int64_t member : g) {
        to[p.key()][member].copy_(mean);
      }
    }
  }
  merged->merge_experts(groups);
  for (const auto& p : merged->experts()->named_parameters()) {
    REQUIRE(p.value().size(0) == static_cast<int64_t>(groups.size()));
    for (size_t g = 0; g < groups.size(); ++g) {
      p.value()[static_cast<int64_t>(g)].copy_(means[p.key()][g]);
    }
  }
  const auto out = merged->forward(tokens);
  CHECK(torch::equal(out.plan.expert_index, before.expert_index));
  CHECK(torch::equal(out.plan.combine_weight, before.combine_weight));
  CHECK(torch::equal(merged->named_buffers()["router.e_score_correction_bias"], bias));
  CHECK(torch::allclose(out.output, reference->forward(tokens).output, 1e-5, 1e-6));
  // The case is what it claims: each token's experts lie in one routing group of 4, and both
  // members of the cross-group merge {0, 4} are chosen by some token.
  const auto routing_group = before.expert_index.div(4, "floor");
  CHECK(torch::equal(routing_group.amin(1), routing_group.amax(1)));
  CHECK(before.expert_index.eq(0).any().item<bool>());
  CHECK(before.expert_index.eq(4).any().item<bool>());
}

TEST_CASE("a merged model trains with frozen routers and its checkpoint reloads") {
  torch::manual_seed(10);
  VisionTransformer m(test::tiny_vit());
  const auto images = torch::randn({6, 1, 28, 28});
  auto usage = cm::collect_expert_usage(*test::view(m, test::one_batch(images)));
  CHECK(usage.frequency.at(1).sum().item<double>() == Approx(1.0));
  CHECK(usage.router_logits.at(1).sizes() == torch::IntArrayRef({6 * 50, 8}));
  cm::merge_experts(
      *test::view(m),
      cm::group_experts(*test::view(m), usage, cm::same_group_count(*test::view(m), 3)), usage);
  CHECK(m->blocks[1]->moe->experts()->num_held() == 3);

  m->set_routers_trainable(false);
  const auto router = m->blocks[1]->moe->router().router_weight().clone();
  const auto experts = m->blocks[1]->moe->experts()->w1.clone();
  moeprune::data::ImageDataset d;
  d.images = torch::randint(0, 255, {32, 1, 28, 28}, torch::kLong).to(torch::kUInt8);
  d.labels = torch::randint(0, 4, {32}, torch::kLong);
  d.num_classes = 4;
  moeprune::Trainer(m, moeprune::TrainerOptions().epochs(2).batch_size(16).progress(false)).fit(d);
  CHECK(torch::equal(m->blocks[1]->moe->router().router_weight(), router));
  CHECK_FALSE(torch::equal(m->blocks[1]->moe->experts()->w1, experts));

  auto loaded = test::round_trip(m, "merged");
  CHECK(loaded->blocks[1]->moe->experts()->expert_groups() ==
        m->blocks[1]->moe->experts()->expert_groups());
  CHECK(torch::equal(test::eval_logits(loaded, images), test::eval_logits(m, images)));
}

TEST_CASE("bad merges are refused before any weight changes") {
  torch::manual_seed(11);
  VisionTransformer m(test::tiny_vit());
  const auto usage = usage_of(1, std::vector<double>(8, 0.125));
  const auto w1 = m->blocks[1]->moe->experts()->w1.clone();
  CHECK_THROWS_WITH(cm::merge_experts(*test::view(m), {{1, {{0, 1}, {1, 2}}}}, usage),
                    Catch::Contains("names expert 1 in two groups"));
  CHECK_THROWS_WITH(cm::merge_experts(*test::view(m), {{1, {{0, 9}}}}, usage),
                    Catch::Contains("does not hold expert 9"));
  CHECK_THROWS_WITH(cm::merge_experts(*test::view(m), {{1, {{0}, {}}}}, usage),
                    Catch::Contains("empty group"));
  CHECK_THROWS_WITH(cm::merge_experts(*test::view(m), {{1, {{0, 1}, {2, 3}}}}, usage),
                    Catch::Contains("leave out expert(s) 4, 5, 6, 7"));
  CHECK(torch::equal(m->blocks[1]->moe->experts()->w1, w1));
  cm::merge_experts(*test::view(m), {{1, {{0, 1, 2, 3}, {4, 5, 6, 7}}}}, usage);
  CHECK_THROWS_WITH(cm::merge_experts(*test::view(m), {{1, {{0}}}}, usage),
                    Catch::Contains("already merged"));
  CHECK_THROWS_WITH(m->keep_experts(1, {0}), Catch::Contains("merged"));

  // Two blocks: the second one's bad groups leave the first one unmerged.
  VisionTransformer two(test::tiny_vit(4, {1, 3}));
  cm::ExpertUsage both;
  both.frequency[1] = both.frequency[3] = torch::full({8}, 0.125, torch::kDouble);
  const auto w1_block1 = two->blocks[1]->moe->experts()->w1.clone();
  CHECK_THROWS_WITH(
      cm::merge_experts(*test::view(two),
                        {{1, {{0, 1, 2, 3}, {4, 5, 6, 7}}}, {3, {{0, 1, 2, 3, 4, 5, 6}}}}, both),
      Catch::Contains("layer 3's groups leave out expert(s) 7"));
  CHECK_FALSE(two->blocks[1]->moe->experts()->is_merged());
  CHECK(torch::equal(two->blocks[1]->moe->experts()->w1, w1_block1));

  VisionTransformer e3(test::tiny_vit(2, {1}, "small_e3moe"));
  CHECK_THROWS_WITH(cm::group_experts(*test::view(e3), usage, {{1, 2}}),
                    Catch::Contains("E3-MoE ensemble"));
}

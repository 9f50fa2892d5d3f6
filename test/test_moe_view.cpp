// The compression core on layers that come from no model: the Mixtral fixture's MoE layers, read
// from the checkpoint into a LayerMapView, merged (M-SMoE) and factorised (MC-SMoE), checked
// against routing, averaging and expert functions written out by hand here.
#include <moeprune/compression/low_rank.h>
#include <moeprune/compression/merging.h>
#include <moeprune/hf/checkpoint.h>
#include <moeprune/layers/moe_view.h>
#include <moeprune/pruning/builtin_criteria.h>
#include <moeprune/pruning/pruning_plan.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <map>
#include <vector>

namespace cm = moeprune::compression;
namespace hf = moeprune::hf;
namespace pr = moeprune::pruning;
using Catch::Matchers::Contains;

namespace {

const std::string kMixtral = MOEPRUNE_TEST_FIXTURES "/hf/mixtral_ft";

struct Expert {  // one SwiGLU expert, weights [in, out] as the bank stores them
  torch::Tensor w1, w2, w3;
};

Expert expert_of(const moeprune::MoELayer& layer, int64_t local) {
  const auto& bank = layer->experts();
  return {bank->w1[local].detach().to(torch::kDouble).clone(),
          bank->w2[local].detach().to(torch::kDouble).clone(),
          bank->w3[local].detach().to(torch::kDouble).clone()};
}

// Mixtral's expert: w2(silu(x w1) * (x w3)).
torch::Tensor run_expert(const Expert& e, const torch::Tensor& x) {
  return torch::silu(x.mm(e.w1)).mul(x.mm(e.w3)).mm(e.w2);
}

// Mixtral's routing written out: softmax over all E, the top 2, weights renormalised.
struct Choice {
  std::vector<std::pair<int64_t, double>> slots;  // (expert, weight)
};
std::vector<Choice> route_by_hand(const torch::Tensor& router, const torch::Tensor& x) {
  const auto probs = x.mm(router.t()).softmax(-1);
  std::vector<Choice> out;
  for (int64_t t = 0; t < x.size(0); ++t) {
    const auto [values, index] = probs[t].topk(2);
    const double sum = values.sum().item<double>();
    out.push_back({{{index[0].item<int64_t>(), values[0].item<double>() / sum},
                    {index[1].item<int64_t>(), values[1].item<double>() / sum}}});
  }
  return out;
}

// The layer's output with each original expert id served by `serve[id]`.
torch::Tensor layer_by_hand(const torch::Tensor& router, const std::map<int64_t, Expert>& serve,
                            const torch::Tensor& x) {
  auto y = torch::zeros_like(x);
  const auto choices = route_by_hand(router, x);
  for (int64_t t = 0; t < x.size(0); ++t) {
    for (const auto& [expert, weight] : choices[static_cast<size_t>(t)].slots) {
      y[t] += weight * run_expert(serve.at(expert), x.narrow(0, t, 1))[0];
    }
  }
  return y;
}

}  // namespace

TEST_CASE("M-SMoE merging and MC-SMoE factorising run on Hugging Face layers through the view") {
  auto model = hf::load_moe_model(kMixtral);
  REQUIRE(model.layers.size() >= 1);
  const int64_t d = model.info.d_model;
  const int64_t E = model.info.num_experts;
  REQUIRE(E == 6);
  torch::manual_seed(3);
  std::map<int64_t, torch::Tensor> inputs;
  for (const auto& [key, layer] : model.layers) {
    inputs[key] = torch::randn({40, d});
  }
  const auto view = moeprune::LayerMapView::of(model.layers, [&](const auto& visit) {
    for (const auto& [key, x] : inputs) {
      visit(key, x);
    }
  });
  const int64_t key = model.layers.begin()->first;
  auto layer = model.layers.at(key);
  const auto x = inputs.at(key).to(torch::kDouble);
  const auto router = layer->router().router_weight().detach().to(torch::kDouble);
  std::map<int64_t, Expert> original;
  for (int64_t e = 0; e < E; ++e) {
    original[e] = expert_of(layer, e);
  }

  // Usage: the share of the 2 x 40 routing choices that went to each expert, counted by hand.
  const auto usage = cm::collect_expert_usage(*view);
  std::vector<double> counted(static_cast<size_t>(E), 0.0);
  for (const auto& choice : route_by_hand(router, x)) {
    for (const auto& [expert, weight] : choice.slots) {
      counted[static_cast<size_t>(expert)] += 1.0 / 80.0;
    }
  }
  const auto frequency = usage.frequency.at(key);
  for (int64_t e = 0; e < E; ++e) {
    CHECK(frequency[e].item<double>() == Approx(counted[static_cast<size_t>(e)]));
  }

  // Merge {0, 3}, {1, 2, 5}, {4} without neuron alignment: each merged expert is the
  // frequency-weighted mean of its members' weights, and serves all of them.
  const std::vector<std::vector<int64_t>> groups = {{0, 3}, {1, 2, 5}, {4}};
  cm::merge_experts(*view, {{key, groups}}, usage, /*align=*/false);
  REQUIRE(layer->experts()->num_held() == 3);
  CHECK(layer->state().bank.groups == groups);
  std::map<int64_t, Expert> serve;
  for (const auto& g : groups) {
    double total = 0;
    for (const auto e : g) {
      total += counted[static_cast<size_t>(e)];
    }
    Expert merged{torch::zeros_like(original[0].w1), torch::zeros_like(original[0].w2),
                  torch::zeros_like(original[0].w3)};
    for (const auto e : g) {
      const double f =
          total > 0 ? counted[static_cast<size_t>(e)] / total : 1.0 / static_cast<double>(g.size());
      merged.w1 += f * original[e].w1;
      merged.w2 += f * original[e].w2;
      merged.w3 += f * original[e].w3;
    }
    for (const auto e : g) {
      serve[e] = merged;
    }
  }
  const auto want = layer_by_hand(router, serve, x);
  torch::NoGradGuard no_grad;
  layer->eval();
  const auto merged_out = layer->forward(inputs.at(key)).output.to(torch::kDouble);
  CHECK(torch::allclose(merged_out, want, 1e-4, 1e-5));

  // Factorise at rank 2: W = L R + S with L R the best rank-2 part (the SVD's), so the layer
  // computes the same function, and L R has rank 2.
  cm::factorize_experts(*view, 2, {key});
  const auto& bank = layer->experts();
  CHECK(layer->state().bank.rank == 2);
  for (int64_t local = 0; local < 3; ++local) {
    const auto low =
        bank->w1_left[local].to(torch::kDouble).mm(bank->w1_right[local].to(torch::kDouble));
    const auto sparse = bank->w1[local].to(torch::kDouble);
    const auto whole = serve.at(groups[static_cast<size_t>(local)].front()).w1;
    CHECK(torch::allclose(low + sparse, whole, 1e-4, 1e-5));
    CHECK(torch::linalg_matrix_rank(low).item<int64_t>() == 2);
    // The low-rank part is the truncated SVD of W (Eckart-Young), by hand.
    const auto [u, s, vh] = torch::linalg_svd(whole, false);
    const auto best = u.narrow(1, 0, 2).mm(torch::diag(s.narrow(0, 0, 2))).mm(vh.narrow(0, 0, 2));
    CHECK(torch::allclose(low, best, 1e-4, 1e-5));
  }
  const auto factorised_out = layer->forward(inputs.at(key)).output.to(torch::kDouble);
  CHECK(torch::allclose(factorised_out, want, 1e-4, 1e-5));

  // The other layers were not touched.
  for (const auto& [other, l] : model.layers) {
    if (other != key) {
      CHECK(l->state().is_plain());
    }
  }
}

TEST_CASE("criteria and plans run on a map of Hugging Face layers") {
  auto model = hf::load_moe_model(kMixtral);
  torch::manual_seed(4);
  std::map<int64_t, torch::Tensor> inputs;
  for (const auto& [key, layer] : model.layers) {
    inputs[key] = torch::randn({30, model.info.d_model});
  }
  const auto view = moeprune::LayerMapView::of(model.layers, [&](const auto& visit) {
    for (const auto& [key, x] : inputs) {
      visit(key, x);
    }
  });
  // Frequency by hand: top-2 choices of each token.
  const auto scores = pr::score_experts(pr::Frequency(), *view);
  for (const auto& [key, layer] : model.layers) {
    const auto router = layer->router().router_weight().detach().to(torch::kDouble);
    std::vector<double> counted(static_cast<size_t>(model.info.num_experts), 0.0);
    for (const auto& choice : route_by_hand(router, inputs.at(key).to(torch::kDouble))) {
      for (const auto& [expert, weight] : choice.slots) {
        counted[static_cast<size_t>(expert)] += 1.0;
      }
    }
    for (size_t e = 0; e < counted.size(); ++e) {
      CHECK(scores.at(key)[static_cast<int64_t>(e)].item<double>() == counted[e]);
    }
  }
  // A global budget with a per-layer floor: never below max(floor, k) experts.
  const auto plan = pr::PruningPlan::global_budget(scores, *view, 4, /*floor=*/4);
  for (const auto& lp : plan.layers) {
    CHECK(lp.num_experts - static_cast<int64_t>(lp.pruned.size()) >= 4);
  }
  CHECK(plan.total_pruned() == 4);
  pr::apply_plan(*view, plan);
  for (const auto& lp : plan.layers) {
    CHECK(model.layers.at(lp.key)->experts()->num_held() ==
          model.info.num_experts - static_cast<int64_t>(lp.pruned.size()));
  }
  CHECK_THROWS_WITH(pr::apply_plan(*view, plan), Contains("already pruned"));
  // Tokens for a layer the view does not have are refused by name.
  const auto bad = moeprune::LayerMapView::of(
      model.layers, [&](const auto& visit) { visit(99, inputs.begin()->second); });
  CHECK_THROWS_WITH(pr::score_experts(pr::Frequency(), *bad), Contains("MoE layer 99"));
}

// MoE layers against loop references computed here from the layer's parameters: expert choice,
// E3-MoE, V-MoE after Expert Drop of router columns, and every floating dtype against fp64.
#include "test_helpers.h"

#include <moeprune/layers/moe_layer.h>

using moeprune::MoELayer;
using moeprune::MoELayerOptions;

namespace {

// Expert `e` of the bank (bank order) applied to rows x, in fp64 from the parameters.
torch::Tensor reference_expert(MoELayer& layer, int64_t e, const torch::Tensor& x) {
  auto& bank = layer->experts();
  const auto w = [&](const torch::Tensor& p) { return p[e].to(torch::kDouble); };
  const auto x64 = x.to(torch::kDouble);
  if (bank->options.kind() == moeprune::ExpertKind::kGated) {
    return (torch::silu(x64.matmul(w(bank->w1))) * x64.matmul(w(bank->w3))).matmul(w(bank->w2));
  }
  auto h = x64.matmul(w(bank->w1));
  if (bank->b1.defined()) {
    h = h + w(bank->b1);
  }
  const auto act = bank->options.activation();
  h = act == moeprune::ExpertActivation::kRelu       ? torch::relu(h)
      : act == moeprune::ExpertActivation::kGeluTanh ? torch::gelu(h, "tanh")
                                                     : torch::gelu(h);
  h = h.matmul(w(bank->w2));
  return bank->b2.defined() ? h + w(bank->b2) : h;
}

// The layer output token by token: sum over kept slots of weight x expert(token), in fp64.
torch::Tensor reference_output(MoELayer& layer, const torch::Tensor& x, const naive::Routing& ref) {
  auto out = torch::zeros(x.sizes(), x.options().dtype(torch::kDouble));
  for (size_t t = 0; t < ref.slots.size(); ++t) {
    for (const auto& s : ref.slots[t]) {
      if (s.kept) {
        out[t] += s.weight * reference_expert(layer, s.expert, x[t].unsqueeze(0)).squeeze(0);
      }
    }
  }
  return out;
}

// Router probabilities in fp64 from the router weight (the library computes them in fp32).
torch::Tensor reference_probs(MoELayer& layer, const torch::Tensor& x) {
  return x.to(torch::kDouble)
      .matmul(layer->router().router_weight().to(torch::kDouble).t())
      .softmax(-1);
}

double max_error(const torch::Tensor& got, const torch::Tensor& want) {
  return (got.to(torch::kDouble) - want).abs().max().item<double>();
}

}  // namespace

TEST_CASE("expert-choice layer sums each token over the experts that picked it") {
  torch::manual_seed(21);
  MoELayer layer(MoELayerOptions::preset("expert_choice", 8, 16, 4));
  layer->eval();
  const auto x = torch::randn({12, 8});
  const auto out = layer(x);
  // EC-CF2: each expert takes ceil(12 * 2 / 4) = 6 tokens, rounded up to a multiple of 4: 8.
  const auto ref = naive::expert_choice(test::to_matrix(reference_probs(layer, x)), 8, 0);
  const double err = max_error(out.output, reference_output(layer, x, ref));
  INFO("max error " << err);
  // fp32 through two GEMMs of widths 8 and 16 (values of order 1): a few fp32 ulps.
  CHECK(err < 1e-5);
  CHECK(out.plan.num_rows() == 4 * 8);
}

TEST_CASE("E3-MoE layer routes each member's copy of the items among the member's experts") {
  torch::manual_seed(22);
  auto options = MoELayerOptions::preset("e3moe", 8, 16, 4);  // 2 members of 2 experts, top-1
  options.routing().capacity_factor(0.75).capacity_multiple(1);
  MoELayer layer(options);
  layer->eval();
  // [B * M, items, d]: item b * M + m is member m's copy of image b (jnp.repeat order).
  const int64_t B = 2, M = 2, S = 3, d = 8;
  const auto x = torch::randn({B * M, S, d});
  const auto out = layer(x);
  const auto tokens = x.reshape({-1, d});
  naive::Routing whole;
  whole.slots.assign(static_cast<size_t>(B * M * S), {});
  for (int64_t m = 0; m < M; ++m) {
    // Member m's tokens, in order, and its softmax over its own two experts.
    std::vector<int64_t> ids;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t s = 0; s < S; ++s) {
        ids.push_back((b * M + m) * S + s);
      }
    }
    const auto member_logits =
        tokens.index_select(0, torch::tensor(ids))
            .to(torch::kDouble)
            .matmul(layer->router().router_weight().to(torch::kDouble).narrow(0, 2 * m, 2).t());
    // One routing group of B * S = 6 tokens: capacity ceil(6 * 1 * 0.75 / 2) = 3.
    const auto ref =
        naive::top_k(test::to_matrix(member_logits.softmax(-1)), 1, 3, 0, false, false);
    for (size_t i = 0; i < ids.size(); ++i) {
      auto slot = ref.slots[i][0];
      slot.expert += 2 * m;
      whole.slots[static_cast<size_t>(ids[i])] = {slot};
    }
  }
  const double err = max_error(out.output.reshape({-1, d}), reference_output(layer, tokens, whole));
  INFO("max error " << err << ", dropped " << out.plan.dropped_fraction());
  CHECK(out.plan.dropped_fraction() > 0.0);  // capacity 3 of 6 tokens per member binds
  CHECK(err < 1e-5);
}

TEST_CASE("V-MoE layer after Expert Drop routes over the kept router columns only") {
  torch::manual_seed(23);
  auto options = MoELayerOptions::preset("vmoe", 8, 16, 6);
  options.routing().capacity_factor(1.0).capacity_multiple(1);
  MoELayer layer(options);
  layer->eval();
  layer->keep_experts({0, 2, 3, 5}, /*drop_router_columns=*/true);
  REQUIRE(layer->router().num_experts() == 4);
  const auto x = torch::randn({10, 8});
  const auto out = layer(x);
  // Expert Drop (He et al. 2024): softmax over the 4 kept columns, top-2 renormalised over the
  // survivors, capacity ceil(10 * 2 * 1.0 / 4) = 5 per expert.
  const auto ref = naive::top_k(test::to_matrix(reference_probs(layer, x)), 2, 5, 0, false,
                                /*renormalize=*/true);
  CHECK(out.plan.capacity == 5);
  test::require_matches(out.plan, ref);
  const double err = max_error(out.output, reference_output(layer, x, ref));
  INFO("max error " << err << ", dropped " << out.plan.dropped_fraction());
  CHECK(err < 1e-5);
  CHECK(out.plan.router_probs.size(1) == 4);
}

TEST_CASE("bf16 and fp16 layers route as fp64 and compute within their rounding") {
  for (const std::string preset : {"top_k_gated", "vmoe", "switch", "expert_choice"}) {
    for (const auto dtype : {torch::kBFloat16, torch::kHalf}) {
      torch::manual_seed(24);
      MoELayer layer(MoELayerOptions::preset(preset, 16, 32, 4));
      layer->eval();
      layer->to(dtype);
      const auto x = torch::randn({24, 16}).to(dtype);
      const auto out = layer(x);
      REQUIRE(out.output.scalar_type() == dtype);
      // The router reads the rounded tokens and weight in fp32 (as Mixtral and Switch do): its
      // probabilities equal fp64's to fp32 rounding, and so does the selection (no near ties).
      const auto probs = reference_probs(layer, x);
      INFO(preset << " " << dtype);
      CHECK(max_error(out.plan.router_probs, probs) < 1e-6);
      const auto p = test::to_matrix(probs);
      const int64_t T = 24, E = 4;
      naive::Routing ref;
      if (preset == "top_k_gated") {
        ref = naive::top_k(p, 2, -1, 0, false, true);
      } else if (preset == "vmoe") {
        ref = naive::top_k(p, 2, naive::capacity(T, 2, 1.05, E, 4), 0, false, false);
      } else if (preset == "switch") {
        ref = naive::top_k(p, 1, 64, 0, false, false);
      } else {
        ref = naive::expert_choice(p, std::min<int64_t>(naive::capacity(T, 1, 2.0, E, 4), T), 0);
      }
      test::require_matches(out.plan, ref);
      const auto want = reference_output(layer, x, ref);
      const double err = max_error(out.output, want);
      const double scale = want.abs().max().item<double>();
      INFO("max error " << err << " of values up to " << scale);
      // Expert GEMMs accumulate in fp32 and round each product to the dtype once (three times
      // on the way), the combine rounds once more: a few steps of the largest value (bf16: 8
      // significant bits, fp16: 11); a wrong slot or weight would be off by whole values.
      CHECK(err < scale * (dtype == torch::kBFloat16 ? 4.0 / 256 : 4.0 / 2048));
    }
  }
}

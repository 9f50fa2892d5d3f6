// moeprune's bf16 model, one op group at a time, against transformers' bf16 model
// (bf16_layers_reference.py): the embedding, every layer's attention and MLP or MoE block run on
// transformers' own inputs of them, the final norm and the LM head on transformers' inputs. Each
// output is compared in units in the last place of bf16 (2^(e - 7) for the row's largest value in
// [2^e, 2^(e+1))), so a rounding bug of bf16's size (rotary angles in bf16, a norm or softmax in
// bf16 instead of fp32) shows, which a whole-model tolerance of transformers' own bf16-vs-fp32
// error would hide.
//   lm_bf16_layers FIXTURE_DIR LAYERS.safetensors MAX_ULPS
#include <moeprune/io/safetensors.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/rotary.h>

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

namespace {

// max over elements of |a - b| / ulp_bf16 of the largest |value| in the element's row (one token's
// vector), and the share of elements over 1 such ulp. Per row rather than per element: an output
// near zero after the residual sum cancels is not more wrong for being small.
std::pair<double, double> ulps(const torch::Tensor& ours, const torch::Tensor& theirs) {
  const auto a = ours.to(torch::kDouble), b = theirs.to(torch::kDouble);
  const auto row_max = torch::maximum(a.abs(), b.abs()).amax(-1, /*keepdim=*/true).clamp_min(1e-30);
  const auto ulp = torch::pow(2.0, torch::floor(torch::log2(row_max)) - 7);
  const auto in_ulps = (a - b).abs() / ulp;
  return {in_ulps.max().item<double>(), in_ulps.gt(1.0).to(torch::kDouble).mean().item<double>()};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: lm_bf16_layers FIXTURE_DIR LAYERS.safetensors MAX_ULPS\n";
    return 2;
  }
  try {
    const double max_ulps = std::atof(argv[3]);
    auto model =
        moeprune::lm::load_causal_lm(argv[1], moeprune::lm::LoadOptions().dtype(torch::kBFloat16));
    model->eval();
    torch::NoGradGuard no_grad;
    const auto ref = moeprune::safetensors::load_file(argv[2]);
    const auto& ids = ref.at("input_ids");
    int failures = 0;
    constexpr int64_t kMlpTokens = 64;
    const auto check = [&](const std::string& what, const torch::Tensor& ours,
                           int64_t tokens = -1) {
      const auto& all = ref.at(what);
      const auto theirs = tokens < 0 ? all : all.narrow(1, 0, tokens);
      const bool same_type = ours.scalar_type() == torch::kBFloat16;
      const auto [worst, share] = ulps(ours, theirs);
      const bool ok = same_type && worst <= max_ulps;
      std::printf("%-16s max %5.1f ulps, %5.2f%% of elements over 1 ulp%s\n", what.c_str(), worst,
                  100.0 * share,
                  ok          ? ""
                  : same_type ? "  FAILED"
                              : "  FAILED (not bf16)");
      failures += ok ? 0 : 1;
      if (!ok && std::getenv("LM_BF16_LAYERS_DEBUG") != nullptr) {
        const auto diff = (ours.to(torch::kDouble) - theirs.to(torch::kDouble)).abs();
        const auto per_token = diff.reshape({-1, diff.size(-1)}).amax(-1);
        std::cout << "tokens over: " << per_token.gt(per_token.median() * 50).nonzero().view(-1)
                  << "\n";
      }
    };
    const auto report = [&](const std::string& what, const torch::Tensor& ours) {
      const auto [worst, share] = ulps(ours, ref.at(what));
      std::printf("%-16s max %5.1f ulps, %5.2f%% of elements over 1 ulp (not checked)\n",
                  what.c_str(), worst, 100.0 * share);
    };
    check("embed", model->embed_tokens->forward(ids));
    const auto S = ids.size(1);
    const auto angles = moeprune::lm::rotary_angles(model->options.attention(), 0, S,
                                                    torch::kBFloat16, torch::kCPU);
    for (int64_t i = 0; i < model->options.num_layers(); ++i) {
      const auto key = "layer." + std::to_string(i);
      auto layer = model->layer(i);
      check(key + ".attn.out", layer->self_attn->forward(ref.at(key + ".attn.in"), angles));
      // The MLP or MoE block on the first 64 tokens: token by token the same computation, but
      // over 1024 tokens some router choice is a near-tie that transformers' bf16 router logits
      // (Mixtral, Qwen, OLMoE compute them in bf16, moeprune in fp32) decide the other way.
      const auto mlp_in = ref.at(key + ".mlp.in").narrow(1, 0, kMlpTokens);
      check(
          key + ".mlp.out",
          layer->is_moe() ? layer->moe_block->forward(mlp_in).output : layer->mlp->forward(mlp_in),
          kMlpTokens);
      // The whole layer, reported: a last-bit difference after the attention can flip a near-tie
      // in the router, and then one token's MoE output differs by far more than rounding.
      report(key + ".out", layer->forward(ref.at(key + ".in"), angles).hidden);
    }
    const auto last = "layer." + std::to_string(model->options.num_layers() - 1) + ".out";
    check("norm", model->norm->forward(ref.at(last)));
    check("logits", model->logits(ref.at("norm")));
    // The whole forward too, where differences compound over layers.
    report("logits", model->forward(ids).logits);
    return failures == 0 ? 0 : 1;
  } catch (const c10::Error& e) {
    std::cerr << "lm_bf16_layers: " << e.what_without_backtrace() << "\n";
    return 1;
  }
}

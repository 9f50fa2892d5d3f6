// Whole language models against transformers: logits, per-token NLL, KV-cache decoding and greedy
// generation of tiny Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-MoE, DeepSeek-V2 (group-limited
// greedy with YaRN; greedy with a query latent and attention biases), DeepSeek-V3 (sigmoid router
// with correction bias and 4 groups, YaRN's softmax mscale, interleaved rotary) and GLM-4.5
// (partial rotary, q/k norm) models made by scripts/make_lm_fixtures.py (transformers 4.57.6; the
// DeepSeek-MoE reference is assembled from transformers' Llama attention and DeepSeek-V2 MoE
// modules there).
#include "lm_test_helpers.h"

#include <moeprune/io/safetensors.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/evaluation.h>
#include <moeprune/models/lm/generation.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

using namespace lm_test;

TEST_CASE("fp32 logits and per-token NLL equal transformers' for every family", "[lm]") {
  for (const std::string family : kFamilies) {
    SECTION(family) {
      auto ref = reference(family);
      auto model = moeprune::lm::load_causal_lm(kFixtures + "/" + family);
      model->eval();
      torch::NoGradGuard no_grad;
      const auto logits = model->forward(ref.at("input_ids")).logits;
      INFO(family << ": max |logits - transformers| = " << max_diff(logits, ref.at("logits")));
      // fp32 through a few layers: the two implementations sum in different orders (SDPA
      // kernels, the expert combine), a few ulps of values of order 1.
      CHECK(max_diff(logits, ref.at("logits")) < 1e-5);
      const auto nll = moeprune::lm::token_nll(model, ref.at("input_ids"));
      CHECK(max_diff(nll, ref.at("nll")) < 1e-5);
    }
  }
}

TEST_CASE("bf16 logits stay within bf16 rounding of transformers' bf16 model", "[lm]") {
  for (const std::string family : kFamilies) {
    SECTION(family) {
      auto ref = reference(family);
      auto model = moeprune::lm::load_causal_lm(
          kFixtures + "/" + family, moeprune::lm::LoadOptions().dtype(torch::kBFloat16));
      model->eval();
      torch::NoGradGuard no_grad;
      const auto logits = model->forward(ref.at("input_ids")).logits;
      REQUIRE(logits.scalar_type() == torch::kBFloat16);
      const auto want = ref.at("logits_bf16");
      const double scale = want.abs().max().item<double>();
      const double diff = max_diff(logits, want);
      INFO(family << ": max |logits - transformers bf16| = " << diff << " (logits up to " << scale
                  << ")");
      // bf16 keeps 8 significant bits (relative step 2^-8 = 0.0039); both models round after
      // every op in different orders, so allow a few steps of the largest logit, or as much as
      // transformers' own bf16 model is off its fp32 one (glm4_moe: 0.068, 5 steps), since two
      // roundings of the same math differ by about what either differs from the exact result.
      const double reference_error = max_diff(want, ref.at("logits"));
      INFO("transformers bf16 vs fp32: " << reference_error);
      CHECK(diff < std::max(4.0 * scale / 256.0, reference_error));
      // And both are close to the fp32 model, so neither is wrong in the same way.
      CHECK(max_diff(logits, ref.at("logits")) < 8.0 * scale / 256.0);
    }
  }
}

TEST_CASE("transformers 5.x fused experts and sharded checkpoints load to the same logits",
          "[lm]") {
  for (const std::string family : {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"}) {
    SECTION(family) {
      const auto fused = kFixtures + "/" + family + "_fused";
      auto ref = reference(family + "_fused");
      auto model = moeprune::lm::load_causal_lm(fused);
      model->eval();
      torch::NoGradGuard no_grad;
      CHECK(max_diff(model->forward(ref.at("input_ids")).logits, ref.at("logits")) < 1e-5);
    }
  }
  SECTION("sharded") {
    auto ref = reference("mixtral");
    auto model = moeprune::lm::load_causal_lm(kFixtures + "/mixtral_sharded");
    model->eval();
    torch::NoGradGuard no_grad;
    CHECK(max_diff(model->forward(ref.at("input_ids")).logits, ref.at("logits")) < 1e-5);
  }
}

TEST_CASE("KV-cache decoding equals the full forward pass token by token", "[lm]") {
  for (const std::string family : kFamilies) {
    SECTION(family) {
      auto ref = reference(family);
      auto model = moeprune::lm::load_causal_lm(kFixtures + "/" + family);
      model->eval();
      torch::NoGradGuard no_grad;
      const auto ids = ref.at("input_ids");
      const auto full = model->forward(ids).logits;
      // A prefix of 4 tokens (a masked multi-token step), then one token at a time, then the
      // rest in one chunk continuing the cache.
      auto cache = model->make_cache();
      std::vector<torch::Tensor> parts{model->forward(ids.narrow(1, 0, 4), &cache).logits};
      for (int64_t t = 4; t < 7; ++t) {
        parts.push_back(model->forward(ids.narrow(1, t, 1), &cache).logits);
      }
      parts.push_back(model->forward(ids.narrow(1, 7, ids.size(1) - 7), &cache).logits);
      CHECK(cache.length() == ids.size(1));
      CHECK(max_diff(torch::cat(parts, 1), full) < 1e-5);
    }
  }
}

TEST_CASE("greedy generation equals transformers' generate for 20 tokens", "[lm]") {
  for (const std::string family : kFamilies) {
    SECTION(family) {
      auto ref = reference(family);
      auto model = moeprune::lm::load_causal_lm(kFixtures + "/" + family);
      const auto want = ref.at("greedy");
      auto options = moeprune::lm::GenerationOptions().max_new_tokens(20);
      const auto cached = moeprune::lm::generate(model, ref.at("prompt"), options);
      INFO(family << ": moeprune " << cached << "\ntransformers " << want);
      CHECK(torch::equal(cached, want));
      const auto uncached =
          moeprune::lm::generate(model, ref.at("prompt"), options.use_cache(false));
      CHECK(torch::equal(uncached, want));
    }
  }
}

TEST_CASE("sampling with temperature and top-p draws from the nucleus and is reproducible",
          "[lm]") {
  auto model = moeprune::lm::load_causal_lm(kFixtures + "/olmoe");
  auto ref = reference("olmoe");
  const auto prompt = ref.at("prompt");
  auto options =
      moeprune::lm::GenerationOptions().max_new_tokens(1).temperature(0.7).top_p(0.5).seed(3);
  // The nucleus of the first step, computed here from the full forward pass: the most probable
  // tokens until their mass reaches 0.5.
  torch::Tensor probs;
  {
    torch::NoGradGuard no_grad;
    model->eval();
    probs = (model->forward(prompt).logits[0][-1].to(torch::kFloat) / 0.7).softmax(-1);
  }
  auto [sorted, order] = probs.sort(-1, true);
  std::vector<int64_t> nucleus;
  double mass = 0.0;
  for (int64_t i = 0; i < sorted.size(0) && mass < 0.5; ++i) {
    nucleus.push_back(order[i].item<int64_t>());
    mass += sorted[i].item<double>();
  }
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const auto out = moeprune::lm::generate(model, prompt, options.seed(seed));
    const int64_t token = out[0][-1].item<int64_t>();
    INFO("seed " << seed << " drew " << token);
    CHECK(std::find(nucleus.begin(), nucleus.end(), token) != nucleus.end());
  }
  options.max_new_tokens(8);
  const auto first = moeprune::lm::generate(model, prompt, options);
  CHECK(torch::equal(moeprune::lm::generate(model, prompt, options), first));
}

// Sampling draws from the right distribution: the tokens of 600 seeds against the nucleus of
// softmax(logits / temperature), renormalised (computed here in fp64 from the full forward pass),
// by Pearson's chi-square test. The seeds are fixed, so the outcome is too; the bound is the
// 1 - 1e-4 quantile (Wilson-Hilferty's approximation), so a correct sampler passes with room.
// Ignoring the sampling (argmax), the temperature or the nucleus fails it.
TEST_CASE("sampled tokens follow the tempered nucleus distribution, and seeds differ", "[lm]") {
  auto model = moeprune::lm::load_causal_lm(kFixtures + "/olmoe");
  const auto prompt = reference("olmoe").at("prompt");
  const double temperature = 1.5, top_p = 0.9;
  torch::Tensor probs;
  {
    torch::NoGradGuard no_grad;
    model->eval();
    probs = (model->forward(prompt).logits[0][-1].to(torch::kDouble) / temperature).softmax(-1);
  }
  auto [sorted, order] = probs.sort(-1, true);
  // The nucleus: each token whose more probable tokens hold less than top_p.
  std::map<int64_t, double> nucleus;
  double before = 0.0;
  for (int64_t i = 0; i < sorted.size(0) && before < top_p; ++i) {
    nucleus[order[i].item<int64_t>()] = sorted[i].item<double>();
    before += sorted[i].item<double>();
  }
  const double mass = before;  // the nucleus' share, which sampling renormalises to 1
  const int draws = 600;
  std::map<int64_t, int> counts;
  auto options =
      moeprune::lm::GenerationOptions().max_new_tokens(1).temperature(temperature).top_p(top_p);
  for (int seed = 0; seed < draws; ++seed) {
    const auto out = moeprune::lm::generate(model, prompt, options.seed(seed));
    ++counts[out[0][-1].item<int64_t>()];
  }
  for (const auto& [token, count] : counts) {
    INFO("token " << token << " drawn " << count << " times");
    CHECK(nucleus.count(token) == 1);
  }
  // Bins: every token expected at least 5 times on its own, the rest of the nucleus together.
  std::vector<std::pair<double, int>> bins;  // expected, observed
  double rest_expected = 0.0;
  int rest_observed = 0;
  for (const auto& [token, p] : nucleus) {
    const double expected = draws * p / mass;
    const int observed = counts.count(token) ? counts.at(token) : 0;
    if (expected >= 5.0) {
      bins.emplace_back(expected, observed);
    } else {
      rest_expected += expected;
      rest_observed += observed;
    }
  }
  if (rest_expected > 0.0) {
    bins.emplace_back(rest_expected, rest_observed);
  }
  REQUIRE(bins.size() >= 3);  // a distribution worth testing
  double chi2 = 0.0;
  for (const auto& [expected, observed] : bins) {
    chi2 += (observed - expected) * (observed - expected) / expected;
  }
  const double df = static_cast<double>(bins.size() - 1), z = 3.719;  // P(Z > z) = 1e-4
  const double a = 2.0 / (9.0 * df);
  const double bound = df * std::pow(1.0 - a + z * std::sqrt(a), 3);
  INFO(bins.size() << " bins, nucleus of " << nucleus.size() << " tokens, chi-square " << chi2
                   << ", bound " << bound);
  CHECK(chi2 < bound);

  // Different seeds give different continuations; the same seed the same one.
  options.max_new_tokens(8);
  std::set<std::vector<int64_t>> continuations;
  for (int seed = 0; seed < 10; ++seed) {
    const auto out = moeprune::lm::generate(model, prompt, options.seed(seed));
    continuations.insert(
        std::vector<int64_t>(out.data_ptr<int64_t>(), out.data_ptr<int64_t>() + out.numel()));
  }
  CHECK(continuations.size() >= 8);
}

TEST_CASE("sliding-window perplexity scores every token once as token_nll does", "[lm]") {
  auto model = moeprune::lm::load_causal_lm(kFixtures + "/qwen3_moe");
  auto ref = reference("qwen3_moe");
  // One window covering the stream: the mean of transformers' per-token NLL.
  const auto stream = ref.at("input_ids")[0];
  const auto whole =
      moeprune::lm::perplexity(model, stream, moeprune::lm::PerplexityOptions().context(64));
  CHECK(whole.tokens == stream.size(0) - 1);
  CHECK(whole.mean_nll() == Approx(ref.at("nll")[0].mean().item<double>()).epsilon(1e-5));
  // Windows of 4 moving by 2: token t is scored once, by the window that first reaches it, with
  // the context that window gives (computed here window by window with token_nll).
  const auto windows = moeprune::lm::perplexity(
      model, stream, moeprune::lm::PerplexityOptions().context(4).stride(2));
  double want = 0.0;
  int64_t scored = 1;
  for (int64_t begin = 0; scored < stream.size(0); begin += 2) {
    const int64_t end = std::min<int64_t>(begin + 4, stream.size(0));
    const auto nll = moeprune::lm::token_nll(model, stream.slice(0, begin, end).unsqueeze(0))[0];
    for (int64_t t = scored; t < end; ++t) {
      want += nll[t - begin - 1].item<double>();
    }
    scored = end;
  }
  CHECK(windows.tokens == stream.size(0) - 1);
  CHECK(windows.nll_sum == Approx(want).epsilon(1e-6));
  // Windows of 8 with the default stride (the context): none leaves a token unscored, each starts
  // one token before the first unscored one (0-8, 7-15, 14-22, ...), computed here by hand.
  const auto chained =
      moeprune::lm::perplexity(model, stream, moeprune::lm::PerplexityOptions().context(8));
  double chain_want = 0.0;
  for (int64_t begin = 0; begin + 1 < stream.size(0); begin += 7) {
    const int64_t end = std::min<int64_t>(begin + 8, stream.size(0));
    chain_want += moeprune::lm::token_nll(model, stream.slice(0, begin, end).unsqueeze(0))
                      .sum()
                      .item<double>();
  }
  CHECK(chained.tokens == stream.size(0) - 1);
  CHECK(chained.nll_sum == Approx(chain_want).epsilon(1e-6));
}

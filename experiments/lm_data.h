#pragma once

// What the language demo's programs share: the fortune texts as token streams (every language for
// pre-training, one language as the downstream task), the small Mixtral-style model, bits per
// byte, and calibration windows.
#include <moeprune/layers/moe_view.h>
#include <moeprune/models/lm/causal_lm.h>
#include <moeprune/models/lm/evaluation.h>
#include <moeprune/train/text_corpus.h>

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <vector>

namespace experiments {

struct FortuneTexts {
  std::string language;  // the downstream language's code
  std::string language_name;
  /// Every language's training fortunes, language after language (pre-training).
  torch::Tensor pretrain;
  /// The downstream language's training, validation and test streams.
  torch::Tensor train, validation, test;
  /// Fortunes and bytes of each language's training split, for the log.
  std::vector<std::string> summary;
};

inline int64_t byte_count(const std::vector<std::string>& docs) {
  int64_t n = 0;
  for (const auto& d : docs) n += static_cast<int64_t>(d.size());
  return n;
}

/// The fortunes of every language (split by position, 10% validation and 10% test from the end
/// of every file) with `language` as the downstream task.
inline FortuneTexts load_fortune_texts(const std::string& language) {
  namespace data = moeprune::data;
  FortuneTexts task;
  task.language = language;
  std::vector<std::string> all;
  for (const auto& l : data::fortune_languages()) {
    const auto s = data::load_fortunes(l.code);
    all.insert(all.end(), s.train.begin(), s.train.end());
    task.summary.push_back(fmt::format("{} {} fortunes ({:.2f} MB)", l.name, s.train.size(),
                                       static_cast<double>(byte_count(s.train)) / 1e6));
    if (l.code == language) {
      task.language_name = l.name;
      task.train = data::byte_tokens(s.train);
      task.validation = data::byte_tokens(s.validation);
      task.test = data::byte_tokens(s.test);
    }
  }
  TORCH_CHECK(task.train.defined(), "unknown language '", language, "'");
  task.pretrain = data::byte_tokens(all);
  return task;
}

/// The demo's model: Mixtral's architecture at a size that pre-trains in minutes on two cores.
/// 4 decoder layers of width 128 (4 query heads and 2 key/value heads of 32), each with a MoE
/// block of 8 SwiGLU experts of width 256, top-2 renormalised, dropless; byte vocabulary.
/// The load-balancing loss weight is 0.01 (Mixtral's config has 0.001 for 8 experts at scale;
/// on this little data 0.001 let a few experts take most tokens).
inline moeprune::lm::CausalLMOptions lm_demo_options() {
  auto moe = moeprune::MoELayerOptions::preset("top_k_gated", 128, 256, 8);
  moe.aux_loss_weights(moeprune::functional::AuxLossWeights().load_balance(0.01));
  return moeprune::lm::CausalLMOptions(moeprune::data::kByteVocabSize, 128, 4,
                                       moeprune::lm::AttentionOptions(128, 4, 2, 32))
      .model_type("mixtral")
      .max_position_embeddings(1024)
      .moe_layers(std::vector<bool>(4, true))
      .moe(moe);
}

/// Bits per byte of `stream` under `model`: windows of `context` tokens, each token scored once
/// (lm::perplexity), end-of-text marks' bits included, over the bytes scored.
inline double bits_per_byte(moeprune::lm::CausalLM& model, const torch::Tensor& stream,
                            int64_t context) {
  const auto r =
      moeprune::lm::perplexity(model, stream, moeprune::lm::PerplexityOptions().context(context));
  return moeprune::data::bits_per_byte(r.nll_sum, stream.slice(0, 1));
}

/// `windows` windows of `context` tokens spread evenly over `stream`, [windows, context].
inline torch::Tensor even_windows(const torch::Tensor& stream, int64_t windows, int64_t context) {
  TORCH_CHECK(stream.size(0) >= windows * context, "even_windows: ", stream.size(0),
              " tokens are too few for ", windows, " windows of ", context);
  const int64_t step = (stream.size(0) - context) / std::max<int64_t>(1, windows - 1);
  const auto offsets = torch::arange(windows, torch::kLong) * step;
  const auto index = offsets.unsqueeze(1) + torch::arange(context, torch::kLong);
  return stream.index_select(0, index.reshape({-1})).view({windows, context});
}

/// Calibration data for the MoE view: `windows` evenly spread over `stream`, batches of 8.
inline moeprune::CalibrationData lm_calibration(const torch::Tensor& stream, int64_t windows,
                                                int64_t context) {
  const auto all = even_windows(stream, windows, context);
  return [all](const std::function<void(const torch::Tensor&)>& visit) {
    for (int64_t b = 0; b < all.size(0); b += 8) {
      visit(all.narrow(0, b, std::min<int64_t>(8, all.size(0) - b)));
    }
  };
}

}  // namespace experiments

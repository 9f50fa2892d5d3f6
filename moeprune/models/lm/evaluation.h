#pragma once

// Likelihood of text under a CausalLM: per-token negative log-likelihood and perplexity over a
// long token stream with a sliding window (the method of transformers' perplexity guide).
#include <moeprune/models/lm/causal_lm.h>

#include <torch/arg.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

namespace moeprune::lm {

/// -log p(token[t] | tokens[< t]) for t = 1 .. S-1 of each row of `input_ids` [B, S]: [B, S-1]
/// fp32 (log-softmax in fp32). Runs in evaluation mode without gradients.
torch::Tensor token_nll(CausalLM& model, const torch::Tensor& input_ids);

struct PerplexityOptions {
  /// Tokens the model sees at once.
  TORCH_ARG(int64_t, context) = 512;
  /// How far each window moves (<= context; 0: context). Each token is scored once, with up to
  /// context - 1 tokens before it; a smaller stride gives every scored token more context at the
  /// cost of more forward passes. Windows never leave a token unscored: a window starts at most
  /// one token before the first token not yet scored (with stride == context, windows share one).
  TORCH_ARG(int64_t, stride) = 0;
  /// Windows run together in one forward pass (the same sums up to float rounding, faster).
  TORCH_ARG(int64_t, batch_size) = 8;
};

struct PerplexityResult {
  double nll_sum = 0.0;  ///< total negative log-likelihood in nats
  int64_t tokens = 0;    ///< tokens scored (the stream's length - 1)
  double mean_nll() const { return tokens > 0 ? nll_sum / static_cast<double>(tokens) : 0.0; }
  double perplexity() const { return std::exp(mean_nll()); }
  double bits_per_token() const { return mean_nll() / std::log(2.0); }
};

/// One forward pass of perplexity(): windows of one length stacked [B, S], and for each row the
/// index, among its S - 1 token NLLs, of the first one it scores (earlier ones were scored by an
/// earlier window).
struct PerplexityBatch {
  torch::Tensor input_ids;
  std::vector<int64_t> first_scored;
};

/// The batches perplexity() runs over `stream`, in order (checks the stream and options as
/// perplexity() does). For callers that compute the logits themselves (models/lm/streamed.h).
std::vector<PerplexityBatch> perplexity_batches(const torch::Tensor& stream,
                                                const PerplexityOptions& options);

/// -log p(token[t] | tokens[< t]) for t = 1 .. S-1 from `logits` [B, S, vocab] of `input_ids`
/// [B, S]: [B, S-1] fp32 (log-softmax in fp32).
torch::Tensor nll_of_logits(const torch::Tensor& logits, const torch::Tensor& input_ids);

/// Adds the NLLs `nll` [B, S-1] of `batch` that it scores to `result`.
void add_scored(PerplexityResult& result, const PerplexityBatch& batch, const torch::Tensor& nll);

/// Perplexity of `stream` [N] (int64, N >= 2). `progress(done, total)` is called after each
/// window with tokens scored so far.
PerplexityResult perplexity(CausalLM& model, const torch::Tensor& stream,
                            const PerplexityOptions& options = {},
                            const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace moeprune::lm

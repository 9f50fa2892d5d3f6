#include <moeprune/models/lm/evaluation.h>

#include <torch/torch.h>

#include <algorithm>
#include <vector>

namespace moeprune::lm {
namespace {

// Puts the model in evaluation mode for the scope, then back.
class EvalMode {
 public:
  explicit EvalMode(CausalLM& model) : model_(model), was_training_(model->is_training()) {
    model_->eval();
  }
  ~EvalMode() { model_->train(was_training_); }
  EvalMode(const EvalMode&) = delete;
  EvalMode& operator=(const EvalMode&) = delete;

 private:
  CausalLM& model_;
  bool was_training_;
};

}  // namespace

torch::Tensor nll_of_logits(const torch::Tensor& logits, const torch::Tensor& input_ids) {
  const int64_t S = input_ids.size(1);
  const auto shifted = logits.narrow(1, 0, S - 1).to(torch::kFloat);
  const auto targets = input_ids.narrow(1, 1, S - 1).unsqueeze(-1);
  return -shifted.log_softmax(-1).gather(-1, targets).squeeze(-1);
}

torch::Tensor token_nll(CausalLM& model, const torch::Tensor& input_ids) {
  TORCH_CHECK(input_ids.dim() == 2 && input_ids.size(1) >= 2,
              "token_nll: input_ids should be [B, S] with S >= 2, got ", input_ids.sizes());
  torch::NoGradGuard no_grad;
  EvalMode eval(model);
  return nll_of_logits(model->forward(input_ids).logits, input_ids);
}

std::vector<PerplexityBatch> perplexity_batches(const torch::Tensor& stream,
                                                const PerplexityOptions& options) {
  TORCH_CHECK(stream.dim() == 1 && stream.size(0) >= 2,
              "perplexity: the stream should be [N] tokens with N >= 2, got ", stream.sizes());
  TORCH_CHECK(options.context() >= 2, "perplexity: context should be >= 2, got ",
              options.context());
  const int64_t stride = options.stride() == 0 ? options.context() : options.stride();
  TORCH_CHECK(stride >= 1 && stride <= options.context(), "perplexity: stride should be in [1, ",
              options.context(), "], got ", stride);
  TORCH_CHECK(options.batch_size() >= 1, "perplexity: batch_size should be >= 1, got ",
              options.batch_size());
  const int64_t N = stream.size(0);
  // The windows first: [begin, end) and the index of the first token each one scores.
  struct Window {
    int64_t begin, end, first;
  };
  std::vector<Window> windows;
  int64_t scored_until = 1;  // tokens [1, scored_until) are scored; token 0 has no context
  // A window scores its tokens from its second on, so it starts at most one token before the
  // first unscored one: with stride == context consecutive windows share one token instead of
  // leaving the first token of each window unscored.
  for (int64_t begin = 0; scored_until < N; begin = std::min(begin + stride, scored_until - 1)) {
    const int64_t end = std::min(begin + options.context(), N);
    // nll[i] scores token begin + 1 + i; score only the tokens no earlier window scored.
    windows.push_back({begin, end, scored_until - (begin + 1)});
    scored_until = end;
  }
  // Then batches of windows of one length (every window but the last has `context` tokens).
  std::vector<PerplexityBatch> batches;
  for (size_t w = 0; w < windows.size();) {
    const int64_t length = windows[w].end - windows[w].begin;
    std::vector<torch::Tensor> rows;
    PerplexityBatch batch;
    while (w < windows.size() && static_cast<int64_t>(rows.size()) < options.batch_size() &&
           windows[w].end - windows[w].begin == length) {
      rows.push_back(stream.slice(0, windows[w].begin, windows[w].end));
      batch.first_scored.push_back(windows[w].first);
      ++w;
    }
    batch.input_ids = torch::stack(rows);
    batches.push_back(std::move(batch));
  }
  return batches;
}

void add_scored(PerplexityResult& result, const PerplexityBatch& batch, const torch::Tensor& nll) {
  for (size_t i = 0; i < batch.first_scored.size(); ++i) {
    const auto fresh = nll[static_cast<int64_t>(i)].slice(0, batch.first_scored[i]);
    result.nll_sum += fresh.sum(torch::kDouble).item<double>();
    result.tokens += fresh.size(0);
  }
}

PerplexityResult perplexity(CausalLM& model, const torch::Tensor& stream,
                            const PerplexityOptions& options,
                            const std::function<void(int64_t, int64_t)>& progress) {
  PerplexityResult result;
  for (const auto& batch : perplexity_batches(stream, options)) {
    add_scored(result, batch, token_nll(model, batch.input_ids));
    if (progress) {
      progress(result.tokens, stream.size(0) - 1);
    }
  }
  return result;
}

}  // namespace moeprune::lm

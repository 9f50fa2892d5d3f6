#include <moeprune/models/lm/generation.h>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

namespace moeprune::lm {
namespace {

// The next token of each row of `logits` [B, V] (fp32).
torch::Tensor pick(const torch::Tensor& logits, const GenerationOptions& o, at::Generator& gen) {
  if (o.temperature() <= 0.0) {
    return logits.argmax(-1);
  }
  auto probs = (logits / o.temperature()).softmax(-1);
  if (o.top_p() < 1.0) {
    // Keep the smallest prefix of the sorted distribution whose mass reaches top_p: a token is
    // cut when the mass before it already does.
    auto [sorted, order] = probs.sort(-1, /*descending=*/true);
    const auto before = sorted.cumsum(-1) - sorted;
    sorted = sorted.masked_fill(before >= o.top_p(), 0.0);
    probs = torch::zeros_like(probs).scatter(-1, order, sorted);
  }
  return torch::multinomial(probs.cpu(), 1, /*replacement=*/false, gen)
      .squeeze(-1)
      .to(logits.device());
}

}  // namespace

torch::Tensor generate(CausalLM& model, const torch::Tensor& prompt,
                       const GenerationOptions& options, const TokenCallback& on_tokens) {
  TORCH_CHECK(prompt.dim() == 2 && prompt.size(1) >= 1,
              "generate: the prompt should be [B, P] with P >= 1, got ", prompt.sizes());
  TORCH_CHECK(options.max_new_tokens() >= 0, "generate: max_new_tokens should be >= 0, got ",
              options.max_new_tokens());
  TORCH_CHECK(options.temperature() >= 0.0, "generate: temperature should be >= 0, got ",
              options.temperature());
  TORCH_CHECK(options.top_p() > 0.0 && options.top_p() <= 1.0,
              "generate: top_p should be in (0, 1], got ", options.top_p());
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  auto gen = at::detail::createCPUGenerator(options.seed());
  const int64_t B = prompt.size(0);
  auto cache = model->make_cache(prompt.size(1) + options.max_new_tokens());
  auto tokens = prompt;
  auto finished = torch::zeros({B}, prompt.options().dtype(torch::kBool));
  auto step_input = prompt;
  for (int64_t step = 0; step < options.max_new_tokens(); ++step) {
    auto [hidden, aux] = options.use_cache() ? model->hidden_states(step_input, &cache)
                                             : model->hidden_states(tokens);
    (void)aux;
    const auto last = model->logits(hidden.select(1, hidden.size(1) - 1)).to(torch::kFloat);
    auto next = pick(last, options, gen);
    if (options.eos_token_id() >= 0) {
      next = next.masked_fill(finished, options.eos_token_id());
      finished = finished | (next == options.eos_token_id());
    }
    tokens = torch::cat({tokens, next.unsqueeze(1)}, 1);
    step_input = next.unsqueeze(1);
    if (on_tokens) {
      on_tokens(next);
    }
    if (options.eos_token_id() >= 0 && finished.all().item<bool>()) {
      break;
    }
  }
  model->train(was_training);
  return tokens;
}

}  // namespace moeprune::lm

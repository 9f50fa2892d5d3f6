#include <moeprune/models/seq2seq/generation.h>

#include <torch/torch.h>

namespace moeprune::seq2seq {

torch::Tensor greedy_generate(SwitchTransformer& model, const torch::Tensor& input_ids,
                              const torch::Tensor& attention_mask, const GreedyOptions& options) {
  TORCH_CHECK(options.max_new_tokens() >= 0, "greedy_generate: max_new_tokens should be >= 0, got ",
              options.max_new_tokens());
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard no_grad;
  const auto& o = model->options;
  const int64_t batch = input_ids.size(0);
  auto sequence = torch::full({batch, 1}, o.decoder_start_token_id(),
                              torch::dtype(torch::kLong).device(input_ids.device()));
  auto finished = torch::zeros({batch}, torch::dtype(torch::kBool).device(input_ids.device()));
  Seq2SeqCache cache;
  torch::Tensor memory;
  if (options.use_cache()) {
    cache = model->start_cache(input_ids, attention_mask);
  } else {
    memory = model->encode(input_ids, attention_mask);
  }
  for (int64_t step = 0; step < options.max_new_tokens(); ++step) {
    torch::Tensor hidden;
    if (options.use_cache()) {
      hidden = model->decode(sequence.slice(1, sequence.size(1) - 1), {}, {}, &cache);
    } else {
      hidden = model->decode(sequence, memory, attention_mask);
    }
    const auto last = model->logits(hidden.select(1, hidden.size(1) - 1));
    auto next = last.argmax(-1);
    if (options.eos_token_id() >= 0) {
      next = torch::where(finished, torch::full_like(next, o.pad_token_id()), next);
      finished = finished | next.eq(options.eos_token_id());
    }
    sequence = torch::cat({sequence, next.unsqueeze(1)}, 1);
    if (options.eos_token_id() >= 0 && finished.all().item<bool>()) {
      break;
    }
  }
  model->train(was_training);
  return sequence;
}

}  // namespace moeprune::seq2seq

#include <moeprune/train/span_corruption.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace moeprune::data {
namespace {

// `items` split into `pieces` non-empty runs at random: the lengths, summing to `items`
// (preprocessors.py _random_segmentation: a shuffled 0/1 vector of pieces - 1 boundaries).
std::vector<int64_t> random_segmentation(int64_t items, int64_t pieces, std::mt19937_64& rng) {
  std::vector<int64_t> cuts(static_cast<size_t>(items - 1));
  for (int64_t i = 0; i < items - 1; ++i) {
    cuts[static_cast<size_t>(i)] = i + 1;
  }
  std::shuffle(cuts.begin(), cuts.end(), rng);
  cuts.resize(static_cast<size_t>(pieces - 1));
  std::sort(cuts.begin(), cuts.end());
  std::vector<int64_t> lengths;
  int64_t previous = 0;
  for (const int64_t c : cuts) {
    lengths.push_back(c - previous);
    previous = c;
  }
  lengths.push_back(items - previous);
  return lengths;
}

}  // namespace

std::vector<bool> random_spans_noise_mask(int64_t length, const SpanCorruptionOptions& options,
                                          std::mt19937_64& rng) {
  TORCH_CHECK(length >= 2, "span corruption: a document needs at least 2 tokens, got ", length);
  TORCH_CHECK(options.noise_density() > 0.0 && options.noise_density() < 1.0,
              "span corruption: noise_density should be in (0, 1), got ", options.noise_density());
  TORCH_CHECK(options.mean_span_length() >= 1.0,
              "span corruption: mean_span_length should be >= 1, got ", options.mean_span_length());
  const auto noise = std::clamp<int64_t>(
      std::llround(static_cast<double>(length) * options.noise_density()), 1, length - 1);
  const auto spans =
      std::clamp<int64_t>(std::llround(static_cast<double>(noise) / options.mean_span_length()), 1,
                          std::min(noise, length - noise));
  const auto noise_runs = random_segmentation(noise, spans, rng);
  const auto kept_runs = random_segmentation(length - noise, spans, rng);
  std::vector<bool> mask;
  mask.reserve(static_cast<size_t>(length));
  for (size_t s = 0; s < noise_runs.size(); ++s) {
    mask.insert(mask.end(), static_cast<size_t>(kept_runs[s]), false);
    mask.insert(mask.end(), static_cast<size_t>(noise_runs[s]), true);
  }
  return mask;
}

SpanCorruptionExample span_corrupt(const std::vector<int64_t>& tokens,
                                   const SpanCorruptionOptions& options, std::mt19937_64& rng) {
  TORCH_CHECK(static_cast<bool>(options.sentinel()),
              "span corruption: no sentinel ids (SpanCorruptionOptions::sentinel)");
  const auto mask = random_spans_noise_mask(static_cast<int64_t>(tokens.size()), options, rng);
  SpanCorruptionExample out;
  int64_t span = -1;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const bool starts = mask[i] && (i == 0 || !mask[i - 1]);
    if (starts) {
      ++span;
      const int64_t sentinel = options.sentinel()(span);
      out.input.push_back(sentinel);
      out.target.push_back(sentinel);
    }
    (mask[i] ? out.target : out.input).push_back(tokens[i]);
  }
  if (options.eos_token_id() >= 0) {
    out.input.push_back(options.eos_token_id());
    out.target.push_back(options.eos_token_id());
  }
  return out;
}

Seq2SeqTensors collate(const std::vector<SpanCorruptionExample>& examples, int64_t pad_id) {
  TORCH_CHECK(!examples.empty(), "collate: no examples");
  size_t inputs = 0, targets = 0;
  for (const auto& e : examples) {
    TORCH_CHECK(!e.input.empty() && !e.target.empty(), "collate: an example is empty");
    inputs = std::max(inputs, e.input.size());
    targets = std::max(targets, e.target.size());
  }
  const auto batch = static_cast<int64_t>(examples.size());
  Seq2SeqTensors t;
  t.input_ids = torch::full({batch, static_cast<int64_t>(inputs)}, pad_id, torch::kLong);
  t.attention_mask = torch::zeros({batch, static_cast<int64_t>(inputs)}, torch::kLong);
  t.labels = torch::full({batch, static_cast<int64_t>(targets)}, -100, torch::kLong);
  for (int64_t b = 0; b < batch; ++b) {
    const auto& e = examples[static_cast<size_t>(b)];
    const auto n = static_cast<int64_t>(e.input.size());
    const auto m = static_cast<int64_t>(e.target.size());
    t.input_ids[b].slice(0, 0, n).copy_(torch::tensor(e.input, torch::kLong));
    t.attention_mask[b].slice(0, 0, n).fill_(1);
    t.labels[b].slice(0, 0, m).copy_(torch::tensor(e.target, torch::kLong));
  }
  return t;
}

}  // namespace moeprune::data

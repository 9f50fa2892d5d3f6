#pragma once

// The latency the comparisons report: the median forward time of a batch.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace experiments {

/// Median time of a forward pass of `model` (a ViT or a CausalLM) over `inputs` (evaluation mode,
/// no grad), in milliseconds, after one warm-up pass. On the 2-core build machine medians of 5
/// passes differed by up to 10% between runs; 11 steady it.
template <typename Model>
double latency_ms(Model& model, const torch::Tensor& inputs, int reps = 11) {
  torch::NoGradGuard no_grad;
  model->eval();
  model->forward(inputs);  // warm-up
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    model->forward(inputs);
    times.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace experiments

#pragma once

// What the GPU benchmarks share: the GPU's name for the results and a median wall-clock timer
// that synchronises the device around each repetition.
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace bench {

inline std::string gpu_name() {
  std::string name = "unknown";
  if (FILE* smi = popen("nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null", "r")) {
    char buf[256] = {};
    if (std::fgets(buf, sizeof(buf), smi) != nullptr) {
      name = buf;
      name.erase(name.find_last_not_of(" \n") + 1);
    }
    pclose(smi);
  }
  return name;
}

/// Median seconds of `reps` runs of `body` after one warm-up, the device synchronised around
/// each.
inline double time_gpu(const std::function<void()>& body, int reps) {
  body();
  torch::cuda::synchronize();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    body();
    torch::cuda::synchronize();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace bench

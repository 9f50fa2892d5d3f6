#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace moeprune {

/// The learning rate at `step` (from 0) of a run of `total` steps: linear warm-up to `base` over
/// `warmup` steps, then cosine decay to base * final_ratio at the last step.
inline double warmup_cosine_lr(int64_t step, int64_t total, double base, int64_t warmup,
                               double final_ratio) {
  constexpr double kPi = 3.14159265358979323846;
  warmup = std::min(warmup, total);
  if (step < warmup) {
    return base * static_cast<double>(step + 1) / static_cast<double>(warmup);
  }
  const double progress =
      total > warmup ? static_cast<double>(step - warmup) / static_cast<double>(total - warmup)
                     : 1.0;
  const double low = base * final_ratio;
  return low + 0.5 * (base - low) * (1.0 + std::cos(kPi * std::min(progress, 1.0)));
}

}  // namespace moeprune

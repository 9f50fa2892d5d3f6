#pragma once

// The options part of every trainer's JSON log, written one way (the vision Trainer's "trainer"
// section, train_lm's), so the logs of the two name the same settings alike.
#include <moeprune/train/optimization.h>

#include <nlohmann/json.hpp>

#include <cstdint>

namespace moeprune::detail {

/// optimizer, lr (momentum with SGD), weight_decay, warmup_steps, final_lr_ratio, clip_norm,
/// aux_loss_weight, seed, processes, and the distillation weight and temperature when
/// `distillation`.
nlohmann::json training_json(const TrainingOptions& options, int64_t processes, bool distillation);

}  // namespace moeprune::detail

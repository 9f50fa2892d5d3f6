#include "train/training_log.h"

namespace moeprune::detail {

nlohmann::json training_json(const TrainingOptions& o, int64_t processes, bool distillation) {
  const bool sgd = o.optimizer() == OptimizerKind::kSgd;
  nlohmann::json j = {{"optimizer", sgd ? "sgd" : "adamw"},
                      {"lr", o.lr()},
                      {"weight_decay", o.weight_decay()},
                      {"warmup_steps", o.warmup_steps()},
                      {"final_lr_ratio", o.final_lr_ratio()},
                      {"clip_norm", o.clip_norm()},
                      {"aux_loss_weight", o.aux_loss_weight()},
                      {"seed", o.seed()},
                      {"processes", processes}};
  if (sgd) {
    j["momentum"] = o.momentum();
  }
  if (distillation) {
    j["distill_weight"] = o.distill_weight();
    j["distill_temperature"] = o.distill_temperature();
  }
  return j;
}

}  // namespace moeprune::detail

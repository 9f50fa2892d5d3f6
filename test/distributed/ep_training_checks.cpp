// ep_worker's training checks: the vision Trainer and train_lm with data + expert parallelism
// against one process on the whole batch, and the Trainer's refusal of a set too small to share.
#include "ep_checks.h"

#include <moeprune/distributed/expert_parallel.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/moe_view.h>
#include <moeprune/models/vision/vision_transformer.h>
#include <moeprune/train/lm_trainer.h>
#include <moeprune/train/trainer.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ep_checks {
namespace {

using Layers = std::vector<std::pair<int64_t, moeprune::MoELayer>>;

// A model's parameters (or their gradients) by name, each expert of a MoE bank on its own under
// "moe<key>.expert<id>.<name>": a spread model's (this process's experts) and a whole model's
// then compare key by key.
std::map<std::string, torch::Tensor> by_expert(const Layers& layers, const torch::nn::Module& model,
                                               bool grads) {
  const auto pick = [grads](const torch::Tensor& p) {
    return !grads ? p.detach().clone()
                  : (p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
  };
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : model.named_parameters()) {
    if (p.key().find("experts.") == std::string::npos ||
        p.key().find("shared_expert") != std::string::npos) {
      out[p.key()] = pick(p.value());
    }
  }
  for (const auto& [key, layer] : layers) {
    const auto& bank = *layer->experts();
    for (const auto& p : bank.named_parameters()) {
      const auto all = pick(p.value());
      for (const int64_t id : bank.expert_ids()) {
        out["moe" + std::to_string(key) + ".expert" + std::to_string(id) + "." + p.key()] =
            all[bank.position_of(id)];
      }
    }
  }
  return out;
}

// "" when every tensor of `got` is within atol + rtol |want| of `want`'s of the same name.
std::string compare(const std::map<std::string, torch::Tensor>& got,
                    const std::map<std::string, torch::Tensor>& want, double rtol, double atol,
                    const std::string& what) {
  for (const auto& [name, g] : got) {
    const auto it = want.find(name);
    if (it == want.end()) {
      return what + ": the single-process model has no " + name;
    }
    if (!torch::allclose(g, it->second, rtol, atol)) {
      return what + " " + name + " differs (max " +
             std::to_string((g - it->second).abs().max().item<double>()) + ")";
    }
  }
  return "";
}

}  // namespace

// Trains the small V-MoE (Mixtral-style experts: no router noise, so the processes route as one
// process would) for a few SGD steps on `group` with data and expert parallelism, and on one
// process with the whole batch; the weights must agree within fp32 rounding (the gradient sums
// run in another order). Returns what differed, or an empty string.
std::string check_vision_training(const dist::ProcessGroup& group) {
  const int64_t W = group.world_size(), per_process = 16;
  torch::manual_seed(3);
  moeprune::data::ImageDataset data;
  data.labels = torch::randint(0, 10, {W * per_process * 3}, torch::kLong);
  data.images = (torch::rand({10, 1, 28, 28}).index_select(0, data.labels) * 200 +
                 torch::rand({data.labels.size(0), 1, 28, 28}) * 55)
                    .to(torch::kUInt8);
  data.num_classes = 10;
  const auto model_options =
      moeprune::VisionTransformerOptions::small_vmoe(10).moe_preset("top_k_gated").group_images(8);
  const auto train_options = moeprune::TrainerOptions()
                                 .optimizer(moeprune::OptimizerKind::kSgd)
                                 .lr(0.05)
                                 .warmup_steps(0)
                                 .max_steps(3)
                                 .progress(false)
                                 .seed(5);
  torch::manual_seed(0);
  moeprune::VisionTransformer single(model_options);
  moeprune::Trainer(single, moeprune::TrainerOptions(train_options).batch_size(W * per_process))
      .fit(data);

  torch::manual_seed(0);
  moeprune::VisionTransformer model(model_options);
  for (auto& [block, layer] : model->moe_layers()) {
    dist::shard_experts(layer, group);
  }
  moeprune::Trainer(model, moeprune::TrainerOptions(train_options)
                               .batch_size(per_process)
                               .process_group(std::make_shared<dist::ProcessGroup>(group)))
      .fit(data);

  return compare(by_expert(model->moe_layers(), *model, false),
                 by_expert(single->moe_layers(), *single, false), 1e-4, 1e-6, "trained");
}

std::string check_small_training_set(const dist::ProcessGroup& group) {
  const int64_t W = group.world_size();
  if (W < 2) {
    return "";  // one process trains on one image
  }
  moeprune::data::ImageDataset one;
  one.images = torch::zeros({1, 1, 28, 28}, torch::kUInt8);
  one.labels = torch::zeros({1}, torch::kLong);
  one.num_classes = 10;
  torch::manual_seed(0);
  moeprune::VisionTransformer model(moeprune::VisionTransformerOptions::small_vmoe(10));
  const auto want = "1 images cannot give each of " + std::to_string(W) + " processes one";
  try {
    moeprune::Trainer(model, moeprune::TrainerOptions().progress(false).process_group(
                                 std::make_shared<dist::ProcessGroup>(group)))
        .fit(one);
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    return message.find(want) != std::string::npos ? "" : "wrong refusal: " + message;
  }
  return "a one-image set on " + std::to_string(W) + " processes was not refused";
}

// train_lm on the Mixtral fixture (6 experts, top-2, dropless: routing is per token, so the
// processes route as one would): W processes with batch_size 2 each, experts spread, against one
// process with batch_size 2 W. The averaged gradients of the first step must be the single
// process's to fp32 rounding (a missing division by W fails), the losses too. The weights after
// three AdamW steps only loosely: Adam moves a weight by about lr whatever its gradient's size,
// so rounding-level differences in a near-zero gradient become a few percent of lr. The
// load-balancing loss is off: each process computes it on its own tokens (as Megatron-Core and
// DeepSpeed do), and a product of per-process means is not the whole batch's.
std::string check_lm_training(const dist::ProcessGroup& group) {
  const int64_t W = group.world_size(), per_process = 2;
  const std::string fixture = MOEPRUNE_TEST_FIXTURES "/lm/mixtral";
  torch::manual_seed(4);
  const auto stream = torch::randint(0, 96, {800}, torch::kLong);
  const auto options = moeprune::LMTrainerOptions()
                           .steps(3)
                           .context(12)
                           .lr(1e-3)
                           .warmup_steps(0)
                           .clip_norm(0.5)
                           .aux_loss_weight(0.0)
                           .progress(false)
                           .seed(5);
  std::map<std::string, torch::Tensor> want_grads, got_grads;
  auto single = moeprune::lm::load_causal_lm(fixture);
  const auto want = moeprune::train_lm(single, stream, {},
                                       moeprune::LMTrainerOptions(options)
                                           .batch_size(W * per_process)
                                           .after_backward([&](int64_t step, int64_t) {
                                             if (step == 0) {
                                               want_grads =
                                                   by_expert(single->moe_layers(), *single, true);
                                             }
                                           }));

  auto model = moeprune::lm::load_causal_lm(fixture);
  dist::shard_experts(*moeprune::lm::moe_view(model), group);
  const auto got =
      moeprune::train_lm(model, stream, {},
                         moeprune::LMTrainerOptions(options)
                             .batch_size(per_process)
                             .process_group(std::make_shared<dist::ProcessGroup>(group))
                             .after_backward([&](int64_t step, int64_t) {
                               if (step == 0) {
                                 got_grads = by_expert(model->moe_layers(), *model, true);
                               }
                             }));
  if (auto p = compare(got_grads, want_grads, 1e-4, 1e-6, "the first step's gradient of");
      !p.empty()) {
    return p;
  }
  for (size_t s = 0; s < want.steps.size(); ++s) {
    if (std::abs(got.steps[s].loss - want.steps[s].loss) > 1e-4) {
      return "step " + std::to_string(s) + "'s loss " + std::to_string(got.steps[s].loss) +
             ", one process " + std::to_string(want.steps[s].loss);
    }
  }
  return compare(by_expert(model->moe_layers(), *model, false),
                 by_expert(single->moe_layers(), *single, false), 0.0, 1e-4, "trained");
}

}  // namespace ep_checks

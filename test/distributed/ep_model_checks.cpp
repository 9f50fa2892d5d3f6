// ep_worker's whole-model checks: checkpoints of spread models written once (write_on_root) and
// resumed spread, and pruning a spread model, each against the same model on one process.
#include "ep_checks.h"

#include "../scratch_dir.h"
#include "free_port.h"

#include <moeprune/distributed/expert_parallel.h>
#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/moe_view.h>
#include <moeprune/models/vision/checkpoint.h>
#include <moeprune/models/vision/moe_view.h>
#include <moeprune/pruning/criterion.h>
#include <moeprune/pruning/pruning_plan.h>

#include <torch/torch.h>

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace ep_checks {
namespace {

using Layers = std::vector<std::pair<int64_t, moeprune::MoELayer>>;

// "" when `got` has `want`'s parameters and buffers, bit for bit.
std::string compare_whole(const torch::nn::Module& got, const torch::nn::Module& want,
                          const std::string& what) {
  for (const auto& [g, w] : {std::make_pair(got.named_parameters(), want.named_parameters()),
                             std::make_pair(got.named_buffers(), want.named_buffers())}) {
    if (g.size() != w.size()) {
      return what + ": " + std::to_string(g.size()) + " tensors, the reference has " +
             std::to_string(w.size());
    }
    for (const auto& t : w) {
      if (!g.contains(t.key())) {
        return what + ": no " + t.key();
      }
      if (!torch::equal(g[t.key()], t.value())) {
        return what + ": " + t.key() + " differs";
      }
    }
  }
  return "";
}

// "" when every expert `got`'s banks hold equals the expert of the same id in `want`'s.
std::string compare_experts(const Layers& got, const Layers& want, const std::string& what) {
  if (got.size() != want.size()) {
    return what + ": another number of MoE layers";
  }
  for (size_t i = 0; i < got.size(); ++i) {
    const auto& g = *got[i].second->experts();
    const auto& w = *want[i].second->experts();
    const auto w_params = w.named_parameters();
    for (const int64_t id : g.expert_ids()) {
      for (const auto& p : g.named_parameters()) {
        if (!torch::equal(p.value()[g.position_of(id)], w_params[p.key()][w.position_of(id)])) {
          return what + ": expert " + std::to_string(id) + " " + p.key() + " of MoE layer " +
                 std::to_string(got[i].first) + " differs";
        }
      }
    }
  }
  return "";
}

// "" when every MoE layer is spread (or, with spread = false, none is).
std::string check_spread(const Layers& layers, bool spread, const std::string& what) {
  for (const auto& [key, layer] : layers) {
    if (static_cast<bool>(layer->expert_exchange()) != spread) {
      return what + ": MoE layer " + std::to_string(key) + (spread ? " is not" : " is still") +
             " spread";
    }
  }
  return "";
}

// The message of what `run` throws, or "" when it does not throw.
template <typename F>
std::string error_of(F&& run) {
  try {
    run();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The small V-MoE with Mixtral experts (no router noise); `pruned`: its first MoE layer keeps 7
// of 8 experts, so the placement is uneven and a checkpoint records a state.
moeprune::VisionTransformer small_vmoe(bool pruned) {
  torch::manual_seed(0);
  moeprune::VisionTransformer model(
      moeprune::VisionTransformerOptions::small_vmoe(10).moe_preset("top_k_gated").group_images(2));
  if (pruned) {
    model->keep_experts(model->moe_layers().front().first, {0, 1, 2, 4, 5, 6, 7});
  }
  model->eval();
  return model;
}

}  // namespace

std::string check_vision_checkpoint(const dist::ProcessGroup& group, const std::string& dir) {
  const auto reference = small_vmoe(/*pruned=*/true);
  auto model = small_vmoe(/*pruned=*/true);
  const auto view = moeprune::moe_view(model);
  dist::shard_experts(*view, group);
  torch::manual_seed(1);
  const auto images = torch::randn({4, 1, 28, 28});
  torch::NoGradGuard no_grad;
  const auto before = model->forward(images).logits;
  std::vector<const void*> impls;
  std::vector<torch::Tensor> local;
  for (const auto& [key, layer] : model->moe_layers()) {
    impls.push_back(layer->experts()->w1.unsafeGetTensorImpl());
    local.push_back(layer->experts()->w1.clone());
  }

  const auto path = dir + "/vit.pt";
  dist::write_on_root(*view, group, [&] { moeprune::save_vision_transformer(path, model); });
  // The model is spread again on root, with the same parameter objects and values.
  if (auto p = check_spread(model->moe_layers(), true, "after write_on_root"); !p.empty()) {
    return p;
  }
  const auto layers = model->moe_layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].second->experts()->w1.unsafeGetTensorImpl() != impls[i]) {
      return "write_on_root replaced a parameter of MoE layer " + std::to_string(layers[i].first);
    }
    if (!torch::equal(layers[i].second->experts()->w1, local[i])) {
      return "write_on_root changed this process's experts of MoE layer " +
             std::to_string(layers[i].first);
    }
  }
  if (model->config_json() != reference->config_json()) {
    return "the spread model's configuration is not the whole model's: " + model->config_json();
  }

  // Every process reads the one file: the whole model, as one process built it.
  auto loaded = moeprune::load_vision_transformer(path);
  loaded->eval();
  if (auto p = compare_whole(*loaded, *reference, "the checkpoint written by rank 0"); !p.empty()) {
    return p;
  }
  // Resumed spread from it: this process's experts and the outputs are the model's.
  dist::shard_experts(*moeprune::moe_view(loaded), group);
  if (auto p = compare_experts(loaded->moe_layers(), model->moe_layers(), "resumed spread");
      !p.empty()) {
    return p;
  }
  if (!torch::equal(loaded->forward(images).logits, before)) {
    return "the model resumed spread from the checkpoint computes other logits";
  }

  // A spread model written directly is refused, and nothing is written.
  const auto direct = dir + "/direct_" + std::to_string(group.rank()) + ".pt";
  const auto refused = error_of([&] { moeprune::save_vision_transformer(direct, model); });
  if (!contains(refused, "holds only this process's share of its experts")) {
    return "saving a spread model directly: " + (refused.empty() ? "not refused" : refused);
  }
  if (test::path_exists(direct)) {
    return "the refused save left " + direct;
  }
  // A write that fails on root fails on every process, and root's layers are spread again.
  const auto failed = error_of(
      [&] { dist::write_on_root(*view, group, [] { TORCH_CHECK(false, "disk full (test)"); }); });
  const auto want = group.rank() == 0 ? std::string("disk full (test)")
                                      : std::string("rank 0 could not write: disk full (test)");
  if (!contains(failed, want)) {
    return "a failing write on rank 0: " + (failed.empty() ? "not reported" : failed);
  }
  if (auto p = check_spread(model->moe_layers(), true, "after a failed write"); !p.empty()) {
    return p;
  }
  if (!torch::equal(model->forward(images).logits, before)) {
    return "after a failed write the spread model computes other logits";
  }
  return "";
}

std::string check_lm_checkpoint(const dist::ProcessGroup& group, const std::string& dir,
                                const std::string& family) {
  const std::string fixture = MOEPRUNE_TEST_FIXTURES "/lm/" + family;
  // Layer 0 loses expert 3 (router kept): the written config records it, the loader removes it.
  const auto load = [&] {
    auto m = moeprune::lm::load_causal_lm(fixture);
    auto layer = m->moe_layers().front().second;
    std::vector<int64_t> keep;
    for (int64_t e = 0; e < layer->options.num_experts(); ++e) {
      if (e != 3) {
        keep.push_back(e);
      }
    }
    layer->keep_experts(keep);
    return m;
  };
  const auto reference = load();
  auto model = load();
  const auto view = moeprune::lm::moe_view(model);
  dist::shard_experts(*view, group);
  const auto out = dir + "/" + family;
  dist::write_on_root(*view, group, [&] { moeprune::lm::save_causal_lm(model, out); });
  auto loaded = moeprune::lm::load_causal_lm(out);
  if (auto p = compare_whole(*loaded, *reference, family + " written by rank 0"); !p.empty()) {
    return p;
  }
  dist::shard_experts(*moeprune::lm::moe_view(loaded), group);
  if (auto p =
          compare_experts(loaded->moe_layers(), model->moe_layers(), family + " resumed spread");
      !p.empty()) {
    return p;
  }
  const auto refused = error_of(
      [&] { moeprune::lm::save_causal_lm(model, out + "_direct" + std::to_string(group.rank())); });
  if (!contains(refused, "holds only this process's share of its experts")) {
    return family + " saved spread: " + (refused.empty() ? "not refused" : refused);
  }
  return "";
}

std::string check_other_group(const dist::ProcessGroup& group) {
  if (group.world_size() < 2) {
    return "";  // one process: any group of one matches
  }
  dist::Environment env;  // a group of this process alone
  env.master_port = test::free_port();
  const dist::ProcessGroup own(env, dist::ProcessGroupOptions().timeout(std::chrono::seconds(10)));
  // The first MoE layer over the real group, the others over this process alone: write_on_root
  // must refuse before it gathers the first.
  auto model = small_vmoe(/*pruned=*/false);
  const auto view = moeprune::moe_view(model);
  auto layers = model->moe_layers();
  if (layers.size() < 2) {
    return "the small V-MoE should have two MoE layers";
  }
  dist::shard_experts(layers.front().second, group);
  for (size_t i = 1; i < layers.size(); ++i) {
    dist::shard_experts(layers[i].second, own);
  }
  bool wrote = false;
  const auto refused = error_of([&] { dist::write_on_root(*view, group, [&] { wrote = true; }); });
  const auto want =
      "is spread over 1 processes, the group has " + std::to_string(group.world_size());
  if (!contains(refused, want)) {
    return "a model spread over another group: " + (refused.empty() ? "not refused" : refused);
  }
  if (wrote) {
    return "the refused write_on_root ran the writer";
  }
  return check_spread(model->moe_layers(), true, "after the refused write_on_root");
}

std::string check_pruning(const dist::ProcessGroup& group) {
  auto reference = small_vmoe(/*pruned=*/false);
  auto model = small_vmoe(/*pruned=*/false);
  torch::manual_seed(7);
  const auto calibration = torch::randn({8, 1, 28, 28});
  const moeprune::CalibrationData data = [calibration](const auto& visit) { visit(calibration); };
  dist::shard_experts(*moeprune::moe_view(model), group);

  // Whole again on every process, bit for bit, and no longer spread.
  dist::unshard_experts(*moeprune::moe_view(model));
  if (auto p = check_spread(model->moe_layers(), false, "after unshard_experts"); !p.empty()) {
    return p;
  }
  if (auto p = compare_whole(*model, *reference, "unshard_experts"); !p.empty()) {
    return p;
  }
  // REAP reads the experts' outputs on calibration tokens: the scores, the plan and the pruned
  // layers are one process's.
  const auto reap = moeprune::pruning::CriterionRegistry::with_builtins().create("reap");
  const auto view = moeprune::moe_view(model, data);
  const auto reference_view = moeprune::moe_view(reference, data);
  const auto scores = moeprune::pruning::score_experts(*reap, *view);
  const auto reference_scores = moeprune::pruning::score_experts(*reap, *reference_view);
  for (const auto& [key, s] : reference_scores) {
    if (!torch::equal(scores.at(key), s)) {
      return "the REAP scores of MoE layer " + std::to_string(key) + " differ";
    }
  }
  const auto plan = moeprune::pruning::PruningPlan::same_count(scores, *view, 2, {}, "reap");
  const auto reference_plan =
      moeprune::pruning::PruningPlan::same_count(reference_scores, *reference_view, 2, {}, "reap");
  if (plan.to_json() != reference_plan.to_json()) {
    return "another plan: " + plan.to_json() + " vs " + reference_plan.to_json();
  }
  moeprune::pruning::apply_plan(*view, plan);
  moeprune::pruning::apply_plan(*reference_view, reference_plan);
  dist::shard_experts(*view, group);
  if (model->config_json() != reference->config_json()) {
    return "the pruned spread model's configuration differs: " + model->config_json();
  }
  torch::manual_seed(8);
  const auto images = torch::randn({4, 1, 28, 28});
  torch::NoGradGuard no_grad;
  const auto got = model->forward(images).logits, want = reference->forward(images).logits;
  if (!torch::allclose(got, want, 1e-5, 1e-6)) {
    return "the pruned spread model's logits differ (max " +
           std::to_string((got - want).abs().max().item<double>()) + ")";
  }
  return "";
}

}  // namespace ep_checks

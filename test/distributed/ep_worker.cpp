// One process of the expert-parallel tests, started by scripts/launch (ctest: expert_parallel_N).
//   ep_worker check   every preset, with even, uneven (pruned) and interleaved placements: the
//                     sharded layer on this rank's tokens against the single-process layer on all
//                     ranks' tokens (computed here, from the same seeds): output, input gradient
//                     and this rank's expert gradients bitwise; the router's gradient summed over
//                     the ranks within fp32 rounding (a different summation order).
//   ep_worker train   data + expert parallel training of the small V-MoE against one process.
//   ep_worker join    joins the group and leaves (the set-up's error tests); prints the error.
// Exit status 0 when every check passed.
#include <moeprune/distributed/expert_parallel.h>
#include <moeprune/distributed/process_group.h>
#include <moeprune/layers/moe_layer.h>
#include <moeprune/models/vision/vision_transformer.h>
#include <moeprune/train/trainer.h>

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace dist = moeprune::distributed;
using moeprune::MoELayer;
using moeprune::MoELayerImpl;
using moeprune::MoELayerOptions;

namespace {

struct Case {
  std::string preset;
  std::string placement;  // even, pruned (7 of 8 experts: uneven), interleaved
};

// The gradient of parameter `name` of held expert `id` (zeros when no row reached the bank).
torch::Tensor expert_grad(const moeprune::ExpertBank& bank, const std::string& name, int64_t id) {
  const auto& ids = bank->expert_ids();
  const auto at = std::find(ids.begin(), ids.end(), id) - ids.begin();
  const auto param = bank->named_parameters()[name];
  return param.grad().defined() ? param.grad()[at] : torch::zeros_like(param[at]);
}

// Returns an empty string when the sharded layer matches the reference, else what differed.
std::string check(const Case& c, const dist::ProcessGroup& group) {
  const int64_t W = group.world_size(), r = group.rank();
  const int64_t items = 4, seq = 6, d = 16, F = 32, E = 8;
  torch::manual_seed(11);
  MoELayer full(MoELayerOptions::preset(c.preset, d, F, E));
  if (c.placement == "pruned") {
    full->keep_experts({0, 1, 2, 4, 5, 6, 7});
  }
  // Each rank's tokens are its own routing group(s), as the sharded layer routes them.
  full->set_group_size(items * seq);
  full->eval();  // no noise: both layers route alike
  MoELayer reference(std::dynamic_pointer_cast<MoELayerImpl>(full->clone()));

  torch::manual_seed(100);
  const auto X = torch::randn({W * items, seq, d});
  const auto G = torch::randn({W * items, seq, d});
  const auto x_all = X.clone().requires_grad_(true);
  const auto ref_out = reference->forward(x_all).output;
  ref_out.backward(G);

  dist::ExpertPlacement placement;
  if (c.placement == "interleaved") {
    for (int64_t b = 0; b < full->experts()->num_held(); ++b) {
      placement.rank_of.push_back(b % W);
    }
  }
  dist::shard_experts(full, group, placement);
  const auto x = X.narrow(0, r * items, items).clone().requires_grad_(true);
  const auto out = full->forward(x).output;
  out.backward(G.narrow(0, r * items, items));

  if (!torch::equal(out, ref_out.narrow(0, r * items, items))) {
    return "output differs (max " +
           std::to_string((out - ref_out.narrow(0, r * items, items)).abs().max().item<double>()) +
           ")";
  }
  if (!torch::equal(x.grad(), x_all.grad().narrow(0, r * items, items))) {
    return "input gradient differs";
  }
  for (const int64_t id : full->experts()->expert_ids()) {
    for (const auto& p : full->experts()->named_parameters()) {
      if (!torch::equal(expert_grad(full->experts(), p.key(), id),
                        expert_grad(reference->experts(), p.key(), id))) {
        return "expert " + std::to_string(id) + " " + p.key() + " gradient differs";
      }
    }
  }
  const auto reference_params = reference->named_parameters();
  for (const auto& p : full->named_parameters()) {
    if (p.key().rfind("router.", 0) != 0) {
      continue;
    }
    std::vector<torch::Tensor> summed{p.value().grad().clone()};
    group.all_reduce_sum_(summed);
    const auto want = reference_params[p.key()].grad();
    if (!torch::allclose(summed[0], want, 1e-5, 1e-6)) {
      return "router " + p.key() + " gradient summed over ranks differs";
    }
  }
  return "";
}

// Trains the small V-MoE (Mixtral-style experts: no router noise, so the processes route as one
// process would) for a few SGD steps on `group` with data and expert parallelism, and on one
// process with the whole batch; the weights must agree within fp32 rounding (the gradient sums
// run in another order). Returns what differed, or an empty string.
std::string check_training(const dist::ProcessGroup& group) {
  const int64_t W = group.world_size(), per_process = 16;
  torch::manual_seed(3);
  moeprune::data::ImageDataset data;
  data.labels = torch::randint(0, 10, {W * per_process * 3}, torch::kLong);
  data.images = (torch::rand({10, 1, 28, 28}).index_select(0, data.labels) * 200 +
                 torch::rand({data.labels.size(0), 1, 28, 28}) * 55)
                    .to(torch::kUInt8);
  data.num_classes = 10;
  const auto model_options =
      moeprune::VisionTransformerOptions::small_vmoe(10).moe_preset("mixtral").group_images(8);
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

  const auto want = single->named_parameters();
  for (const auto& [block, layer] : model->moe_layers()) {
    const auto prefix = "block" + std::to_string(block) + ".moe.experts.";
    for (const int64_t id : layer->experts()->expert_ids()) {
      for (const auto& p : layer->experts()->named_parameters()) {
        const auto& ids = layer->experts()->expert_ids();
        const auto at = std::find(ids.begin(), ids.end(), id) - ids.begin();
        if (!torch::allclose(p.value()[at], want[prefix + p.key()][id], 1e-4, 1e-6)) {
          return "trained expert " + std::to_string(id) + " " + prefix + p.key() + " differs";
        }
      }
    }
  }
  for (const auto& p : model->named_parameters()) {
    if (p.key().find(".moe.experts.") == std::string::npos &&
        !torch::allclose(p.value(), want[p.key()], 1e-4, 1e-6)) {
      return "trained " + p.key() + " differs (max " +
             std::to_string((p.value() - want[p.key()]).abs().max().item<double>()) + ")";
    }
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "check";
  try {
    const auto group = dist::ProcessGroup::from_env(
        dist::ProcessGroupOptions().timeout(std::chrono::seconds(mode == "join" ? 5 : 60)));
    if (mode == "join") {
      group.barrier();
      std::printf("joined\n");
      if (group.rank() == 0) {
        // Rank 0 serves the rendezvous: keep it up a while for a late duplicate to be told.
        std::this_thread::sleep_for(std::chrono::seconds(3));
      }
      return 0;
    }
    torch::set_num_threads(1);  // several processes share the cores
    std::vector<Case> cases;
    for (const std::string preset :
         {"vmoe", "e3moe", "expert_choice", "switch", "mixtral", "deepseek_v2", "deepseek_v3"}) {
      for (const std::string placement : {"even", "pruned", "interleaved"}) {
        if (preset == "e3moe" && placement != "even") {
          continue;  // members keep equal expert counts in contiguous blocks
        }
        cases.push_back({preset, placement});
      }
    }
    int failures = 0;
    if (mode == "train") {
      const auto problem = check_training(group);
      std::printf("%s data + expert parallel training%s\n", problem.empty() ? "ok  " : "FAIL",
                  problem.empty() ? "" : (": " + problem).c_str());
      group.barrier();
      return problem.empty() ? 0 : 1;
    }
    for (const auto& c : cases) {
      const auto problem = check(c, group);
      std::printf("%s %s %s%s\n", problem.empty() ? "ok  " : "FAIL", c.preset.c_str(),
                  c.placement.c_str(), problem.empty() ? "" : (": " + problem).c_str());
      failures += problem.empty() ? 0 : 1;
    }
    group.barrier();
    std::printf("%d of %zu cases passed on rank %ld of %ld\n",
                static_cast<int>(cases.size()) - failures, cases.size(),
                static_cast<long>(group.rank()), static_cast<long>(group.world_size()));
    return failures == 0 ? 0 : 1;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.msg().c_str());
    return 1;
  }
}

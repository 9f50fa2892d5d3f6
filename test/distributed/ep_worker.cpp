// One process of the expert-parallel tests, started by scripts/launch (ctest: expert_parallel_N,
// data_parallel_training_N, ...). Every check compares with the same computation on one process
// (done here, from the same seeds or files; ep_checks.h):
//   ep_worker check       every preset, group-limited routing with several groups and
//                         capacities that drop (test/layer_variants.h), with even, uneven
//                         (pruned) and interleaved placements:
//                         the sharded layer's output, input gradient and this rank's expert
//                         gradients bitwise; the router's gradient summed over the ranks within
//                         fp32 rounding (a different summation order).
//   ep_worker train       data + expert parallel training of the small V-MoE and of the Mixtral
//                         fixture (train_lm); the Trainer's refusal of a one-image set.
//   ep_worker checkpoint  spread models written once by rank 0 and resumed spread (vision .pt,
//                         Hugging Face Mixtral and Qwen2-MoE); pruning a spread model.
//   ep_worker join        joins the group and leaves (the set-up's error tests).
// Exit status 0 when every check passed.
#include "ep_checks.h"

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace dist = moeprune::distributed;

namespace {

// Runs the named checks, prints one line each, returns the number that failed.
int run(const std::vector<std::pair<std::string, std::function<std::string()>>>& checks) {
  int failures = 0;
  for (const auto& [name, check] : checks) {
    std::string problem;
    try {
      problem = check();
    } catch (const c10::Error& e) {
      problem = std::string("threw: ") + e.what_without_backtrace();
    }
    std::printf("%s %s%s\n", problem.empty() ? "ok  " : "FAIL", name.c_str(),
                problem.empty() ? "" : (": " + problem).c_str());
    std::fflush(stdout);
    failures += problem.empty() ? 0 : 1;
  }
  return failures;
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
    std::vector<std::pair<std::string, std::function<std::string()>>> checks;
    // A folder all ranks share for this run (the launcher's port is unique to it).
    const auto dir = (std::filesystem::temp_directory_path() /
                      ("moeprune_ep_" + std::string(std::getenv("MASTER_PORT"))))
                         .string();
    if (mode == "check") {
      for (const auto& c : ep_checks::layer_cases()) {
        checks.emplace_back(c.preset + " " + c.placement,
                            [c, &group] { return ep_checks::check_layer(c, group); });
      }
    } else if (mode == "train") {
      checks = {
          {"data + expert parallel training (vision)",
           [&] { return ep_checks::check_vision_training(group); }},
          {"a one-image training set refused",
           [&] { return ep_checks::check_small_training_set(group); }},
          {"data + expert parallel training (train_lm, Mixtral)",
           [&] { return ep_checks::check_lm_training(group); }},
      };
    } else if (mode == "checkpoint") {
      if (group.rank() == 0) {
        std::filesystem::create_directories(dir);
      }
      group.barrier();
      checks = {
          {"vision checkpoint written on rank 0",
           [&] { return ep_checks::check_vision_checkpoint(group, dir); }},
          {"Mixtral checkpoint written on rank 0",
           [&] { return ep_checks::check_lm_checkpoint(group, dir, "mixtral"); }},
          {"Qwen2-MoE checkpoint written on rank 0",
           [&] { return ep_checks::check_lm_checkpoint(group, dir, "qwen2_moe"); }},
          {"write_on_root refuses another group's layers",
           [&] { return ep_checks::check_other_group(group); }},
          {"pruning a spread model", [&] { return ep_checks::check_pruning(group); }},
      };
    } else {
      std::fprintf(stderr, "ep_worker: unknown mode '%s' (check, train, checkpoint, join)\n",
                   mode.c_str());
      return 2;
    }
    const int failures = run(checks);
    group.barrier();
    if (mode == "checkpoint" && group.rank() == 0) {
      // rm -rf, not std::filesystem::remove_all (libtorch exports its own; test/scratch_dir.h).
      const int removed = std::system(("rm -rf '" + dir + "'").c_str());
      (void)removed;
    }
    std::printf("%d of %zu checks passed on rank %ld of %ld\n",
                static_cast<int>(checks.size()) - failures, checks.size(),
                static_cast<long>(group.rank()), static_cast<long>(group.world_size()));
    return failures == 0 ? 0 : 1;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
    return 1;
  }
}

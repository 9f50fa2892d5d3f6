#pragma once

// The checks ep_worker runs on every process of a group (started by scripts/launch). Each returns
// what differed from its single-process reference, or an empty string when everything agreed.
#include <moeprune/distributed/process_group.h>

#include <string>
#include <vector>

namespace ep_checks {

namespace dist = moeprune::distributed;

struct Case {
  std::string preset;     // a preset or a variant of test/layer_variants.h
  std::string placement;  // even, pruned (7 of 8 experts: uneven), interleaved
};

/// Every preset and variant with every placement it allows.
std::vector<Case> layer_cases();
/// The sharded layer on this rank's tokens against the single-process layer on all ranks' tokens.
std::string check_layer(const Case& c, const dist::ProcessGroup& group);

/// Data + expert parallel training of the small V-MoE against one process.
std::string check_vision_training(const dist::ProcessGroup& group);
/// The Trainer's refusal of a training set too small to give every process an image.
std::string check_small_training_set(const dist::ProcessGroup& group);
/// Data + expert parallel training of the Mixtral fixture (train_lm) against one process.
std::string check_lm_training(const dist::ProcessGroup& group);

/// A spread (and pruned) small V-MoE written once by rank 0 (write_on_root), read back whole and
/// spread again; the refusals around it. `dir` is shared by the processes.
std::string check_vision_checkpoint(const dist::ProcessGroup& group, const std::string& dir);
/// The same for a Hugging Face checkpoint of the language-model fixture `family`.
std::string check_lm_checkpoint(const dist::ProcessGroup& group, const std::string& dir,
                                const std::string& family);
/// write_on_root's refusal of a model spread over another group than the one it is given.
std::string check_other_group(const dist::ProcessGroup& group);
/// Pruning a spread model (unshard, score, plan, apply, shard again) against one process.
std::string check_pruning(const dist::ProcessGroup& group);

}  // namespace ep_checks

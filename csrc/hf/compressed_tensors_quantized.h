#pragma once

// Reading checkpoints whose weights compressed-tensors stores "pack-quantized" (what
// llm-compressor writes for W4A16/W8A16, and `moeprune quantize --format compressed-tensors`):
// config.json's quantization_config names config groups, each with target modules ("re:"
// regular expressions matched from the start of a module's name, exact names, or the class
// "Linear") and weight quantisation arguments; each targeted X.weight is stored as the parts
// compressed_tensors_pack.h describes and read as the dense weight it dequantises to.
#include "hf/config.h"

#include <moeprune/io/safetensors.h>

#include <cstdint>
#include <string>
#include <vector>

namespace moeprune::hf::detail {

/// One config group's weight arguments, as read (and checked) from quantization_config.
struct PackedGroup {
  std::string name;  ///< "group_0"
  std::vector<std::string> targets;
  int64_t bits = 4;
  bool symmetric = true;
  int64_t group_size = 0;         ///< inputs per scale; 0: one per output row (strategy "channel")
  bool act_order_groups = false;  ///< actorder "group": each weight stores its g_idx
  std::vector<std::string> ignore;  ///< the config's ignore list (modules left unquantised)
};

/// Whether `group` quantises `module` (a target matches and no ignore entry does), matching as
/// compressed-tensors' is_match does on a name: "re:" patterns from the start of the name, other
/// entries the exact name, or the class "Linear" (every module moeprune asks about is one).
bool targets_module(const PackedGroup& group, const std::string& module);

/// The groups of a compressed-tensors quantization_config whose weights are stored
/// pack-quantized; empty for any other config. Refuses, naming the field and config.json, what
/// moeprune does not read: another format of quantised weights, activation quantisation, a type
/// other than int, bits out of 1..8, a strategy other than group/channel.
std::vector<PackedGroup> pack_quantized_groups(const Config& config);

/// For such a config: adds every weight X.weight that `checkpoint` stores as X.weight_packed and
/// its parts as a decoded tensor (Checkpoint::add_decoded) in the scales' dtype, with its group's
/// arguments (the first group with a target matching X; refused when none does, or when the
/// scales' shape disagrees with the group size). Returns how many; 0 for any other config.
int64_t add_pack_quantized_weights(const Config& config, safetensors::Checkpoint& checkpoint);

}  // namespace moeprune::hf::detail

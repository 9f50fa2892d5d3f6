#pragma once

// What pruning, merging and factorising did to an expert bank, in a form that rebuilds its shapes
// (checkpoints), travels with a model, and is written into a Hugging Face config's "moeprune"
// section. The bank reports it (ExpertBankImpl::state) and rebuilds from it (restore); models
// keep one per MoE layer instead of a log of the compressions applied.
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace moeprune {

struct ExpertBankState {
  /// Experts the bank was built with (the router width before any pruning).
  int64_t num_experts = 0;
  /// Original ids of the experts the bank holds, increasing (a merged bank: each group's first
  /// member, in bank order).
  std::vector<int64_t> held;
  /// Merge groups (original ids, the dominant expert first), one per held expert; empty unless
  /// the bank was merged (M-SMoE).
  std::vector<std::vector<int64_t>> groups;
  /// Rank of the low-rank part of factorised experts (MC-SMoE); 0 for plain experts.
  int64_t rank = 0;

  /// True when the bank holds every expert, unmerged and unfactorised.
  bool is_plain() const;
  /// The JSON object {"num_experts", "held", "groups"?, "rank"?}; from_json names a missing or
  /// mistyped field and refuses ids outside [0, num_experts).
  std::string to_json() const;
  static ExpertBankState from_json(const std::string& text);
  bool operator==(const ExpertBankState& other) const;
};

/// A MoE layer's compression state: its bank's, and whether the pruned experts' router rows went
/// with them (Expert Drop, and always for expert choice).
struct MoELayerState {
  ExpertBankState bank;
  bool router_rows_dropped = false;

  bool is_plain() const { return bank.is_plain() && !router_rows_dropped; }
  std::string to_json() const;
  static MoELayerState from_json(const std::string& text);
  bool operator==(const MoELayerState& other) const;
};

/// The JSON text, for messages and test output.
std::ostream& operator<<(std::ostream& out, const ExpertBankState& state);
std::ostream& operator<<(std::ostream& out, const MoELayerState& state);

}  // namespace moeprune

#include <moeprune/distributed/expert_parallel.h>

#include "distributed/expert_parallel_exchange.h"

#include <torch/torch.h>

#include <algorithm>

namespace moeprune::distributed {

ExpertPlacement ExpertPlacement::even(int64_t num_experts, int64_t world_size) {
  TORCH_CHECK(world_size >= 1 && num_experts >= world_size, "ExpertPlacement: ", num_experts,
              " experts cannot give each of ", world_size, " ranks one");
  ExpertPlacement p;
  const int64_t base = num_experts / world_size, extra = num_experts % world_size;
  for (int64_t r = 0; r < world_size; ++r) {
    for (int64_t i = 0; i < base + (r < extra ? 1 : 0); ++i) {
      p.rank_of.push_back(r);
    }
  }
  return p;
}

std::vector<int64_t> ExpertPlacement::experts_of(int64_t rank) const {
  std::vector<int64_t> experts;
  for (size_t b = 0; b < rank_of.size(); ++b) {
    if (rank_of[b] == rank) {
      experts.push_back(static_cast<int64_t>(b));
    }
  }
  return experts;
}

void shard_experts(MoELayer& layer, const ProcessGroup& group, const ExpertPlacement& placement) {
  const char* who = "distributed::shard_experts";
  TORCH_CHECK(!layer->expert_exchange(), who, ": the layer's experts are already spread");
  auto& bank = *layer->experts();
  TORCH_CHECK(!bank.is_merged(), who,
              ": merged banks cannot be spread yet (their experts serve several router ids)");
  TORCH_CHECK(bank.options.rank() == 0, who, ": factorised banks cannot be spread yet");
  const int64_t E = bank.num_held(), W = group.world_size();
  const auto p = placement.rank_of.empty() ? ExpertPlacement::even(E, W) : placement;
  TORCH_CHECK(static_cast<int64_t>(p.rank_of.size()) == E, who, ": the placement names ",
              p.rank_of.size(), " experts, the layer holds ", E);
  for (int64_t r = 0; r < W; ++r) {
    TORCH_CHECK(!p.experts_of(r).empty(), who, ": rank ", r, " would hold no expert");
  }
  for (const int64_t r : p.rank_of) {
    TORCH_CHECK(r >= 0 && r < W, who, ": the placement names rank ", r, ", outside [0, ", W, ")");
  }
  // The ensemble router joins its members' plans in member order: positions must follow the bank.
  TORCH_CHECK(!std::holds_alternative<EnsembleRouterConfig>(layer->options.router()) ||
                  std::is_sorted(p.rank_of.begin(), p.rank_of.end()),
              who, ": an ensemble (E3-MoE) layer needs contiguous blocks of experts per rank");
  torch::Tensor router_to_bank;
  if (layer->router().num_experts() == E) {
    router_to_bank = torch::arange(E, torch::kLong);  // every router column has its expert
  } else {
    router_to_bank = bank.expert_map(torch::kCPU);  // pruned without dropping router columns
  }
  auto exchange =
      std::make_shared<detail::ExpertParallelExchange>(group, router_to_bank, p, bank.expert_ids());
  std::vector<int64_t> mine;
  for (const int64_t b : p.experts_of(group.rank())) {
    mine.push_back(bank.expert_ids()[static_cast<size_t>(b)]);
  }
  bank.keep_experts(mine);
  layer->set_expert_exchange(std::move(exchange));
}

int64_t last_exchange_bytes(const MoELayer& layer) {
  const auto* exchange = detail::exchange_of(layer);
  return exchange == nullptr ? 0 : exchange->last_bytes();
}

}  // namespace moeprune::distributed

#include <moeprune/distributed/expert_parallel.h>

#include "distributed/all_to_all.h"

#include <torch/torch.h>

#include <algorithm>
#include <numeric>

namespace moeprune::distributed {
namespace {

// Serves a layer's rows through the experts of every process. Positions number the bank experts
// rank after rank (within a rank in bank order), so the layer's position-major buffer is already
// split by destination.
class ExpertParallelExchange : public ExpertExchange {
 public:
  ExpertParallelExchange(ProcessGroup group, const torch::Tensor& router_to_bank,
                         const ExpertPlacement& placement)
      : group_(std::move(group)) {
    const auto W = group_.world_size();
    std::vector<int64_t> position_of_bank(placement.rank_of.size(), -1);
    int64_t position = 0;
    for (int64_t r = 0; r < W; ++r) {
      const auto experts = placement.experts_of(r);
      first_.push_back(position);
      held_.push_back(static_cast<int64_t>(experts.size()));
      for (const int64_t b : experts) {
        position_of_bank[static_cast<size_t>(b)] = position++;
      }
    }
    auto map = router_to_bank.to(torch::kCPU, torch::kLong).contiguous().clone();
    auto* m = map.data_ptr<int64_t>();
    for (int64_t e = 0; e < map.numel(); ++e) {
      m[e] = m[e] < 0 ? -1 : position_of_bank[static_cast<size_t>(m[e])];
    }
    map_ = map;
  }

  torch::Tensor expert_map(const torch::Device& device) const override {
    if (map_.device() != device) {
      map_ = map_.to(device);
    }
    return map_;
  }

  int64_t num_positions() const override { return std::accumulate(held_.begin(), held_.end(), 0L); }

  torch::Tensor run(const torch::Tensor& rows, const torch::Tensor& position_counts,
                    ExpertBankImpl& local) override {
    const int64_t W = group_.world_size(), me = group_.rank(), n_me = held_[me];
    TORCH_CHECK(position_counts.numel() == num_positions(),
                "expert parallelism: ", position_counts.numel(), " position counts for ",
                num_positions(), " positions");
    const auto counts = position_counts.to(torch::kCPU, torch::kLong).contiguous();
    const auto* c = counts.const_data_ptr<int64_t>();
    std::vector<int64_t> send_rows(static_cast<size_t>(W), 0);
    for (int64_t r = 0; r < W; ++r) {
      for (int64_t p = first_[r]; p < first_[r] + held_[r]; ++p) {
        send_rows[r] += c[p];
      }
    }
    // Each process learns how many rows every other one sends to each of its experts.
    const auto received_counts =
        group_
            .all_to_all(position_counts.to(torch::kLong).contiguous(), held_,
                        std::vector<int64_t>(static_cast<size_t>(W), n_me))
            .to(torch::kCPU)
            .contiguous();
    const auto* rc = received_counts.const_data_ptr<int64_t>();  // [W][n_me]
    std::vector<int64_t> recv_rows(static_cast<size_t>(W), 0);
    for (int64_t s = 0; s < W; ++s) {
      for (int64_t e = 0; e < n_me; ++e) {
        recv_rows[s] += rc[s * n_me + e];
      }
    }
    const auto received = detail::all_to_all_with_grad(group_, rows, send_rows, recv_rows);

    // Received rows come by sender, each sender's by expert; the experts need them by expert, by
    // sender within: the order the single-process layer has them in (senders hold consecutive
    // routing groups).
    std::vector<int64_t> start(static_cast<size_t>(W * n_me));
    int64_t at = 0;
    for (int64_t s = 0; s < W; ++s) {
      for (int64_t e = 0; e < n_me; ++e) {
        start[s * n_me + e] = at;
        at += rc[s * n_me + e];
      }
    }
    std::vector<int64_t> order, local_counts(static_cast<size_t>(n_me), 0);
    order.reserve(static_cast<size_t>(at));
    for (int64_t e = 0; e < n_me; ++e) {
      for (int64_t s = 0; s < W; ++s) {
        for (int64_t i = 0; i < rc[s * n_me + e]; ++i) {
          order.push_back(start[s * n_me + e] + i);
        }
        local_counts[e] += rc[s * n_me + e];
      }
    }
    bool identity = true;
    for (size_t i = 0; i < order.size() && identity; ++i) {
      identity = order[i] == static_cast<int64_t>(i);
    }
    torch::Tensor outputs;
    if (identity) {
      outputs = local.forward(received, local_counts);
    } else {
      const auto index = torch::tensor(order, torch::kLong).to(rows.device());
      const auto by_expert = local.forward(received.index_select(0, index), local_counts);
      // Back to sender order: row order[i] of `received` is row i of `by_expert`.
      auto inverse = torch::empty_like(index);
      inverse.index_put_({index}, torch::arange(index.numel(), index.options()));
      outputs = by_expert.index_select(0, inverse);
    }
    const auto result = detail::all_to_all_with_grad(group_, outputs, recv_rows, send_rows);

    const int64_t row_bytes = rows.size(1) * static_cast<int64_t>(rows.element_size());
    int64_t rows_out = 0;
    for (int64_t r = 0; r < W; ++r) {
      rows_out += r == me ? 0 : send_rows[r] + recv_rows[r];  // rows out and outputs back
    }
    last_bytes_ = rows_out * row_bytes + (W - 1) * n_me * static_cast<int64_t>(sizeof(int64_t));
    return result;
  }

  int64_t last_bytes() const { return last_bytes_; }

 private:
  ProcessGroup group_;
  std::vector<int64_t> first_, held_;  // per rank: its first position and its expert count
  mutable torch::Tensor map_;
  int64_t last_bytes_ = 0;
};

}  // namespace

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
  TORCH_CHECK(layer->options.router() != RouterKind::kEnsemble ||
                  std::is_sorted(p.rank_of.begin(), p.rank_of.end()),
              who, ": an ensemble (E3-MoE) layer needs contiguous blocks of experts per rank");
  torch::Tensor router_to_bank;
  if (layer->router().num_experts() == E) {
    router_to_bank = torch::arange(E, torch::kLong);  // every router column has its expert
  } else {
    router_to_bank = bank.expert_map(torch::kCPU);  // pruned without dropping router columns
  }
  auto exchange = std::make_shared<ExpertParallelExchange>(group, router_to_bank, p);
  std::vector<int64_t> mine;
  for (const int64_t b : p.experts_of(group.rank())) {
    mine.push_back(bank.expert_ids()[static_cast<size_t>(b)]);
  }
  bank.keep_experts(mine);
  layer->set_expert_exchange(std::move(exchange));
}

int64_t last_exchange_bytes(const MoELayer& layer) {
  const auto* exchange =
      dynamic_cast<const ExpertParallelExchange*>(layer->expert_exchange().get());
  return exchange == nullptr ? 0 : exchange->last_bytes();
}

}  // namespace moeprune::distributed

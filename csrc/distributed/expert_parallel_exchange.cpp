#include "distributed/expert_parallel_exchange.h"

#include "distributed/all_to_all.h"

#include <torch/torch.h>

#include <numeric>

namespace moeprune::distributed::detail {

ExpertParallelExchange::ExpertParallelExchange(ProcessGroup group,
                                               const torch::Tensor& router_to_bank,
                                               const ExpertPlacement& placement,
                                               std::vector<int64_t> held)
    : group_(std::move(group)), placement_(placement), held_ids_(std::move(held)) {
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

torch::Tensor ExpertParallelExchange::expert_map(const torch::Device& device) const {
  if (map_.device() != device) {
    map_ = map_.to(device);
  }
  return map_;
}

int64_t ExpertParallelExchange::num_positions() const {
  return std::accumulate(held_.begin(), held_.end(), int64_t{0});
}

std::vector<int64_t> ExpertParallelExchange::experts_of(int64_t rank) const {
  std::vector<int64_t> ids;
  for (const int64_t b : placement_.experts_of(rank)) {
    ids.push_back(held_ids_[static_cast<size_t>(b)]);
  }
  return ids;
}

torch::Tensor ExpertParallelExchange::run(const torch::Tensor& rows,
                                          const torch::Tensor& position_counts,
                                          ExpertBankImpl& local) {
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
  const auto received_counts = group_
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

ExpertParallelExchange* exchange_of(const MoELayer& layer) {
  return dynamic_cast<ExpertParallelExchange*>(layer->expert_exchange().get());
}

}  // namespace moeprune::distributed::detail

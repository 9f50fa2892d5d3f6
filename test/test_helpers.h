#pragma once

#include "naive_routing.h"

#include <moeprune/routing/routing_plan.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <vector>

namespace test {

inline torch::Tensor to_tensor(const naive::Matrix& m) {
  const int64_t rows = static_cast<int64_t>(m.size());
  const int64_t cols = rows ? static_cast<int64_t>(m[0].size()) : 0;
  auto t = torch::empty({rows, cols}, torch::kDouble);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      t[i][j] = m[i][j];
    }
  }
  return t.to(torch::kFloat);
}

inline naive::Matrix to_matrix(const torch::Tensor& t) {
  const auto c = t.to(torch::kDouble).contiguous();
  naive::Matrix m(c.size(0), std::vector<double>(c.size(1)));
  for (int64_t i = 0; i < c.size(0); ++i) {
    for (int64_t j = 0; j < c.size(1); ++j) {
      m[i][j] = c[i][j].item<double>();
    }
  }
  return m;
}

// Random probabilities with distinct values per row (so the reference's tie rule never decides).
inline naive::Matrix random_probs(int64_t T, int64_t E, uint64_t seed) {
  torch::manual_seed(seed);
  return to_matrix(torch::randn({T, E}).mul(2.0).softmax(-1));
}

// The plan agrees with the reference slot by slot and row by row.
inline void require_matches(const moeprune::RoutingPlan& plan, const naive::Routing& ref) {
  const int64_t T = static_cast<int64_t>(ref.slots.size());
  REQUIRE(plan.num_tokens() == T);
  const int64_t K = plan.slots_per_token();
  const auto expert = plan.expert_index.contiguous();
  const auto weight = plan.combine_weight.to(torch::kDouble).contiguous();
  const auto slot_row = plan.slot_row.contiguous();
  const auto row_slot = plan.row_slot.contiguous();
  int64_t kept = 0;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < K; ++j) {
      const auto& s = ref.slots[t][j];
      INFO("token " << t << " slot " << j);
      CHECK(expert[t][j].item<int64_t>() == s.expert);
      CHECK(weight[t][j].item<double>() == Approx(s.weight).epsilon(1e-5));
      CHECK((slot_row[t][j].item<int64_t>() >= 0) == s.kept);
      kept += s.kept ? 1 : 0;
    }
  }
  REQUIRE(plan.num_rows() == kept);
  // Expert-major rows in the reference's fill order, and the two maps invert each other.
  int64_t r = 0;
  const auto offsets = plan.expert_offsets.contiguous();
  for (size_t e = 0; e < ref.rows_of_expert.size(); ++e) {
    INFO("expert " << e);
    REQUIRE(offsets[e].item<int64_t>() == r);
    for (const int64_t slot : ref.rows_of_expert[e]) {
      REQUIRE(row_slot[r].item<int64_t>() == slot);
      REQUIRE(slot_row.view({-1})[slot].item<int64_t>() == r);
      ++r;
    }
    REQUIRE(plan.expert_counts[e].item<int64_t>() ==
            static_cast<int64_t>(ref.rows_of_expert[e].size()));
  }
  REQUIRE(offsets[-1].item<int64_t>() == r);
}

}  // namespace test

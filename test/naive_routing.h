#pragma once

// Loop-based reference routers, written from the papers' descriptions, that the library's
// tensor implementations are checked against.
#include <cstdint>
#include <vector>

namespace naive {

using Matrix = std::vector<std::vector<double>>;

struct Slot {
  int64_t expert = -1;
  double weight = 0.0;
  bool kept = false;
};

struct Routing {
  std::vector<std::vector<Slot>> slots;  // [T][K]
  // For each expert, its kept slots (t * K + j) in buffer order.
  std::vector<std::vector<int64_t>> rows_of_expert;
};

// Top-k token choice. capacity < 0: dropless. group_size 0: one group.
Routing top_k(const Matrix& probs, int64_t k, int64_t capacity, int64_t group_size, bool bpr,
              bool renormalize);

// Expert choice: each expert takes its `capacity` best tokens per group.
Routing expert_choice(const Matrix& probs, int64_t capacity, int64_t group_size);

// V-MoE capacity with plain integer arithmetic.
int64_t capacity(int64_t group_size, int64_t k, double cf, int64_t experts, int64_t multiple);

}  // namespace naive

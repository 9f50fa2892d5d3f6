#include "naive_routing.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace naive {

int64_t capacity(int64_t group_size, int64_t k, double cf, int64_t experts, int64_t multiple) {
  int64_t c = static_cast<int64_t>(std::ceil(group_size * k * cf / experts));
  c = std::max<int64_t>(c, 1);
  while (multiple > 1 && c % multiple != 0) {
    ++c;
  }
  return c;
}

Routing top_k(const Matrix& probs, int64_t k, int64_t capacity, int64_t group_size, bool bpr,
              bool renormalize) {
  const int64_t T = static_cast<int64_t>(probs.size());
  const int64_t E = T ? static_cast<int64_t>(probs[0].size()) : 0;
  const int64_t S = group_size > 0 ? group_size : std::max<int64_t>(T, 1);
  Routing out;
  out.slots.assign(T, std::vector<Slot>(k));
  out.rows_of_expert.assign(E, {});
  // Each token's choices: highest probability first, the lower expert id on ties.
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int64_t> idx(E);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(),
                     [&](int64_t a, int64_t b) { return probs[t][a] > probs[t][b]; });
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) {
      sum += probs[t][idx[j]];
    }
    for (int64_t j = 0; j < k; ++j) {
      out.slots[t][j].expert = idx[j];
      out.slots[t][j].weight = renormalize ? probs[t][idx[j]] / sum : probs[t][idx[j]];
    }
  }
  // Per expert, kept slots by group (groups in order).
  for (int64_t g0 = 0; g0 < T; g0 += S) {
    std::vector<int64_t> order(S);
    std::iota(order.begin(), order.end(), g0);
    if (bpr) {
      // Batch Priority Routing: tokens by their top-1 probability, highest first.
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return probs[a][out.slots[a][0].expert] > probs[b][out.slots[b][0].expert];
      });
    }
    std::vector<int64_t> fill(E, 0);
    std::vector<std::vector<int64_t>> group_rows(E);
    for (int64_t j = 0; j < k; ++j) {  // every token's j-th choice ...
      for (const int64_t t : order) {  // ... in service order
        Slot& s = out.slots[t][j];
        const int64_t pos = fill[s.expert]++;
        s.kept = capacity < 0 || pos < capacity;
        if (s.kept) {
          group_rows[s.expert].push_back(t * k + j);
        }
      }
    }
    for (int64_t e = 0; e < E; ++e) {
      out.rows_of_expert[e].insert(out.rows_of_expert[e].end(), group_rows[e].begin(),
                                   group_rows[e].end());
    }
  }
  return out;
}

Routing expert_choice(const Matrix& probs, int64_t capacity, int64_t group_size) {
  const int64_t T = static_cast<int64_t>(probs.size());
  const int64_t E = T ? static_cast<int64_t>(probs[0].size()) : 0;
  const int64_t S = group_size > 0 ? group_size : std::max<int64_t>(T, 1);
  Routing out;
  out.slots.assign(T, std::vector<Slot>(E));
  out.rows_of_expert.assign(E, {});
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t e = 0; e < E; ++e) {
      out.slots[t][e] = {-1, probs[t][e], false};  // unused until expert e picks token t
    }
  }
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t g0 = 0; g0 < T; g0 += S) {
      std::vector<int64_t> order(S);
      std::iota(order.begin(), order.end(), g0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return probs[a][e] > probs[b][e]; });
      for (int64_t i = 0; i < std::min(capacity, S); ++i) {
        out.slots[order[i]][e] = {e, probs[order[i]][e], true};
        out.rows_of_expert[e].push_back(order[i] * E + e);
      }
    }
  }
  return out;
}

}  // namespace naive

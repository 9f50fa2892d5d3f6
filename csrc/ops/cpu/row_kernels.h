#pragma once

// The three loops behind dispatch, combine and their backward passes on the CPU. Each output
// row is produced by one thread, reading a token's slots in order j = 0..K-1, so results do
// not depend on the thread count.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace moeprune::cpu {

inline int64_t grain_for_width(int64_t d) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1));
}

// out[r] = src[row_slot[r] / K] * (weight ? weight[row_slot[r]] : 1); a padding row
// (row_slot[r] == -1, the fixed-size layout of routing.h) is zero.
template <typename scalar_t>
void gather_rows(const scalar_t* src, const scalar_t* weight, const int64_t* row_slot, int64_t R,
                 int64_t K, int64_t num_slots, int64_t d, scalar_t* out, const char* op) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, R, grain_for_width(d), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t s = row_slot[r];
      TORCH_CHECK(s >= -1 && s < num_slots, op, ": row_slot[", r, "] = ", s,
                  " is outside the slots [0, ", num_slots, ") and not -1 (padding)");
      scalar_t* dst = out + r * d;
      if (s == -1) {
        std::fill(dst, dst + d, scalar_t(0));
        continue;
      }
      const scalar_t* in = src + (s / K) * d;
      if (weight == nullptr) {
        std::memcpy(dst, in, sizeof(scalar_t) * static_cast<size_t>(d));
      } else {
        const acc_t w = static_cast<acc_t>(weight[s]);
        for (int64_t i = 0; i < d; ++i) {
          dst[i] = static_cast<scalar_t>(w * static_cast<acc_t>(in[i]));
        }
      }
    }
  });
}

// out[t] = sum_j (weight ? weight[t, j] : 1) * rows[slot_row[t, j]] over slots with a row.
// Accumulates in at::opmath_type (fp32 for half/bf16); fp32 and fp64 accumulate in the output
// row itself, which saves a pass over a scratch row.
template <typename scalar_t>
void sum_slot_rows(const scalar_t* rows, const scalar_t* weight, const int64_t* slot_row, int64_t T,
                   int64_t K, int64_t R, int64_t d, scalar_t* out, const char* op) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool in_place = std::is_same_v<acc_t, scalar_t>;
  at::parallel_for(0, T, grain_for_width(d), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(in_place ? 0 : static_cast<size_t>(d));
    for (int64_t t = begin; t < end; ++t) {
      scalar_t* dst = out + t * d;
      acc_t* acc = nullptr;
      if constexpr (in_place) {
        acc = dst;
      } else {
        acc = scratch.data();
      }
      bool first = true;
      for (int64_t j = 0; j < K; ++j) {
        const int64_t r = slot_row[t * K + j];
        if (r < 0) {
          continue;
        }
        TORCH_CHECK(r < R, op, ": slot_row[", t, ", ", j, "] = ", r, " is outside the ", R,
                    " rows");
        const acc_t w = weight == nullptr ? acc_t(1) : static_cast<acc_t>(weight[t * K + j]);
        const scalar_t* src = rows + r * d;
        if (first) {
          for (int64_t i = 0; i < d; ++i) {
            acc[i] = w * static_cast<acc_t>(src[i]);
          }
          first = false;
        } else {
          for (int64_t i = 0; i < d; ++i) {
            acc[i] += w * static_cast<acc_t>(src[i]);
          }
        }
      }
      if (first) {
        std::fill(acc, acc + d, acc_t(0));
      }
      if constexpr (!in_place) {
        for (int64_t i = 0; i < d; ++i) {
          dst[i] = static_cast<scalar_t>(acc[i]);
        }
      }
    }
  });
}

// out[t, j] = <rows[slot_row[t, j]], tokens[t]>, or 0 for a dropped slot.
template <typename scalar_t>
void slot_dots(const scalar_t* rows, const scalar_t* tokens, const int64_t* slot_row, int64_t T,
               int64_t K, int64_t R, int64_t d, scalar_t* out, const char* op) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, T, grain_for_width(d * K), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const scalar_t* tok = tokens + t * d;
      for (int64_t j = 0; j < K; ++j) {
        const int64_t r = slot_row[t * K + j];
        acc_t dot = 0;
        if (r >= 0) {
          TORCH_CHECK(r < R, op, ": slot_row[", t, ", ", j, "] = ", r, " is outside the ", R,
                      " rows");
          const scalar_t* src = rows + r * d;
          for (int64_t i = 0; i < d; ++i) {
            dot += static_cast<acc_t>(src[i]) * static_cast<acc_t>(tok[i]);
          }
        }
        out[t * K + j] = static_cast<scalar_t>(dot);
      }
    }
  });
}

}  // namespace moeprune::cpu

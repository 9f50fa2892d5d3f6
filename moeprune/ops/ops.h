#pragma once

#include <moeprune/routing/routing_plan.h>

#include <torch/types.h>

namespace moeprune::ops {

// Token permutation to experts and the weighted scatter back, registered as torch ops
// (moeprune::dispatch, moeprune::combine) with CPU kernels and autograd. Both are deterministic:
// every output element is written by one thread, summing a token's slots in slot order.

/// Gathers token rows into the expert-major buffer: out[r] = input[row_slot[r] / K].
/// input [T, d], slot_row [T, K] int64, row_slot [R] int64 -> [R, d]. A row with row_slot -1 is
/// padding (the fixed-size layout, RoutingPlan) and comes out as zeros.
torch::Tensor dispatch(const torch::Tensor& input, const torch::Tensor& slot_row,
                       const torch::Tensor& row_slot);

/// Scatters expert outputs back to tokens: out[t] = sum_j weight[t, j] * expert_output[slot_row[t,
/// j]] over the kept slots (slot_row >= 0), in order j = 0..K-1. Dropped slots contribute zero.
/// expert_output [R, d], weight [T, K] (same dtype), slot_row [T, K], row_slot [R] -> [T, d].
torch::Tensor combine(const torch::Tensor& expert_output, const torch::Tensor& weight,
                      const torch::Tensor& slot_row, const torch::Tensor& row_slot);

/// The same, reading the indices from a plan.
torch::Tensor dispatch(const torch::Tensor& input, const RoutingPlan& plan);
torch::Tensor combine(const torch::Tensor& expert_output, const torch::Tensor& weight,
                      const RoutingPlan& plan);

}  // namespace moeprune::ops

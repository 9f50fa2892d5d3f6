#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace moeprune::compression {

/// Solves the linear assignment problem on a square cost matrix [n, n]: the permutation p that
/// minimises (or, with `maximize`, maximises) sum_i cost[i, p[i]]. Exact, O(n^3): the
/// shortest-augmenting-path form of the Hungarian method (Jonker and Volgenant 1987), in float64
/// whatever the input dtype. Returns p as n column indices, one per row.
std::vector<int64_t> linear_assignment(const torch::Tensor& cost, bool maximize = false);

}  // namespace moeprune::compression

#pragma once

// Permutation alignment of expert hidden neurons (Li et al., ICLR 2024, "Merge, Then Compress",
// section 3; UNITES-Lab/MC-SMoE mcsmoe/merging/permutation.py). Two experts that compute the
// same function may store their hidden neurons in different orders; averaging them only makes
// sense once their neurons are matched. Permuting an expert's hidden neurons (w1 and w3
// columns, b1 entries, w2 rows together) leaves its output unchanged.
#include <moeprune/layers/expert_bank.h>

#include <cstdint>
#include <vector>

namespace moeprune::compression {

/// The permutation p of expert `expert`'s hidden neurons that best matches expert `reference`
/// (both original ids of experts the bank holds): neuron p[i] of `expert` goes to position i.
/// It maximises sum_i C[i, p[i]] with C = W1_ref^T W1 + b1_ref b1^T + W3_ref^T W3 + W2_ref W2^T
/// (inner products of the neurons' input weights, bias and output weights; MC-SMoE's weight
/// matching, with the bias and SwiGLU's up projection added), solved exactly by
/// linear_assignment.
std::vector<int64_t> neuron_alignment(const ExpertBank& bank, int64_t reference, int64_t expert);

/// Reorders the hidden neurons of expert `expert` (original id): neuron permutation[i] moves to
/// position i. The expert computes the same function afterwards.
void permute_neurons(ExpertBank& bank, int64_t expert, const std::vector<int64_t>& permutation);

/// Aligns each of `experts` to `reference` in place (neuron_alignment + permute_neurons).
void align_experts(ExpertBank& bank, int64_t reference, const std::vector<int64_t>& experts);

}  // namespace moeprune::compression

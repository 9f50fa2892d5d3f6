#pragma once

// What a compressed model costs: the parameters it stores and the work of a forward pass, so
// compressions can be compared at matched budgets.
#include <moeprune/models/vision/vision_transformer.h>
#include <moeprune/train/trainer.h>

#include <cstdint>

namespace moeprune::compression {

/// Parameters the model stores: every parameter, except that the sparse parts of factorised
/// experts count only their kept output units (the pruned ones are zero and need not be stored).
int64_t stored_parameters(const VisionTransformer& model);

/// Floating-point operations (2 per multiply-add) of one image's forward pass: patch embedding,
/// attention and dense MLPs by their shapes, and each MoE layer's router plus the rows its experts
/// really computed in `eval` (Trainer::evaluate's routing statistics, so dropped slots, pruned
/// experts and low-rank experts count as what they cost). Norms, softmax and activations are left
/// out.
double flops_per_image(const VisionTransformer& model, const EvalResult& eval);

}  // namespace moeprune::compression

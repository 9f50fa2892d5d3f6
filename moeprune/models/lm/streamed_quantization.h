#pragma once

// Weight-only quantisation (RTN, GPTQ; compression/expert_quantization.h) of a Hugging Face
// checkpoint's experts and targeted dense layers without loading it whole: the calibration tokens
// stream through the model one decoder layer at a time as for sparsify_checkpoint
// (streamed_sparsity.h), each linear is quantised on its calibration inputs, and the folder is
// written either with the dequantised weights in the checkpoint's own dtype (every tool loads it
// and computes what the quantised model computes) or with the quantised weights stored
// compressed-tensors "pack-quantized" (the codes packed into int32 words, the group scales in the
// checkpoint's dtype; transformers with the compressed-tensors package and vLLM load it; the
// files shrink). Either way each scale is rounded to the checkpoint's dtype before the codes are
// computed, so both hold the same model. config.json's "moeprune" section records it under
// "quantization".
#include <moeprune/compression/expert_quantization.h>
#include <moeprune/models/lm/streamed_sparsity.h>

#include <torch/arg.h>

#include <string>

namespace moeprune::lm {

/// How quantize_checkpoint stores the quantised weights.
enum class QuantFormat {
  kDense,              ///< dequantised, in the checkpoint's dtype ("dense")
  kCompressedTensors,  ///< compressed-tensors pack-quantized ("compressed-tensors")
};
QuantFormat parse_quant_format(const std::string& name);
std::string to_string(QuantFormat format);

struct QuantizeCheckpointOptions {
  TORCH_ARG(compression::QuantizeOptions, quantize);
  /// Calibration sequences per forward pass.
  TORCH_ARG(int64_t, batch_size) = 4;
  /// Activation spill and the quantised layers' scratch files.
  TORCH_ARG(StreamOptions, stream);
  TORCH_ARG(QuantFormat, format) = QuantFormat::kDense;
};

/// Quantises what options.quantize().calibration().targets() names (default: the experts) and
/// writes the new folder `out` (which must not exist). `calibration`: [N, S] token ids, needed
/// for GPTQ (RTN with them also reports the output error). Refuses, before any work, a scheme
/// whose groups do not divide a targeted layer's inputs. The reports' zeros count weights that
/// dequantise to 0.
SparsifyCheckpointResult quantize_checkpoint(
    const CheckpointLayers& checkpoint, const torch::Tensor& calibration, const std::string& out,
    const QuantizeCheckpointOptions& options = {}, const hf::WriteOptions& write = {},
    const compression::LayerSparsityCallback& on_layer = {},
    const compression::LinearSparsityCallback& on_linears = {});

/// The record config.json keeps for `options` (method, bits, group size, symmetry, act-order,
/// targets, calibration, how the weights are stored).
std::string quantization_record(const compression::QuantizeOptions& options,
                                QuantFormat format = QuantFormat::kDense);

}  // namespace moeprune::lm

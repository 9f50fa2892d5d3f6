#pragma once

// What the crash-safety test's writer saves, made the same way in the writer process and in the
// test that checks the result: version `seed` of a safetensors file, a Switch Transformers
// checkpoint folder and a ViT .pt checkpoint.
#include <moeprune/models/seq2seq/switch_transformer.h>
#include <moeprune/models/vision/vision_transformer.h>

#include <torch/torch.h>

#include <map>
#include <string>

namespace crash {

/// About 8 MB, so a save takes long enough to be killed in the middle.
inline std::map<std::string, torch::Tensor> tensors(int64_t seed) {
  torch::manual_seed(static_cast<uint64_t>(seed));
  return {{"weight", torch::randn({2048, 1024})}, {"bias", torch::randn({1000})}};
}

inline moeprune::seq2seq::SwitchTransformer switch_model(int64_t seed) {
  torch::manual_seed(static_cast<uint64_t>(seed));
  moeprune::seq2seq::SwitchTransformerOptions o;
  o.vocab_size(4096).d_model(128).d_kv(32).d_ff(256).num_heads(4).num_layers(2).num_decoder_layers(
      2);
  o.moe(moeprune::MoELayerOptions::preset("switch", 128, 256, 8));
  return moeprune::seq2seq::SwitchTransformer(o);
}

inline moeprune::VisionTransformer vit_model(int64_t seed) {
  torch::manual_seed(static_cast<uint64_t>(seed));
  return moeprune::VisionTransformer(moeprune::VisionTransformerOptions::small_vmoe(10));
}

}  // namespace crash

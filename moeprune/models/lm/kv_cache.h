#pragma once

#include <torch/types.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace moeprune::lm {

/// The keys and values of every attention layer for the tokens a model has seen, so decoding
/// runs one new token through the model instead of the whole sequence. Storage grows by
/// doubling (or is reserved up front), so appending a token copies only that token.
class KVCache {
 public:
  /// `num_layers` attention layers; `capacity` tokens reserved at the first append (0: grow).
  explicit KVCache(int64_t num_layers, int64_t capacity = 0);

  /// Tokens cached so far (the position of the next token).
  int64_t length() const { return length_; }
  int64_t num_layers() const { return static_cast<int64_t>(keys_.size()); }

  /// Stores layer `layer`'s keys [B, H_kv, S, head_dim] and values [B, H_kv, S, value_dim] of the S
  /// new tokens at positions [length(), length() + S) and returns the keys and values of all those
  /// positions (views of the storage). Every layer appends the same S before advance(S).
  std::pair<torch::Tensor, torch::Tensor> append(int64_t layer, const torch::Tensor& keys,
                                                 const torch::Tensor& values);
  /// Moves past the S tokens every layer has appended (the model calls it after its layers).
  void advance(int64_t tokens);
  /// Forgets every token (storage is kept).
  void clear() { length_ = 0; }

 private:
  int64_t capacity_;
  int64_t length_ = 0;
  std::vector<torch::Tensor> keys_, values_;
};

}  // namespace moeprune::lm

#include <moeprune/models/lm/kv_cache.h>

#include <torch/torch.h>

#include <algorithm>

namespace moeprune::lm {

KVCache::KVCache(int64_t num_layers, int64_t capacity)
    : capacity_(capacity),
      keys_(static_cast<size_t>(num_layers)),
      values_(static_cast<size_t>(num_layers)) {
  TORCH_CHECK(num_layers >= 1, "KVCache: num_layers should be >= 1, got ", num_layers);
  TORCH_CHECK(capacity >= 0, "KVCache: capacity should be >= 0, got ", capacity);
}

std::pair<torch::Tensor, torch::Tensor> KVCache::append(int64_t layer, const torch::Tensor& keys,
                                                        const torch::Tensor& values) {
  TORCH_CHECK(layer >= 0 && layer < num_layers(), "KVCache: layer ", layer, " is outside [0, ",
              num_layers(), ")");
  // Values may be narrower than keys (DeepSeek's latent attention: v_head_dim < qk_head_dim).
  TORCH_CHECK(
      keys.dim() == 4 && values.dim() == 4 &&
          keys.sizes().slice(0, 3) == values.sizes().slice(0, 3),
      "KVCache: keys and values should be [B, H_kv, S, *] with the same B, H_kv and S, got ",
      keys.sizes(), " and ", values.sizes());
  const auto l = static_cast<size_t>(layer);
  const int64_t S = keys.size(2);
  const int64_t needed = length_ + S;
  auto& k = keys_[l];
  auto& v = values_[l];
  if (k.defined()) {
    TORCH_CHECK(k.size(0) == keys.size(0) && k.size(1) == keys.size(1) &&
                    k.size(3) == keys.size(3) && v.size(3) == values.size(3) &&
                    k.scalar_type() == keys.scalar_type() && k.device() == keys.device(),
                "KVCache: layer ", layer, " holds [", k.size(0), ", ", k.size(1), ", *, ",
                k.size(3), "] ", k.scalar_type(), " on ", k.device(), ", got ", keys.sizes(), " ",
                keys.scalar_type(), " on ", keys.device());
  }
  if (!k.defined() || k.size(2) < needed) {
    const int64_t grown = std::max({needed, capacity_, k.defined() ? 2 * k.size(2) : 0});
    auto key_shape = keys.sizes().vec(), value_shape = values.sizes().vec();
    key_shape[2] = value_shape[2] = grown;
    auto nk = torch::empty(key_shape, keys.options());
    auto nv = torch::empty(value_shape, values.options());
    if (k.defined() && length_ > 0) {
      nk.narrow(2, 0, length_).copy_(k.narrow(2, 0, length_));
      nv.narrow(2, 0, length_).copy_(v.narrow(2, 0, length_));
    }
    k = nk;
    v = nv;
  }
  k.narrow(2, length_, S).copy_(keys);
  v.narrow(2, length_, S).copy_(values);
  return {k.narrow(2, 0, needed), v.narrow(2, 0, needed)};
}

void KVCache::advance(int64_t tokens) {
  TORCH_CHECK(tokens >= 0, "KVCache: cannot advance by ", tokens, " tokens");
  length_ += tokens;
}

}  // namespace moeprune::lm

#include <moeprune/models/seq2seq/relative_attention.h>

#include <torch/torch.h>

#include <cmath>

namespace moeprune::seq2seq {

torch::Tensor relative_position_bucket(const torch::Tensor& relative_position, bool bidirectional,
                                       int64_t num_buckets, int64_t max_distance) {
  TORCH_CHECK(num_buckets >= (bidirectional ? 4 : 2), "relative_position_bucket: num_buckets ",
              num_buckets, " is too small");
  TORCH_CHECK(max_distance >= 1, "relative_position_bucket: max_distance should be >= 1, got ",
              max_distance);
  auto buckets = torch::zeros_like(relative_position);
  auto distance = relative_position;
  if (bidirectional) {
    num_buckets /= 2;
    buckets = buckets + relative_position.gt(0).to(torch::kLong) * num_buckets;
    distance = relative_position.abs();
  } else {
    distance = -torch::clamp_max(relative_position, 0);
  }
  const int64_t max_exact = num_buckets / 2;
  TORCH_CHECK(max_distance > max_exact, "relative_position_bucket: max_distance ", max_distance,
              " should exceed the exact range ", max_exact);
  // Large distances: max_exact + log(d / max_exact) / log(max_distance / max_exact) *
  // (num_buckets - max_exact), truncated, capped at the last bucket (the float32 computation of
  // SwitchTransformersAttention._relative_position_bucket).
  const auto large =
      (max_exact + (torch::log(distance.to(torch::kFloat) / static_cast<float>(max_exact)) /
                    static_cast<float>(std::log(static_cast<double>(max_distance) / max_exact)) *
                    static_cast<float>(num_buckets - max_exact))
                       .to(torch::kLong))
          .clamp_max(num_buckets - 1);
  return buckets + torch::where(distance.lt(max_exact), distance, large);
}

RelativeAttentionImpl::RelativeAttentionImpl(RelativeAttentionOptions options_)
    : options(options_) {
  reset();
}

void RelativeAttentionImpl::reset() {
  const auto& opt = options;
  TORCH_CHECK(opt.d_model() >= 1 && opt.d_kv() >= 1 && opt.num_heads() >= 1,
              "RelativeAttention: sizes should be >= 1, got d_model ", opt.d_model(), ", d_kv ",
              opt.d_kv(), ", heads ", opt.num_heads());
  TORCH_CHECK(opt.dropout() >= 0.0 && opt.dropout() < 1.0,
              "RelativeAttention: dropout should be in [0, 1), got ", opt.dropout());
  using torch::nn::LinearOptions;
  const int64_t d = opt.d_model(), inner = opt.num_heads() * opt.d_kv();
  q = register_module("q", torch::nn::Linear(LinearOptions(d, inner).bias(false)));
  k = register_module("k", torch::nn::Linear(LinearOptions(d, inner).bias(false)));
  v = register_module("v", torch::nn::Linear(LinearOptions(d, inner).bias(false)));
  o = register_module("o", torch::nn::Linear(LinearOptions(inner, d).bias(false)));
  relative_attention_bias = nullptr;
  if (opt.has_relative_bias()) {
    relative_attention_bias = register_module(
        "relative_attention_bias", torch::nn::Embedding(opt.num_buckets(), opt.num_heads()));
  }
}

void RelativeAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::seq2seq::RelativeAttention(d_model=" << options.d_model()
         << ", heads=" << options.num_heads() << ", d_kv=" << options.d_kv()
         << (options.has_relative_bias() ? ", relative bias" : "") << ")";
}

torch::Tensor RelativeAttentionImpl::compute_bias(int64_t query_start, int64_t query_length,
                                                  int64_t key_length) const {
  TORCH_CHECK(!relative_attention_bias.is_empty(),
              "RelativeAttention: compute_bias needs the relative_attention_bias table (the first "
              "block of a stack holds it)");
  const auto& table = relative_attention_bias->weight;
  const auto device = table.device();
  const auto context = torch::arange(query_start, query_start + query_length,
                                     torch::dtype(torch::kLong).device(device))
                           .unsqueeze(1);
  const auto memory =
      torch::arange(key_length, torch::dtype(torch::kLong).device(device)).unsqueeze(0);
  const auto buckets = relative_position_bucket(memory - context, options.bidirectional(),
                                                options.num_buckets(), options.max_distance());
  // [Q, K, H] -> [1, H, Q, K]
  return torch::embedding(table, buckets).permute({2, 0, 1}).unsqueeze(0);
}

namespace {
torch::Tensor split_heads(const torch::Tensor& x, int64_t heads, int64_t width) {
  return x.view({x.size(0), x.size(1), heads, width}).transpose(1, 2);
}
}  // namespace

torch::Tensor RelativeAttentionImpl::project_keys(const torch::Tensor& states) {
  TORCH_CHECK(states.dim() == 3 && states.size(-1) == options.d_model(),
              "RelativeAttention: states should be [B, S, ", options.d_model(), "], got ",
              states.sizes());
  return split_heads(k(states), options.num_heads(), options.d_kv());
}

torch::Tensor RelativeAttentionImpl::project_values(const torch::Tensor& states) {
  TORCH_CHECK(states.dim() == 3 && states.size(-1) == options.d_model(),
              "RelativeAttention: states should be [B, S, ", options.d_model(), "], got ",
              states.sizes());
  return split_heads(v(states), options.num_heads(), options.d_kv());
}

torch::Tensor RelativeAttentionImpl::forward(const torch::Tensor& hidden, const torch::Tensor& keys,
                                             const torch::Tensor& values,
                                             const torch::Tensor& bias) {
  TORCH_CHECK(hidden.dim() == 3 && hidden.size(-1) == options.d_model(),
              "RelativeAttention: hidden should be [B, Q, ", options.d_model(), "], got ",
              hidden.sizes());
  TORCH_CHECK(keys.dim() == 4 && keys.sizes() == values.sizes() && keys.size(0) == hidden.size(0) &&
                  keys.size(1) == options.num_heads() && keys.size(3) == options.d_kv(),
              "RelativeAttention: keys and values should be [B, H, K, d_kv] = [", hidden.size(0),
              ", ", options.num_heads(), ", K, ", options.d_kv(), "], got ", keys.sizes(), " and ",
              values.sizes());
  const int64_t batch = hidden.size(0), length = hidden.size(1);
  const auto query = split_heads(q(hidden), options.num_heads(), options.d_kv());
  // No 1/sqrt(d_kv): T5 folds it into the initialisation of q.
  auto scores = torch::matmul(query, keys.transpose(3, 2));
  if (bias.defined()) {
    scores = scores + bias;
  }
  auto weights = torch::softmax(scores.to(torch::kFloat), -1).to(scores.scalar_type());
  if (is_training() && options.dropout() > 0.0) {
    weights = torch::dropout(weights, options.dropout(), /*train=*/true);
  }
  const auto out = torch::matmul(weights, values).transpose(1, 2).contiguous();
  return o(out.view({batch, length, options.num_heads() * options.d_kv()}));
}

}  // namespace moeprune::seq2seq

#include <moeprune/layers/expert_bank.h>

#include "layers/activation.h"
#include "layers/reduced_precision_matmul.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moeprune {

ExpertBankImpl::ExpertBankImpl(ExpertBankOptions options_) : options(std::move(options_)) {
  TORCH_CHECK(options.num_experts() >= 1, "ExpertBank: num_experts should be >= 1, got ",
              options.num_experts());
  expert_ids_.resize(static_cast<size_t>(options.num_experts()));
  std::iota(expert_ids_.begin(), expert_ids_.end(), 0);
  reset();
}

void ExpertBankImpl::reset() {
  const int64_t E = num_held(), d = options.d_model(), F = options.hidden_dim();
  TORCH_CHECK(d >= 1 && F >= 1, "ExpertBank: d_model and hidden_dim should be >= 1, got ", d,
              " and ", F);
  // torch::nn::Linear's initialisation, per expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  const double in_bound = 1.0 / std::sqrt(static_cast<double>(d));
  const double out_bound = 1.0 / std::sqrt(static_cast<double>(F));
  const bool gated = options.kind() == ExpertKind::kGated;
  const bool bias = options.bias() && !gated;
  w1 = register_parameter("w1", torch::empty({E, d, F}).uniform_(-in_bound, in_bound));
  w2 = register_parameter("w2", torch::empty({E, F, d}).uniform_(-out_bound, out_bound));
  if (gated) {
    w3 = register_parameter("w3", torch::empty({E, d, F}).uniform_(-in_bound, in_bound));
  }
  if (bias) {
    b1 = register_parameter("b1", torch::empty({E, F}).uniform_(-in_bound, in_bound));
    b2 = register_parameter("b2", torch::empty({E, d}).uniform_(-out_bound, out_bound));
  }
  if (options.rank() > 0) {  // a clone of a factorised bank
    register_factors(options.rank());
  }
}

void ExpertBankImpl::register_factors(int64_t rank) {
  const int64_t E = num_held(), d = options.d_model(), F = options.hidden_dim();
  w1_left = register_parameter("w1_left", torch::zeros({E, d, rank}, w1.options()));
  w1_right = register_parameter("w1_right", torch::zeros({E, rank, F}, w1.options()));
  w2_left = register_parameter("w2_left", torch::zeros({E, F, rank}, w1.options()));
  w2_right = register_parameter("w2_right", torch::zeros({E, rank, d}, w1.options()));
  w1_mask = register_buffer("w1_mask", torch::ones({E, F}, w1.options()));
  w2_mask = register_buffer("w2_mask", torch::ones({E, d}, w1.options()));
  if (w3.defined()) {
    w3_left = register_parameter("w3_left", torch::zeros({E, d, rank}, w1.options()));
    w3_right = register_parameter("w3_right", torch::zeros({E, rank, F}, w1.options()));
    w3_mask = register_buffer("w3_mask", torch::ones({E, F}, w1.options()));
  }
}

void ExpertBankImpl::factorize(int64_t rank, bool compute) {
  const int64_t d = options.d_model(), F = options.hidden_dim();
  TORCH_CHECK(options.rank() == 0, "ExpertBank: the experts are already factorised (rank ",
              options.rank(), ")");
  TORCH_CHECK(rank >= 1 && rank <= std::min(d, F), "ExpertBank: rank should be in [1, ",
              std::min(d, F), "] for d_model ", d, " and hidden_dim ", F, ", got ", rank);
  register_factors(rank);
  options.rank(rank);
  if (!compute) {
    return;
  }
  torch::NoGradGuard no_grad;
  const auto split = [rank](torch::Tensor& w, torch::Tensor& left, torch::Tensor& right) {
    // Batched SVD in float64 (the factors are cast back to the weight's dtype).
    const auto [u, s, vh] = torch::linalg_svd(w.to(torch::kDouble), /*full_matrices=*/false);
    const auto root = s.narrow(1, 0, rank).sqrt();
    const auto l = u.narrow(2, 0, rank) * root.unsqueeze(1);
    const auto r = root.unsqueeze(2) * vh.narrow(1, 0, rank);
    left.copy_(l);
    right.copy_(r);
    w.copy_(w.to(torch::kDouble) - l.bmm(r));
  };
  split(w1, w1_left, w1_right);
  split(w2, w2_left, w2_right);
  if (w3.defined()) {
    split(w3, w3_left, w3_right);
  }
}

std::vector<std::pair<torch::Tensor, torch::Tensor>> ExpertBankImpl::sparse_parts() const {
  std::vector<std::pair<torch::Tensor, torch::Tensor>> parts;
  if (options.rank() == 0) {
    return parts;
  }
  parts.emplace_back(w1, w1_mask);
  parts.emplace_back(w2, w2_mask);
  if (w3.defined()) {
    parts.emplace_back(w3, w3_mask);
  }
  return parts;
}

int64_t ExpertBankImpl::num_parameters(bool stored) const {
  int64_t total = 0;
  for (const auto& p : parameters(/*recurse=*/false)) {
    total += p.numel();
  }
  if (stored) {
    for (const auto& [weight, mask] : sparse_parts()) {
      // S [E, in, out]: a pruned output unit frees its `in` entries.
      total -= weight.size(1) * (mask.numel() - static_cast<int64_t>(mask.sum().item<double>()));
    }
  }
  return total;
}

double ExpertBankImpl::row_flops(int64_t local) const {
  TORCH_CHECK(local >= 0 && local < num_held(), "ExpertBank: expert ", local,
              " is outside the bank's ", num_held(), " experts");
  const double d = static_cast<double>(options.d_model());
  const double F = static_cast<double>(options.hidden_dim());
  const int64_t linears = w3.defined() ? 3 : 2;
  if (options.rank() == 0) {
    return 2.0 * d * F * static_cast<double>(linears);
  }
  double flops = 2.0 * static_cast<double>(options.rank()) * (d + F) * static_cast<double>(linears);
  for (const auto& [weight, mask] : sparse_parts()) {
    flops += 2.0 * static_cast<double>(weight.size(1)) * mask[local].sum().item<double>();
  }
  return flops;
}

void ExpertBankImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::ExpertBank(experts=" << num_held() << "/" << options.num_experts()
         << (is_merged() ? " merged" : "") << ", d_model=" << options.d_model()
         << ", hidden_dim=" << options.hidden_dim()
         << (options.kind() == ExpertKind::kGated ? ", gated" : "");
  if (options.rank() > 0) {
    stream << ", rank=" << options.rank();
  }
  stream << ")";
}

namespace {

// x [n, in] @ w [in, out] for a bf16/fp16 CPU weight (contiguous, the bank's layout). Such GEMMs
// with the weight in this orientation fall to a slow path when the CPU has no native bf16 (AVX2:
// 10-20x slower than the [out, in] orientation nn.Linear uses; docs/performance.md). Without a
// graph, up to 32 rows (decoding, short prompts) go through small_rows_matmul, which streams the
// weight at memory speed, 8 rows per pass; with one, up to 4 rows through matrix-vector products;
// more rows are computed in fp32 (more accurate too) and rounded once.
bool reduced_precision_cpu(const torch::Tensor& w) {
  return w.is_cpu() && (w.scalar_type() == torch::kBFloat16 || w.scalar_type() == torch::kHalf);
}

torch::Tensor matmul_rows(const torch::Tensor& x, const torch::Tensor& w) {
  const bool graph = torch::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad());
  // Up to 32 rows (a short prompt, a batch of decode steps), passes of at most 8 rows over the
  // weight still beat widening it to fp32 (bench/expert_decode_bench); beyond, the fp32 GEMM's
  // arithmetic wins.
  constexpr int64_t kMaxKernelRows = 4 * detail::kSmallRowsMax;
  const int64_t n = x.size(0);
  if (!graph && n <= kMaxKernelRows && w.is_contiguous()) {
    if (n <= detail::kSmallRowsMax) {
      return detail::small_rows_matmul(x, w);
    }
    const int64_t passes = (n + detail::kSmallRowsMax - 1) / detail::kSmallRowsMax;
    const int64_t per_pass = (n + passes - 1) / passes;
    std::vector<torch::Tensor> parts;
    for (int64_t r = 0; r < n; r += per_pass) {
      parts.push_back(detail::small_rows_matmul(x.narrow(0, r, std::min(per_pass, n - r)), w));
    }
    return torch::cat(parts);
  }
  constexpr int64_t kMaxVectorRows = 4;
  if (x.size(0) <= kMaxVectorRows) {
    std::vector<torch::Tensor> rows;
    for (int64_t i = 0; i < x.size(0); ++i) {
      rows.push_back(torch::mv(w.t(), x[i]));
    }
    return torch::stack(rows);
  }
  return x.to(torch::kFloat).mm(w.to(torch::kFloat)).to(w.scalar_type());
}

}  // namespace

torch::Tensor ExpertBankImpl::linear(const torch::Tensor& x, int64_t e, const torch::Tensor& w,
                                     const torch::Tensor& left, const torch::Tensor& right,
                                     const torch::Tensor& mask, const torch::Tensor& bias) const {
  if (!left.defined()) {
    if (reduced_precision_cpu(w)) {
      const auto y = matmul_rows(x, w[e]);
      return bias.defined() ? y + bias[e] : y;
    }
    return bias.defined() ? torch::addmm(bias[e], x, w[e]) : x.mm(w[e]);
  }
  auto y = x.mm(left[e]).mm(right[e]);
  if (bias.defined()) {
    y = y + bias[e];
  }
  if (torch::GradMode::is_enabled()) {
    // Masked, so pruned units neither contribute nor get gradients, with or without a pruner.
    return y + x.mm(w[e] * mask[e].unsqueeze(0));
  }
  // Inference: only the kept output units of S are computed.
  const auto kept = mask[e].nonzero().reshape({-1});
  if (kept.numel() == mask.size(1)) {
    return y + x.mm(w[e]);
  }
  return kept.numel() == 0 ? y : y.index_add(1, kept, x.mm(w[e].index_select(1, kept)));
}

torch::Tensor ExpertBankImpl::forward(const torch::Tensor& rows,
                                      const std::vector<int64_t>& counts) {
  TORCH_CHECK(rows.dim() == 2 && rows.size(1) == options.d_model(),
              "ExpertBank: rows should be [R, ", options.d_model(), "], got ", rows.sizes());
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == num_held(), "ExpertBank: got ", counts.size(),
              " expert counts for a bank of ", num_held(), " experts");
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  TORCH_CHECK(total == rows.size(0), "ExpertBank: counts sum to ", total, " but there are ",
              rows.size(0), " rows");
  std::vector<torch::Tensor> outputs;
  outputs.reserve(counts.size());
  int64_t offset = 0;
  for (int64_t e = 0; e < num_held(); ++e) {
    const int64_t n = counts[static_cast<size_t>(e)];
    if (n == 0) {
      continue;
    }
    const auto x = rows.narrow(0, offset, n);
    offset += n;
    torch::Tensor h;
    if (options.kind() == ExpertKind::kGated) {
      h = detail::activate(linear(x, e, w1, w1_left, w1_right, w1_mask), options.activation()) *
          linear(x, e, w3, w3_left, w3_right, w3_mask);
    } else {
      h = detail::activate(linear(x, e, w1, w1_left, w1_right, w1_mask, b1), options.activation());
    }
    outputs.push_back(linear(h, e, w2, w2_left, w2_right, w2_mask, b2));
  }
  if (outputs.empty()) {
    return torch::zeros_like(rows);
  }
  return outputs.size() == 1 ? outputs.front() : torch::cat(outputs);
}

void ExpertBankImpl::select_experts(const std::vector<int64_t>& local) {
  torch::NoGradGuard no_grad;
  const auto index = torch::tensor(local, torch::kLong).to(w1.device());
  for (auto& p : parameters(/*recurse=*/false)) {
    // index_select copies into fresh storage, so the dropped experts' memory is released.
    p.set_data(p.index_select(0, index));
    p.mutable_grad() = torch::Tensor();
  }
}

int64_t ExpertBankImpl::position_of(int64_t expert) const {
  const auto it = std::find(expert_ids_.begin(), expert_ids_.end(), expert);
  TORCH_CHECK(it != expert_ids_.end(), "ExpertBank: expert ", expert,
              " is not in the bank (it holds ", num_held(), " of ", options.num_experts(),
              " experts)");
  return it - expert_ids_.begin();
}

void ExpertBankImpl::keep_experts(std::vector<int64_t> experts) {
  TORCH_CHECK(!experts.empty(), "ExpertBank: cannot keep an empty subset of experts");
  TORCH_CHECK(!is_merged(), "ExpertBank: the bank's experts are merged; prune before merging");
  TORCH_CHECK(options.rank() == 0,
              "ExpertBank: the experts are factorised; prune before compressing");
  std::sort(experts.begin(), experts.end());
  TORCH_CHECK(std::adjacent_find(experts.begin(), experts.end()) == experts.end(),
              "ExpertBank: the experts to keep name one expert twice");
  std::vector<int64_t> local;
  local.reserve(experts.size());
  for (const int64_t id : experts) {
    local.push_back(position_of(id));
  }
  select_experts(local);
  expert_ids_ = std::move(experts);
}

void ExpertBankImpl::merge_experts(std::vector<std::vector<int64_t>> groups) {
  TORCH_CHECK(!groups.empty(), "ExpertBank: merging needs at least one group");
  TORCH_CHECK(options.rank() == 0,
              "ExpertBank: the experts are factorised; merge before compressing");
  std::vector<bool> seen(static_cast<size_t>(options.num_experts()), false);
  std::vector<int64_t> local;
  for (auto& g : groups) {
    TORCH_CHECK(!g.empty(), "ExpertBank: a merge group is empty");
    std::sort(g.begin(), g.end());
    for (const int64_t id : g) {
      TORCH_CHECK(id >= 0 && id < options.num_experts(), "ExpertBank: merge group names expert ",
                  id, ", outside [0, ", options.num_experts(), ")");
      TORCH_CHECK(!seen[static_cast<size_t>(id)], "ExpertBank: expert ", id,
                  " is in two merge groups");
      seen[static_cast<size_t>(id)] = true;
    }
    const auto it = std::lower_bound(expert_ids_.begin(), expert_ids_.end(), g.front());
    TORCH_CHECK(!is_merged() && it != expert_ids_.end() && *it == g.front(), "ExpertBank: expert ",
                g.front(), " is not a held, unmerged expert");
    for (const int64_t id : g) {
      TORCH_CHECK(std::binary_search(expert_ids_.begin(), expert_ids_.end(), id),
                  "ExpertBank: expert ", id, " is not in the bank");
    }
    local.push_back(it - expert_ids_.begin());
  }
  select_experts(local);
  expert_ids_.clear();
  for (const auto& g : groups) {
    expert_ids_.push_back(g.front());
  }
  groups_ = std::move(groups);
}

std::vector<std::vector<int64_t>> ExpertBankImpl::expert_groups() const {
  if (is_merged()) {
    return groups_;
  }
  std::vector<std::vector<int64_t>> out;
  for (const int64_t id : expert_ids_) {
    out.push_back({id});
  }
  return out;
}

torch::Tensor ExpertBankImpl::expert_map(const torch::Device& device) const {
  if (map_cache_.defined() && map_cache_.device() == device && map_cache_ids_ == expert_ids_ &&
      map_cache_groups_ == groups_) {
    return map_cache_;
  }
  auto map = torch::full({options.num_experts()}, -1, torch::kLong);
  auto* data = map.data_ptr<int64_t>();
  const auto groups = expert_groups();
  for (size_t i = 0; i < groups.size(); ++i) {
    for (const int64_t id : groups[i]) {
      data[id] = static_cast<int64_t>(i);
    }
  }
  map_cache_ = map.to(device);
  map_cache_ids_ = expert_ids_;
  map_cache_groups_ = groups_;
  return map_cache_;
}

ExpertBankState ExpertBankImpl::state() const {
  ExpertBankState s;
  s.num_experts = options.num_experts();
  s.held = expert_ids_;
  s.groups = groups_;
  s.rank = options.rank();
  return s;
}

void ExpertBankImpl::restore(const ExpertBankState& state) {
  TORCH_CHECK(state.num_experts == options.num_experts(), "ExpertBank: the state is of a bank of ",
              state.num_experts, " experts, this bank has ", options.num_experts());
  TORCH_CHECK(holds_all() && !is_merged() && options.rank() == 0,
              "ExpertBank: restore needs a plain bank (this one is already pruned, merged or "
              "factorised)");
  if (!state.groups.empty()) {
    merge_experts(state.groups);
    TORCH_CHECK(expert_ids_ == state.held,
                "ExpertBank: the state's merge groups do not start "
                "with its held experts");
  } else if (static_cast<int64_t>(state.held.size()) != options.num_experts()) {
    keep_experts(state.held);
  }
  if (state.rank > 0) {
    factorize(state.rank, /*compute=*/false);
  }
}

}  // namespace moeprune

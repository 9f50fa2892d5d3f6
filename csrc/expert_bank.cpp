#include <moeprune/expert_bank.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moeprune {
namespace {

torch::Tensor activate(const torch::Tensor& x, ExpertActivation activation) {
  switch (activation) {
    case ExpertActivation::kGelu:
      return torch::gelu(x);
    case ExpertActivation::kGeluTanh:
      return torch::gelu(x, "tanh");
    case ExpertActivation::kRelu:
      return torch::relu(x);
    case ExpertActivation::kSilu:
      return torch::silu(x);
  }
  TORCH_CHECK(false, "ExpertBank: unknown activation");
}

}  // namespace

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
}

void ExpertBankImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::ExpertBank(experts=" << num_held() << "/" << options.num_experts()
         << ", d_model=" << options.d_model() << ", hidden_dim=" << options.hidden_dim()
         << (options.kind() == ExpertKind::kGated ? ", gated" : "") << ")";
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
      h = activate(x.mm(w1[e]), options.activation()) * x.mm(w3[e]);
    } else {
      h = activate(b1.defined() ? torch::addmm(b1[e], x, w1[e]) : x.mm(w1[e]),
                   options.activation());
    }
    outputs.push_back(b2.defined() ? torch::addmm(b2[e], h, w2[e]) : h.mm(w2[e]));
  }
  if (outputs.empty()) {
    return torch::zeros_like(rows);
  }
  return outputs.size() == 1 ? outputs.front() : torch::cat(outputs);
}

void ExpertBankImpl::keep_experts(std::vector<int64_t> experts) {
  TORCH_CHECK(!experts.empty(), "ExpertBank: cannot keep an empty subset of experts");
  std::sort(experts.begin(), experts.end());
  TORCH_CHECK(std::adjacent_find(experts.begin(), experts.end()) == experts.end(),
              "ExpertBank: the experts to keep name one expert twice");
  std::vector<int64_t> local;
  local.reserve(experts.size());
  for (const int64_t id : experts) {
    const auto it = std::lower_bound(expert_ids_.begin(), expert_ids_.end(), id);
    TORCH_CHECK(it != expert_ids_.end() && *it == id, "ExpertBank: expert ", id,
                " is not in the bank (it holds ", num_held(), " of ", options.num_experts(),
                " experts)");
    local.push_back(it - expert_ids_.begin());
  }
  torch::NoGradGuard no_grad;
  const auto index = torch::tensor(local, torch::kLong).to(w1.device());
  for (auto& p : parameters(/*recurse=*/false)) {
    // index_select copies into fresh storage, so the dropped experts' memory is released.
    p.set_data(p.index_select(0, index));
    p.mutable_grad() = torch::Tensor();
  }
  expert_ids_ = std::move(experts);
}

torch::Tensor ExpertBankImpl::expert_map(const torch::Device& device) const {
  auto map = torch::full({options.num_experts()}, -1, torch::kLong);
  auto* data = map.data_ptr<int64_t>();
  for (size_t i = 0; i < expert_ids_.size(); ++i) {
    data[expert_ids_[i]] = static_cast<int64_t>(i);
  }
  return map.to(device);
}

}  // namespace moeprune

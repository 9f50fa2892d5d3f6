#include <moeprune/layers/expert_bank.h>

#include <torch/torch.h>

#include <algorithm>
#include <numeric>

namespace moeprune {

void ExpertBankImpl::add_experts(const std::vector<int64_t>& experts,
                                 const std::map<std::string, torch::Tensor>& weights) {
  const char* who = "ExpertBank::add_experts";
  TORCH_CHECK(!is_merged(), who, ": the bank's experts are merged");
  TORCH_CHECK(options.rank() == 0, who, ": the experts are factorised");
  for (const int64_t id : experts) {
    TORCH_CHECK(id >= 0 && id < options.num_experts(), who, ": expert ", id, " is outside [0, ",
                options.num_experts(), ")");
    TORCH_CHECK(std::find(expert_ids_.begin(), expert_ids_.end(), id) == expert_ids_.end(), who,
                ": the bank already holds expert ", id);
    TORCH_CHECK(std::count(experts.begin(), experts.end(), id) == 1, who, ": expert ", id,
                " is named twice");
  }
  const auto own = named_parameters(/*recurse=*/false);
  for (const auto& [name, tensor] : weights) {
    TORCH_CHECK(own.contains(name), who, ": the bank has no parameter '", name, "'");
  }
  const auto n = static_cast<int64_t>(experts.size());
  for (const auto& p : own) {
    const auto it = weights.find(p.key());
    TORCH_CHECK(it != weights.end(), who, ": no weights for parameter '", p.key(), "'");
    const auto& w = it->second;
    auto expected = p.value().sizes().vec();
    expected[0] = n;
    TORCH_CHECK(w.sizes().vec() == expected, who, ": '", p.key(), "' of ", n, " experts should be ",
                c10::IntArrayRef(expected), ", found ", w.sizes());
    TORCH_CHECK(w.dtype() == p.value().dtype() && w.device() == p.value().device(), who, ": '",
                p.key(), "' is ", w.dtype(), " on ", w.device(), ", the bank's is ",
                p.value().dtype(), " on ", p.value().device());
  }
  if (n == 0) {
    return;
  }
  // Held experts first, then the new ones; `order` sorts the joined ids.
  auto ids = expert_ids_;
  ids.insert(ids.end(), experts.begin(), experts.end());
  std::vector<int64_t> order(ids.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
  torch::NoGradGuard no_grad;
  const auto index = torch::tensor(order, torch::kLong).to(w1.device());
  for (auto& p : own) {
    p.value().set_data(torch::cat({p.value(), weights.at(p.key())}).index_select(0, index));
    p.value().mutable_grad() = torch::Tensor();
  }
  std::sort(ids.begin(), ids.end());
  expert_ids_ = std::move(ids);
}

}  // namespace moeprune

#include <moeprune/compression/expert_alignment.h>

#include <moeprune/compression/linear_assignment.h>

#include <torch/torch.h>

namespace moeprune::compression {
namespace {

void check_alignable(const ExpertBank& bank) {
  TORCH_CHECK(!bank->is_merged(), "expert alignment: the bank's experts are already merged");
  TORCH_CHECK(bank->options.rank() == 0,
              "expert alignment: the bank is factorised (low rank); align before compressing");
}

}  // namespace

std::vector<int64_t> neuron_alignment(const ExpertBank& bank, int64_t reference, int64_t expert) {
  check_alignable(bank);
  const int64_t r = bank->position_of(reference), e = bank->position_of(expert);
  torch::NoGradGuard no_grad;
  const auto f64 = [](const torch::Tensor& t) { return t.detach().to(torch::kDouble); };
  // Neuron-major views: row j holds everything neuron j reads or writes.
  auto cost = f64(bank->w1[r]).t().mm(f64(bank->w1[e])) + f64(bank->w2[r]).mm(f64(bank->w2[e]).t());
  if (bank->b1.defined()) {
    cost += f64(bank->b1[r]).unsqueeze(1) * f64(bank->b1[e]).unsqueeze(0);
  }
  if (bank->w3.defined()) {
    cost += f64(bank->w3[r]).t().mm(f64(bank->w3[e]));
  }
  return linear_assignment(cost, /*maximize=*/true);
}

void permute_neurons(ExpertBank& bank, int64_t expert, const std::vector<int64_t>& permutation) {
  check_alignable(bank);
  const int64_t e = bank->position_of(expert), F = bank->options.hidden_dim();
  TORCH_CHECK(static_cast<int64_t>(permutation.size()) == F, "permute_neurons: got ",
              permutation.size(), " indices for ", F, " hidden neurons");
  std::vector<char> seen(static_cast<size_t>(F), 0);
  for (const int64_t j : permutation) {
    TORCH_CHECK(j >= 0 && j < F && !seen[static_cast<size_t>(j)],
                "permute_neurons: not a permutation of 0..", F - 1, " (index ", j, ")");
    seen[static_cast<size_t>(j)] = 1;
  }
  torch::NoGradGuard no_grad;
  const auto index = torch::tensor(permutation, torch::kLong).to(bank->w1.device());
  bank->w1[e].copy_(bank->w1[e].index_select(1, index));
  bank->w2[e].copy_(bank->w2[e].index_select(0, index));
  if (bank->b1.defined()) {
    bank->b1[e].copy_(bank->b1[e].index_select(0, index));
  }
  if (bank->w3.defined()) {
    bank->w3[e].copy_(bank->w3[e].index_select(1, index));
  }
}

void align_experts(ExpertBank& bank, int64_t reference, const std::vector<int64_t>& experts) {
  for (const int64_t e : experts) {
    if (e != reference) {
      permute_neurons(bank, e, neuron_alignment(bank, reference, e));
    }
  }
}

}  // namespace moeprune::compression

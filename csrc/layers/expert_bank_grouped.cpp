// The expert bank on a buffer whose row offsets stay on the device: grouped GEMMs where torch has
// them, else the per-expert loop of expert_bank.cpp.
#include <moeprune/layers/expert_bank.h>

#include "layers/activation.h"
#include "ops/device_capability.h"

#include <torch/torch.h>

#include <limits>

namespace moeprune {
namespace {

bool rows_16_byte(int64_t width, const torch::Tensor& t) {
  return (width * static_cast<int64_t>(t.element_size())) % 16 == 0;
}

// x [R, in] times expert e's w [in, out] for each row block (offs: int32 end of each expert's
// rows, the last one R), plus the row's expert bias.
torch::Tensor grouped_linear(const torch::Tensor& x, const torch::Tensor& w,
                             const torch::Tensor& offs, const torch::Tensor& row_expert,
                             const torch::Tensor& bias) {
  auto y = at::_grouped_mm(x, w, offs);
  return bias.defined() ? y + bias.index_select(0, row_expert) : y;
}

}  // namespace

bool ExpertBankImpl::grouped_gemm_supported(const torch::Tensor& rows) const {
  if (options.rank() > 0 || rows.scalar_type() != w1.scalar_type() ||
      rows.device() != w1.device() || !rows_16_byte(options.d_model(), w1) ||
      !rows_16_byte(options.hidden_dim(), w1)) {
    return false;
  }
  if (rows.is_cpu()) {
    // torch's CPU grouped GEMM is a loop of GEMMs; in bf16/fp16 those fall to the slow
    // orientation matmul_rows avoids (expert_bank.cpp), so only fp32 takes it.
    return rows.scalar_type() == torch::kFloat;
  }
  // torch's grouped kernel (CUTLASS) is bf16 on Hopper and Blackwell; its other dtypes and devices
  // loop over the groups after copying the offsets to the host.
  const int major = detail::cuda_capability_major(rows.device());
  return rows.scalar_type() == torch::kBFloat16 && (major == 9 || major == 10);
}

torch::Tensor ExpertBankImpl::forward_offsets(const torch::Tensor& rows,
                                              const torch::Tensor& offsets) {
  const int64_t E = num_held();
  TORCH_CHECK(rows.dim() == 2 && rows.size(1) == options.d_model(),
              "ExpertBank: rows should be [R, ", options.d_model(), "], got ", rows.sizes());
  TORCH_CHECK(
      offsets.dim() == 1 && offsets.size(0) == E + 1 && offsets.scalar_type() == torch::kLong,
      "ExpertBank: offsets should be int64 [", E + 1, "] (one more than the ", E,
      " held experts), got ", offsets.scalar_type(), " ", offsets.sizes());
  TORCH_CHECK(offsets.device() == rows.device(), "ExpertBank: offsets are on ", offsets.device(),
              " but the rows on ", rows.device());
  const int64_t R = rows.size(0);
  if (!grouped_gemm_supported(rows)) {
    // The per-expert loop needs the counts on the host.
    const auto host = offsets.to(torch::kCPU);
    const auto* o = host.const_data_ptr<int64_t>();
    std::vector<int64_t> counts(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      counts[static_cast<size_t>(e)] = o[e + 1] - o[e];
    }
    TORCH_CHECK(o[0] == 0 && o[E] <= R, "ExpertBank: offsets should run from 0 to at most the ", R,
                " rows, got ", o[0], " to ", o[E]);
    const auto kept = forward(rows.narrow(0, 0, o[E]), counts);
    return o[E] == R ? kept
                     : torch::cat({kept, torch::zeros({R - o[E], rows.size(1)}, kept.options())});
  }
  TORCH_CHECK(R <= std::numeric_limits<int32_t>::max(), "ExpertBank: ", R,
              " rows exceed the grouped GEMM's int32 offsets");
  // Each expert's end row; the padding rows past offsets[E] join the last expert, so every row
  // is computed (zeros in, a defined value out) and the sizes never depend on the routing.
  auto ends = offsets.narrow(0, 1, E).clone();
  ends.narrow(0, E - 1, 1).fill_(R);
  const auto offs = ends.to(torch::kInt);
  const bool biased = b1.defined() || b2.defined();
  const auto row_expert =
      biased ? torch::searchsorted(ends, torch::arange(R, ends.options()), /*out_int32=*/false,
                                   /*right=*/true)
             : torch::Tensor();
  const auto x = rows.contiguous();
  torch::Tensor h;
  if (options.kind() == ExpertKind::kGated) {
    h = detail::activate(grouped_linear(x, w1, offs, row_expert, {}), options.activation()) *
        grouped_linear(x, w3, offs, row_expert, {});
  } else {
    h = detail::activate(grouped_linear(x, w1, offs, row_expert, b1), options.activation());
  }
  return grouped_linear(h, w2, offs, row_expert, b2);
}

}  // namespace moeprune

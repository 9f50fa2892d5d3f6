#include "distributed/all_to_all.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/torch.h>

#include <numeric>

namespace moeprune::distributed::detail {
namespace {

class AllToAllBackward : public torch::autograd::Node {
 public:
  AllToAllBackward(ProcessGroup group, std::vector<int64_t> send_rows,
                   std::vector<int64_t> recv_rows, std::vector<int64_t> out_sizes,
                   torch::TensorOptions out_options)
      : group_(std::move(group)),
        send_rows_(std::move(send_rows)),
        recv_rows_(std::move(recv_rows)),
        out_sizes_(std::move(out_sizes)),
        out_options_(out_options) {}

  std::string name() const override { return "moeprune::AllToAllBackward"; }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    // Every process must take part, so an undefined gradient travels as zeros.
    const auto grad = grads[0].defined() ? grads[0] : torch::zeros(out_sizes_, out_options_);
    return {group_.all_to_all(grad, recv_rows_, send_rows_)};
  }

 private:
  ProcessGroup group_;
  std::vector<int64_t> send_rows_, recv_rows_, out_sizes_;
  torch::TensorOptions out_options_;
};

}  // namespace

torch::Tensor all_to_all_with_grad(const ProcessGroup& group, const torch::Tensor& input,
                                   const std::vector<int64_t>& send_rows,
                                   const std::vector<int64_t>& recv_rows) {
  auto out = group.all_to_all(input.detach(), send_rows, recv_rows);
  if (torch::autograd::compute_requires_grad(input)) {
    auto node = std::shared_ptr<AllToAllBackward>(
        new AllToAllBackward(group, send_rows, recv_rows, out.sizes().vec(), out.options()),
        torch::autograd::deleteNode);
    node->set_next_edges(torch::autograd::collect_next_edges(input));
    torch::autograd::set_history(out, node);
  }
  return out;
}

}  // namespace moeprune::distributed::detail

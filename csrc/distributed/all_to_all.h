#pragma once

// The uneven all-to-all as an autograd function: the gradient of what a process received goes
// back to where it came from (the reverse all-to-all).
#include <moeprune/distributed/process_group.h>

#include <torch/types.h>

#include <vector>

namespace moeprune::distributed::detail {

torch::Tensor all_to_all_with_grad(const ProcessGroup& group, const torch::Tensor& input,
                                   const std::vector<int64_t>& send_rows,
                                   const std::vector<int64_t>& recv_rows);

}  // namespace moeprune::distributed::detail

#pragma once

// A process group for moeprune's multi-process paths (expert parallelism, data-parallel
// gradients): PyTorch's c10d underneath (ProcessGroupGloo for CPU tensors, ProcessGroupNCCL for
// CUDA tensors), set up from the environment a launcher gives every process (scripts/launch,
// torchrun): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. docs/distributed.md.
#include <torch/arg.h>
#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moeprune::distributed {

/// Where this process sits: read from the environment by from_env().
struct Environment {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;

  /// Reads RANK, WORLD_SIZE, LOCAL_RANK (default: RANK), MASTER_ADDR and MASTER_PORT; an error
  /// names a variable that is missing or malformed, or a RANK outside [0, WORLD_SIZE).
  static Environment from_env();
};

enum class Backend { kGloo, kNccl };

struct ProcessGroupOptions {
  /// Gloo moves CPU tensors; NCCL CUDA tensors (a library built with CUDA).
  TORCH_ARG(Backend, backend) = Backend::kGloo;
  /// How long to wait for the peers to join and for any one collective.
  TORCH_ARG(std::chrono::milliseconds, timeout) = std::chrono::minutes(5);
};

/// A group of `world_size` processes that run the same collectives in the same order. Copies
/// share the group. Every collective blocks until its result is ready.
class ProcessGroup {
 public:
  /// Joins the group described by `env`: rank 0 serves the rendezvous (a c10d TCPStore at
  /// MASTER_ADDR:MASTER_PORT), the others connect to it. Errors name a peer that did not join
  /// within the timeout, two processes claiming one rank, and a peer launched with another
  /// WORLD_SIZE.
  ProcessGroup(const Environment& env, ProcessGroupOptions options = {});
  /// ProcessGroup(Environment::from_env(), options).
  static ProcessGroup from_env(ProcessGroupOptions options = {});

  int64_t rank() const;
  int64_t world_size() const;
  int64_t local_rank() const;
  Backend backend() const;
  /// Where the collectives' tensors live: the CPU for Gloo, CUDA device LOCAL_RANK for NCCL.
  torch::Device device() const;

  /// Uneven all-to-all along dim 0: rows [send_rows[0] ...] of `input` go to rank 0, the next
  /// send_rows[1] to rank 1, ...; the result holds recv_rows[r] rows from each rank r, in rank
  /// order. Not differentiable (distributed/expert_parallel.h wraps it for autograd).
  torch::Tensor all_to_all(const torch::Tensor& input, const std::vector<int64_t>& send_rows,
                           const std::vector<int64_t>& recv_rows) const;
  /// Sums `tensors` over the ranks, in place; every rank ends with the same values.
  void all_reduce_sum_(std::vector<torch::Tensor>& tensors) const;
  /// Every rank's `input` (one shape on all ranks), stacked in rank order: [world_size, ...].
  torch::Tensor all_gather(const torch::Tensor& input) const;
  void barrier() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace moeprune::distributed

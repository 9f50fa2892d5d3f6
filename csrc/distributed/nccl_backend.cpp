#include "distributed/backends.h"

#ifdef MOEPRUNE_WITH_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace moeprune::distributed::detail {

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    const Environment& env,
                                                    std::chrono::milliseconds timeout) {
#ifdef MOEPRUNE_WITH_NCCL
  TORCH_CHECK(env.local_rank >= 0 && env.local_rank < c10::cuda::device_count(),
              "ProcessGroup: LOCAL_RANK ", env.local_rank,
              " names no CUDA device (this machine has ",
              static_cast<int>(c10::cuda::device_count()), ")");
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(env.local_rank));
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, static_cast<int>(env.rank),
                                                     static_cast<int>(env.world_size), options);
#else
  (void)store;
  (void)env;
  (void)timeout;
  TORCH_CHECK(false,
              "ProcessGroup: the NCCL backend needs a library built with CUDA and NCCL's headers "
              "(the nvidia-nccl package beside the torch wheel); Backend::kGloo moves CPU tensors");
#endif
}

}  // namespace moeprune::distributed::detail

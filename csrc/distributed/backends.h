#pragma once

// The c10d backends a ProcessGroup can hold besides Gloo (process_group.cpp builds Gloo itself).
#include <moeprune/distributed/process_group.h>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace moeprune::distributed::detail {

/// ProcessGroupNCCL on CUDA device LOCAL_RANK; an error where the library was built without
/// CUDA or without NCCL's headers.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    const Environment& env,
                                                    std::chrono::milliseconds timeout);

}  // namespace moeprune::distributed::detail

#pragma once

// What every experiment program (the demos, the vmoe_* tools) shares around its body: the process
// set-up and the error handling of main().
#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <fmt/format.h>
#include <malloc.h>
#include <stdlib.h>
#include <CLI/CLI.hpp>

namespace experiments {

/// Keeps freed memory in the process: without it glibc returns large blocks to the kernel and
/// every step re-faults them (about 20% of CPU training time, docs/performance.md).
inline void keep_freed_memory() {
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

/// Makes MKL's results independent of the thread count (its "strict" conditional numerical
/// reproducibility), unless MKL_CBWR is set already: on CPUs with AVX-512, MKL's SGEMM splits
/// its work by thread count and a run with 1 thread and one with 2 trained different bytes
/// (ctest lm_demo_deterministic, Intel Xeon); with AVX2 (AMD EPYC) they agreed anyway. MKL
/// reads the variable when it first runs, so this goes before any tensor work.
inline void reproducible_across_threads() {
  setenv("MKL_CBWR", "AUTO,STRICT", /*overwrite=*/0);
}

/// What every experiment program does first: results independent of the thread count, keep
/// freed memory, and set the torch thread count (0: torch's default).
inline void set_up_process(int64_t threads) {
  reproducible_across_threads();
  keep_freed_memory();
  if (threads > 0) {
    torch::set_num_threads(static_cast<int>(threads));
  }
}

/// Runs a program's body, printing a bad input's message (without a C++ backtrace) and
/// returning 1 instead of aborting.
template <typename Body>
int guarded(Body body, int argc, char** argv) {
  try {
    return body(argc, argv);
  } catch (const c10::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what_without_backtrace());
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
  }
  return 1;
}

}  // namespace experiments

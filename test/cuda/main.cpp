// The CUDA tests need a GPU. Without one the binary lists what it would have run and exits with
// 77, which ctest reports as skipped (never as passed).
#define CATCH_CONFIG_RUNNER
#include <torch/cuda.h>
#include <catch2/catch.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  Catch::Session session;
  if (const int rc = session.applyCommandLine(argc, argv); rc != 0) {
    return rc;
  }
  if (!torch::cuda::is_available()) {
    const auto cases = Catch::getAllTestCasesSorted(session.config()).size();
    std::printf("no CUDA device: %zu CUDA test cases skipped\n", cases);
    return 77;
  }
  return session.run();
}

// data::read_idx on arbitrary bytes, written under a plain name or a .gz one (the first input
// byte picks): refused with a c10::Error, or a uint8 tensor whose shape the header gives.
#include "fuzz_files.h"
#include "fuzz_target.h"

#include <moeprune/train/readers.h>

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>

MOEPRUNE_FUZZ_TARGET(idx_reader) {
  if (size == 0) {
    return;
  }
  const bool gz = (data[0] & 1) != 0;
  const std::string path =
      moeprune_fuzz::scratch_dir() + (gz ? "/input-idx3-ubyte.gz" : "/input-idx3-ubyte");
  moeprune_fuzz::write_bytes(path, data + 1, size - 1);
  moeprune_fuzz::refused_or_accepted([&] {
    const auto t = moeprune::data::read_idx(path);
    if (t.scalar_type() != torch::kUInt8 || (t.dim() != 1 && t.dim() != 3)) {
      std::fprintf(stderr, "read_idx returned a %s tensor of %d dimensions\n",
                   c10::toString(t.scalar_type()), static_cast<int>(t.dim()));
      std::abort();
    }
  });
}

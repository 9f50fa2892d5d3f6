// data::load_cifar on an arbitrary test batch (the first input byte picks CIFAR-10's
// test_batch.bin or CIFAR-100's test.bin): refused with a c10::Error, or images and labels that
// agree in count and stay below the class count.
#include "fuzz_files.h"
#include "fuzz_target.h"

#include <moeprune/train/readers.h>

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>

MOEPRUNE_FUZZ_TARGET(cifar_reader) {
  if (size == 0) {
    return;
  }
  const int64_t classes = (data[0] & 1) != 0 ? 100 : 10;
  const std::string dir = moeprune_fuzz::scratch_dir();
  moeprune_fuzz::write_bytes(dir + (classes == 10 ? "/test_batch.bin" : "/test.bin"), data + 1,
                             size - 1);
  moeprune_fuzz::refused_or_accepted([&] {
    const auto set = moeprune::data::load_cifar(dir, classes, /*train=*/false);
    const bool ok = set.images.dim() == 4 && set.images.size(0) == set.labels.size(0) &&
                    set.labels.numel() > 0 && set.labels.max().item<int64_t>() < classes &&
                    set.labels.min().item<int64_t>() >= 0;
    if (!ok) {
      std::fprintf(stderr, "load_cifar returned inconsistent images and labels\n");
      std::abort();
    }
  });
}

// safetensors::Checkpoint on an arbitrary model.safetensors.index.json beside the three real
// shards of test/fixtures/hf/mixtral_ft_sharded: refused with a c10::Error, or read; what it
// reads names only files inside the folder, and every tensor it lists can be looked up.
#include "fuzz_files.h"
#include "fuzz_target.h"

#include <moeprune/io/safetensors.h>

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>

namespace {

const std::string& checkpoint_dir() {
  static const std::string dir = [] {
    const std::string d = moeprune_fuzz::scratch_dir() + "/sharded";
    (void)std::system(("mkdir -p '" + d + "'").c_str());
    const std::string fixture = moeprune_fuzz::fixtures_dir() + "/hf/mixtral_ft_sharded/";
    for (const char* shard :
         {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
          "model-00003-of-00003.safetensors"}) {
      moeprune_fuzz::link_file(fixture + shard, d + "/" + shard);
    }
    return d;
  }();
  return dir;
}

}  // namespace

MOEPRUNE_FUZZ_TARGET(safetensors_index) {
  namespace st = moeprune::safetensors;
  const std::string& dir = checkpoint_dir();
  moeprune_fuzz::write_bytes(dir + "/model.safetensors.index.json", data, size);
  moeprune_fuzz::refused_or_accepted([&] {
    const st::Checkpoint checkpoint(dir);
    for (const auto& shard : checkpoint.shard_files()) {
      // Paths that leave the folder (../, absolute, sub-folders) must have been refused.
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
        std::fprintf(stderr, "index accepted a shard outside the folder: '%s'\n", shard.c_str());
        std::abort();
      }
    }
    for (const auto& name : checkpoint.names()) {
      const auto& info = checkpoint.info(name);
      if (info.name != name) {
        std::fprintf(stderr, "info('%s') describes '%s'\n", name.c_str(), info.name.c_str());
        std::abort();
      }
    }
  });
}

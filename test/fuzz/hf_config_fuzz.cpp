// An arbitrary config.json beside the tensors of a real checkpoint (the first input byte picks
// which of the test fixtures): hf::describe (the MoE view of the checkpoint and each layer's
// options), the CausalLM options and the Switch Transformers options are each refused with a
// c10::Error or read.
#include "fuzz_files.h"
#include "fuzz_target.h"

#include <moeprune/hf/checkpoint.h>
#include <moeprune/io/safetensors.h>
#include <moeprune/models/seq2seq/checkpoint.h>

#include "hf/config.h"
#include "models/lm/hf_architecture.h"

#include <torch/torch.h>

#include <array>
#include <cstdlib>
#include <memory>

namespace {

constexpr std::array<const char*, 11> kFixtures = {"hf/mixtral_ft",
                                                   "hf/mixtral_ft_fused",
                                                   "hf/switch_ft",
                                                   "lm/qwen2_moe",
                                                   "lm/qwen3_moe",
                                                   "lm/olmoe",
                                                   "lm/deepseek",
                                                   "lm/deepseek_v2",
                                                   "lm/deepseek_v3",
                                                   "lm/glm4_moe",
                                                   "seq2seq/switch_transformers"};

struct Fixture {
  std::string dir;                                                ///< holds the fuzzed config.json
  std::unique_ptr<moeprune::safetensors::Checkpoint> checkpoint;  ///< the fixture's tensors
};

Fixture& fixture(size_t i) {
  static std::array<Fixture, kFixtures.size()> all;
  auto& f = all[i];
  if (!f.checkpoint) {
    f.dir = moeprune_fuzz::scratch_dir() + "/config-" + std::to_string(i);
    (void)std::system(("mkdir -p '" + f.dir + "'").c_str());
    f.checkpoint = std::make_unique<moeprune::safetensors::Checkpoint>(
        moeprune_fuzz::fixtures_dir() + "/" + kFixtures[i]);
  }
  return f;
}

}  // namespace

MOEPRUNE_FUZZ_TARGET(hf_config) {
  if (size == 0) {
    return;
  }
  auto& f = fixture(data[0] % kFixtures.size());
  moeprune_fuzz::write_bytes(f.dir + "/config.json", data + 1, size - 1);
  moeprune_fuzz::refused_or_accepted([&] {
    const auto info = moeprune::hf::describe(f.dir, *f.checkpoint);
    for (const auto& ref : info.layers) {
      moeprune_fuzz::refused_or_accepted([&] { moeprune::hf::moe_layer_options(info, ref); });
    }
  });
  moeprune_fuzz::refused_or_accepted([&] {
    const auto options = moeprune::lm::detail::options_from_config(moeprune::hf::Config(f.dir));
    moeprune_fuzz::refused_or_accepted(
        [&] { moeprune::lm::detail::config_from_options(options, 4); });
  });
  moeprune_fuzz::refused_or_accepted([&] { moeprune::seq2seq::read_switch_options(f.dir); });
}

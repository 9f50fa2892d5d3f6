#pragma once

// describe() on a config.json already read, for hf::Source, which reads the folder once.
#include <moeprune/hf/checkpoint.h>

#include "hf/config.h"

namespace moeprune::hf::detail {

ModelInfo describe(const Config& config, const safetensors::Checkpoint& checkpoint);

}  // namespace moeprune::hf::detail

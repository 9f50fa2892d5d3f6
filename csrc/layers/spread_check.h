#pragma once

// Writers of whole models refuse a layer spread over processes: its bank holds only this
// process's experts while its state describes all of them, so the file would not load.
#include <moeprune/layers/moe_layer.h>

#include <string>

namespace moeprune::detail {

inline void check_not_spread(const MoELayer& layer, const std::string& where, const char* who) {
  TORCH_CHECK(!layer->expert_exchange(), who, ": MoE layer ", where,
              " holds only this process's share of its experts (expert parallelism); write the "
              "model with distributed::write_on_root, which gathers them");
}

}  // namespace moeprune::detail

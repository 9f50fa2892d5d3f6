// Runs every MoE layer of a Hugging Face checkpoint folder, as moeprune loads it, on fixed random
// inputs and writes "<prefix>.input" / "<prefix>.output" to a safetensors file, for
// check_transformers_load.py to compare with transformers' own blocks.
//   moe_outputs CHECKPOINT_DIR OUT.safetensors

#include <moeprune/hf/checkpoint.h>
#include <moeprune/io/safetensors.h>

#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: moe_outputs CHECKPOINT_DIR OUT.safetensors\n";
    return 2;
  }
  try {
    auto model = moeprune::hf::load_moe_model(argv[1]);
    torch::manual_seed(7);
    torch::NoGradGuard no_grad;
    std::map<std::string, torch::Tensor> tensors;
    for (auto& [index, layer] : model.layers) {
      const auto& prefix = model.info.layers[static_cast<size_t>(index)].prefix;
      layer->eval();
      const auto x = torch::randn({3, 10, model.info.d_model});
      tensors[prefix + ".input"] = x;
      tensors[prefix + ".output"] = layer->forward(x).output;
    }
    moeprune::safetensors::save_file(argv[2], tensors);
  } catch (const c10::Error& e) {
    std::cerr << "moe_outputs: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "moe_outputs: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

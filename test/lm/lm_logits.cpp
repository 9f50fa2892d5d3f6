// Writes moeprune's logits of a checkpoint folder on a reference file's input_ids, for
// check_lm_transformers_load.py to compare transformers' with:
//   lm_logits MODEL_DIR REFERENCE.safetensors OUT.safetensors
#include <moeprune/io/safetensors.h>
#include <moeprune/models/lm/checkpoint.h>

#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: lm_logits MODEL_DIR REFERENCE.safetensors OUT.safetensors\n";
    return 2;
  }
  try {
    auto model = moeprune::lm::load_causal_lm(argv[1]);
    model->eval();
    torch::NoGradGuard no_grad;
    const auto ids = moeprune::safetensors::load_file(argv[2]).at("input_ids");
    moeprune::safetensors::save_file(argv[3],
                                     {{"input_ids", ids}, {"logits", model->forward(ids).logits}});
  } catch (const c10::Error& e) {
    std::cerr << "lm_logits: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  return 0;
}

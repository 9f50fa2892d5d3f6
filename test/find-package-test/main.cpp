// A project outside the moeprune tree: builds against the installed package and runs a layer.
#include <moeprune/moeprune.h>

#include <torch/torch.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  moeprune::MoELayer layer(moeprune::MoELayerOptions::preset("top_k_gated", 8, 16, 4));
  const auto x = torch::randn({5, 8}, torch::requires_grad());
  const auto out = layer->forward(x);
  out.output.sum().backward();
  // Each token reaches exactly two experts in a dropless top-2 layer.
  const bool ok =
      out.plan.num_rows() == 10 && x.grad().defined() && out.output.sizes() == x.sizes();
  std::cout << "moeprune " << moeprune::kVersion << " consumer: rows=" << out.plan.num_rows()
            << (ok ? " ok" : " FAILED") << std::endl;
  return ok ? 0 : 1;
}

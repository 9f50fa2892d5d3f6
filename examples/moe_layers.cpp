// Builds each MoE layer preset, runs forward and backward on random tokens and prints what the
// router did: rows per expert, dropped slots, auxiliary losses and the time each pass took.
#include <moeprune/moeprune.h>

#include <fmt/format.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string load_bar(const std::vector<int64_t>& counts) {
  // One character per expert, height by its share of the busiest expert's rows.
  static const char* levels[] = {" ", "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  const int64_t top = std::max<int64_t>(1, *std::max_element(counts.begin(), counts.end()));
  std::string bar;
  for (const auto c : counts) {
    bar += levels[(c * 8 + top - 1) / top];
  }
  return bar;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Runs every moeprune MoE layer preset forward and backward on random tokens."};
  int64_t sequences = 8, seq_len = 256, d_model = 256, hidden = 1024, experts = 8;
  uint64_t seed = 0;
  std::vector<std::string> presets = moeprune::MoELayerOptions::preset_names();
  app.add_option("--sequences", sequences, "Input items (images or sequences)")
      ->check(CLI::PositiveNumber);
  app.add_option("--seq-len", seq_len, "Tokens per item")->check(CLI::PositiveNumber);
  app.add_option("--d-model", d_model, "Token width")->check(CLI::PositiveNumber);
  app.add_option("--hidden", hidden, "Expert hidden width")->check(CLI::PositiveNumber);
  app.add_option("--experts", experts, "Experts per layer")->check(CLI::PositiveNumber);
  app.add_option("--preset", presets, "Presets to run (default: all)")
      ->check(CLI::IsMember(moeprune::MoELayerOptions::preset_names()));
  app.add_option("--seed", seed, "Random seed");
  CLI11_PARSE(app, argc, argv);

  torch::manual_seed(seed);
  fmt::print(
      "moeprune {} | {} items x {} tokens, d_model {}, hidden {}, {} experts, {} threads\n\n",
      moeprune::kVersion, sequences, seq_len, d_model, hidden, experts, at::get_num_threads());
  fmt::print("{:<14} {:>3} {:>9} {:>7} {:>8} {:>9}  {:<{}}  {:>10} {:>10} {:>9} {:>9}\n", "preset",
             "k", "capacity", "rows", "dropped", "no expert", "load", std::max<int64_t>(experts, 4),
             "aux loss", "z-loss", "fwd ms", "bwd ms");
  for (const auto& name : presets) {
    auto options = moeprune::MoELayerOptions::preset(name, d_model, hidden, experts);
    const auto* ensemble = std::get_if<moeprune::EnsembleRouterConfig>(&options.router());
    if (ensemble != nullptr && sequences % ensemble->members() != 0) {
      fmt::print("{:<14} skipped: --sequences must be a multiple of {} members\n", name,
                 ensemble->members());
      continue;
    }
    moeprune::MoELayer layer(options);
    layer->train();
    const auto x = torch::randn({sequences, seq_len, d_model}, torch::requires_grad());

    auto start = std::chrono::steady_clock::now();
    const auto out = layer(x);
    const double forward_s = seconds_since(start);
    start = std::chrono::steady_clock::now();
    (out.output.square().mean() + out.aux_loss).backward();
    const double backward_s = seconds_since(start);

    const auto& plan = out.plan;
    const int64_t k =
        plan.slots_per_token() == experts && name == "expert_choice" ? 0 : plan.slots_per_token();
    fmt::print(
        "{:<14} {:>3} {:>9} {:>7} {:>7.2f}% {:>8.2f}%  {:<{}}  {:>10.5f} {:>10.3f} {:>9.1f} "
        "{:>9.1f}\n",
        name, k == 0 ? std::string("-") : std::to_string(k),
        plan.capacity < 0 ? std::string("dropless") : std::to_string(plan.capacity),
        plan.num_rows(), 100.0 * plan.dropped_fraction(), 100.0 * plan.unrouted_fraction(),
        load_bar(plan.counts()), std::max<int64_t>(experts, 4), out.aux_loss.item<double>(),
        out.losses.z_loss.item<double>(), 1e3 * forward_s, 1e3 * backward_s);
  }
  fmt::print(
      "\nk: experts per token ('-': expert choice, where each expert picks its tokens). capacity: "
      "slots per expert and routing group.\nload: rows per expert, relative to the busiest. "
      "dropped: token slots over capacity (their output is zero; the residual carries them).\n"
      "no expert: tokens none of whose slots reached an expert.\n");
  return 0;
}

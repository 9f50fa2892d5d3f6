// The pruning API in one page: a V-MoE's MoE view, a data-driven criterion scored on calibration
// images, a plan that prunes half the experts of every MoE layer, applied in place, saved and
// loaded back in its pruned shapes. (Random weights and images: this shows the calls, not a
// result; experiments/demo.cpp runs the real thing.)
#include <moeprune/models/vision/checkpoint.h>
#include <moeprune/models/vision/moe_view.h>
#include <moeprune/pruning/builtin_criteria.h>
#include <moeprune/pruning/pruning_plan.h>

#include <fmt/format.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>

int main(int argc, char** argv) {
  const std::string out =
      argc > 1 ? argv[1] : (std::filesystem::temp_directory_path() / "prune_vit.pt").string();
  torch::manual_seed(0);
  moeprune::VisionTransformer vit(moeprune::VisionTransformerOptions::small_vmoe(/*classes=*/10));

  // Calibration data: batches of images, here two random ones.
  const auto images = torch::randn({64, 1, 28, 28});
  moeprune::CalibrationData calibration = [&](const auto& visit) {
    visit(images.narrow(0, 0, 32));
    visit(images.narrow(0, 32, 32));
  };
  // The model's MoE layers as pruning sees them: keys 1 and 3 (its MoE blocks).
  const auto view = moeprune::moe_view(vit, calibration);
  for (const auto& layer : view->layers()) {
    fmt::print("MoE layer {} ({}): {} experts\n", layer.key, layer.name,
               layer.layer->router().num_experts());
  }

  // Score (one walk over the calibration data), plan 4 of 8 experts per layer, apply.
  const auto scores = moeprune::pruning::score_experts(moeprune::pruning::Importance(), *view);
  const auto plan = moeprune::pruning::PruningPlan::same_count(scores, *view, 4, {}, "importance");
  fmt::print("{}", plan.table());
  moeprune::pruning::apply_plan(*view, plan);

  // The layers know what was done to them; the checkpoint keeps it.
  moeprune::save_vision_transformer(out, vit);
  const auto loaded = moeprune::load_vision_transformer(out);
  fmt::print("saved {}; reloaded with {} of 8 experts in block 1\n", out,
             loaded->moe_layer(1)->experts()->num_held());
  std::filesystem::remove(out);
  return 0;
}

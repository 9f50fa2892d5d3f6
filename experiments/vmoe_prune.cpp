// Prunes experts of a fine-tuned vision MoE with a criterion from the registry, writes the
// pruned checkpoint (and the plan), and prints the plan and the test accuracy before and after.
#include "vision_common.h"

#include <moeprune/io/atomic_write.h>

#include <sstream>

namespace {

std::vector<int64_t> parse_list(const std::string& text) {
  return text.empty() ? std::vector<int64_t>{} : moeprune::data::parse_label_mapping(text);
}

std::map<int64_t, int64_t> parse_counts(const std::string& text) {
  std::map<int64_t, int64_t> counts;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto colon = item.find(':');
    TORCH_CHECK(colon != std::string::npos, "--per-layer: '", item, "' is not BLOCK:COUNT");
    counts[std::stoll(item.substr(0, colon))] = std::stoll(item.substr(colon + 1));
  }
  return counts;
}

int run(int argc, char** argv) {
  CLI::App app{"Prunes the experts of a fine-tuned vision MoE checkpoint."};
  experiments::DataArgs data;
  std::string pretrained, finetuned, criterion = "router_norm_change", out, plan_out, layers,
                                     per_layer;
  int64_t per_layer_count = -1, budget = -1, floor = 0, calibration = 512, threads = 0;
  bool drop_columns = false;
  uint64_t seed = 0;
  const auto registry = moeprune::pruning::CriterionRegistry::with_builtins();
  app.add_option("--pretrained", pretrained, "Pre-trained checkpoint (criteria that compare)")
      ->check(CLI::ExistingFile);
  app.add_option("--finetuned", finetuned, "Fine-tuned checkpoint to prune")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--criterion", criterion, "Pruning criterion")
      ->check(CLI::IsMember(registry.names()))
      ->capture_default_str();
  auto* same = app.add_option("--experts-per-layer", per_layer_count,
                              "Prune this many experts in each MoE layer (the paper's form)");
  app.add_option("--layers", layers, "With --experts-per-layer: only these blocks (e.g. 1,3)");
  auto* per = app.add_option("--per-layer", per_layer, "Counts per block, e.g. 1:2,3:4");
  auto* global =
      app.add_option("--global-budget", budget, "Prune this many experts over all layers");
  app.add_option("--floor", floor, "With --global-budget: experts every layer keeps at least");
  same->excludes(per)->excludes(global);
  per->excludes(global);
  app.add_flag("--drop-router-columns", drop_columns,
               "Remove the pruned experts' router columns and renormalise (Expert Drop) instead "
               "of the paper's semantics (router kept, pruned slots output zero)");
  app.add_option("--calibration-images", calibration, "Training images for data-driven criteria")
      ->capture_default_str();
  app.add_option("--seed", seed, "Seed (random criterion)")->capture_default_str();
  app.add_option("--data-dir", data.dir, "Folder of the data files (default: the checkpoint's)");
  app.add_option("--threads", threads, "Torch threads (0: torch's default)");
  app.add_option("--out", out, "Pruned checkpoint to write")->required();
  app.add_option("--plan-out", plan_out, "Also write the plan as JSON");
  CLI11_PARSE(app, argc, argv);
  TORCH_CHECK(per_layer_count >= 0 || !per_layer.empty() || budget >= 0,
              "say how much to prune: --experts-per-layer, --per-layer or --global-budget");

  experiments::set_up_process(threads);
  const auto meta = experiments::read_metadata(finetuned);
  data.data = meta.data;
  const auto splits = experiments::load_splits(data, meta.labels);
  auto model = moeprune::load_vision_transformer(finetuned);
  moeprune::Trainer evaluator(model, moeprune::TrainerOptions()
                                         .mean(experiments::channel_mean(splits.test))
                                         .std(experiments::channel_std(splits.test))
                                         .progress(false));
  const auto before = evaluator.evaluate(splits.test);

  const auto crit = registry.create(criterion);
  moeprune::pruning::CriterionContext ctx;
  const auto view =
      moeprune::moe_view(model, experiments::calibration_set(splits.train, calibration).data);
  ctx.finetuned = view;
  ctx.seed = seed;
  if (crit->needs_pretrained()) {
    TORCH_CHECK(!pretrained.empty(), criterion, " needs --pretrained");
    ctx.pretrained = moeprune::moe_view(moeprune::load_vision_transformer(pretrained));
  }
  const auto scores = moeprune::pruning::score_experts(*crit, ctx);
  moeprune::pruning::PruningPlan plan;
  if (per_layer_count >= 0) {
    plan = moeprune::pruning::PruningPlan::same_count(scores, *view, per_layer_count,
                                                      parse_list(layers), criterion);
  } else if (!per_layer.empty()) {
    plan = moeprune::pruning::PruningPlan::per_layer(scores, *view, parse_counts(per_layer),
                                                     criterion);
  } else {
    plan = moeprune::pruning::PruningPlan::global_budget(scores, *view, budget, floor, criterion);
  }
  fmt::print("{}: {}\n{}", criterion, crit->description(), plan.table());
  int64_t params_before = 0, params_after = 0;
  for (const auto& p : model->parameters()) {
    params_before += p.numel();
  }
  moeprune::pruning::apply_plan(*view, plan, drop_columns);
  for (const auto& p : model->parameters()) {
    params_after += p.numel();
  }
  const auto after = evaluator.evaluate(splits.test);
  experiments::print_eval("before pruning", before);
  experiments::print_eval("after pruning ", after);
  fmt::print("parameters {} -> {} ({:.1f}% fewer)\n", params_before, params_after,
             100.0 * static_cast<double>(params_before - params_after) /
                 static_cast<double>(params_before));
  auto metadata = nlohmann::json::parse(experiments::task_metadata(data, meta.labels));
  metadata["plan"] = nlohmann::json::parse(plan.to_json());
  moeprune::save_vision_transformer(out, model, metadata.dump());
  if (!plan_out.empty()) {
    moeprune::io::write_file_atomically(plan_out, plan.to_json() + "\n");
  }
  fmt::print("saved {}\n", out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return experiments::guarded(run, argc, argv);
}

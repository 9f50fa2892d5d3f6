#include <moeprune/pruning/criterion.h>

#include <moeprune/pruning/builtin_criteria.h>

#include <torch/torch.h>

namespace moeprune::pruning {

CriterionRegistry CriterionRegistry::with_builtins() {
  CriterionRegistry r;
  r.add("router_norm_change", [] { return std::make_unique<RouterNormChange>(); });
  r.add("importance", [] { return std::make_unique<Importance>(); });
  r.add("router_magnitude", [] { return std::make_unique<RouterMagnitude>(); });
  r.add("neuron_magnitude_change", [] { return std::make_unique<NeuronMagnitudeChange>(); });
  r.add("frequency", [] { return std::make_unique<Frequency>(); });
  r.add("reap", [] { return std::make_unique<Reap>(); });
  r.add("random", [] { return std::make_unique<RandomCriterion>(); });
  return r;
}

void CriterionRegistry::add(const std::string& name, Factory factory) {
  TORCH_CHECK(!name.empty(), "CriterionRegistry: a criterion needs a name");
  factories_[name] = std::move(factory);
}

std::unique_ptr<Criterion> CriterionRegistry::create(const std::string& name) const {
  const auto it = factories_.find(name);
  if (it == factories_.end()) {
    std::string known;
    for (const auto& [n, f] : factories_) {
      known += (known.empty() ? "" : ", ") + n;
    }
    TORCH_CHECK(false, "unknown pruning criterion '", name, "' (known: ", known, ")");
  }
  return it->second();
}

std::vector<std::string> CriterionRegistry::names() const {
  std::vector<std::string> names;
  for (const auto& [n, f] : factories_) {
    names.push_back(n);
  }
  return names;
}

namespace {

std::map<int64_t, MoELayer> layers_or_model(const std::map<int64_t, MoELayer>& layers,
                                            const VisionTransformer& model) {
  if (!layers.empty() || model.is_empty()) {
    return layers;
  }
  std::map<int64_t, MoELayer> out;
  for (auto& [block, layer] : model->moe_layers()) {
    out.emplace(block, layer);
  }
  return out;
}

}  // namespace

std::map<int64_t, MoELayer> CriterionContext::finetuned_moe_layers() const {
  return layers_or_model(finetuned_layers, finetuned);
}

std::map<int64_t, MoELayer> CriterionContext::pretrained_moe_layers() const {
  return layers_or_model(pretrained_layers, pretrained);
}

ExpertScores score_experts(const Criterion& criterion, const CriterionContext& context) {
  const auto name = criterion.name();
  TORCH_CHECK(!context.finetuned.is_empty() || !context.finetuned_layers.empty(), name,
              ": the fine-tuned model is missing");
  TORCH_CHECK(context.finetuned.is_empty() || context.finetuned_layers.empty(), name,
              ": give the fine-tuned model or its MoE layers, not both");
  const auto layers = context.finetuned_moe_layers();
  TORCH_CHECK(!layers.empty(), name, ": the model has no MoE layers to score");
  if (criterion.needs_pretrained()) {
    const auto pre = context.pretrained_moe_layers();
    TORCH_CHECK(!pre.empty(), name, " needs the pre-trained model");
    TORCH_CHECK(pre.size() == layers.size(), name, ": the pre-trained model has ", pre.size(),
                " MoE layers, the fine-tuned one ", layers.size());
    for (const auto& [block, layer] : layers) {
      const auto it = pre.find(block);
      TORCH_CHECK(
          it != pre.end() && it->second->router().num_experts() == layer->router().num_experts(),
          name, ": MoE block ", block, " differs between the pre-trained and fine-tuned models");
    }
  }
  TORCH_CHECK(!criterion.needs_data() || context.has_data(), name, " needs calibration data");
  TORCH_CHECK(!(context.data && !context.finetuned_layers.empty()), name,
              ": image calibration data needs the model; give MoE layers token data instead");
  TORCH_CHECK(!(context.layer_data && context.finetuned_layers.empty()), name,
              ": per-layer calibration tokens need the MoE layers (finetuned_layers)");
  auto scores = criterion.score(context);
  for (const auto& [block, layer] : layers) {
    TORCH_CHECK(scores.count(block) == 1, name, " gave no scores for MoE block ", block);
    TORCH_CHECK(scores[block].dim() == 1 && scores[block].size(0) == layer->router().num_experts(),
                name, " gave ", scores[block].sizes(), " scores for the ",
                layer->router().num_experts(), " experts of block ", block);
    scores[block] = scores[block].to(torch::kDouble).cpu().contiguous();
  }
  return scores;
}

}  // namespace moeprune::pruning

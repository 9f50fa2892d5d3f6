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

ExpertScores score_experts(const Criterion& criterion, const CriterionContext& context) {
  const auto name = criterion.name();
  TORCH_CHECK(!context.finetuned.is_empty(), name, ": the fine-tuned model is missing");
  const auto layers = context.finetuned->moe_layers();
  TORCH_CHECK(!layers.empty(), name, ": the model has no MoE layers to score");
  if (criterion.needs_pretrained()) {
    TORCH_CHECK(!context.pretrained.is_empty(), name, " needs the pre-trained model");
    const auto pre = context.pretrained->moe_layers();
    TORCH_CHECK(pre.size() == layers.size(), name, ": the pre-trained model has ", pre.size(),
                " MoE layers, the fine-tuned one ", layers.size());
    for (size_t i = 0; i < layers.size(); ++i) {
      TORCH_CHECK(pre[i].first == layers[i].first && pre[i].second->router().num_experts() ==
                                                         layers[i].second->router().num_experts(),
                  name, ": MoE block ", layers[i].first,
                  " differs between the pre-trained and fine-tuned models");
    }
  }
  TORCH_CHECK(!criterion.needs_data() || context.data, name, " needs calibration data");
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

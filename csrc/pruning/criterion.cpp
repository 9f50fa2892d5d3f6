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
  r.add("ean", [] { return std::make_unique<ExpertActivationNorm>(); });
  r.add("naee", [] { return std::make_unique<Naee>(); });
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

torch::Tensor score_layer(const Criterion& criterion, const LayerScoringContext& context) {
  const auto name = criterion.name();
  const auto& ft = context.finetuned;
  const int64_t E = ft.layer->router().num_experts();
  if (criterion.needs_pretrained()) {
    TORCH_CHECK(context.pretrained != nullptr, name, " needs the pre-trained model's layer ",
                ft.name);
    TORCH_CHECK(context.pretrained->layer->router().num_experts() == E, name, ": MoE layer ",
                ft.name, " has ", E, " experts in the fine-tuned model and ",
                context.pretrained->layer->router().num_experts(), " in the pre-trained one");
  }
  auto scores = criterion.score_layer(context);
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == E, name, " gave ", scores.sizes(),
              " scores for the ", E, " experts of MoE layer ", ft.name);
  scores = scores.to(torch::kDouble).cpu().contiguous();
  // A NaN score has no place in a ranking (every comparison with it is false): refuse it and
  // name the parameters that hold NaN or inf, the usual cause (data criteria refuse bad
  // calibration inputs earlier, in the router's check).
  const auto nan = torch::isnan(scores).nonzero();
  if (nan.numel() != 0) {
    std::string bad;
    for (const auto* layer : {&ft, context.pretrained}) {
      if (layer == nullptr) {
        continue;
      }
      for (const auto& p : layer->layer->named_parameters()) {
        if (!torch::isfinite(p.value().detach()).all().item<bool>()) {
          bad +=
              std::string(bad.empty() ? "" : ", ") + (layer == &ft ? "" : "pre-trained ") + p.key();
        }
      }
    }
    TORCH_CHECK(false, name, " scored expert ", nan[0][0].item<int64_t>(), " of MoE layer ",
                ft.name, " NaN; ",
                bad.empty() ? std::string("the layer's parameters are finite")
                            : "these parameters hold NaN or inf: " + bad);
  }
  return scores;
}

ExpertScores score_experts(const Criterion& criterion, const CriterionContext& context) {
  TORCH_CHECK(context.finetuned != nullptr, criterion.name(), ": the fine-tuned model is missing");
  return score_experts(criterion, *context.finetuned, context.pretrained.get(), context.seed);
}

ExpertScores score_experts(const Criterion& criterion, const MoEView& finetuned,
                           const MoEView* pretrained, uint64_t seed) {
  const auto name = criterion.name();
  const auto layers = finetuned.layers();
  TORCH_CHECK(!layers.empty(), name, ": the model has no MoE layers to score");
  std::map<int64_t, MoELayerEntry> pre;
  if (criterion.needs_pretrained()) {
    TORCH_CHECK(pretrained != nullptr, name, " needs the pre-trained model");
    pre = pretrained->layer_map();
    TORCH_CHECK(pre.size() == layers.size(), name, ": the pre-trained model has ", pre.size(),
                " MoE layers, the fine-tuned one ", layers.size());
    for (const auto& entry : layers) {
      const auto it = pre.find(entry.key);
      TORCH_CHECK(it != pre.end() && it->second.layer->router().num_experts() ==
                                         entry.layer->router().num_experts(),
                  name, ": MoE layer ", entry.name,
                  " differs between the pre-trained and fine-tuned models");
    }
  }
  const bool data = criterion.needs_data() || criterion.needs_inputs();
  TORCH_CHECK(!data || finetuned.has_calibration(), name, " needs calibration data");
  ExpertScores scores;
  const auto visit = [&](const MoELayerEntry& entry, const LayerCalls& calls) {
    const auto it = pre.find(entry.key);
    const LayerScoringContext layer{entry, it == pre.end() ? nullptr : &it->second, calls, seed};
    scores[entry.key] = score_layer(criterion, layer);
  };
  if (data) {
    finetuned.walk(criterion.needs_inputs(), visit);
  } else {
    const LayerCalls none;
    for (const auto& entry : layers) {
      visit(entry, none);
    }
  }
  for (const auto& entry : layers) {
    TORCH_CHECK(scores.count(entry.key) == 1, name, " gave no scores for MoE layer ", entry.name);
  }
  return scores;
}

}  // namespace moeprune::pruning

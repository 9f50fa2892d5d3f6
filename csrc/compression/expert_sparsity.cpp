#include <moeprune/compression/expert_sparsity.h>
#include <moeprune/compression/model_sparsity.h>

#include "compression/pruned_linear.h"
#include "layers/activation.h"

#include <torch/torch.h>

#include <chrono>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace moeprune::compression {
namespace expert_sparsity_detail {

using sparsity_detail::Calibration;
using sparsity_detail::prune_linear;
using sparsity_detail::PrunedLinear;

// The calibration tokens of one layer, and for each bank expert the rows of them it serves.
struct LayerTokensByExpert {
  torch::Tensor tokens;                   // [T, d], every call's input in order
  std::vector<torch::Tensor> token_ids;   // per bank expert: [n] int64 into `tokens`
  std::vector<torch::Tensor> gate_value;  // per bank expert: [n] its combine weights
};

LayerTokensByExpert tokens_by_expert(const LayerCalls& calls, int64_t num_held) {
  LayerTokensByExpert out;
  std::vector<torch::Tensor> inputs;
  std::vector<std::vector<torch::Tensor>> ids(static_cast<size_t>(num_held));
  std::vector<std::vector<torch::Tensor>> gates(static_cast<size_t>(num_held));
  int64_t first = 0;
  for (const auto& call : calls) {
    const auto& plan = call.plan;
    TORCH_CHECK(call.input.defined(), "sparsify_experts: the walk kept no input tokens");
    TORCH_CHECK(plan.num_bank_experts() == num_held, "sparsify_experts: a routing plan names ",
                plan.num_bank_experts(), " bank experts, the bank holds ", num_held);
    const auto x = call.input.reshape({-1, call.input.size(-1)});
    const int64_t K = plan.slots_per_token();
    const auto offsets = plan.expert_offsets.cpu();
    const auto row_slot = plan.row_slot.cpu();
    const auto weights = plan.combine_weight.detach().reshape({-1}).cpu();
    const auto o = offsets.accessor<int64_t, 1>();
    for (int64_t b = 0; b < num_held; ++b) {
      const auto slots = row_slot.slice(0, o[b], o[b + 1]);
      const auto real = slots.masked_select(slots.ge(0));
      ids[static_cast<size_t>(b)].push_back(real.div(K, "floor") + first);
      gates[static_cast<size_t>(b)].push_back(weights.index_select(0, real));
    }
    inputs.push_back(x);
    first += x.size(0);
  }
  out.tokens = torch::cat(inputs);
  for (int64_t b = 0; b < num_held; ++b) {
    out.token_ids.push_back(torch::cat(ids[static_cast<size_t>(b)]));
    out.gate_value.push_back(torch::cat(gates[static_cast<size_t>(b)]));
  }
  return out;
}

}  // namespace expert_sparsity_detail

void sparsity_detail::check_expert_layer(const MoELayerEntry& entry) {
  MoELayer layer = entry.layer;
  TORCH_CHECK(layer->experts()->options.rank() == 0, "sparsify_experts: MoE layer ", entry.name,
              " is factorised (low rank plus sparse, MC-SMoE); sparsify before factorising");
  TORCH_CHECK(layer->expert_exchange() == nullptr, "sparsify_experts: MoE layer ", entry.name,
              " serves its experts over processes; sparsify the whole model before sharding it");
  TORCH_CHECK(layer->experts()->w1.is_floating_point(), "sparsify_experts: MoE layer ", entry.name,
              " has ", layer->experts()->w1.scalar_type(), " expert weights");
}

namespace expert_sparsity_detail {

// Prunes every expert of one layer from its calibration calls (`calls` null: no calibration).
LayerSparsityReport sparsify_layer(const MoELayerEntry& entry, const LayerCalls* calls,
                                   const ExpertSparsityOptions& options,
                                   const sparsity_detail::LinearTransform& transform) {
  const auto start = std::chrono::steady_clock::now();
  sparsity_detail::check_expert_layer(entry);
  MoELayer layer = entry.layer;
  auto bank = layer->experts();
  const int64_t held = bank->num_held();
  const bool gated = bank->options.kind() == ExpertKind::kGated;
  const bool bias = bank->options.kind() == ExpertKind::kMlp && bank->options.bias();

  LayerSparsityReport report;
  report.key = entry.key;
  report.name = entry.name;
  report.experts = bank->expert_ids();

  LayerTokensByExpert tokens;
  const bool calibrated = calls != nullptr;
  if (calibrated) {
    TORCH_CHECK(!calls->empty(), "sparsify_experts: no calibration tokens reached MoE layer ",
                entry.name);
    tokens = tokens_by_expert(*calls, held);
    report.layer_tokens = tokens.tokens.size(0);
  }

  torch::NoGradGuard no_grad;
  double error = 0.0, reference = 0.0;
  for (int64_t b = 0; b < held; ++b) {
    const auto w1 = bank->w1[b].t();  // [F, d]
    const auto w2 = bank->w2[b].t();  // [d, F]
    const auto w3 = gated ? bank->w3[b].t() : torch::Tensor();
    std::optional<Calibration> input_calibration, hidden_calibration;
    if (calibrated) {
      const auto& ids = tokens.token_ids[static_cast<size_t>(b)];
      const int64_t routed = ids.size(0);
      const bool all = options.calibration() == ExpertCalibration::kAllTokens;
      const bool fall_back = !all && routed < options.min_tokens();
      report.routed_tokens.push_back(routed);
      report.fell_back.push_back(fall_back);
      const auto x = (all || fall_back)
                         ? tokens.tokens
                         : tokens.tokens.index_select(0, ids.to(tokens.tokens.device()));
      torch::Tensor weight;
      if (options.router_weighted() && !fall_back) {
        weight = tokens.gate_value[static_cast<size_t>(b)];
      }
      // The expert's hidden activations of these tokens, with its unpruned weights.
      const auto xw = x.to(bank->w1.scalar_type());
      auto h = xw.mm(bank->w1[b]);
      if (bias) {
        h = h + bank->b1[b];
      }
      h = detail::activate(h, bank->options.activation());
      if (gated) {
        h = h * xw.mm(bank->w3[b]);
      }
      try {
        const bool full = transform || options.method() == SparsityMethod::kSparseGPT;
        input_calibration.emplace(x, weight, options, full);
        hidden_calibration.emplace(h, weight, options, full);
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, "sparsify_experts: MoE layer ", entry.name, ", expert ",
                    report.experts[static_cast<size_t>(b)], " (", routed, " routed tokens",
                    fall_back ? ", calibrated on all" : "", "): ", e.what_without_backtrace());
      }
    }
    const auto* in = input_calibration ? &*input_calibration : nullptr;
    const auto* hid = hidden_calibration ? &*hidden_calibration : nullptr;
    std::vector<std::pair<torch::Tensor, PrunedLinear>> done;
    try {
      done.emplace_back(bank->w1, prune_linear(w1, in, options, transform));
      if (gated) {
        done.emplace_back(bank->w3, prune_linear(w3, in, options, transform));
      }
      done.emplace_back(bank->w2, prune_linear(w2, hid, options, transform));
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "MoE layer ", entry.name, ", expert ",
                  report.experts[static_cast<size_t>(b)], ": ", e.what_without_backtrace());
    }
    for (auto& [param, pruned] : done) {
      param[b].copy_(pruned.weight.t());
      error += pruned.error;
      reference += pruned.reference;
      report.weights += pruned.weight.numel();
      report.zeros += pruned.weight.numel() - pruned.weight.count_nonzero().item<int64_t>();
    }
  }
  report.relative_error = calibrated ? (reference > 0.0 ? error / reference : 0.0)
                                     : std::numeric_limits<double>::quiet_NaN();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace expert_sparsity_detail

SparsityMethod parse_sparsity_method(const std::string& name) {
  if (name == "magnitude") {
    return SparsityMethod::kMagnitude;
  }
  if (name == "wanda") {
    return SparsityMethod::kWanda;
  }
  if (name == "sparsegpt") {
    return SparsityMethod::kSparseGPT;
  }
  TORCH_CHECK(false, "unknown sparsity method '", name, "': magnitude, wanda or sparsegpt");
}

std::string to_string(SparsityMethod method) {
  switch (method) {
    case SparsityMethod::kMagnitude:
      return "magnitude";
    case SparsityMethod::kWanda:
      return "wanda";
    case SparsityMethod::kSparseGPT:
      return "sparsegpt";
  }
  TORCH_CHECK(false, "unknown sparsity method");
}

ExpertCalibration parse_expert_calibration(const std::string& name) {
  if (name == "routed") {
    return ExpertCalibration::kRouted;
  }
  if (name == "all") {
    return ExpertCalibration::kAllTokens;
  }
  TORCH_CHECK(false, "unknown expert calibration '", name, "': routed or all");
}

std::string to_string(ExpertCalibration calibration) {
  return calibration == ExpertCalibration::kRouted ? "routed" : "all";
}

void check_sparsity_options(const ExpertSparsityOptions& options) {
  // Builds the pattern again so its checks run (a default-constructed one is 0% sparse).
  const auto& p = options.pattern();
  if (p.is_n_of_m()) {
    SparsityPattern::n_of_m(p.n, p.m);
  } else {
    SparsityPattern::unstructured(p.ratio);
  }
  TORCH_CHECK(options.min_tokens() >= 1, "sparsify_experts: min_tokens should be at least 1, got ",
              options.min_tokens());
  TORCH_CHECK(
      !(options.router_weighted() && options.calibration() == ExpertCalibration::kAllTokens),
      "sparsify_experts: router weighting needs routed calibration (every token through "
      "every expert has no routed weight for most of them)");
}

LayerSparsityReport sparsify_moe_layer(const MoELayerEntry& layer, const LayerCalls* calls,
                                       const ExpertSparsityOptions& options) {
  check_sparsity_options(options);
  TORCH_CHECK(calls != nullptr || options.method() == SparsityMethod::kMagnitude,
              "sparsify_experts: ", to_string(options.method()), " needs calibration data for ",
              layer.name);
  return expert_sparsity_detail::sparsify_layer(layer, calls, options, {});
}

std::vector<LayerSparsityReport> sparsify_experts(const MoEView& view,
                                                  const ExpertSparsityOptions& options,
                                                  const LayerSparsityCallback& on_layer) {
  const auto& t = options.targets();
  TORCH_CHECK(t.experts && !t.beyond_experts(),
              "sparsify_experts: prunes the experts only; the "
              "targets asked for are ",
              t.describe(), " (use sparsify, model_sparsity.h)");
  return sparsify(view, options, on_layer).layers;
}

LayerSparsityReport sparsity_detail::slim_moe_layer(const MoELayerEntry& entry,
                                                    const LayerCalls* calls,
                                                    const ExpertSparsityOptions& options,
                                                    const LinearTransform& transform) {
  return expert_sparsity_detail::sparsify_layer(entry, calls, options, transform);
}

SparsityTargets SparsityTargets::parse(const std::string& text) {
  if (text == "all") {
    return SparsityTargets{true, true, true, true, true};
  }
  SparsityTargets t;
  t.experts = false;
  std::set<std::string> seen;
  size_t from = 0;
  while (true) {
    const auto comma = text.find(',', from);
    const auto name =
        text.substr(from, comma == std::string::npos ? std::string::npos : comma - from);
    TORCH_CHECK(seen.insert(name).second, "sparsity targets '", text, "' name ", name, " twice");
    if (name == "experts") {
      t.experts = true;
    } else if (name == "attention") {
      t.attention = true;
    } else if (name == "shared_experts") {
      t.shared_experts = true;
    } else if (name == "dense") {
      t.dense = true;
    } else {
      TORCH_CHECK(false, "unknown sparsity target '", name, "' in '", text,
                  "': experts, attention, shared_experts, dense (comma-separated), or all");
    }
    if (comma == std::string::npos) break;
    from = comma + 1;
  }
  return t;
}

std::string SparsityTargets::describe() const {
  if (experts && attention && shared_experts && dense) return "all";
  std::string out;
  for (const auto& [on, name] : {std::pair<bool, const char*>{experts, "experts"},
                                 {attention, "attention"},
                                 {shared_experts, "shared_experts"},
                                 {dense, "dense"}}) {
    if (on) out += (out.empty() ? "" : ",") + std::string(name);
  }
  return out.empty() ? "nothing" : out;
}

bool SparsityTargets::wants(LinearRole role) const {
  switch (role) {
    case LinearRole::kAttention:
      return attention;
    case LinearRole::kSharedExpert:
      return shared_experts;
    case LinearRole::kDenseMLP:
      return dense;
  }
  return false;
}

}  // namespace moeprune::compression

#include <moeprune/pruning/pruning_plan.h>

#include "io/json.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <numeric>
#include <set>
#include <sstream>

namespace moeprune::pruning {
namespace {

// Experts a layer must keep, and the member each expert belongs to (0 when not an ensemble).
struct LayerLimits {
  int64_t num_experts = 0;
  int64_t min_keep = 1;
  int64_t members = 1;
  int64_t min_per_member = 0;
  bool equal_members = false;  // a group-limited router: every group loses the same number
  std::string why;             // why min_keep, for refusals: "k = 2", the groups' arithmetic
};

// Why a layer's router needs min_keep experts, as a user reads it in a refusal.
std::string why_keep(const MoELayer& layer, const KeepConstraint& keep) {
  const auto& router = layer->options.router();
  std::ostringstream s;
  if (const auto* g = std::get_if<GroupLimitedRouterConfig>(&router)) {
    const auto& o = g->groups();
    s << "k = " << g->routing().k() << " within topk_group = " << o.groups_kept() << " of its "
      << o.num_groups() << " groups needs " << keep.min_per_member << " per group";
    if (o.num_groups() > 1 && o.group_score() == GroupScore::kTopTwoSum) {
      s << " (a group is scored by its two best experts)";
    }
    s << ", and its groups stay equal: " << keep.min_per_member << " x " << keep.members;
  } else if (std::holds_alternative<ExpertChoiceRouterConfig>(router)) {
    s << "expert choice needs one expert";
  } else if (keep.members > 1) {
    s << "k = " << keep.min_per_member << " in each of its " << keep.members << " ensemble members";
  } else {
    s << "k = " << keep.min_per_member;
  }
  return s.str();
}

LayerLimits limits_of(const MoELayer& layer) {
  const auto& router = layer->router();
  const auto keep = router.keep_constraint();
  LayerLimits l;
  l.num_experts = router.num_experts();
  l.members = keep.members;
  l.min_per_member = keep.members > 1 ? keep.min_per_member : 0;
  l.min_keep = keep.min_total();
  l.equal_members = keep.equal_members && keep.members > 1;
  l.why = why_keep(layer, keep);
  return l;
}

// The n lowest-scored experts (ties: lower id first) that keep each member at its minimum.
std::vector<int64_t> lowest(const torch::Tensor& scores, int64_t n, const LayerLimits& l,
                            const std::string& layer) {
  TORCH_CHECK(n >= 0, "pruning plan: ", layer, ": cannot prune ", n, " experts");
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == l.num_experts, "pruning plan: ", layer,
              " has ", l.num_experts, " experts but ", scores.sizes(), " scores");
  TORCH_CHECK(l.num_experts - n >= l.min_keep, "pruning plan: ", layer, " has ", l.num_experts,
              " experts; pruning ", n, " leaves ", l.num_experts - n, ", fewer than the ",
              l.min_keep, " its router needs (", l.why, ")");
  const auto s = scores.contiguous();
  std::vector<int64_t> order(static_cast<size_t>(l.num_experts));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return s[a].item<double>() < s[b].item<double>(); });
  const int64_t per_member = l.num_experts / l.members;
  std::vector<int64_t> left(static_cast<size_t>(l.members), per_member);
  std::vector<int64_t> pruned;
  if (l.equal_members) {
    // Group-limited routing: the n / groups lowest of every group.
    TORCH_CHECK(n % l.members == 0, "pruning plan: ", layer, " routes within ", l.members,
                " equal expert groups; pruning ", n,
                " would leave them unequal (prune a multiple of ", l.members, ")");
    for (const int64_t e : order) {
      auto& m = left[static_cast<size_t>(e / per_member)];
      if (m > per_member - n / l.members) {
        --m;
        pruned.push_back(e);
      }
    }
    std::sort(pruned.begin(), pruned.end());
    return pruned;
  }
  for (const int64_t e : order) {
    if (static_cast<int64_t>(pruned.size()) == n) {
      break;
    }
    auto& m = left[static_cast<size_t>(e / per_member)];
    if (m - 1 < l.min_per_member) {
      continue;  // an E3-MoE member keeps its k experts
    }
    --m;
    pruned.push_back(e);
  }
  TORCH_CHECK(static_cast<int64_t>(pruned.size()) == n, "pruning plan: ", layer, " can lose only ",
              pruned.size(), " experts while every ensemble member keeps ", l.min_per_member,
              "; asked for ", n);
  std::sort(pruned.begin(), pruned.end());
  return pruned;
}

std::vector<double> to_vector(const torch::Tensor& t) {
  const auto c = t.to(torch::kDouble).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

PruningPlan from_counts(const ExpertScores& scores, const MoEView& view,
                        const std::map<int64_t, int64_t>& counts, const std::string& criterion) {
  PruningPlan plan;
  plan.criterion = criterion;
  plan.model_signature = view.signature();
  const auto layers = view.layer_map();
  for (const auto& [key, n] : counts) {
    const auto it = layers.find(key);
    TORCH_CHECK(it != layers.end(), "pruning plan: the model has no MoE layer keyed ", key);
    const auto& entry = it->second;
    TORCH_CHECK(scores.count(key) == 1, "pruning plan: no scores for MoE layer ", entry.name);
    const auto limits = limits_of(entry.layer);
    LayerPlan lp;
    lp.key = key;
    lp.num_experts = limits.num_experts;
    lp.pruned = lowest(scores.at(key), n, limits, entry.name);
    lp.scores = to_vector(scores.at(key));
    plan.layers.push_back(lp);
  }
  return plan;
}

}  // namespace

PruningPlan PruningPlan::same_count(const ExpertScores& scores, const MoEView& view, int64_t n,
                                    std::vector<int64_t> keys, const std::string& criterion) {
  if (keys.empty()) {
    for (const auto& entry : view.layers()) {
      keys.push_back(entry.key);
    }
  }
  std::map<int64_t, int64_t> counts;
  for (const auto key : keys) {
    counts[key] = n;
  }
  return from_counts(scores, view, counts, criterion);
}

PruningPlan PruningPlan::per_layer(const ExpertScores& scores, const MoEView& view,
                                   const std::map<int64_t, int64_t>& counts,
                                   const std::string& criterion) {
  return from_counts(scores, view, counts, criterion);
}

PruningPlan PruningPlan::global_budget(const ExpertScores& scores, const MoEView& view,
                                       int64_t total, int64_t floor, const std::string& criterion) {
  // A candidate removes `size` experts of one layer: one expert, or for a group-limited router
  // one round (the next-lowest expert of every group, scored by their mean), so its groups stay
  // equal.
  struct Candidate {
    double score;
    int64_t key, size;
  };
  std::vector<Candidate> all;
  int64_t capacity = 0;
  bool grouped = false;
  std::map<int64_t, int64_t> counts;
  std::map<int64_t, LayerLimits> limits;
  for (const auto& entry : view.layers()) {
    TORCH_CHECK(scores.count(entry.key) == 1, "pruning plan: no scores for MoE layer ", entry.name);
    const auto s = to_vector(scores.at(entry.key));
    const auto l = limits_of(entry.layer);
    TORCH_CHECK(static_cast<int64_t>(s.size()) == l.num_experts, "pruning plan: ", entry.name,
                " has ", l.num_experts, " experts but ", s.size(), " scores");
    limits[entry.key] = l;
    counts[entry.key] = 0;
    const int64_t keep_at_least = std::max(l.min_keep, floor);
    if (!l.equal_members) {
      for (const double v : s) {
        all.push_back({v, entry.key, 1});
      }
      capacity += std::max<int64_t>(l.num_experts - keep_at_least, 0);
      continue;
    }
    grouped = true;
    const int64_t G = l.members, per_group = l.num_experts / G;
    std::vector<std::vector<double>> by_group(static_cast<size_t>(G));
    for (int64_t e = 0; e < l.num_experts; ++e) {
      by_group[static_cast<size_t>(e / per_group)].push_back(s[static_cast<size_t>(e)]);
    }
    for (auto& v : by_group) {
      std::stable_sort(v.begin(), v.end());
    }
    for (int64_t r = 0; r < per_group; ++r) {
      double sum = 0.0;
      for (const auto& v : by_group) {
        sum += v[static_cast<size_t>(r)];
      }
      all.push_back({sum / static_cast<double>(G), entry.key, G});
    }
    capacity += std::max<int64_t>((l.num_experts - keep_at_least) / G, 0) * G;
  }
  TORCH_CHECK(total >= 0 && total <= capacity, "pruning plan: a global budget of ", total,
              " experts is more than the ", capacity, " the layers can lose with a floor of ",
              floor, " (and their routers' minimum)");
  std::stable_sort(all.begin(), all.end(),
                   [](const Candidate& a, const Candidate& b) { return a.score < b.score; });
  // Take candidates in score order while each layer stays above its floor and the budget holds.
  // An E3-MoE member's minimum is enforced when the layer's experts are chosen (lowest()).
  int64_t taken = 0;
  for (const auto& c : all) {
    if (taken == total) {
      break;
    }
    const auto& l = limits.at(c.key);
    if (taken + c.size > total ||
        l.num_experts - counts[c.key] - c.size < std::max(l.min_keep, floor)) {
      continue;
    }
    counts[c.key] += c.size;
    taken += c.size;
  }
  TORCH_CHECK(
      taken == total, "pruning plan: a global budget of ", total, " experts cannot be met exactly",
      grouped ? " with whole rounds of the group-limited layers (one expert per group)" : "",
      "; taking candidates in score order reached ", taken);
  return from_counts(scores, view, counts, criterion);
}

int64_t PruningPlan::total_pruned() const {
  int64_t n = 0;
  for (const auto& l : layers) {
    n += static_cast<int64_t>(l.pruned.size());
  }
  return n;
}

std::string PruningPlan::table() const {
  std::ostringstream out;
  out << "pruning plan" << (criterion.empty() ? "" : " (" + criterion + ")") << ": "
      << total_pruned() << " experts\n";
  out << "  layer  kept  pruned experts        scores (lowest first are pruned)\n";
  for (const auto& l : layers) {
    std::ostringstream ids, sc;
    for (size_t i = 0; i < l.pruned.size(); ++i) {
      ids << (i ? "," : "") << l.pruned[i];
    }
    for (size_t e = 0; e < l.scores.size(); ++e) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%s%.4g", e ? " " : "", l.scores[e]);
      sc << buf;
    }
    char line[96];
    std::snprintf(line, sizeof(line), "  %5ld  %2ld/%-2ld %-21s ", static_cast<long>(l.key),
                  static_cast<long>(l.num_experts - static_cast<int64_t>(l.pruned.size())),
                  static_cast<long>(l.num_experts), ids.str().empty() ? "-" : ids.str().c_str());
    out << line << sc.str() << "\n";
  }
  return out.str();
}

std::string PruningPlan::to_json() const {
  nlohmann::json j = {
      {"criterion", criterion},
      {"model_signature",
       model_signature.empty() ? nlohmann::json() : nlohmann::json::parse(model_signature)},
      {"layers", nlohmann::json::array()}};
  for (const auto& l : layers) {
    j["layers"].push_back({{"key", l.key},
                           {"num_experts", l.num_experts},
                           {"pruned", l.pruned},
                           {"scores", l.scores}});
  }
  return j.dump(2);
}

namespace {

// Readers of a hand-written plan that name the field they refuse: "layers[2].pruned[1]".
const nlohmann::json& field(const nlohmann::json& object, const std::string& name,
                            const std::string& where) {
  TORCH_CHECK(object.is_object(), "pruning plan JSON: ", where, " should be an object, got ",
              object.type_name());
  TORCH_CHECK(object.contains(name), "pruning plan JSON: ", where.empty() ? "the plan" : where,
              " has no \"", name, "\"");
  return object.at(name);
}

int64_t integer_at(const nlohmann::json& value, const std::string& where) {
  TORCH_CHECK(value.is_number_integer(), "pruning plan JSON: ", where,
              " should be an integer, got ", value.type_name(), " ", value.dump());
  return value.get<int64_t>();
}

const nlohmann::json& array_at(const nlohmann::json& value, const std::string& where) {
  TORCH_CHECK(value.is_array(), "pruning plan JSON: ", where, " should be an array, got ",
              value.type_name());
  return value;
}

}  // namespace

PruningPlan PruningPlan::from_json(const std::string& text) {
  PruningPlan plan;
  const auto j = io::parse_json(text, "pruning plan JSON");
  TORCH_CHECK(j.is_object(), "pruning plan JSON: the plan should be an object, got ",
              j.type_name());
  if (j.contains("criterion")) {
    TORCH_CHECK(j.at("criterion").is_string(),
                "pruning plan JSON: criterion should be a string, got ",
                j.at("criterion").type_name());
    plan.criterion = j.at("criterion").get<std::string>();
  }
  const auto& signature = field(j, "model_signature", "");
  TORCH_CHECK(signature.is_null() || signature.is_object(),
              "pruning plan JSON: model_signature should be an object or null, got ",
              signature.type_name());
  plan.model_signature = signature.is_null() ? std::string() : signature.dump();
  const auto& layers = array_at(field(j, "layers", ""), "layers");
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto where = "layers[" + std::to_string(i) + "]";
    const auto& l = layers[i];
    TORCH_CHECK(l.is_object(), "pruning plan JSON: ", where, " should be an object, got ",
                l.type_name());
    // "block": plans written before the MoE view named the key so.
    const bool old = !l.contains("key") && l.contains("block");
    const auto key =
        integer_at(field(l, old ? "block" : "key", where), where + (old ? ".block" : ".key"));
    const auto experts = integer_at(field(l, "num_experts", where), where + ".num_experts");
    std::vector<int64_t> pruned;
    const auto& ids = array_at(field(l, "pruned", where), where + ".pruned");
    for (size_t k = 0; k < ids.size(); ++k) {
      pruned.push_back(integer_at(ids[k], where + ".pruned[" + std::to_string(k) + "]"));
    }
    std::vector<double> scores;
    if (l.contains("scores")) {
      const auto& values = array_at(l.at("scores"), where + ".scores");
      for (size_t k = 0; k < values.size(); ++k) {
        TORCH_CHECK(values[k].is_number(), "pruning plan JSON: ", where, ".scores[", k,
                    "] should be a number, got ", values[k].type_name(), " ", values[k].dump());
        scores.push_back(values[k].get<double>());
      }
    }
    plan.layers.push_back({key, experts, std::move(pruned), std::move(scores)});
  }
  return plan;
}

void PruningPlan::validate(const MoEView& view) const {
  const auto own = view.signature();
  TORCH_CHECK(model_signature.empty() || own.empty() ||
                  nlohmann::json::parse(model_signature) == nlohmann::json::parse(own),
              "pruning plan: made for another model (plan: ", model_signature, "; model: ", own,
              ")");
  const auto layers = view.layer_map();
  std::set<int64_t> keys;
  for (const auto& lp : this->layers) {
    const auto it = layers.find(lp.key);
    TORCH_CHECK(it != layers.end(), "pruning plan: the model has no MoE layer keyed ", lp.key);
    const auto& entry = it->second;
    const auto& name = entry.name;
    TORCH_CHECK(keys.insert(lp.key).second, "pruning plan: MoE layer ", name, " appears twice");
    TORCH_CHECK(entry.layer->state().is_plain(), "pruning plan: MoE layer ", name,
                " is already pruned, merged or factorised");
    const auto l = limits_of(entry.layer);
    TORCH_CHECK(lp.num_experts == l.num_experts, "pruning plan: MoE layer ", name, " has ",
                l.num_experts, " experts, the plan expects ", lp.num_experts);
    std::set<int64_t> ids;
    for (const auto e : lp.pruned) {
      TORCH_CHECK(e >= 0 && e < l.num_experts, "pruning plan: MoE layer ", name, ": expert ", e,
                  " is outside [0, ", l.num_experts, ")");
      TORCH_CHECK(ids.insert(e).second, "pruning plan: MoE layer ", name, " names expert ", e,
                  " twice");
    }
    const int64_t left = l.num_experts - static_cast<int64_t>(ids.size());
    TORCH_CHECK(left > 0, "pruning plan: MoE layer ", name, " would prune every expert");
    TORCH_CHECK(left >= l.min_keep, "pruning plan: MoE layer ", name, " would keep ", left,
                " experts, fewer than the ", l.min_keep, " its router needs (", l.why, ")");
    const int64_t per_member = l.num_experts / l.members;
    const char* block = l.equal_members ? "expert group " : "ensemble member ";
    int64_t first_gone = -1;
    for (int64_t m = 0; m < l.members && l.members > 1; ++m) {
      const auto gone =
          std::count_if(ids.begin(), ids.end(), [&](int64_t e) { return e / per_member == m; });
      TORCH_CHECK(per_member - gone >= l.min_per_member, "pruning plan: MoE layer ", name,
                  " would leave ", block, m, " with ", per_member - gone,
                  " experts, fewer than the ", l.min_per_member, " its router needs");
      first_gone = m == 0 ? gone : first_gone;
      TORCH_CHECK(
          !l.equal_members || gone == first_gone, "pruning plan: MoE layer ", name, " would prune ",
          gone, " experts from expert group ", m, " and ", first_gone,
          " from group 0; its group-limited router needs equal groups (n_group = ", l.members, ")");
    }
  }
}

void apply_plan(const MoEView& view, const PruningPlan& plan, bool drop_router_columns) {
  plan.validate(view);
  const auto layers = view.layer_map();
  for (const auto& lp : plan.layers) {
    std::vector<int64_t> kept;
    for (int64_t e = 0; e < lp.num_experts; ++e) {
      if (std::find(lp.pruned.begin(), lp.pruned.end(), e) == lp.pruned.end()) {
        kept.push_back(e);
      }
    }
    auto layer = layers.at(lp.key).layer;
    layer->keep_experts(kept, drop_router_columns || layer->router().always_drops_columns());
  }
}

}  // namespace moeprune::pruning

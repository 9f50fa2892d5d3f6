#pragma once

// One result of an experiment, for every kind of model: a run of the pruning sweep or a row of
// the compression comparison. It names what was run (model, method, setting, experts pruned,
// seed) and carries a map of named metrics, each with its unit and the direction that is better:
// a vision task reports test top-1, a language task bits per byte, both report stored parameters,
// FLOPs and latency in their comparisons. Tables, CSV, JSON and plots read the names and units
// (report.h) instead of fields that mean one thing for one model and another for the next.
#include <c10/util/Exception.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace experiments {

/// What a metric is and how it is shown.
struct MetricInfo {
  MetricInfo() = default;
  MetricInfo(std::string name_, std::string unit_, bool higher_is_better_)
      : name(std::move(name_)), unit(std::move(unit_)), higher_is_better(higher_is_better_) {}

  std::string name;  // the key in a cell's metrics, JSON and CSV: "top1", "bits_per_byte"
  std::string unit;  // what a value counts: "fraction", "bits/byte", "ms"
  bool higher_is_better = true;
  std::string label;              // a table's column heading: "top-1 (%)", "MFLOP/img"
  std::string axis;               // a plot's axis: "test top-1 (%)"
  double scale = 1, divisor = 1;  // values are shown as scale * value / divisor ...
  int precision = 2;              // ... with this many decimals in tables ...
  int width = 10;                 // ... in a column this wide
  int csv_precision = 6;
  std::string suffix;  // after a value in progress lines: "%", " bits/byte"

  double shown(double value) const { return scale * value / divisor; }
  std::string format(double value) const { return fmt::format("{:.{}f}", shown(value), precision); }
  /// The same quantity measured again after the post-pruning fine-tune.
  MetricInfo finetuned() const {
    auto out = *this;
    out.name += "_finetuned";
    return out;
  }
};

/// The metrics a task's sweep and comparison report.
struct TaskMetrics {
  MetricInfo quality;     // measured on the test split: top-1, bits per byte
  MetricInfo flops;       // per image, per token
  MetricInfo parameters;  // stored parameters
  MetricInfo latency;     // median forward time of the task's latency batch
};

struct Metric {
  double value = 0;
  std::string unit;
  bool higher_is_better = true;
};

struct Cell {
  std::string model;
  /// The criterion of a pruning run; the compression of a comparison row.
  std::string method;
  /// A comparison row's setting ("4 of 8 experts"); empty for pruning runs.
  std::string setting;
  int64_t pruned = 0;  // experts pruned per MoE layer (pruning runs)
  int64_t budget = 0;  // experts kept per MoE layer the comparison row matches
  uint64_t seed = 0;
  std::map<std::string, Metric> metrics;
  /// MoE layer (block, decoder layer) -> the experts the run pruned.
  std::map<int64_t, std::vector<int64_t>> pruned_experts;
  std::string detail;

  void set(const MetricInfo& info, double value) {
    metrics[info.name] = {value, info.unit, info.higher_is_better};
  }
  bool has(const std::string& name) const { return metrics.count(name) > 0; }
  double value(const std::string& name) const {
    const auto it = metrics.find(name);
    TORCH_CHECK(it != metrics.end(), "the result of ", model, " ", method, " ", setting,
                " has no metric '", name, "'");
    return it->second.value;
  }
};

inline nlohmann::json pruned_experts_json(const std::map<int64_t, std::vector<int64_t>>& pruned) {
  auto out = nlohmann::json::object();
  for (const auto& [layer, experts] : pruned) out[std::to_string(layer)] = experts;
  return out;
}

// results.json, compression.json and the run journal.
inline void to_json(nlohmann::json& j, const Cell& c) {
  auto metrics = nlohmann::json::object();
  for (const auto& [name, m] : c.metrics) {
    metrics[name] = {
        {"value", m.value}, {"unit", m.unit}, {"better", m.higher_is_better ? "higher" : "lower"}};
  }
  j = {{"model", c.model},     {"method", c.method},
       {"setting", c.setting}, {"pruned_per_layer", c.pruned},
       {"budget", c.budget},   {"seed", c.seed},
       {"metrics", metrics},   {"pruned_experts", pruned_experts_json(c.pruned_experts)},
       {"detail", c.detail}};
}

/// A cell from its JSON, or from a run journal written before cells had named metrics: the
/// vision sweep's runs (top1), the language sweep's (bits_per_byte) and the comparisons' rows,
/// whose `top1` and `flops_per_image` held the language task's bits per byte and FLOPs per token.
/// `metrics` names what those fields were; a value of -1 there meant "not measured". A cell
/// with no model (the old language sweep's) is left without one: the harness, which found it
/// under a key that names the model, fills it in.
inline Cell read_cell(const nlohmann::json& j, const TaskMetrics& metrics) {
  Cell c;
  if (j.contains("metrics")) {
    j.at("model").get_to(c.model);
    j.at("method").get_to(c.method);
    j.at("setting").get_to(c.setting);
    j.at("pruned_per_layer").get_to(c.pruned);
    j.at("budget").get_to(c.budget);
    j.at("seed").get_to(c.seed);
    j.at("detail").get_to(c.detail);
    for (const auto& [name, m] : j.at("metrics").items()) {
      c.metrics[name] = {m.at("value").get<double>(), m.at("unit").get<std::string>(),
                         m.at("better").get<std::string>() == "higher"};
    }
  } else {
    c.model =
        j.value("model", "");  // the language sweep's runs had none: the journal's key names it
    c.method = j.contains("criterion") ? j.at("criterion").get<std::string>()
                                       : j.at("method").get<std::string>();
    c.setting = j.value("setting", "");
    c.pruned = j.value("pruned_per_layer", int64_t{0});
    c.budget = j.value("budget", int64_t{0});
    c.seed = j.value("seed", uint64_t{0});
    c.detail = j.value("detail", "");
    const auto take = [&](const char* field, const MetricInfo& info) {
      if (j.contains(field) && j.at(field).get<double>() >= 0)
        c.set(info, j.at(field).get<double>());
    };
    for (const char* field : {"top1", "bits_per_byte"}) take(field, metrics.quality);
    for (const char* field : {"top1_finetuned", "bits_per_byte_finetuned"}) {
      take(field, metrics.quality.finetuned());
    }
    take("flops_per_image", metrics.flops);
    take("parameters", metrics.parameters);
    take("latency_ms", metrics.latency);
  }
  if (j.contains("pruned_experts")) {
    for (const auto& [layer, experts] : j.at("pruned_experts").items()) {
      c.pruned_experts[std::stoll(layer)] = experts.get<std::vector<int64_t>>();
    }
  }
  return c;
}

}  // namespace experiments

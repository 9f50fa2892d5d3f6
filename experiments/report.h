#pragma once

// The harness's outputs, for any task: the sweep's and the comparison's tables on stdout, their
// JSON and CSV, and gnuplot plots. Columns, units and scales come from the task's metrics
// (cell.h), so a vision task prints top-1 in percent and a language task bits per byte through
// the same code.
#include "compression_compare.h"

#include <moeprune/io/atomic_write.h>

#include <cstdlib>

namespace experiments {

inline void write_text(const std::string& path, const std::string& text) {
  moeprune::io::write_file_atomically(path, text);
}

/// "1:0 3 5|3:2 4 6": the pruned experts of each MoE layer, for the CSV.
inline std::string format_pruned(const std::map<int64_t, std::vector<int64_t>>& pruned) {
  std::string out;
  for (const auto& [layer, experts] : pruned) {
    out += fmt::format("{}{}:{}", out.empty() ? "" : "|", layer, fmt::join(experts, " "));
  }
  return out;
}

/// "80.97±0.50" (several runs), "80.97" (one) or "-" (none).
inline std::string mean_spread(const std::vector<double>& v, const MetricInfo& metric) {
  if (v.empty()) return "-";
  const auto [mean, spread] = mean_and_spread(v);
  return v.size() > 1 ? metric.format(mean) + "±" + metric.format(spread) : metric.format(mean);
}

/// The sweep's table: a row per criterion, a column per count, "after pruning / after
/// fine-tuning".
inline void print_sweep_table(const std::vector<Cell>& cells, const ExperimentTask& task,
                              const SweepConfig& cfg) {
  const auto& q = task.metrics().quality;
  const auto post = task.post_steps();
  fmt::print("\n{} after pruning n of {} experts per MoE layer{}\n", task.sweep_title(),
             task.shape().experts,
             post > 0 ? fmt::format(" / after {} post-pruning fine-tuning steps", post) : "");
  fmt::print("{:<24}", "criterion");
  for (const auto n : cfg.counts) fmt::print(" {:>{}}", fmt::format("n={}", n), q.width);
  fmt::print("\n");
  for (const auto& name : cfg.criteria) {
    fmt::print("{:<24}", name);
    for (const auto n : cfg.counts) {
      auto text = mean_spread(sweep_values(cells, task.name(), name, n, q.name), q);
      if (post > 0) {
        text +=
            " / " + mean_spread(sweep_values(cells, task.name(), name, n, q.finetuned().name), q);
      }
      fmt::print(" {:>{}}", text, q.width);
    }
    fmt::print("\n");
  }
}

/// The comparison's table: a row per method and setting.
inline void print_compression_table(const std::vector<Cell>& cells, const ExperimentTask& task) {
  const auto& m = task.metrics();
  const auto post = task.post_steps();
  fmt::print("\n{}\n", task.compression_title());
  fmt::print("{:<28} {:<34} {:>{}} {:>{}} {:>{}} {:>17}\n", "method", "setting", m.parameters.label,
             m.parameters.width, m.flops.label, m.flops.width, m.latency.label, m.latency.width,
             m.quality.label);
  const auto value = [](const Cell& c, const MetricInfo& info) {
    return c.has(info.name) ? info.format(c.value(info.name)) : std::string("-");
  };
  for (const auto& c : cells) {
    fmt::print("{:<28} {:<34} {:>{}} {:>{}} {:>{}} {:>17}\n", c.method, c.setting,
               value(c, m.parameters), m.parameters.width, value(c, m.flops), m.flops.width,
               value(c, m.latency), m.latency.width,
               post > 0 ? value(c, m.quality) + " / " + value(c, m.quality.finetuned())
                        : value(c, m.quality));
  }
}

namespace detail {

inline std::string csv_value(const Cell& c, const MetricInfo& info) {
  return c.has(info.name) ? fmt::format("{:.{}f}", c.value(info.name), info.csv_precision) : "";
}

}  // namespace detail

/// PREFIX.json (`header` with the cells as "results") and PREFIX.csv of the sweep's runs.
inline void write_sweep(const std::vector<Cell>& cells, const TaskMetrics& metrics,
                        const std::string& prefix, nlohmann::json header) {
  const auto& q = metrics.quality;
  header["results"] = cells;
  std::string csv = fmt::format("model,criterion,pruned_per_layer,seed,{},{},pruned_experts\n",
                                q.name, q.finetuned().name);
  for (const auto& c : cells) {
    csv += fmt::format("{},{},{},{},{},{},{}\n", c.model, c.method, c.pruned, c.seed,
                       detail::csv_value(c, q), detail::csv_value(c, q.finetuned()),
                       format_pruned(c.pruned_experts));
  }
  write_text(prefix + ".json", header.dump(2) + "\n");
  write_text(prefix + ".csv", csv);
}

/// PREFIX.json and PREFIX.csv of the comparison's rows.
inline void write_compression(const std::vector<Cell>& cells, const TaskMetrics& metrics,
                              const std::string& prefix, nlohmann::json header) {
  header["results"] = cells;
  const std::vector<MetricInfo> columns = {metrics.parameters, metrics.flops, metrics.latency,
                                           metrics.quality, metrics.quality.finetuned()};
  std::string csv = "model,method,setting,budget";
  for (const auto& m : columns) csv += "," + m.name;
  csv += ",detail\n";
  for (const auto& c : cells) {
    csv += fmt::format("{},{},\"{}\",{}", c.model, c.method, c.setting, c.budget);
    for (const auto& m : columns) csv += "," + detail::csv_value(c, m);
    csv += fmt::format(",\"{}\"\n", c.detail);
  }
  write_text(prefix + ".json", header.dump(2) + "\n");
  write_text(prefix + ".csv", csv);
}

/// gnuplot: the sweep's quality against the fraction of experts pruned, one line per criterion
/// (mean, spread over seeds as error bars), without and after the post-pruning fine-tune. Writes
/// DIR/plot_MODEL.{dat,gp,png}; returns the PNG's path, or "" when gnuplot failed.
inline std::string plot_sweep(const std::vector<Cell>& cells, const ExperimentTask& task,
                              const SweepConfig& cfg, const std::string& dir) {
  const auto& q = task.metrics().quality;
  const auto experts = task.shape().experts;
  const auto prefix = dir + "/plot_" + task.name();
  std::string data;
  for (const auto& name : cfg.criteria) {
    data += "# " + name + "\n";
    for (const auto n : cfg.counts) {
      // Mean and spread as the table shows them; "?" (gnuplot's missing value) where no run
      // measured it (no post-pruning fine-tune).
      const auto columns = [&](const std::string& metric) {
        const auto values = sweep_values(cells, task.name(), name, n, metric);
        if (values.empty()) return std::string("? ?");
        const auto [mean, spread] = mean_and_spread(values);
        return fmt::format("{} {}", q.shown(mean), q.shown(spread));
      };
      data += fmt::format("{} {} {}\n", static_cast<double>(n) / experts, columns(q.name),
                          columns(q.finetuned().name));
    }
    data += "\n\n";
  }
  write_text(prefix + ".dat", data);
  std::string script = fmt::format(
      "set terminal pngcairo size 1200,480 font ',10' noenhanced\nset output '{}.png'\n"
      "set multiplot layout 1,2 title '{}'\n"
      "set xlabel 'fraction of experts pruned per MoE layer'\nset ylabel '{}'\n"
      "set key {} left\nset grid\n",
      prefix, task.sweep_plot_title(), q.axis, q.higher_is_better ? "bottom" : "top");
  for (const auto& [column, panel] :
       {std::pair{2, std::string("without post-pruning fine-tuning")},
        std::pair{4, fmt::format("after {} fine-tuning steps", task.post_steps())}}) {
    script += fmt::format("set title '{}'\nplot ", panel);
    for (size_t i = 0; i < cfg.criteria.size(); ++i) {
      script += fmt::format("{}'{}.dat' index {} using 1:{}:{} with yerrorlines title '{}'",
                            i ? ", " : "", prefix, i, column, column + 1, cfg.criteria[i]);
    }
    script += "\n";
  }
  script += "unset multiplot\n";
  write_text(prefix + ".gp", script);
  return std::system(("gnuplot '" + prefix + ".gp' 2>/dev/null").c_str()) == 0 ? prefix + ".png"
                                                                               : "";
}

/// gnuplot: the comparison's quality against stored parameters (without and after fine-tuning)
/// and against latency, a line per method. Writes DIR/compression_MODEL.{dat,gp,png}; returns
/// the PNG's path, or "" when gnuplot failed.
inline std::string plot_compression(const std::vector<Cell>& cells, const ExperimentTask& task,
                                    const std::string& dir) {
  const auto& m = task.metrics();
  const auto& q = m.quality;
  std::vector<std::string> methods;
  for (const auto& c : cells) {
    if (std::find(methods.begin(), methods.end(), c.method) == methods.end()) {
      methods.push_back(c.method);
    }
  }
  const auto prefix = dir + "/compression_" + task.name();
  // Parameters in thousands; the quality as the tables show it; latency in ms.
  const auto shown = [](const Cell& c, const MetricInfo& info, double divisor) {
    return c.has(info.name) ? fmt::format("{}", info.scale * c.value(info.name) / divisor)
                            : std::string("?");
  };
  std::string data;
  for (const auto& method : methods) {
    data += "# " + method + "\n";
    std::vector<Cell> rows;
    for (const auto& c : cells) {
      if (c.method == method) rows.push_back(c);
    }
    const auto stored = [&](const Cell& c) {
      return c.has(m.parameters.name) ? c.value(m.parameters.name) : 0.0;
    };
    std::sort(rows.begin(), rows.end(),
              [&](const Cell& a, const Cell& b) { return stored(a) < stored(b); });
    for (const auto& c : rows) {
      data += fmt::format("{} {} {} {}\n", shown(c, m.parameters, 1e3), shown(c, q, q.divisor),
                          shown(c, q.finetuned(), q.divisor), shown(c, m.latency, 1));
    }
    data += "\n\n";
  }
  write_text(prefix + ".dat", data);
  std::string script = fmt::format(
      "set terminal pngcairo size 1500,460 font ',10' noenhanced\nset output '{}.png'\n"
      "set multiplot layout 1,3 title '{}: compressions of the fine-tuned model ({})'\n"
      "set ylabel '{}'\nset key {} right\nset grid\n",
      prefix, task.name(), task.description(), q.axis, q.higher_is_better ? "bottom" : "top");
  // Lines join a method's budgets in parameter order; latency is a scatter (it need not follow).
  const auto after = fmt::format("after {} fine-tuning steps", task.post_steps());
  const std::vector<std::tuple<std::string, std::string, std::string, std::string>> panels = {
      {"without fine-tuning", "stored parameters (thousands)", "1:2", "linespoints"},
      {after, "stored parameters (thousands)", "1:3", "linespoints"},
      {after, task.latency_axis(), "4:3", "points"}};
  for (const auto& [title, xlabel, columns, style] : panels) {
    script += fmt::format("set title '{}'\nset xlabel '{}'\nplot ", title, xlabel);
    for (size_t i = 0; i < methods.size(); ++i) {
      script += fmt::format("{}'{}.dat' index {} using {} with {} pt 7 ps 1.3 title '{}'",
                            i ? ", " : "", prefix, i, columns, style, methods[i]);
    }
    script += "\n";
  }
  script += "unset multiplot\n";
  write_text(prefix + ".gp", script);
  return std::system(("gnuplot '" + prefix + ".gp' 2>/dev/null").c_str()) == 0 ? prefix + ".png"
                                                                               : "";
}

}  // namespace experiments

#include <moeprune/models/lm/streamed_merge.h>

#include "hf/checkpoint_rewrite.h"
#include "io/json.h"
#include "io/posix_file.h"
#include "models/lm/scratch_files.h"
#include "models/lm/streamed_moe_layers.h"

#include <moeprune/hf/checkpoint.h>
#include <moeprune/io/safetensors.h>
#include <moeprune/layers/moe_view.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace moeprune::lm {
namespace {

// A resumable run's files in the journal's folder, one per MoE layer (hf::MoELayerRef::index).
std::string usage_path(const StreamJournal& journal, int64_t index) {
  return journal.directory() + "/usage-" + std::to_string(index) + ".safetensors";
}
std::string merged_path(const StreamJournal& journal, int64_t index) {
  return journal.directory() + "/merged-" + std::to_string(index) + ".safetensors";
}

// For tests of resumption, as MOEPRUNE_JOURNAL_KILL_AFTER (stream_journal.h) for the calibration
// pass: MOEPRUNE_JOURNAL_KILL_AFTER_MERGED=N kills the process (SIGKILL, as a crash) once N MoE
// layers' merged experts are in the journal.
void kill_after_merged(int64_t merged) {
  const char* value = std::getenv("MOEPRUNE_JOURNAL_KILL_AFTER_MERGED");
  if (value != nullptr && std::atoll(value) == merged) {
    std::fflush(nullptr);
    std::raise(SIGKILL);
  }
}

}  // namespace

compression::ExpertUsage streamed_expert_usage(
    const CheckpointLayers& checkpoint, const torch::Tensor& calibration, int64_t batch_size,
    const StreamOptions& options, const std::function<void(int64_t, int64_t)>& progress) {
  compression::ExpertUsage usage;
  const auto total = static_cast<int64_t>(checkpoint.info().layers.size());
  int64_t done = 0;
  const auto& journal = options.journal();
  if (journal != nullptr) {
    // A resumed run skips the decoder layers the journal holds: their MoE layers' usage as saved.
    for (const auto& ref : checkpoint.info().layers) {
      if (ref.decoder_layer >= journal->layers_done()) continue;
      const auto path = usage_path(*journal, ref.index);
      TORCH_CHECK(io::exists(path), journal->directory(), ": the journal has decoder layer ",
                  ref.decoder_layer, " done but not its routing usage (", path,
                  "); remove the journal to start again");
      const auto saved = safetensors::load_file(path);
      usage.frequency[ref.index] = saved.at("frequency");
      usage.router_logits[ref.index] = saved.at("router_logits");
      ++done;
    }
  }
  detail::stream_moe_layers(
      checkpoint, calibration, batch_size, options,
      [&](const hf::MoELayerRef& ref, const MoELayerEntry& entry, const std::function<void()>& run,
          const std::function<void()>& /*probe*/) {
        MoECapture capture({entry}, /*with_inputs=*/false);
        run();
        compression::add_expert_usage(usage, entry, capture.calls(ref.index));
        if (journal != nullptr) {  // before the journal commits this decoder layer
          safetensors::save_file(usage_path(*journal, ref.index),
                                 {{"frequency", usage.frequency.at(ref.index)},
                                  {"router_logits", usage.router_logits.at(ref.index)}});
        }
        if (progress) progress(++done, total);
      },
      "merging");
  return usage;
}

MergeCheckpointResult merge_checkpoint(const CheckpointLayers& checkpoint,
                                       const compression::ExpertUsage& usage,
                                       const std::string& out,
                                       const MergeCheckpointOptions& options,
                                       const hf::WriteOptions& write,
                                       const std::function<void(int64_t, int64_t)>& progress) {
  TORCH_CHECK((options.groups_per_layer() >= 1) != (options.total_groups() >= 1),
              "merge_checkpoint: give groups_per_layer or total_groups (one of them, >= 1)");
  hf::detail::check_dense_source(checkpoint.source());
  const auto& info = checkpoint.info();
  const auto& source = checkpoint.checkpoint();
  for (const auto& ref : info.layers) {
    TORCH_CHECK(!ref.fused, checkpoint.directory(), ": ", ref.prefix,
                " stores its experts fused (transformers 5.x); merging writes the per-expert "
                "layout only");
    TORCH_CHECK(ref.state.is_plain(), checkpoint.directory(), ": ", ref.prefix,
                " is already pruned or merged; merge the original checkpoint");
    TORCH_CHECK(usage.frequency.count(ref.index) == 1 && usage.router_logits.count(ref.index) == 1,
                "merge_checkpoint: no usage for MoE layer ", ref.prefix);
  }
  const auto routers = hf::router_view(checkpoint.source());
  const auto counts =
      options.groups_per_layer() >= 1
          ? compression::same_group_count(*routers, options.groups_per_layer())
          : compression::global_group_counts(*routers, usage, options.total_groups());
  MergeCheckpointResult result;
  result.usage = usage;
  std::map<int64_t, hf::MergedLayer> merged;
  detail::ScratchFiles scratch(options.scratch_dir(), "merged");
  const auto total = static_cast<int64_t>(info.layers.size());
  const auto& journal = options.journal();
  int64_t in_journal = 0;
  for (const auto& ref : info.layers) {
    if (journal != nullptr && io::exists(merged_path(*journal, ref.index))) {
      // Merged by an earlier run of this journal: the file (written whole, then renamed) holds
      // the merged experts, and its metadata the groups and the layer's state.
      hf::MergedLayer m;
      m.weights = merged_path(*journal, ref.index);
      const safetensors::File file(m.weights);
      const auto& meta = file.metadata();
      TORCH_CHECK(meta.count("state") == 1 && meta.count("groups") == 1, m.weights,
                  ": a merged layer in the journal without its state and groups");
      m.state = MoELayerState::from_json(meta.at("state"));
      const auto groups = io::parse_json(meta.at("groups"), m.weights + " (groups)");
      TORCH_CHECK(groups.is_array(), m.weights, ": the groups should be a JSON array");
      for (const auto& g : groups) {
        TORCH_CHECK(g.is_array() && !g.empty(), m.weights, ": every group should be a list of ids");
        auto& members = result.groups[ref.index].emplace_back();
        for (const auto& id : g) {
          TORCH_CHECK(id.is_number_integer(), m.weights, ": expert ids should be integers");
          members.push_back(id.get<int64_t>());
        }
      }
      merged.emplace(ref.index, std::move(m));
      ++result.layers_from_journal;
      ++in_journal;
      if (progress) progress(ref.index + 1, total);
      continue;
    }
    torch::NoGradGuard no_grad;
    auto layer = hf::load_moe_layer(source, info, ref, hf::LoadOptions().dtype(torch::kFloat));
    const auto view = LayerMapView::of({{ref.index, layer}});
    const auto groups = compression::group_experts(
        *view, usage, {{ref.index, counts.at(ref.index)}}, options.similarity());
    compression::merge_experts(*view, groups, usage, options.align());
    result.groups[ref.index] = groups.at(ref.index);

    // The merged experts, one per group (bank row i is group i), as the checkpoint stores an
    // expert: [out, in] in the tensor's own dtype, under the group's first expert's names.
    hf::MergedLayer m;
    m.state = layer->state();
    m.weights = journal != nullptr ? merged_path(*journal, ref.index) : scratch.next(ref.index);
    safetensors::Writer writer(m.weights);
    writer.set_metadata({{"state", m.state.to_json()},
                         {"groups", nlohmann::json(result.groups.at(ref.index)).dump()}});
    const auto& bank = layer->experts();
    const std::vector<torch::Tensor> weights{bank->w1, bank->w2, bank->w3};
    for (size_t i = 0; i < m.state.bank.groups.size(); ++i) {
      const auto names = ref.expert_tensors(m.state.bank.groups[i].front());
      TORCH_CHECK(names.size() <= weights.size(), "merge_checkpoint: ", ref.prefix,
                  " has an expert layout moeprune does not merge");
      for (size_t w = 0; w < names.size(); ++w) {
        const auto type = source.file(source.shard_of(names[w])).info(names[w]).scalar_type;
        writer.add(names[w], weights[w][static_cast<int64_t>(i)].t().contiguous().to(type));
      }
    }
    writer.finish();
    merged.emplace(ref.index, std::move(m));
    if (journal != nullptr) kill_after_merged(++in_journal);
    if (progress) progress(ref.index + 1, total);
  }
  result.report = hf::write_merged_checkpoint(checkpoint.source(), merged, out, "m-smoe", write);
  return result;
}

}  // namespace moeprune::lm

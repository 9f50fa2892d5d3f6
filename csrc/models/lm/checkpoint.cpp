#include <moeprune/models/lm/checkpoint.h>

#include <moeprune/hf/checkpoint.h>
#include <moeprune/hf/source.h>
#include <moeprune/io/safetensors.h>

#include "hf/config.h"
#include "hf/default_dtype.h"
#include "io/posix_file.h"
#include "layers/spread_check.h"
#include "models/lm/checkpoint_tensors.h"
#include "models/lm/families/family.h"
#include "models/lm/hf_architecture.h"

#include <c10/util/StringUtil.h>
#include <torch/torch.h>

#include <set>
#include <utility>
#include <vector>

namespace moeprune::lm {
namespace {

using detail::layer_prefix;
using detail::recorded_layer_drop;

// Every parameter outside the MoE layers (routers and routed experts), by its Hugging Face name.
std::vector<std::pair<std::string, torch::Tensor>> named_dense_tensors(CausalLMImpl& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  out.emplace_back("model.embed_tokens.weight", model.embed_tokens->weight);
  for (int64_t i = 0; i < model.options.num_layers(); ++i) {
    detail::add_layer_tensors(out, model.options, *model.layer(i));
  }
  out.emplace_back("model.norm.weight", model.norm->weight);
  if (!model.lm_head.is_empty()) {
    out.emplace_back("lm_head.weight", model.lm_head->weight);
  }
  return out;
}

// DeepSeek-V3 and GLM-4.5 checkpoints hold num_nextn_predict_layers multi-token-prediction
// layers after the decoder layers (model.layers.<num_hidden_layers> ...); transformers skips
// them on load (_keys_to_ignore_on_load_unexpected), and so does moeprune.
bool is_prediction_layer(const std::string& name, const hf::Config& config,
                         const CausalLMOptions& o) {
  const auto key = family(o.model_type()).prediction_layers_key();
  if (key.empty()) {
    return false;
  }
  const int64_t extra = config.integer(key, 0);
  const std::string stem = "model.layers.";
  if (extra <= 0 || name.rfind(stem, 0) != 0) {
    return false;
  }
  const auto dot = name.find('.', stem.size());
  const auto index = name.substr(stem.size(), dot - stem.size());
  if (index.empty() || index.find_first_not_of("0123456789") != std::string::npos ||
      index.size() > 9) {
    return false;
  }
  const int64_t i = std::stoll(index);
  return i >= o.num_layers() && i < o.num_layers() + extra;
}

// The reference of a per-expert (unfused) MoE block at `prefix`, for the record's tensor names.
hf::MoELayerRef per_expert(const std::string& prefix) {
  hf::MoELayerRef ref;
  ref.prefix = prefix;
  return ref;
}

}  // namespace

CausalLM load_causal_lm(const std::string& directory, const LoadOptions& options) {
  const auto dtype = options.dtype();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kBFloat16 || dtype == torch::kHalf ||
                  dtype == torch::kDouble,
              "load_causal_lm: dtype should be floating point, got ", dtype);
  const hf::Source source(directory);
  const auto& config = source.config();
  const auto& checkpoint = source.checkpoint();
  const auto& info = source.info();
  const auto o = detail::checkpoint_model_options(config, info);
  const auto& moe_options = *o.moe();
  // The model is built as a shell with a one-token vocabulary and one-unit experts; the
  // checkpoint's tensors replace those below, so the large ones are never randomly initialised
  // (a random bf16 embedding of Qwen3's 151936 tokens alone takes 11 s here) nor held twice.
  auto shell = o;
  auto placeholder = moe_options;
  placeholder.hidden_dim(1);
  shell.vocab_size(1).moe(placeholder);

  CausalLM model{nullptr};
  {
    hf::detail::DefaultDtype guard(dtype);
    model = CausalLM(shell);
  }
  model->to(dtype);
  torch::NoGradGuard no_grad;
  const auto empty = [&](int64_t rows) {
    return torch::empty({rows, o.hidden_size()}, torch::TensorOptions().dtype(dtype));
  };
  model->embed_tokens->weight.set_data(empty(o.vocab_size()));
  model->embed_tokens->options.num_embeddings(o.vocab_size());
  if (!model->lm_head.is_empty()) {
    model->lm_head->weight.set_data(empty(o.vocab_size()));
    model->lm_head->options.out_features(o.vocab_size());
  }
  model->options = o;
  for (int64_t i = 0; i < o.num_layers(); ++i) {
    model->layer(i)->options = o;
  }
  std::set<std::string> used;
  for (auto& [name, param] : named_dense_tensors(*model)) {
    detail::load_tensor_into(checkpoint, name, param, o.model_type());
    used.insert(name);
  }
  for (const auto& ref : info.layers) {
    auto layer = hf::load_moe_layer(checkpoint, info, ref, hf::LoadOptions().dtype(dtype));
    layer->options.aux_loss_weights(moe_options.aux_loss_weights());
    model->layer(ref.decoder_layer)->moe_block->set_moe(layer);
    used.insert(ref.router);
    if (!ref.router_bias.empty()) {
      used.insert(ref.router_bias);
    }
    for (int64_t j = 0; j < (ref.fused ? 1 : ref.num_experts); ++j) {
      for (const auto& name : ref.expert_tensors(j)) {
        used.insert(name);
      }
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& name : checkpoint.names()) {
    const bool ignored = name.size() >= 20 && name.rfind("rotary_emb.inv_freq") == name.size() - 19;
    const bool tied_head = name == "lm_head.weight" && o.tie_word_embeddings();
    if (used.count(name) == 0 && !ignored && !tied_head && !is_prediction_layer(name, config, o)) {
      unexpected.push_back(name);
    }
  }
  TORCH_CHECK(unexpected.empty(), directory, ": ", unexpected.size(),
              unexpected.size() == 1 ? " tensor is" : " tensors are", " not part of a ",
              o.model_type(), " with this config.json (first: '", unexpected.front(), "')");
  for (const int64_t index : recorded_layer_drop(config, o)) {
    model->drop_mlp(index);
  }
  return model;
}

void save_causal_lm(CausalLM& model, const std::string& directory, const SaveOptions& options) {
  auto& m = *model;
  const auto& o = m.options;
  const auto& f = family(o.model_type());
  const auto moe = m.moe_layers();
  // The expert count config.json gets, and what each layer writes.
  int64_t source_experts = 0, written_experts = -1;
  bool dropped = false;
  for (const auto& [index, layer] : moe) {
    moeprune::detail::check_not_spread(layer, "model.layers." + std::to_string(index),
                                       "save_causal_lm");
    const auto state = layer->state();
    TORCH_CHECK(state.bank.rank == 0, "save_causal_lm: layer ", index,
                "'s experts are factorised (MC-SMoE low rank + sparse); writing them as dense "
                "Hugging Face experts is not supported");
    source_experts = state.bank.num_experts;
    dropped = dropped || state.router_rows_dropped;
  }
  for (const auto& [index, layer] : moe) {
    const auto state = layer->state();
    TORCH_CHECK(state.router_rows_dropped == dropped, "save_causal_lm: layer ", index,
                dropped ? " keeps its router rows while others dropped theirs"
                        : " dropped router rows while others kept theirs",
                "; a Hugging Face config has one expert count");
    const int64_t count = dropped ? layer->experts()->num_held() : state.bank.num_experts;
    TORCH_CHECK(written_experts < 0 || written_experts == count, "save_causal_lm: layer ", index,
                " would have ", count, " experts and another ", written_experts,
                "; with router rows dropped, every MoE layer must hold the same number (keep the "
                "router rows to save layers pruned differently)");
    written_experts = count;
  }

  const auto& dropped_mlp = o.dropped_mlp_layers();
  if (written_experts < 0 && !dropped_mlp.empty()) {
    written_experts = o.moe()->num_experts();  // every MoE block was dropped
  }

  {
    io::FolderReplacement folder(directory, options.overwrite());
    safetensors::Writer writer(folder.path() + "/model.safetensors");
    for (const auto& [name, tensor] : named_dense_tensors(m)) {
      writer.add(name, tensor.detach());
    }
    nlohmann::ordered_json states = nlohmann::ordered_json::object();
    for (const auto& [index, layer] : moe) {
      const auto prefix = layer_prefix(index) + f.moe_block();
      const auto& bank = layer->experts();
      const auto state = layer->state();
      writer.add(prefix + ".gate.weight", layer->router().router_weight().detach());
      const auto bias = layer->router().router_bias();
      if (bias.defined()) {
        // DeepSeek-V3 / GLM-4.5: its rows follow the router's (cut with them when dropped).
        writer.add(prefix + ".gate.e_score_correction_bias", bias.detach());
      }
      // Bank position of each written expert: the held ones in order (router rows dropped), or
      // expert_map over the original ids (-1: removed, written as zeros; merged ids share one).
      std::vector<int64_t> position;
      if (dropped) {
        for (int64_t p = 0; p < bank->num_held(); ++p) {
          position.push_back(p);
        }
      } else {
        const auto map = bank->expert_map();
        position.assign(map.data_ptr<int64_t>(), map.data_ptr<int64_t>() + map.numel());
        if (!state.is_plain()) {
          states[prefix] = nlohmann::ordered_json::parse(state.to_json());
        }
      }
      for (size_t j = 0; j < position.size(); ++j) {
        const auto names = f.expert_tensors(per_expert(prefix), static_cast<int64_t>(j));
        const auto weight = [&](const torch::Tensor& w) {
          // The bank holds [E, in, out]; Hugging Face nn.Linear weights are [out, in].
          const int64_t p = position[j];
          return p >= 0 ? w[p].detach().t().contiguous()
                        : torch::zeros({w.size(2), w.size(1)}, w.options());
        };
        writer.add(names[0], weight(bank->w1));
        writer.add(names[1], weight(bank->w2));
        writer.add(names[2], weight(bank->w3));
      }
    }
    // Layer Drop: a MoE block whose router and experts are zero adds exactly nothing.
    for (const int64_t index : dropped_mlp) {
      const auto prefix = layer_prefix(index) + f.moe_block();
      const auto opts = m.embed_tokens->weight.options();
      const int64_t d = o.hidden_size(), width = o.moe()->hidden_dim();
      writer.add(prefix + ".gate.weight", torch::zeros({written_experts, d}, opts));
      const auto& moe_options = *o.moe();
      const auto* group_limited = std::get_if<GroupLimitedRouterConfig>(&moe_options.router());
      if (group_limited != nullptr && group_limited->groups().correction_bias()) {
        writer.add(prefix + ".gate.e_score_correction_bias",
                   torch::zeros({written_experts}, opts.dtype(torch::kFloat)));
      }
      const auto in = torch::zeros({width, d}, opts), out = torch::zeros({d, width}, opts);
      for (int64_t j = 0; j < written_experts; ++j) {
        const auto names = f.expert_tensors(per_expert(prefix), j);
        writer.add(names[0], in);
        writer.add(names[1], out);
        writer.add(names[2], in);
      }
    }
    writer.set_metadata({{"format", "pt"}});
    writer.finish();

    auto config = detail::config_from_options(o, written_experts < 0 ? 0 : written_experts);
    if (dropped) {
      f.write_cut_config(config);
    }
    config.erase("moeprune");
    if (!states.empty()) {
      nlohmann::ordered_json record;
      record["router"] = "keep";
      record["source_experts"] = source_experts;
      record["layer_states"] = states;
      config["moeprune"] = record;
    } else if (dropped) {
      nlohmann::ordered_json record;
      record["router"] = "cut";
      record["source_experts"] = source_experts;
      config["moeprune"] = record;
    }
    if (!dropped_mlp.empty()) {
      // moeprune reloads these layers without their MoE block.
      if (!config.contains("moeprune")) {
        config["moeprune"] = nlohmann::ordered_json::object();
      }
      config["moeprune"]["dropped_mlp_layers"] = dropped_mlp;
    }
    io::write_text_file(folder.path() + "/config.json", config.dump(2) + "\n");
    folder.commit();
  }
}

}  // namespace moeprune::lm

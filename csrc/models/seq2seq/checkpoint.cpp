#include <moeprune/models/seq2seq/checkpoint.h>

#include <moeprune/hf/checkpoint.h>
#include <moeprune/io/safetensors.h>

#include "hf/config.h"
#include "hf/default_dtype.h"
#include "hf/family.h"
#include "io/posix_file.h"
#include "layers/spread_check.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <map>
#include <set>
#include <utility>
#include <vector>

namespace moeprune::seq2seq {
namespace {

constexpr const char* kModelType = "switch_transformers";
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

std::string stack_name(bool decoder) {
  return decoder ? "decoder" : "encoder";
}

void add_attention(NamedTensors& out, const std::string& prefix, RelativeAttentionImpl& a) {
  out.emplace_back(prefix + ".q.weight", a.q->weight);
  out.emplace_back(prefix + ".k.weight", a.k->weight);
  out.emplace_back(prefix + ".v.weight", a.v->weight);
  out.emplace_back(prefix + ".o.weight", a.o->weight);
  if (!a.relative_attention_bias.is_empty()) {
    out.emplace_back(prefix + ".relative_attention_bias.weight", a.relative_attention_bias->weight);
  }
}

// Every parameter outside the MoE layers, by its Hugging Face name.
NamedTensors named_dense_tensors(SwitchTransformerImpl& model) {
  NamedTensors out;
  out.emplace_back("shared.weight", model.shared->weight);
  for (const bool decoder : {false, true}) {
    const auto stack = stack_name(decoder);
    const int64_t blocks =
        decoder ? model.options.num_decoder_layers() : model.options.num_layers();
    for (int64_t i = 0; i < blocks; ++i) {
      auto block = decoder ? model.decoder_block(i) : model.encoder_block(i);
      const auto p = stack + ".block." + std::to_string(i) + ".layer.";
      add_attention(out, p + "0.SelfAttention", *block->self_attention);
      out.emplace_back(p + "0.layer_norm.weight", block->self_norm->weight);
      if (decoder) {
        add_attention(out, p + "1.EncDecAttention", *block->cross_attention);
        out.emplace_back(p + "1.layer_norm.weight", block->cross_norm->weight);
      }
      const auto ff = p + (decoder ? "2" : "1");
      out.emplace_back(ff + ".layer_norm.weight", block->feed_forward->layer_norm->weight);
      if (!block->feed_forward->is_sparse) {
        out.emplace_back(ff + ".mlp.wi.weight", block->feed_forward->mlp->wi->weight);
        out.emplace_back(ff + ".mlp.wo.weight", block->feed_forward->mlp->wo->weight);
      }
    }
    auto& norm = decoder ? model.decoder_final_norm : model.encoder_final_norm;
    out.emplace_back(stack + ".final_layer_norm.weight", norm->weight);
  }
  if (!model.lm_head.is_empty()) {
    out.emplace_back("lm_head.weight", model.lm_head->weight);
  }
  return out;
}

// Replaces `param`'s data with checkpoint tensor `name` (memory-mapped when it already has the
// dtype); a missing tensor or a shape that differs is refused by name.
void load_tensor_into(const safetensors::Checkpoint& checkpoint, const std::string& name,
                      torch::Tensor& param) {
  TORCH_CHECK(checkpoint.contains(name), checkpoint.directory(), ": tensor '", name,
              "' is missing (a switch_transformers model with this config.json has it)");
  const auto t = checkpoint.tensor(name);
  TORCH_CHECK(t.sizes() == param.sizes(), checkpoint.directory(), ": tensor '", name,
              "' has shape ", t.sizes(), ", config.json implies ", param.sizes());
  param.set_data(t.scalar_type() == param.scalar_type() ? t : t.to(param.scalar_type()));
}

const char* activation_name(ExpertActivation a) {
  switch (a) {
    case ExpertActivation::kRelu:
      return "relu";
    case ExpertActivation::kGelu:
      return "gelu";
    case ExpertActivation::kGeluTanh:
      return "gelu_new";
    case ExpertActivation::kSilu:
      return "silu";
  }
  return "relu";
}

}  // namespace

namespace {

// read_switch_options() once config.json is read.
SwitchTransformerOptions switch_options_of(const hf::Config& config) {
  const auto& path = config.path();
  const auto type = config.text("model_type", "");
  TORCH_CHECK(type == kModelType, path, ": model_type is '", type, "', expected '", kModelType,
              "'");
  TORCH_CHECK(!config.flag("is_gated_act", false), path,
              ": is_gated_act is true; gated Switch feed-forward blocks are not supported");
  TORCH_CHECK(!config.flag("router_bias", false), path,
              ": router_bias is true; moeprune's routers have no bias");
  const auto router_precision = config.text("router_dtype", "float32");
  TORCH_CHECK(router_precision == "float32", path, ": router_dtype '", router_precision,
              "' is not supported (moeprune routes in float32)");
  SwitchTransformerOptions o;
  o.vocab_size(config.integer("vocab_size"))
      .d_model(config.integer("d_model"))
      .d_kv(config.integer("d_kv"))
      .d_ff(config.integer("d_ff"))
      .num_heads(config.integer("num_heads"))
      .num_layers(config.integer("num_layers"));
  // transformers: num_decoder_layers defaults to num_layers.
  o.num_decoder_layers(config.integer("num_decoder_layers", o.num_layers()))
      .encoder_sparse_step(config.integer("encoder_sparse_step"))
      .decoder_sparse_step(config.integer("decoder_sparse_step"))
      .relative_attention_num_buckets(config.integer("relative_attention_num_buckets", 32))
      .relative_attention_max_distance(config.integer("relative_attention_max_distance", 128))
      .layer_norm_epsilon(config.number("layer_norm_epsilon", 1e-6))
      .dropout_rate(config.number("dropout_rate", 0.1))
      .activation(hf::detail::activation_of(config.text("dense_act_fn", "relu"), path))
      .tie_word_embeddings(config.flag("tie_word_embeddings", true))
      .pad_token_id(config.integer("pad_token_id", 0))
      .eos_token_id(config.integer("eos_token_id", 1));
  // Switch Transformers starts decoding with the pad token when the config names no start token
  // (transformers' model docs).
  o.decoder_start_token_id(config.integer("decoder_start_token_id", o.pad_token_id()))
      .router_z_loss_coef(config.number("router_z_loss_coef", 0.001))
      .router_aux_loss_coef(config.number("router_aux_loss_coef", 0.001));
  auto moe =
      MoELayerOptions::preset("switch", o.d_model(), o.d_ff(), config.integer("num_experts"));
  moe.routing().expert_capacity(config.integer("expert_capacity"));
  moe.router_as<TopKRouterConfig>().jitter(config.number("router_jitter_noise", 0.0));
  o.moe(moe);
  o.validate();
  return o;
}

}  // namespace

SwitchTransformerOptions read_switch_options(const std::string& directory) {
  const hf::Config config(directory);
  return hf::read_checked(config, [&] { return switch_options_of(config); });
}

SwitchTransformer load_switch_transformer(const std::string& directory,
                                          const LoadOptions& options) {
  const auto dtype = options.dtype();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kBFloat16 || dtype == torch::kHalf ||
                  dtype == torch::kDouble,
              "load_switch_transformer: dtype should be floating point, got ", dtype);
  const auto o = read_switch_options(directory);
  const safetensors::Checkpoint checkpoint(directory);
  const auto info = hf::describe(directory, checkpoint);

  SwitchTransformer model{nullptr};
  {
    hf::detail::DefaultDtype guard(dtype);
    model = SwitchTransformer(o);
  }
  model->to(dtype);
  torch::NoGradGuard no_grad;
  std::set<std::string> used;
  // The tied embedding may be saved under any of its names.
  std::string shared_name = "shared.weight";
  for (const auto* alias : {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}) {
    if (!checkpoint.contains(shared_name) && checkpoint.contains(alias)) {
      shared_name = alias;
    }
  }
  for (auto& [name, param] : named_dense_tensors(*model)) {
    const auto source = name == "shared.weight" ? shared_name : name;
    load_tensor_into(checkpoint, source, param);
    used.insert(source);
  }
  std::map<std::string, SwitchFeedForward> feed_forward;
  for (int64_t i = 0; i < o.num_layers(); ++i) {
    feed_forward.emplace("encoder.block." + std::to_string(i) + ".layer.1.mlp",
                         model->encoder_block(i)->feed_forward);
  }
  for (int64_t i = 0; i < o.num_decoder_layers(); ++i) {
    feed_forward.emplace("decoder.block." + std::to_string(i) + ".layer.2.mlp",
                         model->decoder_block(i)->feed_forward);
  }
  for (const auto& ref : info.layers) {
    const auto it = feed_forward.find(ref.prefix);
    TORCH_CHECK(it != feed_forward.end() && it->second->is_sparse, directory, ": MoE layer '",
                ref.prefix, "' is not a sparse block of this config");
    auto layer = hf::load_moe_layer(checkpoint, info, ref, hf::LoadOptions().dtype(dtype));
    it->second->set_moe(layer);
    used.insert(ref.router);
    for (int64_t j = 0; j < ref.num_experts; ++j) {
      for (const auto& name : ref.expert_tensors(j)) {
        used.insert(name);
      }
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& name : checkpoint.names()) {
    const bool alias = name == "encoder.embed_tokens.weight" ||
                       name == "decoder.embed_tokens.weight" ||
                       (name == "lm_head.weight" && o.tie_word_embeddings());
    if (used.count(name) == 0 && !alias) {
      unexpected.push_back(name);
    }
  }
  TORCH_CHECK(unexpected.empty(), directory, ": ", unexpected.size(),
              " tensors are not part of a switch_transformers model with this config.json "
              "(first: '",
              unexpected.front(), "')");
  return model;
}

void save_switch_transformer(SwitchTransformer& model, const std::string& directory,
                             const SaveOptions& options) {
  auto& m = *model;
  const auto& o = m.options;
  const auto layers = m.moe_layers();
  for (const auto& [name, layer] : layers) {
    detail::check_not_spread(layer, name, "save_switch_transformer");
    const auto state = layer->state();
    TORCH_CHECK(state.bank.rank == 0, "save_switch_transformer: ", name,
                "'s experts are factorised (MC-SMoE low rank + sparse); writing them as dense "
                "Hugging Face experts is not supported");
    TORCH_CHECK(!state.router_rows_dropped, "save_switch_transformer: ", name,
                " dropped router columns; a Switch checkpoint has one expert count (keep the "
                "router columns to save a pruned model)");
    TORCH_CHECK(!layer->experts()->b1.defined(), "save_switch_transformer: ", name,
                " has expert biases, which Switch experts do not have");
  }
  {
    io::FolderReplacement folder(directory, options.overwrite());
    safetensors::Writer writer(folder.path() + "/model.safetensors");
    for (const auto& [name, tensor] : named_dense_tensors(m)) {
      writer.add(name, tensor.detach());
    }
    for (const auto& [name, layer] : layers) {
      const auto& bank = layer->experts();
      writer.add(name + ".router.classifier.weight", layer->router().router_weight().detach());
      // Each router expert gets its bank row: itself, its merge group's expert, or zeros for a
      // removed one (a zero ReLU expert outputs zero, as moeprune computes).
      const auto map = bank->expert_map();
      const auto* rows = map.data_ptr<int64_t>();
      for (int64_t j = 0; j < map.size(0); ++j) {
        const auto stem = name + ".experts.expert_" + std::to_string(j);
        const auto w1 = rows[j] >= 0 ? bank->w1[rows[j]].detach() : torch::zeros_like(bank->w1[0]);
        const auto w2 = rows[j] >= 0 ? bank->w2[rows[j]].detach() : torch::zeros_like(bank->w2[0]);
        writer.add(stem + ".wi.weight", w1.t());
        writer.add(stem + ".wo.weight", w2.t());
      }
    }
    writer.set_metadata({{"format", "pt"}});
    writer.finish();

    const auto& moe = o.moe();
    nlohmann::ordered_json config;
    config["architectures"] = {"SwitchTransformersForConditionalGeneration"};
    config["model_type"] = kModelType;
    config["vocab_size"] = o.vocab_size();
    config["d_model"] = o.d_model();
    config["d_kv"] = o.d_kv();
    config["d_ff"] = o.d_ff();
    config["num_heads"] = o.num_heads();
    config["num_layers"] = o.num_layers();
    config["num_decoder_layers"] = o.num_decoder_layers();
    // transformers derives the steps from the sparse counts, then config.json's own step keys
    // replace them: both are written.
    config["num_sparse_encoder_layers"] = o.num_sparse(false);
    config["num_sparse_decoder_layers"] = o.num_sparse(true);
    config["encoder_sparse_step"] = o.encoder_sparse_step();
    config["decoder_sparse_step"] = o.decoder_sparse_step();
    config["num_experts"] = moe.num_experts();
    config["expert_capacity"] = moe.routing().expert_capacity();
    config["router_bias"] = false;
    config["router_jitter_noise"] = moe.router_as<TopKRouterConfig>().jitter();
    config["router_dtype"] = "float32";
    config["router_ignore_padding_tokens"] = false;
    config["router_z_loss_coef"] = o.router_z_loss_coef();
    config["router_aux_loss_coef"] = o.router_aux_loss_coef();
    config["relative_attention_num_buckets"] = o.relative_attention_num_buckets();
    config["relative_attention_max_distance"] = o.relative_attention_max_distance();
    config["dropout_rate"] = o.dropout_rate();
    config["layer_norm_epsilon"] = o.layer_norm_epsilon();
    config["dense_act_fn"] = activation_name(o.activation());
    config["is_gated_act"] = false;
    config["is_encoder_decoder"] = true;
    config["tie_word_embeddings"] = o.tie_word_embeddings();
    config["pad_token_id"] = o.pad_token_id();
    config["eos_token_id"] = o.eos_token_id();
    config["decoder_start_token_id"] = o.decoder_start_token_id();
    config["use_cache"] = true;
    const auto dtype = m.shared->weight.scalar_type();
    config["torch_dtype"] = dtype == torch::kBFloat16 ? "bfloat16"
                            : dtype == torch::kHalf   ? "float16"
                            : dtype == torch::kDouble ? "float64"
                                                      : "float32";
    io::write_text_file(folder.path() + "/config.json", config.dump(2) + "\n");
    folder.commit();
  }
}

}  // namespace moeprune::seq2seq

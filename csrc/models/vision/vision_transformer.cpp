#include <moeprune/models/vision/vision_transformer.h>

#include "io/json.h"
#include "layers/error_context.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace moeprune {

std::vector<int64_t> moe_blocks_every_2(int64_t depth) {
  std::vector<int64_t> blocks;
  for (int64_t i = 1; i < depth; i += 2) {
    blocks.push_back(i);
  }
  return blocks;
}

std::vector<int64_t> moe_blocks_last(int64_t depth, int64_t n) {
  auto odd = moe_blocks_every_2(depth);
  TORCH_CHECK(n >= 1 && n <= static_cast<int64_t>(odd.size()),
              "moe_blocks_last: n should be in [1, ", odd.size(), "] for depth ", depth, ", got ",
              n);
  return {odd.end() - n, odd.end()};
}

VisionTransformerOptions VisionTransformerOptions::vmoe(char size, int64_t patch, int64_t experts,
                                                        int64_t k, int64_t num_classes,
                                                        int64_t image_size, int64_t last_n) {
  int64_t d = 0, mlp = 0, depth = 0, heads = 0;
  switch (size) {
    case 'S':
      d = 512, mlp = 2048, depth = 8, heads = 8;
      break;
    case 'B':
      d = 768, mlp = 3072, depth = 12, heads = 12;
      break;
    case 'L':
      d = 1024, mlp = 4096, depth = 24, heads = 16;
      break;
    default:
      TORCH_CHECK(false, "V-MoE size should be 'S', 'B' or 'L', got '", size, "'");
  }
  TORCH_CHECK(patch == 16 || patch == 32, "V-MoE patch should be 16 or 32, got ", patch);
  return VisionTransformerOptions(image_size, 3, patch, num_classes)
      .d_model(d)
      .mlp_dim(mlp)
      .depth(depth)
      .heads(heads)
      .num_experts(experts)
      .k(k)
      .moe_blocks(last_n > 0 ? moe_blocks_last(depth, last_n) : moe_blocks_every_2(depth));
}

VisionTransformerOptions VisionTransformerOptions::small_vmoe(int64_t num_classes) {
  return VisionTransformerOptions(28, 1, 4, num_classes)
      .d_model(64)
      .depth(4)
      .heads(4)
      .mlp_dim(128)
      .moe_blocks({1, 3})
      .num_experts(8)
      .k(2);
}

VisionTransformerOptions VisionTransformerOptions::small_e3moe(int64_t num_classes) {
  return small_vmoe(num_classes).moe_preset("e3moe").k(1).ensemble_size(2);
}

VisionTransformerOptions VisionTransformerOptions::small_expert_choice(int64_t num_classes) {
  return small_vmoe(num_classes).moe_preset("expert_choice").capacity_factor(2.0);
}

VisionTransformerOptions VisionTransformerOptions::small_dense(int64_t num_classes) {
  return small_vmoe(num_classes).moe_blocks({});
}

VisionTransformerOptions VisionTransformerOptions::small(const std::string& name,
                                                         int64_t num_classes) {
  if (name == "small_vmoe") return small_vmoe(num_classes);
  if (name == "small_e3moe") return small_e3moe(num_classes);
  if (name == "small_expert_choice") return small_expert_choice(num_classes);
  if (name == "small_dense") return small_dense(num_classes);
  TORCH_CHECK(false, "unknown model '", name,
              "' (known: small_vmoe, small_e3moe, small_expert_choice, small_dense)");
}

std::string VisionTransformerOptions::to_json() const {
  nlohmann::json j = {{"image_size", image_size()},
                      {"channels", channels()},
                      {"patch_size", patch_size()},
                      {"num_classes", num_classes()},
                      {"d_model", d_model()},
                      {"depth", depth()},
                      {"heads", heads()},
                      {"mlp_dim", mlp_dim()},
                      {"moe_blocks", moe_blocks()},
                      {"moe_preset", moe_preset()},
                      {"num_experts", num_experts()},
                      {"k", k()},
                      {"capacity_factor", capacity_factor()},
                      {"batch_priority", batch_priority()},
                      {"group_images", group_images()},
                      {"ensemble_size", ensemble_size()}};
  if (!dropped_mlp_blocks().empty()) {
    j["dropped_mlp_blocks"] = dropped_mlp_blocks();
  }
  if (!dropped_blocks().empty()) {
    j["dropped_blocks"] = dropped_blocks();
  }
  return j.dump();
}

VisionTransformerOptions VisionTransformerOptions::from_json(const std::string& text) {
  const auto j = io::parse_json(text, "model options");
  const auto get = [&](const char* key) -> const nlohmann::json& {
    TORCH_CHECK(j.contains(key), "model options lack '", key, "'");
    return j.at(key);
  };
  for (const char* key : {"image_size", "channels", "patch_size", "num_classes", "d_model", "depth",
                          "heads", "mlp_dim", "moe_blocks", "moe_preset", "num_experts", "k",
                          "capacity_factor", "batch_priority", "group_images", "ensemble_size"}) {
    get(key);  // in this order, so the first missing field is the one named
  }
  try {
    VisionTransformerOptions o(get("image_size").get<int64_t>(), get("channels").get<int64_t>(),
                               get("patch_size").get<int64_t>(), get("num_classes").get<int64_t>());
    o.d_model(get("d_model").get<int64_t>())
        .depth(get("depth").get<int64_t>())
        .heads(get("heads").get<int64_t>())
        .mlp_dim(get("mlp_dim").get<int64_t>())
        .moe_blocks(get("moe_blocks").get<std::vector<int64_t>>())
        .moe_preset(get("moe_preset").get<std::string>())
        .num_experts(get("num_experts").get<int64_t>())
        .k(get("k").get<int64_t>())
        .capacity_factor(get("capacity_factor").get<double>())
        .batch_priority(get("batch_priority").get<bool>())
        .group_images(get("group_images").get<int64_t>())
        .ensemble_size(get("ensemble_size").get<int64_t>());
    o.dropped_mlp_blocks(j.value("dropped_mlp_blocks", std::vector<int64_t>{}));
    o.dropped_blocks(j.value("dropped_blocks", std::vector<int64_t>{}));
    return o;
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, "model options: a field has the wrong type: ", e.what());
  }
}

namespace {

// The MoE layer states of options JSON written before MoELayerState existed: kept_experts (with
// drop_router_columns), merged_experts and expert_ranks, each keyed by block.
MoELayerStates legacy_states(const nlohmann::json& j, const VisionTransformerOptions& o) {
  MoELayerStates states;
  const auto state_of = [&](const std::string& block) -> MoELayerState& {
    auto& s = states[std::stoll(block)];
    if (s.bank.num_experts == 0) {
      s.bank.num_experts = o.num_experts();
      for (int64_t e = 0; e < o.num_experts(); ++e) {
        s.bank.held.push_back(e);
      }
    }
    return s;
  };
  if (j.contains("kept_experts")) {
    const bool dropped = j.value("drop_router_columns", false) || o.moe_preset() == "expert_choice";
    for (const auto& [block, experts] : j.at("kept_experts").items()) {
      auto& s = state_of(block);
      s.bank.held = experts.get<std::vector<int64_t>>();
      std::sort(s.bank.held.begin(), s.bank.held.end());
      s.router_rows_dropped = dropped;
    }
  }
  if (j.contains("merged_experts")) {
    for (const auto& [block, groups] : j.at("merged_experts").items()) {
      auto& s = state_of(block);
      s.bank.groups = groups.get<std::vector<std::vector<int64_t>>>();
      s.bank.held.clear();
      for (auto& g : s.bank.groups) {
        std::sort(g.begin(), g.end());  // as ExpertBankImpl::merge_experts orders a group
        TORCH_CHECK(!g.empty(), "model options: block ", block, " has an empty merge group");
        s.bank.held.push_back(g.front());
      }
    }
  }
  if (j.contains("expert_ranks")) {
    for (const auto& [block, rank] : j.at("expert_ranks").items()) {
      state_of(block).bank.rank = rank.get<int64_t>();
    }
  }
  return states;
}

}  // namespace

VisionTransformer vision_transformer_from_config(const std::string& config_json) {
  const auto options = VisionTransformerOptions::from_json(config_json);
  const auto j = nlohmann::json::parse(config_json);
  MoELayerStates states;
  try {
    if (j.contains("moe_layer_states")) {
      TORCH_CHECK(j.at("moe_layer_states").is_object(),
                  "model config: 'moe_layer_states' should be an object keyed by block");
      for (const auto& [block, state] : j.at("moe_layer_states").items()) {
        states[std::stoll(block)] = MoELayerState::from_json(state.dump());
      }
    } else {
      states = legacy_states(j, options);
    }
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, "model config: a MoE layer state has the wrong type: ", e.what());
  } catch (const std::invalid_argument&) {
    TORCH_CHECK(false, "model config: MoE layer states should be keyed by block number");
  }
  // A MoE sub-block removed by Layer or Block Drop took its state with it (legacy options could
  // still list it).
  for (const auto& dropped : {options.dropped_mlp_blocks(), options.dropped_blocks()}) {
    for (const int64_t block : dropped) {
      states.erase(block);
    }
  }
  VisionTransformer model(options);
  model->restore_moe_layer_states(states);
  return model;
}

EncoderBlockImpl::EncoderBlockImpl(int64_t d_model_, int64_t heads_, int64_t mlp_dim_,
                                   std::optional<MoELayerOptions> moe_, bool has_attention_,
                                   bool has_mlp_)
    : d_model(d_model_),
      heads(heads_),
      mlp_dim(mlp_dim_),
      moe_options(std::move(moe_)),
      has_attention(has_attention_),
      has_mlp(has_mlp_) {
  reset();
}

void EncoderBlockImpl::reset() {
  TORCH_CHECK(d_model % heads == 0, "EncoderBlock: d_model ", d_model,
              " is not divisible by heads ", heads);
  if (has_attention) {
    ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model})));
    qkv = register_module("qkv", torch::nn::Linear(d_model, 3 * d_model));
    proj = register_module("proj", torch::nn::Linear(d_model, d_model));
  }
  if (!has_mlp) {
    return;
  }
  ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model})));
  if (moe_options) {
    moe = register_module("moe", MoELayer(*moe_options));
  } else {
    fc1 = register_module("fc1", torch::nn::Linear(d_model, mlp_dim));
    fc2 = register_module("fc2", torch::nn::Linear(mlp_dim, d_model));
  }
}

torch::Tensor EncoderBlockImpl::forward(const torch::Tensor& x, torch::Tensor* aux,
                                        RoutingPlan* plan, torch::Tensor* moe_input,
                                        torch::Tensor* mid) {
  auto h = x;
  if (has_attention) {
    const int64_t B = x.size(0), N = x.size(1), dh = d_model / heads;
    auto q_k_v = qkv(ln1(x)).view({B, N, 3, heads, dh}).permute({2, 0, 3, 1, 4});
    auto attended = at::scaled_dot_product_attention(q_k_v[0], q_k_v[1], q_k_v[2]);
    h = x + proj(attended.transpose(1, 2).reshape({B, N, d_model}));
  }
  if (mid != nullptr) {
    *mid = h;
  }
  if (!has_mlp) {
    return h;
  }
  if (moe) {
    const auto tokens = ln2(h);
    if (moe_input != nullptr) {
      *moe_input = tokens.reshape({-1, d_model});
    }
    auto out = moe(tokens);
    if (aux != nullptr) {
      *aux = out.aux_loss;
    }
    if (plan != nullptr) {
      *plan = std::move(out.plan);
    }
    return h + out.output;
  }
  return h + fc2(torch::gelu(fc1(ln2(h)), "tanh"));
}

void EncoderBlockImpl::drop_mlp() {
  TORCH_CHECK(has_mlp, "EncoderBlock: the MLP sub-block is already dropped");
  unregister_module("ln2");
  ln2 = nullptr;
  if (moe) {
    unregister_module("moe");
    moe = nullptr;
  } else {
    unregister_module("fc1");
    unregister_module("fc2");
    fc1 = nullptr;
    fc2 = nullptr;
  }
  has_mlp = false;
}

void EncoderBlockImpl::drop_all() {
  if (has_mlp) {
    drop_mlp();
  }
  if (has_attention) {
    for (const char* name : {"ln1", "qkv", "proj"}) {
      unregister_module(name);
    }
    ln1 = nullptr;
    qkv = nullptr;
    proj = nullptr;
    has_attention = false;
  }
}

VisionTransformerImpl::VisionTransformerImpl(VisionTransformerOptions options_)
    : options(std::move(options_)) {
  reset();
}

void VisionTransformerImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.image_size() % o.patch_size() == 0, "VisionTransformer: image size ",
              o.image_size(), " is not a multiple of the patch size ", o.patch_size());
  TORCH_CHECK(o.ensemble_size() >= 1, "VisionTransformer: ensemble_size should be >= 1");
  TORCH_CHECK(o.ensemble_size() == 1 || !o.moe_blocks().empty(),
              "VisionTransformer: an ensemble needs MoE blocks");
  for (const auto b : o.moe_blocks()) {
    TORCH_CHECK(b >= 0 && b < o.depth(), "VisionTransformer: MoE block ", b, " is outside the ",
                o.depth(), " blocks");
  }
  const int64_t patches = (o.image_size() / o.patch_size()) * (o.image_size() / o.patch_size());
  const int64_t tokens = patches + 1;
  // A clone re-runs reset(): rebuild the MoE layers' compression states the original had.
  const auto states = moe_layer_states();
  patch_embedding = register_module(
      "patch_embedding",
      torch::nn::Conv2d(torch::nn::Conv2dOptions(o.channels(), o.d_model(), o.patch_size())
                            .stride(o.patch_size())));
  class_token = register_parameter("class_token", torch::zeros({1, 1, o.d_model()}));
  position_embedding =
      register_parameter("position_embedding", torch::randn({1, tokens, o.d_model()}) * 0.02);
  blocks.clear();
  for (int64_t i = 0; i < o.depth(); ++i) {
    std::optional<MoELayerOptions> moe;
    if (std::find(o.moe_blocks().begin(), o.moe_blocks().end(), i) != o.moe_blocks().end()) {
      auto m = MoELayerOptions::preset(o.moe_preset(), o.d_model(), o.mlp_dim(), o.num_experts());
      moeprune::set_capacity_factor(m.router(), o.capacity_factor());
      if (auto* routing = token_routing(m.router())) {  // expert choice has no k or priority
        routing->k(o.k()).batch_priority(o.batch_priority());
      }
      if (auto* ensemble = std::get_if<EnsembleRouterConfig>(&m.router())) {
        ensemble->members(o.ensemble_size());
      }
      moe = m;
    }
    blocks.push_back(register_module("block" + std::to_string(i),
                                     EncoderBlock(o.d_model(), o.heads(), o.mlp_dim(), moe)));
  }
  restore_moe_layer_states(states);
  // Drops last: a dropped MoE sub-block takes its state with it.
  for (const int64_t block : o.dropped_mlp_blocks()) {
    TORCH_CHECK(block >= 0 && block < o.depth(),
                "VisionTransformer: dropped_mlp_blocks names block ", block, ", outside the ",
                o.depth(), " blocks");
    blocks[block]->drop_mlp();
  }
  for (const int64_t block : o.dropped_blocks()) {
    TORCH_CHECK(block >= 0 && block < o.depth(), "VisionTransformer: dropped_blocks names block ",
                block, ", outside the ", o.depth(), " blocks");
    blocks[block]->drop_all();
  }
  norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.d_model()})));
  head = register_module("head", torch::nn::Linear(o.d_model(), o.num_classes()));
}

void VisionTransformerImpl::pretty_print(std::ostream& stream) const {
  stream << "moeprune::VisionTransformer(" << options.to_json() << ")";
}

VisionTransformerOutput VisionTransformerImpl::forward(const torch::Tensor& images) {
  const auto& o = options;
  TORCH_CHECK(images.dim() == 4 && images.size(1) == o.channels() &&
                  images.size(2) == o.image_size() && images.size(3) == o.image_size(),
              "VisionTransformer: images should be [B, ", o.channels(), ", ", o.image_size(), ", ",
              o.image_size(), "], got ", images.sizes());
  const int64_t B = images.size(0), M = o.ensemble_size();
  auto x = patch_embedding(images).flatten(2).transpose(1, 2);
  x = torch::cat({class_token.expand({B, 1, o.d_model()}), x}, 1) + position_embedding;

  VisionTransformerOutput out;
  out.aux_loss = torch::zeros({}, x.options());
  bool replicated = false;
  // Routing groups of group_images images; a batch they do not tile (the last one of an epoch)
  // uses the largest number of images below that divides it.
  int64_t group_images = o.group_images() > 0 ? std::min(o.group_images(), B) : B;
  while (B % group_images != 0) {
    --group_images;
  }
  const int64_t group_tokens = group_images * x.size(1) * M;
  // E3-MoE replicates each image once per member before the first MoE block (jnp.repeat order:
  // b * M + m), also when that block's MoE sub-block was dropped.
  const auto& moe_blocks = o.moe_blocks();
  const int64_t first_moe =
      moe_blocks.empty() ? o.depth() : *std::min_element(moe_blocks.begin(), moe_blocks.end());
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto& block = blocks[i];
    if (!replicated && M > 1 && static_cast<int64_t>(i) >= first_moe) {
      x = x.repeat_interleave(M, 0);
      replicated = true;
    }
    torch::Tensor mid;
    if (capture_block_states) {
      out.block_states.push_back(x);
    }
    torch::Tensor* mid_out = capture_block_states ? &mid : nullptr;
    detail::in_block("block" + std::to_string(i), [&] {
      if (block->is_moe()) {
        block->moe->set_group_size(group_tokens);
        torch::Tensor aux;
        RoutingPlan plan;
        x = block->forward(x, &aux, &plan, nullptr, mid_out);
        out.aux_loss = out.aux_loss + aux;
        out.plans.push_back(std::move(plan));
      } else {
        x = block->forward(x, nullptr, nullptr, nullptr, mid_out);
      }
    });
    if (capture_block_states) {
      out.mlp_states.push_back(mid);
    }
  }
  if (capture_block_states) {
    out.block_states.push_back(x);
  }
  auto logits = head(norm(x.select(1, 0)));
  if (M > 1) {
    out.member_logits = logits.view({B, M, -1});
    out.logits = out.member_logits.log_softmax(-1).logsumexp(1) - std::log(static_cast<double>(M));
  } else {
    out.logits = logits;
  }
  return out;
}

torch::Tensor VisionTransformerImpl::loss(const VisionTransformerOutput& output,
                                          const torch::Tensor& labels) const {
  if (output.member_logits.defined()) {
    const int64_t M = output.member_logits.size(1);
    return torch::cross_entropy_loss(output.member_logits.flatten(0, 1),
                                     labels.repeat_interleave(M));
  }
  return torch::cross_entropy_loss(output.logits, labels);
}

void VisionTransformerImpl::replace_head(int64_t num_classes) {
  TORCH_CHECK(num_classes >= 1, "replace_head: num_classes should be >= 1, got ", num_classes);
  options.num_classes(num_classes);
  head = replace_module("head", torch::nn::Linear(options.d_model(), num_classes));
}

void VisionTransformerImpl::set_capacity_factor(double capacity_factor) {
  TORCH_CHECK(capacity_factor > 0, "set_capacity_factor: capacity_factor should be > 0, got ",
              capacity_factor);
  options.capacity_factor(capacity_factor);
  for (auto& [index, layer] : moe_layers()) {
    layer->set_capacity_factor(capacity_factor);
  }
}

MoELayer VisionTransformerImpl::moe_layer(int64_t block) const {
  TORCH_CHECK(block >= 0 && block < static_cast<int64_t>(blocks.size()) && blocks[block]->is_moe(),
              "VisionTransformer: block ", block, " is not a MoE block");
  return blocks[static_cast<size_t>(block)]->moe;
}

void VisionTransformerImpl::keep_experts(int64_t block, const std::vector<int64_t>& experts,
                                         bool drop_router_columns) {
  auto layer = moe_layer(block);
  TORCH_CHECK(layer->state().is_plain(), "VisionTransformer: block ", block,
              " is already pruned, merged or factorised");
  layer->keep_experts(experts, drop_router_columns || layer->router().always_drops_columns());
}

MoELayerStates VisionTransformerImpl::moe_layer_states() const {
  MoELayerStates states;
  for (const auto& [block, layer] : moe_layers()) {
    auto state = layer->state();
    if (!state.is_plain()) {
      states.emplace(block, std::move(state));
    }
  }
  return states;
}

void VisionTransformerImpl::restore_moe_layer_states(const MoELayerStates& states) {
  for (const auto& [block, state] : states) {
    TORCH_CHECK(block >= 0 && block < static_cast<int64_t>(blocks.size()) &&
                    blocks[static_cast<size_t>(block)]->is_moe(),
                "VisionTransformer: a MoE layer state names block ", block,
                ", which is not a MoE block");
    blocks[static_cast<size_t>(block)]->moe->restore(state);
  }
}

std::string VisionTransformerImpl::config_json() const {
  auto j = nlohmann::json::parse(options.to_json());
  const auto states = moe_layer_states();
  if (!states.empty()) {
    auto& out = j["moe_layer_states"] = nlohmann::json::object();
    for (const auto& [block, state] : states) {
      out[std::to_string(block)] = nlohmann::json::parse(state.to_json());
    }
  }
  return j.dump();
}

std::vector<std::pair<int64_t, MoELayer>> VisionTransformerImpl::moe_layers() const {
  std::vector<std::pair<int64_t, MoELayer>> layers;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i]->is_moe()) {
      layers.emplace_back(static_cast<int64_t>(i), blocks[i]->moe);
    }
  }
  return layers;
}

void VisionTransformerImpl::drop_mlp(int64_t block) {
  TORCH_CHECK(block >= 0 && block < static_cast<int64_t>(blocks.size()),
              "VisionTransformer: block ", block, " is outside the ", blocks.size(), " blocks");
  TORCH_CHECK(blocks[block]->has_mlp, "VisionTransformer: the MLP of block ", block,
              " is already dropped");
  blocks[block]->drop_mlp();
  auto dropped = options.dropped_mlp_blocks();
  dropped.insert(std::upper_bound(dropped.begin(), dropped.end(), block), block);
  options.dropped_mlp_blocks(dropped);
}

void VisionTransformerImpl::drop_block(int64_t block) {
  TORCH_CHECK(block >= 0 && block < static_cast<int64_t>(blocks.size()),
              "VisionTransformer: block ", block, " is outside the ", blocks.size(), " blocks");
  TORCH_CHECK(blocks[block]->has_attention || blocks[block]->has_mlp, "VisionTransformer: block ",
              block, " is already dropped");
  blocks[block]->drop_all();
  auto dropped = options.dropped_blocks();
  dropped.insert(std::upper_bound(dropped.begin(), dropped.end(), block), block);
  options.dropped_blocks(dropped);
}

void VisionTransformerImpl::set_routers_trainable(bool trainable) {
  for (auto& [block, layer] : moe_layers()) {
    layer->router().router_weight().set_requires_grad(trainable);
  }
}

}  // namespace moeprune

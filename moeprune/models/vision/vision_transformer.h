#pragma once

#include <moeprune/layers/moe_layer.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <string>
#include <vector>

namespace moeprune {

/// Blocks 1, 3, 5, ... of `depth` (V-MoE's "Every 2"; 0-based).
std::vector<int64_t> moe_blocks_every_2(int64_t depth);
/// The last n odd blocks (V-MoE's "Last n").
std::vector<int64_t> moe_blocks_last(int64_t depth, int64_t n);

/// Block index -> the compression state of that MoE block's layer (pruned, merged, factorised).
using MoELayerStates = std::map<int64_t, MoELayerState>;

struct VisionTransformerOptions {
  VisionTransformerOptions(int64_t image_size, int64_t channels, int64_t patch_size,
                           int64_t num_classes)
      : image_size_(image_size),
        channels_(channels),
        patch_size_(patch_size),
        num_classes_(num_classes) {}

  /// The V-MoE paper family (Riquelme et al. 2021): size 'S', 'B' or 'L' (hidden 512/768/1024,
  /// MLP 2048/3072/4096, depth 8/12/24, heads 8/12/16), patch 16 or 32, E experts, top-k,
  /// MoE in every second block (last_n = 0) or the last n odd blocks.
  static VisionTransformerOptions vmoe(char size, int64_t patch, int64_t experts, int64_t k,
                                       int64_t num_classes, int64_t image_size = 224,
                                       int64_t last_n = 0);
  /// A V-MoE that trains on 28x28 grey images (Fashion-MNIST) on a 2-core CPU in minutes:
  /// patch 4 (49 patches), d 64, depth 4, 4 heads, MLP 128, MoE in blocks 1 and 3 with 8
  /// experts, top-2.
  static VisionTransformerOptions small_vmoe(int64_t num_classes);
  /// small_vmoe with E3-MoE's ensemble router (2 members of 4 experts, top-1 each).
  static VisionTransformerOptions small_e3moe(int64_t num_classes);
  /// small_vmoe with expert-choice routing.
  static VisionTransformerOptions small_expert_choice(int64_t num_classes);
  /// The dense ViT of small_vmoe's size (MLP everywhere).
  static VisionTransformerOptions small_dense(int64_t num_classes);
  /// A preset by name: small_vmoe, small_e3moe, small_expert_choice, small_dense.
  static VisionTransformerOptions small(const std::string& name, int64_t num_classes);

  /// JSON text holding every option; from_json reads it back and names the field that is
  /// missing or wrong. The compression state of the MoE layers is not an option: see
  /// VisionTransformerImpl::config_json.
  std::string to_json() const;
  static VisionTransformerOptions from_json(const std::string& text);

  TORCH_ARG(int64_t, image_size);
  TORCH_ARG(int64_t, channels);
  TORCH_ARG(int64_t, patch_size);
  TORCH_ARG(int64_t, num_classes);
  TORCH_ARG(int64_t, d_model) = 64;
  TORCH_ARG(int64_t, depth) = 4;
  TORCH_ARG(int64_t, heads) = 4;
  TORCH_ARG(int64_t, mlp_dim) = 128;
  /// 0-based indices of the blocks whose MLP is a MoE layer; empty: a dense ViT.
  TORCH_ARG(std::vector<int64_t>, moe_blocks);
  /// MoE layer preset: "vmoe", "e3moe" or "expert_choice".
  TORCH_ARG(std::string, moe_preset) = "vmoe";
  TORCH_ARG(int64_t, num_experts) = 8;
  /// Experts per token (per member for e3moe); unused by expert choice.
  TORCH_ARG(int64_t, k) = 2;
  TORCH_ARG(double, capacity_factor) = 1.05;
  TORCH_ARG(bool, batch_priority) = false;
  /// Routing groups of this many images' tokens (V-MoE: 8); 0: the whole batch is one group.
  TORCH_ARG(int64_t, group_images) = 8;
  /// E3-MoE members; the input is replicated this many times before the first MoE block.
  TORCH_ARG(int64_t, ensemble_size) = 1;
  /// Layer Drop: blocks whose MLP / MoE sub-block is removed (the block keeps its attention).
  TORCH_ARG(std::vector<int64_t>, dropped_mlp_blocks);
  /// Block Drop: blocks removed whole (attention and MLP); they pass their input through.
  TORCH_ARG(std::vector<int64_t>, dropped_blocks);
};

/// A pre-LayerNorm transformer block: x + attn(LN(x)), then x + mlp(LN(x)) with a dense MLP or
/// a MoE layer.
class EncoderBlockImpl : public torch::nn::Cloneable<EncoderBlockImpl> {
 public:
  EncoderBlockImpl(int64_t d_model, int64_t heads, int64_t mlp_dim,
                   std::optional<MoELayerOptions> moe, bool has_attention = true,
                   bool has_mlp = true);
  void reset() override;
  /// Returns the block output; `aux` gets the MoE auxiliary loss and `plan` its routing,
  /// `moe_input` the MoE layer's input tokens and `mid` the residual stream between the
  /// attention and the MLP sub-blocks.
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor* aux = nullptr,
                        RoutingPlan* plan = nullptr, torch::Tensor* moe_input = nullptr,
                        torch::Tensor* mid = nullptr);
  bool is_moe() const { return !moe.is_empty(); }
  /// Removes the MLP / MoE sub-block (Layer Drop): the block becomes x + attn(LN(x)).
  void drop_mlp();
  /// Removes everything (Block Drop): the block passes its input through.
  void drop_all();

  int64_t d_model, heads, mlp_dim;
  std::optional<MoELayerOptions> moe_options;
  bool has_attention = true, has_mlp = true;
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  torch::nn::Linear qkv{nullptr}, proj{nullptr}, fc1{nullptr}, fc2{nullptr};
  MoELayer moe{nullptr};
};
TORCH_MODULE(EncoderBlock);

struct VisionTransformerOutput {
  /// [B, classes]: the logits; for an ensemble, log of the members' mean softmax.
  torch::Tensor logits;
  /// [B, M, classes] for an ensemble of M members (undefined otherwise).
  torch::Tensor member_logits;
  /// Sum of the MoE layers' weighted auxiliary losses (0 for a dense ViT).
  torch::Tensor aux_loss;
  /// The routing of each MoE block, in block order.
  std::vector<RoutingPlan> plans;
  /// With capture_block_states: the residual stream [B', N, d] entering each block, then the
  /// last block's output (depth + 1 entries; B' = B * members after E3-MoE's replication).
  std::vector<torch::Tensor> block_states;
  /// With capture_block_states: per block, the residual stream between attention and MLP (the
  /// MLP sub-block's input; its output is block_states[i + 1]).
  std::vector<torch::Tensor> mlp_states;
};

/// ViT (Dosovitskiy et al. 2021) with MoE blocks (V-MoE), E3-MoE ensembles, or dense.
class VisionTransformerImpl : public torch::nn::Cloneable<VisionTransformerImpl> {
 public:
  explicit VisionTransformerImpl(VisionTransformerOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// images [B, C, H, W] float.
  VisionTransformerOutput forward(const torch::Tensor& images);
  /// Cross-entropy for training; an ensemble trains each member on the label.
  torch::Tensor loss(const VisionTransformerOutput& output, const torch::Tensor& labels) const;

  /// A new classification head for another label set; the body is kept.
  void replace_head(int64_t num_classes);
  /// Changes the capacity factor of every token-choice and expert-choice MoE layer
  /// (V-MoE trains at 1.05 and fine-tunes/evaluates at 1.5).
  void set_capacity_factor(double capacity_factor);
  /// The MoE layers with their block indices.
  std::vector<std::pair<int64_t, MoELayer>> moe_layers() const;

  /// The MoE layer of block `block`; throws unless that block has one.
  MoELayer moe_layer(int64_t block) const;
  /// Prunes MoE block `block` to `experts` (MoELayer::keep_experts; expert-choice layers always
  /// drop the router rows).
  void keep_experts(int64_t block, const std::vector<int64_t>& experts,
                    bool drop_router_columns = false);
  /// The compression state of every MoE layer that has one (pruned, merged or factorised).
  MoELayerStates moe_layer_states() const;
  /// Rebuilds the shapes of `states` on this model's plain MoE layers (a checkpoint then fills
  /// the weights).
  void restore_moe_layer_states(const MoELayerStates& states);
  /// The model's configuration as JSON text: its options plus "moe_layer_states" for the MoE
  /// layers that have one. vision_transformer_from_config rebuilds the model's shapes from it.
  std::string config_json() const;
  /// Layer Drop: removes the MLP / MoE sub-block of `block` (recorded in dropped_mlp_blocks).
  void drop_mlp(int64_t block);
  /// Block Drop: removes block `block` whole (recorded in dropped_blocks).
  void drop_block(int64_t block);
  /// Freezes (false) or unfreezes the routers of every MoE layer (M-SMoE fine-tunes merged
  /// models with frozen routers).
  void set_routers_trainable(bool trainable);

  VisionTransformerOptions options;
  /// Fill VisionTransformerOutput::block_states and mlp_states (Layer and Block Drop scores).
  bool capture_block_states = false;
  torch::nn::Conv2d patch_embedding{nullptr};
  torch::Tensor class_token, position_embedding;
  std::vector<EncoderBlock> blocks;
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(VisionTransformer);

/// A model built from VisionTransformerImpl::config_json text, its MoE layers pruned, merged and
/// factorised as recorded (weights are fresh: load a checkpoint into it). Also reads the options
/// of checkpoints written before MoE layer states existed (their kept_experts,
/// drop_router_columns, merged_experts and expert_ranks fields).
VisionTransformer vision_transformer_from_config(const std::string& config_json);

}  // namespace moeprune

#pragma once

#include <moeprune/layers/expert_bank.h>
#include <moeprune/layers/expert_bank_state.h>
#include <moeprune/layers/expert_exchange.h>
#include <moeprune/layers/router_config.h>
#include <moeprune/routing/functional/aux_losses.h>
#include <moeprune/routing/functional/routing.h>
#include <moeprune/routing/group_limited_router.h>
#include <moeprune/routing/router.h>

#include <c10/util/Exception.h>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <variant>
#include <vector>

namespace moeprune {

struct MoELayerOptions {
  MoELayerOptions(int64_t d_model, int64_t hidden_dim, int64_t num_experts)
      : d_model_(d_model), hidden_dim_(hidden_dim), num_experts_(num_experts) {}

  /// The named presets, each a layer design from a paper or a neutral description: "vmoe",
  /// "e3moe", "expert_choice", "switch", "top_k_gated" (Mixtral's layer), "group_limited_softmax"
  /// (DeepSeek-V2's), "group_limited_sigmoid" (DeepSeek-V3's). Model families pick theirs in
  /// their records. Each one's defaults and sources are listed in docs/layers.md.
  static MoELayerOptions preset(const std::string& name, int64_t d_model, int64_t hidden_dim,
                                int64_t num_experts);
  /// The names preset() accepts.
  static std::vector<std::string> preset_names();

  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, hidden_dim);
  TORCH_ARG(int64_t, num_experts);
  /// The router and how it routes: one of the per-router configs (router_config.h).
  TORCH_ARG(RouterConfig, router) = TopKRouterConfig();
  TORCH_ARG(ExpertKind, expert_kind) = ExpertKind::kMlp;
  TORCH_ARG(ExpertActivation, activation) = ExpertActivation::kGelu;
  TORCH_ARG(bool, expert_bias) = true;
  /// Weights of the auxiliary losses in MoELayerOutput::aux_loss.
  TORCH_ARG(functional::AuxLossWeights, aux_loss_weights);
  /// Refuse NaN or inf: the router checks its logits (naming the input tokens, its weight or an
  /// fp32 overflow), the layer its experts' output (naming the expert and which of its
  /// parameters hold NaN or inf). Each check reads one flag back, so on CUDA it synchronises;
  /// false lets NaN propagate as torch's operators do.
  TORCH_ARG(bool, check_finite) = true;
  /// Nothing in the forward reads the device: the router lays out the fixed-size buffer
  /// (RoutingPlan::fixed_rows) and the experts run on the device-side offsets
  /// (ExpertBank::forward_offsets: grouped GEMMs where torch has them), so on CUDA the layer
  /// neither stalls the host nor breaks a CUDA graph capture. Needs check_finite(false) (its
  /// checks read flags back) and a router other than the ensemble (E3-MoE concatenates its
  /// members' plans by their sizes). The output is the same routing and the same function.
  TORCH_ARG(bool, sync_free) = false;

 public:
  /// The router's config, refused (naming both routers) when the layer has another router.
  template <class Config>
  Config& router_as() {
    auto* config = std::get_if<Config>(&router_);
    TORCH_CHECK(config != nullptr, "MoELayerOptions: the layer's router is ", router_name(router_),
                ", not ", router_name<Config>());
    return *config;
  }
  template <class Config>
  const Config& router_as() const {
    return const_cast<MoELayerOptions*>(this)->router_as<Config>();
  }
  /// The token-choice routing (k, capacity, renormalisation, routing groups) of a top-k,
  /// ensemble or group-limited router; refused for expert choice, which has none.
  functional::TopKRoutingOptions& routing();
  const functional::TopKRoutingOptions& routing() const;
};

/// The router module a layer with these options holds: the module (to register) and its Router
/// interface.
struct RouterHandle {
  std::shared_ptr<torch::nn::Module> module;
  Router* router = nullptr;
};
/// Builds the router `options.router()` configures, with the layer's sizes and switches.
RouterHandle make_router(const MoELayerOptions& options);

/// One forward call of a MoE layer as a capture scope records it (layers/moe_view.h): the tokens
/// [T, d] the layer routed (kept only when asked for) and the routing it computed.
struct MoELayerCall {
  torch::Tensor input;
  RoutingPlan plan;
};

struct MoELayerOutput {
  torch::Tensor output;    ///< same shape as the input; zero for tokens whose slots all dropped
  torch::Tensor aux_loss;  ///< the weighted sum of `losses` (add it to the training loss)
  functional::AuxLosses losses;
  RoutingPlan plan;
};

/// A Mixture-of-Experts layer: router + expert bank + dispatch/combine. Takes tokens [..., d]
/// (a [B, S, d] input makes each of the B items one `item` for E3-MoE members and per-sequence
/// groups). The output has no residual: the block around the layer adds it.
class MoELayerImpl : public torch::nn::Cloneable<MoELayerImpl> {
 public:
  explicit MoELayerImpl(MoELayerOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  MoELayerOutput forward(const torch::Tensor& input);
  /// The routing forward() would compute for `tokens` [T, d] (each token its own item), through
  /// the map from router experts to the experts the bank holds.
  RouterOutput route(const torch::Tensor& tokens);

  /// Keeps only `experts` (original ids) in the bank, freeing the others.
  /// drop_router_columns = false (Chowdhury et al. 2024's semantics for token choice): the router
  /// keeps its E columns, softmax and top-k run over all E, capacity is unchanged, and slots
  /// routed to removed experts output zero. true (Expert Drop of He et al. 2024, and the paper's
  /// expert-choice semantics): the removed experts' router columns go too; token choice then
  /// renormalises its top-k weights over the survivors and capacity follows the new E.
  void keep_experts(const std::vector<int64_t>& experts, bool drop_router_columns = false);

  /// Merges experts (M-SMoE): bank expert g serves every original id in groups[g]; the router
  /// keeps its E columns and a slot routed to any member goes to the group's expert (two slots
  /// of one token in one group each get that expert's output with their own gate). The bank's
  /// parameters shrink to one expert per group (compression/merging.h writes merged weights).
  void merge_experts(const std::vector<std::vector<int64_t>>& groups);
  /// Changes the capacity factor of the router (token choice, ensemble and expert choice).
  void set_capacity_factor(double capacity_factor);

  /// Changes the routing group size in tokens (0: one group).
  void set_group_size(int64_t group_size);

  /// What pruning, merging and factorising did to this layer. For a layer spread over processes
  /// (set_expert_exchange), the whole layer's: the experts of all processes.
  MoELayerState state() const;
  /// Rebuilds the shapes `state` describes on a plain layer (a checkpoint then fills the
  /// weights).
  void restore(const MoELayerState& state);

  /// While `sink` is set, every forward call appends its routing (and its input tokens, when
  /// `with_inputs`) to it. Set and cleared by a capture scope (MoECapture), not by hand.
  void set_capture(std::vector<MoELayerCall>* sink, bool with_inputs);

  /// Serves the experts through `exchange` (expert parallelism: distributed::shard_experts sets
  /// it after reducing the bank to this process's experts); nullptr: the bank serves them all.
  /// Not with sync_free (the exchange reads the row counts).
  void set_expert_exchange(std::shared_ptr<ExpertExchange> exchange);
  const std::shared_ptr<ExpertExchange>& expert_exchange() const { return exchange_; }

  Router& router() { return *router_; }
  const Router& router() const { return *router_; }
  ExpertBank& experts() { return experts_; }
  const ExpertBank& experts() const { return experts_; }

  MoELayerOptions options;

 private:
  std::shared_ptr<torch::nn::Module> router_module_;
  Router* router_ = nullptr;
  ExpertBank experts_{nullptr};
  RouterOutput route_items(const torch::Tensor& tokens, int64_t item_size);
  // state() of this process's bank (what a clone of a spread layer rebuilds).
  MoELayerState local_state() const;
  // Refuses NaN or inf in the experts' output, naming the expert and its bad parameters.
  void check_finite_experts(const torch::Tensor& expert_out,
                            const std::vector<int64_t>& counts) const;

  std::vector<MoELayerCall>* capture_ = nullptr;
  bool capture_inputs_ = false;
  std::shared_ptr<ExpertExchange> exchange_;
};
TORCH_MODULE(MoELayer);

}  // namespace moeprune

#include "test_helpers.h"

#include <moeprune/layers/moe_layer.h>
#include <moeprune/routing/ensemble_router.h>
#include <moeprune/routing/expert_choice_router.h>
#include <moeprune/routing/group_limited_router.h>
#include <moeprune/routing/top_k_router.h>

#include <map>
#include <string>

using moeprune::EnsembleRouterConfig;
using moeprune::ExpertChoiceRouterConfig;
using moeprune::GroupLimitedRouterConfig;
using moeprune::MoELayer;
using moeprune::MoELayerOptions;
using moeprune::TopKRouterConfig;
using moeprune::functional::CapacityMode;

namespace {

template <class Impl>
Impl& router_module(MoELayer& layer) {
  auto* router = dynamic_cast<Impl*>(&layer->router());
  REQUIRE(router != nullptr);
  return *router;
}

}  // namespace

// The values are the papers' and transformers' (docs/layers.md, "Presets").
TEST_CASE("each preset builds the router its config names, with the config's values") {
  MoELayer vmoe(MoELayerOptions::preset("vmoe", 8, 16, 4));
  const auto& top_k = router_module<moeprune::TopKRouterImpl>(vmoe).options;
  CHECK(top_k.routing().k() == 2);
  CHECK(top_k.routing().capacity_mode() == CapacityMode::kFactor);
  CHECK(top_k.routing().capacity_factor() == 1.05);
  CHECK(top_k.noise_std() == 1.0);
  CHECK(top_k.jitter() == 0.0);
  CHECK(top_k.d_model() == 8);
  CHECK(top_k.num_experts() == 4);

  MoELayer switch_layer(MoELayerOptions::preset("switch", 8, 16, 4));
  const auto& sw = router_module<moeprune::TopKRouterImpl>(switch_layer).options;
  CHECK(sw.routing().k() == 1);
  CHECK(sw.routing().capacity_mode() == CapacityMode::kFixed);
  CHECK(sw.routing().expert_capacity() == 64);
  CHECK(sw.jitter() == 0.01);
  CHECK(sw.group_per_item());

  MoELayer e3moe(MoELayerOptions::preset("e3moe", 8, 16, 4));
  const auto& ensemble = router_module<moeprune::EnsembleRouterImpl>(e3moe).options;
  CHECK(ensemble.ensemble_size() == 2);
  CHECK(ensemble.routing().k() == 1);
  CHECK(ensemble.noise_std() == 1.0);

  MoELayer ec(MoELayerOptions::preset("expert_choice", 8, 16, 4));
  const auto& expert_choice = router_module<moeprune::ExpertChoiceRouterImpl>(ec).options;
  CHECK(expert_choice.capacity_factor() == 2.0);
  CHECK(expert_choice.capacity_multiple() == 4);
  CHECK(expert_choice.group_size() == 0);

  MoELayer v3(MoELayerOptions::preset("group_limited_sigmoid", 8, 16, 4).check_finite(false));
  const auto& group_limited = router_module<moeprune::GroupLimitedRouterImpl>(v3).options;
  CHECK(group_limited.groups().score_function() == moeprune::ScoreFunction::kSigmoid);
  CHECK(group_limited.groups().correction_bias());
  CHECK(group_limited.routing().renormalize());
  CHECK_FALSE(group_limited.check_finite());
  MoELayer v2(MoELayerOptions::preset("group_limited_softmax", 8, 16, 4));
  CHECK(router_module<moeprune::GroupLimitedRouterImpl>(v2).options.groups().group_score() ==
        moeprune::GroupScore::kMax);
}

TEST_CASE("a layer's router config is one router's: asking for another names both") {
  auto options = MoELayerOptions::preset("expert_choice", 8, 16, 4);
  REQUIRE_THROWS_WITH(options.router_as<TopKRouterConfig>(),
                      Catch::Contains("router is expert choice, not top-k"));
  REQUIRE_THROWS_WITH(options.routing(),
                      Catch::Contains("expert choice router has no token-choice"));
  options.router_as<ExpertChoiceRouterConfig>().capacity_factor(1.0);
  MoELayer layer(options);
  CHECK(router_module<moeprune::ExpertChoiceRouterImpl>(layer).options.capacity_factor() == 1.0);

  auto e3moe = MoELayerOptions::preset("e3moe", 8, 16, 4);
  e3moe.routing().k(2);  // an ensemble routes token choice within each member
  CHECK(e3moe.router_as<EnsembleRouterConfig>().routing().k() == 2);
  REQUIRE_THROWS_WITH(e3moe.router_as<GroupLimitedRouterConfig>(),
                      Catch::Contains("router is ensemble, not group-limited"));
}

TEST_CASE("capacity and group size reach the router a layer has, and survive a clone") {
  MoELayer ec(MoELayerOptions::preset("expert_choice", 8, 16, 4));
  ec->set_capacity_factor(1.5);
  ec->set_group_size(6);
  CHECK(ec->options.router_as<ExpertChoiceRouterConfig>().capacity_factor() == 1.5);
  MoELayer ec_clone(std::dynamic_pointer_cast<moeprune::MoELayerImpl>(ec->clone()));
  const auto& cloned = router_module<moeprune::ExpertChoiceRouterImpl>(ec_clone).options;
  CHECK(cloned.capacity_factor() == 1.5);
  CHECK(cloned.group_size() == 6);

  MoELayer vmoe(MoELayerOptions::preset("vmoe", 8, 16, 4));
  vmoe->set_capacity_factor(1.5);
  MoELayer vmoe_clone(std::dynamic_pointer_cast<moeprune::MoELayerImpl>(vmoe->clone()));
  CHECK(router_module<moeprune::TopKRouterImpl>(vmoe_clone).options.routing().capacity_factor() ==
        1.5);
  REQUIRE_THROWS_WITH(vmoe->set_capacity_factor(0.0), Catch::Contains("should be > 0"));
}

TEST_CASE("training noise: which presets add it, and removing it") {
  const std::map<std::string, bool> noisy = {{"vmoe", true},
                                             {"e3moe", true},
                                             {"switch", true},  // input jitter
                                             {"expert_choice", false},
                                             {"top_k_gated", false},
                                             {"group_limited_softmax", false},
                                             {"group_limited_sigmoid", false}};
  for (const auto& [name, adds] : noisy) {
    INFO(name);
    auto options = MoELayerOptions::preset(name, 8, 16, 4);
    CHECK(moeprune::adds_training_noise(options.router()) == adds);
    moeprune::remove_training_noise(options.router());
    CHECK_FALSE(moeprune::adds_training_noise(options.router()));
  }
  auto ec = MoELayerOptions::preset("expert_choice", 8, 16, 4);
  ec.router_as<ExpertChoiceRouterConfig>().noise_std(1.0);
  CHECK(moeprune::adds_training_noise(ec.router()));

  // Without noise, two training forwards route alike (what gradient checkpointing relies on).
  auto options = MoELayerOptions::preset("switch", 8, 16, 4);
  moeprune::remove_training_noise(options.router());
  MoELayer layer(options);
  layer->train();
  const auto x = torch::randn({2, 5, 8});
  CHECK(torch::equal(layer->forward(x).output, layer->forward(x).output));
}

TEST_CASE("sync_free refuses the ensemble router by name") {
  auto options = MoELayerOptions::preset("e3moe", 8, 16, 4).check_finite(false).sync_free(true);
  REQUIRE_THROWS_WITH(MoELayer(options), Catch::Contains("not available with the ensemble router"));
}

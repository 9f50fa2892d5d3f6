#include <moeprune/layers/router_config.h>

#include <c10/util/Exception.h>

#include <type_traits>

namespace moeprune {

namespace {

template <class Config, class Other>
constexpr bool is_config = std::is_same_v<std::decay_t<Other>, Config>;

}  // namespace

std::string router_name(const RouterConfig& config) {
  return std::visit(
      [](const auto& c) -> std::string {
        using C = decltype(c);
        if constexpr (is_config<TopKRouterConfig, C>) {
          return "top-k";
        } else if constexpr (is_config<ExpertChoiceRouterConfig, C>) {
          return "expert choice";
        } else if constexpr (is_config<EnsembleRouterConfig, C>) {
          return "ensemble";
        } else {
          static_assert(is_config<GroupLimitedRouterConfig, C>, "a router config without a name");
          return "group-limited";
        }
      },
      config);
}

functional::TopKRoutingOptions* token_routing(RouterConfig& config) {
  return std::visit(
      [](auto& c) -> functional::TopKRoutingOptions* {
        if constexpr (is_config<ExpertChoiceRouterConfig, decltype(c)>) {
          return nullptr;
        } else {
          return &c.routing();
        }
      },
      config);
}

const functional::TopKRoutingOptions* token_routing(const RouterConfig& config) {
  return token_routing(const_cast<RouterConfig&>(config));  // reads only
}

bool adds_training_noise(const RouterConfig& config) {
  return std::visit(
      [](const auto& c) {
        using C = decltype(c);
        if constexpr (is_config<TopKRouterConfig, C>) {
          return c.noise_std() > 0.0 || c.jitter() > 0.0;
        } else if constexpr (is_config<GroupLimitedRouterConfig, C>) {
          return false;
        } else {
          return c.noise_std() > 0.0;
        }
      },
      config);
}

void remove_training_noise(RouterConfig& config) {
  std::visit(
      [](auto& c) {
        using C = decltype(c);
        if constexpr (is_config<TopKRouterConfig, C>) {
          c.noise_std(0.0).jitter(0.0);
        } else if constexpr (!is_config<GroupLimitedRouterConfig, C>) {
          c.noise_std(0.0);
        }
      },
      config);
}

void set_capacity_factor(RouterConfig& config, double capacity_factor) {
  TORCH_CHECK(capacity_factor > 0.0, "capacity_factor should be > 0, got ", capacity_factor);
  if (auto* ec = std::get_if<ExpertChoiceRouterConfig>(&config)) {
    ec->capacity_factor(capacity_factor);
  } else {
    token_routing(config)->capacity_factor(capacity_factor);
  }
}

void set_group_size(RouterConfig& config, int64_t group_size) {
  TORCH_CHECK(group_size >= 0, "group_size should be >= 0, got ", group_size);
  if (auto* ec = std::get_if<ExpertChoiceRouterConfig>(&config)) {
    ec->group_size(group_size);
  } else {
    token_routing(config)->group_size(group_size);
  }
}

}  // namespace moeprune

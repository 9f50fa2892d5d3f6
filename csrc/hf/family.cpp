#include "hf/family.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <memory>

namespace moeprune::hf {

// The families, each in its own file under families/.
std::unique_ptr<Family> make_mixtral_family();
std::unique_ptr<Family> make_switch_transformers_family();

namespace {

const std::vector<std::unique_ptr<Family>>& families() {
  static const auto all = [] {
    std::vector<std::unique_ptr<Family>> f;
    f.push_back(make_mixtral_family());
    f.push_back(make_switch_transformers_family());
    return f;
  }();
  return all;
}

}  // namespace

const Family& family_of(const std::string& model_type, const std::string& config_path) {
  std::vector<std::string> known;
  for (const auto& family : families()) {
    for (const auto& type : family->model_types()) {
      if (type == model_type) {
        return *family;
      }
      known.push_back(type);
    }
  }
  TORCH_CHECK(false, config_path.empty() ? std::string() : config_path + ": ", "model_type \"",
              model_type, "\" is not supported (", c10::Join(", ", known), ")");
}

namespace detail {

void expect_shape(const safetensors::Checkpoint& checkpoint, const std::string& name,
                  const std::vector<int64_t>& shape, const std::string& config_path) {
  TORCH_CHECK(checkpoint.contains(name), checkpoint.directory(), ": tensor '", name,
              "' is missing");
  const auto& found = checkpoint.info(name).shape;
  TORCH_CHECK(found == shape, checkpoint.directory(), ": tensor '", name, "' has shape [",
              c10::Join(", ", found), "], ", config_path.empty() ? "config.json" : config_path,
              " implies [", c10::Join(", ", shape), "]");
}

ExpertActivation activation_of(const std::string& name, const std::string& config_path) {
  if (name == "silu" || name == "swish") {
    return ExpertActivation::kSilu;
  }
  if (name == "relu") {
    return ExpertActivation::kRelu;
  }
  if (name == "gelu") {
    return ExpertActivation::kGelu;
  }
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") {
    return ExpertActivation::kGeluTanh;
  }
  TORCH_CHECK(false, config_path, ": activation \"", name,
              "\" is not supported (silu, relu, gelu, gelu_new)");
}

}  // namespace detail
}  // namespace moeprune::hf

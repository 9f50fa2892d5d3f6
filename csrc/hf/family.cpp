#include "hf/family.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>
#include <torch/torch.h>

namespace moeprune::hf {

const Family& family_of(const std::string& model_type, const std::string& config_path) {
  std::vector<std::string> known;
  for (const auto* family : families()) {
    if (family->model_type() == model_type) {
      return *family;
    }
    known.push_back(family->model_type());
  }
  TORCH_CHECK(false, config_path.empty() ? std::string() : config_path + ": ", "model_type \"",
              model_type, "\" is not supported (", c10::Join(", ", known), ")");
}

std::vector<FamilyInfo> supported_families() {
  std::vector<FamilyInfo> out;
  for (const auto* family : families()) {
    out.push_back({family->model_type(), family->summary()});
  }
  return out;
}

namespace detail {

std::vector<std::string> fused_gated_experts(const MoELayerRef& ref) {
  return {ref.prefix + ".experts.gate_up_proj", ref.prefix + ".experts.down_proj"};
}

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

void expect_gated_experts(const safetensors::Checkpoint& checkpoint, const MoELayerRef& ref,
                          int64_t d_model, int64_t hidden_dim, const Family& family,
                          const std::string& config_path) {
  const int64_t E = ref.num_experts, d = d_model, F = hidden_dim;
  if (ref.fused) {
    const auto names = family.expert_tensors(ref, 0);
    expect_shape(checkpoint, names[0], {E, 2 * F, d}, config_path);
    expect_shape(checkpoint, names[1], {E, d, F}, config_path);
    return;
  }
  for (int64_t j = 0; j < E; ++j) {
    const auto names = family.expert_tensors(ref, j);
    expect_shape(checkpoint, names[0], {F, d}, config_path);
    expect_shape(checkpoint, names[1], {d, F}, config_path);
    expect_shape(checkpoint, names[2], {F, d}, config_path);
  }
}

void load_gated_experts(const safetensors::Checkpoint& checkpoint, const MoELayerRef& ref,
                        int64_t hidden_dim, ExpertBank& bank, const Family& family) {
  torch::NoGradGuard no_grad;
  const auto dtype = bank->w1.scalar_type();
  if (ref.fused) {
    const auto names = family.expert_tensors(ref, 0);
    const auto gate_up = checkpoint.tensor(names[0]);  // [E, 2F, d], gate first
    const auto down = checkpoint.tensor(names[1]);     // [E, d, F]
    const int64_t F = hidden_dim;
    bank->w1.copy_(gate_up.narrow(1, 0, F).transpose(1, 2).to(dtype));
    bank->w3.copy_(gate_up.narrow(1, F, F).transpose(1, 2).to(dtype));
    bank->w2.copy_(down.transpose(1, 2).to(dtype));
    return;
  }
  for (int64_t j = 0; j < ref.num_experts; ++j) {
    const auto names = family.expert_tensors(ref, j);
    // HF stores nn.Linear weights [out, in]; the bank multiplies x [*, in] by [in, out].
    bank->w1[j].copy_(checkpoint.tensor(names[0]).t());
    bank->w2[j].copy_(checkpoint.tensor(names[1]).t());
    bank->w3[j].copy_(checkpoint.tensor(names[2]).t());
  }
}

}  // namespace detail
}  // namespace moeprune::hf

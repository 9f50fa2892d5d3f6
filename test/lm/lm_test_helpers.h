#pragma once

// What the language-model tests share: the transformers fixtures of scripts/make_lm_fixtures.py,
// logits in evaluation mode, and edited copies of a fixture.
#include "../scratch_dir.h"

#include <moeprune/io/safetensors.h>
#include <moeprune/models/lm/causal_lm.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <fstream>
#include <functional>
#include <map>
#include <string>

namespace lm_test {

inline const std::string kFixtures = MOEPRUNE_TEST_FIXTURES "/lm";

/// Every family's fixture (the DeepSeek-V2 one twice: group-limited and greedy routing).
inline const char* const kFamilies[] = {
    "mixtral",     "qwen2_moe",          "qwen3_moe",   "olmoe",   "deepseek",
    "deepseek_v2", "deepseek_v2_greedy", "deepseek_v3", "glm4_moe"};

/// What transformers computed on fixture `family`: input ids, logits, per-token NLL, ...
inline std::map<std::string, torch::Tensor> reference(const std::string& family) {
  return moeprune::safetensors::load_file(kFixtures + "/" + family + "_reference.safetensors");
}

/// The token ids transformers' reference logits of fixture `family` were computed on.
inline torch::Tensor input_ids(const std::string& family) {
  return reference(family).at("input_ids");
}

inline torch::Tensor logits_of(moeprune::lm::CausalLM& model, const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  model->eval();
  return model->forward(ids).logits;
}

inline double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

/// A copy of fixture `family` in the scratch folder with config.json edited by `edit` and the
/// tensors filtered/added by `tensors`.
inline std::string edited_copy(
    const std::string& family, const std::string& name,
    const std::function<void(nlohmann::json&)>& edit,
    const std::function<void(std::map<std::string, torch::Tensor>&)>& tensors = {}) {
  const auto dir = test::scratch_dir() + "/" + name;
  REQUIRE(::mkdir(dir.c_str(), 0755) == 0);
  auto config = read_json(kFixtures + "/" + family + "/config.json");
  edit(config);
  std::ofstream(dir + "/config.json") << config.dump(2);
  auto t = moeprune::safetensors::load_file(kFixtures + "/" + family + "/model.safetensors");
  if (tensors) {
    tensors(t);
  }
  moeprune::safetensors::save_file(dir + "/model.safetensors", t);
  return dir;
}

}  // namespace lm_test

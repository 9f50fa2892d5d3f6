// The one list of model families. A new family is a record file in this folder and one line
// here; the lists are built on first use (no static registration, which a static link drops).
#include "models/lm/families/family.h"

#include <c10/util/Exception.h>

#include <memory>

namespace moeprune {
namespace hf {
std::unique_ptr<Family> make_switch_transformers_family();
}  // namespace hf

namespace lm {

std::unique_ptr<Family> make_mixtral();
std::unique_ptr<Family> make_qwen2_moe();
std::unique_ptr<Family> make_qwen3_moe();
std::unique_ptr<Family> make_olmoe();
std::unique_ptr<Family> make_deepseek();
std::unique_ptr<Family> make_deepseek_v2();
std::unique_ptr<Family> make_deepseek_v3();
std::unique_ptr<Family> make_glm4_moe();

namespace {

struct Registry {
  std::vector<std::unique_ptr<Family>> records;
  std::unique_ptr<hf::Family> switch_transformers;
  std::vector<const Family*> causal_lm;
  std::vector<const hf::Family*> checkpoints;
};

Registry& registry() {
  static Registry r = [] {
    Registry built;
    for (auto make : {make_mixtral, make_qwen2_moe, make_qwen3_moe, make_olmoe, make_deepseek,
                      make_deepseek_v2, make_deepseek_v3, make_glm4_moe}) {
      built.records.push_back(make());
    }
    // Switch Transformers is an encoder-decoder (models/seq2seq): a checkpoint half only.
    built.switch_transformers = hf::make_switch_transformers_family();
    for (const auto& record : built.records) {
      built.causal_lm.push_back(record.get());
      built.checkpoints.push_back(record.get());
    }
    built.checkpoints.push_back(built.switch_transformers.get());
    return built;
  }();
  return r;
}

}  // namespace

const std::vector<const Family*>& families() {
  return registry().causal_lm;
}

void add_family(std::unique_ptr<Family> record) {
  TORCH_CHECK(record != nullptr, "add_family: no record");
  const auto type = record->model_type();
  for (const auto* known : hf::families()) {
    TORCH_CHECK(known->model_type() != type, "add_family: model_type \"", type,
                "\" is already registered");
  }
  auto& r = registry();
  r.causal_lm.push_back(record.get());
  r.checkpoints.push_back(record.get());
  r.records.push_back(std::move(record));
}

}  // namespace lm

const std::vector<const hf::Family*>& hf::families() {
  return lm::registry().checkpoints;
}

}  // namespace moeprune

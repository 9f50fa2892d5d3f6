#pragma once

// tokenizer.json post-processors (internal): TemplateProcessing (single sequences), ByteLevel
// (offsets only, so nothing to do for ids) and Sequence of these. Applied when encode is asked
// to add special tokens.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moeprune::text::detail {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int64_t>& ids) const = 0;
};

/// The post-processor a tokenizer.json "post_processor" object describes; null for JSON null.
/// Refuses an unsupported type by name.
std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& spec,
                                                   const std::string& what);

}  // namespace moeprune::text::detail

#include "post_processors.h"

#include <c10/util/Exception.h>

#include "json_fields.h"

namespace moeprune::text::detail {
namespace {

class NoIds : public PostProcessor {
 public:
  void process(std::vector<int64_t>&) const override {}
};

// The "single" template: special tokens' ids around sequence A (processors/template.rs).
class Template : public PostProcessor {
 public:
  Template(const nlohmann::json& spec, const std::string& what) {
    const auto& single = field(spec, "single", what);
    TORCH_CHECK(single.is_array(), what, ": \"single\" is not a list");
    const auto& specials =
        spec.contains("special_tokens") ? spec.at("special_tokens") : nlohmann::json::object();
    bool seen_sequence = false;
    for (const auto& item : single) {
      if (item.contains("Sequence")) {
        const std::string id = string_field(item.at("Sequence"), "id", what);
        TORCH_CHECK(id == "A", what, ": the single template uses sequence \"", id,
                    "\"; only A is given when encoding one text");
        seen_sequence = true;
        continue;
      }
      const std::string name = string_field(field(item, "SpecialToken", what), "id", what);
      TORCH_CHECK(specials.contains(name), what, ": special token \"", name,
                  "\" of the template is not in \"special_tokens\"");
      const auto& ids = field(specials.at(name), "ids", what);
      TORCH_CHECK(ids.is_array(), what, ": \"ids\" of \"", name, "\" is not a list");
      for (const auto& id : ids) {
        TORCH_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0, what, ": \"ids\" of \"", name,
                    "\" holds ", id.dump());
        (seen_sequence ? after_ : before_).push_back(id.get<int64_t>());
      }
    }
    TORCH_CHECK(seen_sequence, what, ": the single template has no sequence A");
  }
  void process(std::vector<int64_t>& ids) const override {
    ids.insert(ids.begin(), before_.begin(), before_.end());
    ids.insert(ids.end(), after_.begin(), after_.end());
  }

 private:
  std::vector<int64_t> before_, after_;
};

class Sequence : public PostProcessor {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PostProcessor>> parts) : parts_(std::move(parts)) {}
  void process(std::vector<int64_t>& ids) const override {
    for (const auto& part : parts_) part->process(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& spec,
                                                   const std::string& what) {
  if (spec.is_null()) return nullptr;
  const std::string kind = type_of(spec, what + " post_processor");
  const std::string here = what + " post_processor " + kind;
  if (kind == "TemplateProcessing") return std::make_unique<Template>(spec, here);
  if (kind == "ByteLevel") return std::make_unique<NoIds>();
  if (kind == "Sequence") {
    const auto& list = field(spec, "processors", here);
    TORCH_CHECK(list.is_array(), here, ": \"processors\" is not a list");
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (const auto& part : list) {
      auto made = make_post_processor(part, what);
      if (made) parts.push_back(std::move(made));
    }
    return std::make_unique<Sequence>(std::move(parts));
  }
  TORCH_CHECK(false, what, ": post_processor \"", kind,
              "\" is not supported (supported: TemplateProcessing, ByteLevel, Sequence)");
}

}  // namespace moeprune::text::detail

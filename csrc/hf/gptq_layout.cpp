#include "hf/gptq_layout.h"

#include <vector>

namespace moeprune::hf::detail {
namespace {

// Unsigned b-bit fields of int32 words `packed` along `dim`: [words * 32 / b] along it.
torch::Tensor unpack_unsigned(const torch::Tensor& packed, int64_t bits, int64_t dim) {
  const int64_t per_word = 32 / bits;
  // int32 shifts are arithmetic, but the mask keeps only the field's own bits.
  const auto& words = packed;
  const auto shifts = torch::arange(0, 32, bits, torch::kInt);
  auto fields = words.unsqueeze(dim + 1)
                    .bitwise_right_shift(dim == 0 ? shifts.view({1, per_word, 1})
                                                  : shifts.view({1, 1, per_word}))
                    .bitwise_and((int64_t{1} << bits) - 1);
  // [a, per_word, b] -> [a * per_word, b], or [a, b, per_word] -> [a, b * per_word].
  return dim == 0 ? fields.reshape({packed.size(0) * per_word, packed.size(1)})
                  : fields.reshape({packed.size(0), packed.size(1) * per_word});
}

}  // namespace

std::optional<GPTQLayout> gptq_layout(const Config& config) {
  if (!config.is_set("quantization_config")) return std::nullopt;
  const auto& q = config.json().at("quantization_config");
  if (!q.is_object() || q.value("quant_method", std::string()) != "gptq") return std::nullopt;
  const auto where = config.path() + ": quantization_config.";
  GPTQLayout layout;
  TORCH_CHECK(q.contains("bits") && q["bits"].is_number_integer(), where,
              "bits should be an integer");
  layout.bits = q["bits"].get<int64_t>();
  TORCH_CHECK(layout.bits == 2 || layout.bits == 4 || layout.bits == 8, where, "bits is ",
              layout.bits,
              "; moeprune reads the GPTQ layout at 2, 4 or 8 bits (3 packs across "
              "words)");
  const auto group = q.contains("group_size") && q["group_size"].is_number_integer()
                         ? q["group_size"].get<int64_t>()
                         : int64_t{128};
  TORCH_CHECK(group == -1 || group >= 1, where, "group_size is ", group);
  layout.group_size = group == -1 ? 0 : group;
  const auto format = q.contains("checkpoint_format") && q["checkpoint_format"].is_string()
                          ? q["checkpoint_format"].get<std::string>()
                          : std::string("gptq");
  TORCH_CHECK(format == "gptq" || format == "gptq_v2", where, "checkpoint_format is \"", format,
              "\"; moeprune reads gptq and gptq_v2");
  layout.zero_offset = format == "gptq" ? 1 : 0;
  // GPTQModel's per-module overrides and other word types would change the shapes read here.
  TORCH_CHECK(!q.contains("dynamic") || q["dynamic"].is_null() || q["dynamic"].empty(), where,
              "dynamic (per-module bits or group sizes) is set; moeprune reads one scheme for "
              "every module");
  const auto pack = q.contains("pack_dtype") && q["pack_dtype"].is_string()
                        ? q["pack_dtype"].get<std::string>()
                        : std::string("int32");
  TORCH_CHECK(pack == "int32" || pack == "torch.int32", where, "pack_dtype is \"", pack,
              "\"; moeprune reads int32 words");
  return layout;
}

torch::Tensor dequantize_gptq(const torch::Tensor& qweight, const torch::Tensor& qzeros,
                              const torch::Tensor& scales, const torch::Tensor& g_idx,
                              const GPTQLayout& layout, const std::string& name) {
  const int64_t per_word = 32 / layout.bits;
  TORCH_CHECK(qweight.dim() == 2 && qweight.scalar_type() == torch::kInt, name,
              ".qweight should be int32 [in * bits / 32, out], got ", qweight.scalar_type(), " ",
              qweight.sizes());
  const int64_t in = qweight.size(0) * per_word, out = qweight.size(1);
  TORCH_CHECK(scales.dim() == 2 && scales.size(1) == out && scales.size(0) >= 1 &&
                  scales.is_floating_point(),
              name, ".scales should be floating [groups, ", out, "], got ", scales.scalar_type(),
              " ", scales.sizes());
  const int64_t groups = scales.size(0);
  TORCH_CHECK(qzeros.dim() == 2 && qzeros.scalar_type() == torch::kInt &&
                  qzeros.size(0) == groups && qzeros.size(1) * per_word == out,
              name, ".qzeros should be int32 [", groups, ", ", out / per_word, "], got ",
              qzeros.scalar_type(), " ", qzeros.sizes());
  torch::Tensor g;
  if (g_idx.defined()) {
    g = g_idx.to(torch::kLong).flatten();
    TORCH_CHECK(g.size(0) == in && g.min().item<int64_t>() >= 0 && g.max().item<int64_t>() < groups,
                name, ".g_idx should give each of the ", in, " inputs a group below ", groups);
  } else {
    const int64_t size = layout.group_size == 0 ? in : layout.group_size;
    TORCH_CHECK((in + size - 1) / size == groups, name, ": ", groups, " groups of scales for ", in,
                " inputs in groups of ", size);
    g = torch::arange(in, torch::kLong).div(size, "floor");
  }
  const auto codes = unpack_unsigned(qweight, layout.bits, 0).to(torch::kFloat);  // [in, out]
  const auto zeros = (unpack_unsigned(qzeros, layout.bits, 1) + layout.zero_offset)
                         .to(torch::kFloat);  // [groups, out]
  const auto s = scales.to(torch::kFloat).index_select(0, g);
  return (s * (codes - zeros.index_select(0, g))).t().contiguous().to(scales.scalar_type());
}

int64_t add_gptq_weights(const Config& config, safetensors::Checkpoint& checkpoint) {
  const auto layout = gptq_layout(config);
  if (!layout) return 0;
  int64_t added = 0;
  for (const auto& name : checkpoint.names()) {
    const std::string suffix = ".qweight";
    if (name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    const auto module = name.substr(0, name.size() - suffix.size());
    std::vector<std::string> parts = {name, module + ".qzeros", module + ".scales"};
    for (const auto& part : parts) {
      TORCH_CHECK(checkpoint.contains(part), checkpoint.directory(), ": GPTQ-layout ", module,
                  ".weight needs ", part, ", which is missing");
    }
    TORCH_CHECK(!checkpoint.contains(module + ".weight"), checkpoint.directory(), ": ", module,
                " holds both .weight and .qweight");
    const bool has_g_idx = checkpoint.contains(module + ".g_idx");
    if (has_g_idx) parts.push_back(module + ".g_idx");
    const auto& qi = checkpoint.info(name);
    const auto& si = checkpoint.info(module + ".scales");
    TORCH_CHECK(qi.shape.size() == 2 && si.shape.size() == 2 && si.shape[1] == qi.shape[1],
                checkpoint.directory(), ": ", module, ".qweight ", c10::IntArrayRef(qi.shape),
                " and .scales ", c10::IntArrayRef(si.shape), " disagree on the outputs");
    safetensors::Checkpoint::Decoded d;
    d.info.name = module + ".weight";
    d.info.dtype = si.dtype;
    d.info.scalar_type = si.scalar_type;
    d.info.shape = {qi.shape[1], qi.shape[0] * (32 / layout->bits)};
    d.parts = parts;
    const auto l = *layout;
    d.decode = [module, l, has_g_idx](const safetensors::Checkpoint& c) {
      return dequantize_gptq(
          c.stored_tensor(module + ".qweight"), c.stored_tensor(module + ".qzeros"),
          c.stored_tensor(module + ".scales"),
          has_g_idx ? c.stored_tensor(module + ".g_idx") : torch::Tensor(), l, module);
    };
    checkpoint.add_decoded(std::move(d));
    ++added;
  }
  return added;
}

}  // namespace moeprune::hf::detail

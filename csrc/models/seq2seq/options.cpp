#include <moeprune/models/seq2seq/options.h>

#include <torch/torch.h>

namespace moeprune::seq2seq {

SwitchTransformerOptions::SwitchTransformerOptions()
    : moe_(MoELayerOptions::preset("switch", 768, 2048, 8)) {}

bool SwitchTransformerOptions::is_sparse(bool decoder, int64_t index) const {
  // SwitchTransformersStack: i % sparse_step == 1 or sparse_step == 1; step 0 means no MoE.
  const int64_t step = decoder ? decoder_sparse_step() : encoder_sparse_step();
  return step > 0 && (step == 1 || index % step == 1);
}

int64_t SwitchTransformerOptions::num_sparse(bool decoder) const {
  int64_t n = 0;
  const int64_t blocks = decoder ? num_decoder_layers() : num_layers();
  for (int64_t i = 0; i < blocks; ++i) {
    n += is_sparse(decoder, i) ? 1 : 0;
  }
  return n;
}

void SwitchTransformerOptions::validate() const {
  const struct {
    const char* name;
    int64_t value;
  } sizes[] = {{"vocab_size", vocab_size()},
               {"d_model", d_model()},
               {"d_kv", d_kv()},
               {"d_ff", d_ff()},
               {"num_heads", num_heads()},
               {"num_layers", num_layers()},
               {"num_decoder_layers", num_decoder_layers()},
               {"relative_attention_num_buckets", relative_attention_num_buckets()},
               {"relative_attention_max_distance", relative_attention_max_distance()}};
  for (const auto& s : sizes) {
    TORCH_CHECK(s.value >= 1, "SwitchTransformerOptions: ", s.name, " should be >= 1, got ",
                s.value);
  }
  TORCH_CHECK(relative_attention_num_buckets() >= 4,
              "SwitchTransformerOptions: relative_attention_num_buckets should be >= 4, got ",
              relative_attention_num_buckets());
  TORCH_CHECK(encoder_sparse_step() >= 0 && decoder_sparse_step() >= 0,
              "SwitchTransformerOptions: sparse steps should be >= 0, got ", encoder_sparse_step(),
              " and ", decoder_sparse_step());
  TORCH_CHECK(dropout_rate() >= 0.0 && dropout_rate() < 1.0,
              "SwitchTransformerOptions: dropout_rate should be in [0, 1), got ", dropout_rate());
  for (const auto& [name, id] : {std::pair<const char*, int64_t>{"pad_token_id", pad_token_id()},
                                 {"decoder_start_token_id", decoder_start_token_id()}}) {
    TORCH_CHECK(id >= 0 && id < vocab_size(), "SwitchTransformerOptions: ", name, " ", id,
                " is outside the vocabulary of ", vocab_size());
  }
  TORCH_CHECK(moe().d_model() == d_model(), "SwitchTransformerOptions: moe.d_model ",
              moe().d_model(), " differs from d_model ", d_model());
}

}  // namespace moeprune::seq2seq

#include <moeprune/models/seq2seq/moe_view.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

namespace moeprune::seq2seq {

SwitchMoEView::SwitchMoEView(SwitchTransformer model, Seq2SeqCalibration batches)
    : model_(std::move(model)), batches_(std::move(batches)) {
  TORCH_CHECK(!model_.is_empty(), "SwitchMoEView: no model");
}

std::vector<MoELayerEntry> SwitchMoEView::layers() const {
  std::vector<MoELayerEntry> out;
  int64_t key = 0;
  for (const auto& [name, layer] : model_->moe_layers()) {
    out.push_back({key++, name, layer});
  }
  return out;
}

void SwitchMoEView::walk(bool with_inputs, const LayerVisitor& visit) const {
  std::vector<int64_t> keys;
  for (const auto& entry : layers()) {
    keys.push_back(entry.key);
  }
  walk_layers(keys, with_inputs, visit);
}

void SwitchMoEView::walk_layers(const std::vector<int64_t>& keys, bool with_inputs,
                                const LayerVisitor& visit) const {
  TORCH_CHECK(has_calibration(), "SwitchMoEView: no calibration batches to walk");
  auto model = model_;
  walk_by_capture(
      *model, select_layers(layers(), keys), with_inputs,
      [&] {
        batches_([&](const Seq2SeqBatch& batch) {
          const auto memory = model->encode(batch.input_ids, batch.attention_mask);
          model->decode(batch.decoder_input_ids, memory, batch.attention_mask);
        });
      },
      visit);
}

std::string SwitchMoEView::signature() const {
  const auto& o = model_->options;
  nlohmann::json j;
  j["model_type"] = "switch_transformers";
  j["vocab_size"] = o.vocab_size();
  j["d_model"] = o.d_model();
  j["num_layers"] = o.num_layers();
  j["num_decoder_layers"] = o.num_decoder_layers();
  j["encoder_sparse_step"] = o.encoder_sparse_step();
  j["decoder_sparse_step"] = o.decoder_sparse_step();
  j["num_experts"] = o.moe().num_experts();
  j["expert_width"] = o.moe().hidden_dim();
  return j.dump();
}

std::shared_ptr<SwitchMoEView> moe_view(const SwitchTransformer& model,
                                        Seq2SeqCalibration batches) {
  return std::make_shared<SwitchMoEView>(model, std::move(batches));
}

}  // namespace moeprune::seq2seq

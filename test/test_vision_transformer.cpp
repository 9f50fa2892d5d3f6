#include <moeprune/io/checkpoint.h>
#include <moeprune/models/vision/vision_transformer.h>
#include <moeprune/train/trainer.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>

using moeprune::VisionTransformer;
using moeprune::VisionTransformerOptions;
namespace fs = std::filesystem;

namespace {

// Tiny images whose class is drawn as a bright square in one of four places.
moeprune::data::ImageDataset squares(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  moeprune::data::ImageDataset d;
  d.labels = torch::randint(0, 4, {n}, torch::kLong);
  auto images = torch::randint(0, 60, {n, 1, 28, 28}, torch::kLong);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = d.labels[i].item<int64_t>();
    images[i][0].narrow(0, (c / 2) * 14 + 2, 10).narrow(1, (c % 2) * 14 + 2, 10).add_(150);
  }
  d.images = images.to(torch::kUInt8);
  d.num_classes = 4;
  return d;
}

VisionTransformerOptions tiny(const std::string& preset) {
  return VisionTransformerOptions::small(preset, 4)
      .d_model(32)
      .mlp_dim(64)
      .depth(2)
      .heads(2)
      .moe_blocks(preset == "small_dense" ? std::vector<int64_t>{} : std::vector<int64_t>{1});
}

std::string scratch(const std::string& name) {
  return (fs::temp_directory_path() /
          ("moeprune_vit_" + name + "_" + std::to_string(::getpid()) + ".pt"))
      .string();
}

}  // namespace

TEST_CASE("V-MoE block placement follows the paper's Every-2 and Last-n") {
  CHECK(moeprune::moe_blocks_every_2(8) == std::vector<int64_t>{1, 3, 5, 7});
  CHECK(moeprune::moe_blocks_last(12, 2) == std::vector<int64_t>{9, 11});
  const auto b16 = VisionTransformerOptions::vmoe('B', 16, 8, 2, 1000);
  CHECK(b16.d_model() == 768);
  CHECK(b16.mlp_dim() == 3072);
  CHECK(b16.depth() == 12);
  CHECK(b16.heads() == 12);
  CHECK(b16.moe_blocks() == std::vector<int64_t>{1, 3, 5, 7, 9, 11});
  CHECK(VisionTransformerOptions::vmoe('L', 32, 32, 1, 10, 224, 5).moe_blocks() ==
        std::vector<int64_t>{15, 17, 19, 21, 23});
  REQUIRE_THROWS_WITH(VisionTransformerOptions::vmoe('X', 16, 8, 2, 10),
                      Catch::Contains("'S', 'B' or 'L'"));
  REQUIRE_THROWS_WITH(moeprune::moe_blocks_last(8, 5), Catch::Contains("n should be in [1, 4]"));
}

TEST_CASE("each small model has the expected output and routing shapes") {
  torch::manual_seed(0);
  const auto x = torch::randn({3, 1, 28, 28});
  SECTION("V-MoE: 50 tokens per image routed in each MoE block") {
    VisionTransformer vit(VisionTransformerOptions::small_vmoe(10));
    const auto out = vit(x);
    CHECK(out.logits.sizes() == torch::IntArrayRef({3, 10}));
    REQUIRE(out.plans.size() == 2);
    CHECK(out.plans[0].num_tokens() == 3 * 50);
    CHECK(out.plans[0].slots_per_token() == 2);
    CHECK(out.aux_loss.item<double>() > 0.0);
  }
  SECTION("E3-MoE: two members, each routing only to its own experts") {
    VisionTransformer vit(VisionTransformerOptions::small_e3moe(10));
    vit->eval();
    const auto out = vit(x);
    REQUIRE(out.member_logits.sizes() == torch::IntArrayRef({3, 2, 10}));
    // Predictions average the members' probabilities.
    const auto mean_probs = out.member_logits.softmax(-1).mean(1);
    CHECK(torch::allclose(out.logits.exp(), mean_probs, 1e-5, 1e-6));
    const auto& plan = out.plans[0];
    REQUIRE(plan.num_tokens() == 3 * 2 * 50);
    // Token t belongs to replica t / 50, member (t / 50) % 2; its experts are in that block.
    const auto member = torch::arange(plan.num_tokens()).div(50, "floor").remainder(2);
    const auto expert = plan.expert_index.select(1, 0);
    CHECK(torch::equal(expert.div(4, "floor"), member));
  }
  SECTION("dense ViT: no routing, no auxiliary loss") {
    VisionTransformer vit(VisionTransformerOptions::small_dense(10));
    const auto out = vit(x);
    CHECK(out.logits.sizes() == torch::IntArrayRef({3, 10}));
    CHECK(out.plans.empty());
    CHECK(out.aux_loss.item<double>() == 0.0);
  }
  SECTION("bad images are refused") {
    VisionTransformer vit(VisionTransformerOptions::small_vmoe(10));
    REQUIRE_THROWS_WITH(vit(torch::randn({2, 3, 28, 28})),
                        Catch::Contains("images should be [B, 1, 28, 28]"));
  }
}

TEST_CASE("a new head changes only the classifier") {
  torch::manual_seed(1);
  VisionTransformer vit(tiny("small_vmoe"));
  const auto w1 = vit->blocks[1]->moe->experts()->w1.clone();
  vit->replace_head(3);
  CHECK(vit->head->weight.sizes() == torch::IntArrayRef({3, 32}));
  CHECK(torch::equal(vit->blocks[1]->moe->experts()->w1, w1));
  CHECK(vit(torch::randn({2, 1, 28, 28})).logits.size(1) == 3);
}

TEST_CASE("learning rate warms up linearly, then decays on a cosine") {
  VisionTransformer vit(tiny("small_dense"));
  moeprune::Trainer trainer(vit,
                            moeprune::TrainerOptions().lr(1.0).warmup_steps(4).final_lr_ratio(0.1));
  CHECK(trainer.lr_at(0, 14) == Approx(0.25));
  CHECK(trainer.lr_at(3, 14) == Approx(1.0));
  CHECK(trainer.lr_at(4, 14) == Approx(1.0));
  CHECK(trainer.lr_at(9, 14) == Approx(0.55));  // halfway: 0.1 + 0.9 / 2
  CHECK(trainer.lr_at(14, 14) == Approx(0.1));
}

TEST_CASE("a few training steps lower the loss of every small model") {
  const auto train = squares(256, 3);
  for (const std::string preset :
       {"small_vmoe", "small_e3moe", "small_expert_choice", "small_dense"}) {
    INFO(preset);
    torch::manual_seed(4);
    VisionTransformer vit(tiny(preset));
    moeprune::Trainer trainer(
        vit, moeprune::TrainerOptions().epochs(4).batch_size(32).lr(3e-3).warmup_steps(4).progress(
                 false));
    const double before = trainer.evaluate(train).loss;
    trainer.fit(train);
    const double after = trainer.evaluate(train).loss;
    CHECK(after < 0.7 * before);
  }
}

TEST_CASE("a training set smaller than one batch trains as one batch") {
  const auto train = squares(20, 8);
  torch::manual_seed(9);
  VisionTransformer vit(tiny("small_vmoe"));
  moeprune::Trainer trainer(
      vit, moeprune::TrainerOptions().epochs(3).batch_size(128).warmup_steps(1).progress(false));
  const auto log = trainer.fit(train);
  REQUIRE(log.size() == 3);
  for (const auto& epoch : log) {
    CHECK(epoch.steps == 1);
  }
}

TEST_CASE("training is deterministic under a seed on the CPU") {
  const auto train = squares(96, 5);
  const auto run = [&] {
    torch::manual_seed(6);
    VisionTransformer vit(tiny("small_vmoe"));
    moeprune::Trainer trainer(vit, moeprune::TrainerOptions()
                                       .epochs(1)
                                       .batch_size(16)
                                       .seed(7)
                                       .crop_padding(2)
                                       .flip(true)
                                       .progress(false));
    trainer.fit(train);
    return vit;
  };
  const auto a = run(), b = run();
  const auto pa = a->parameters(), pb = b->parameters();
  REQUIRE(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    CHECK(torch::equal(pa[i], pb[i]));
  }
}

TEST_CASE("checkpoints round-trip exactly and refuse another model's shapes") {
  const auto train = squares(64, 8);
  torch::manual_seed(9);
  VisionTransformer vit(tiny("small_vmoe"));
  moeprune::Trainer trainer(vit,
                            moeprune::TrainerOptions().epochs(1).batch_size(16).progress(false));
  trainer.fit(train);
  const auto path = scratch("roundtrip");
  moeprune::save_checkpoint(path, *vit, vit->options.to_json(), &trainer.optimizer());
  CHECK_FALSE(fs::exists(path + ".tmp"));

  const auto options =
      VisionTransformerOptions::from_json(moeprune::read_checkpoint_metadata(path));
  CHECK(options.to_json() == vit->options.to_json());
  torch::manual_seed(10);
  VisionTransformer copy(options);
  moeprune::Trainer copy_trainer(copy, moeprune::TrainerOptions());
  moeprune::load_checkpoint(path, *copy, &copy_trainer.optimizer());
  const auto pa = vit->named_parameters(), pb = copy->named_parameters();
  for (const auto& p : pa) {
    INFO(p.key());
    CHECK(torch::equal(p.value(), pb[p.key()]));
  }
  // The optimizer state came back too: one more identical step gives identical weights.
  for (auto* t : {&trainer, &copy_trainer}) {
    t->optimizer().zero_grad();
    t->model()->eval();
    t->model()->loss(t->model()(torch::ones({2, 1, 28, 28})), torch::tensor({0, 1})).backward();
    t->optimizer().step();
  }
  CHECK(torch::equal(vit->head->weight, copy->head->weight));

  // Each run of this test case (one per SECTION) writes the file anew; remove it at the end.
  struct Remove {
    std::string path;
    ~Remove() { std::remove(path.c_str()); }
  } remove_after{path};

  SECTION("another number of experts") {
    VisionTransformer other(tiny("small_vmoe").num_experts(4));
    REQUIRE_THROWS_WITH(
        moeprune::load_checkpoint(path, *other),
        Catch::Contains(
            "tensor 'block1.moe.experts.b1' has shape [8, 64] but the model expects [4, 64]"));
  }
  SECTION("a dense model") {
    VisionTransformer other(tiny("small_dense"));
    REQUIRE_THROWS_WITH(moeprune::load_checkpoint(path, *other),
                        Catch::Contains("that the model does not have"));
  }
  SECTION("not a checkpoint") {
    const auto bogus = scratch("bogus");
    std::ofstream(bogus) << "not a checkpoint";
    CHECK_THROWS_WITH(moeprune::load_checkpoint(bogus, *vit),
                      Catch::Contains("not a readable checkpoint"));
    std::remove(bogus.c_str());
    CHECK_THROWS_WITH(moeprune::load_checkpoint(bogus + ".none", *vit),
                      Catch::Contains("file not found"));
  }
  SECTION("options JSON missing a field") {
    REQUIRE_THROWS_WITH(VisionTransformerOptions::from_json("{\"image_size\": 28}"),
                        Catch::Contains("model options lack 'channels'"));
  }
}

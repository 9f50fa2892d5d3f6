// train_lm: the language-model fine-tuning loop (schedule, clipping, checkpointing, log).
#include "../scratch_dir.h"

#include <moeprune/models/lm/checkpoint.h>
#include <moeprune/models/lm/evaluation.h>
#include <moeprune/train/lm_trainer.h>
#include <moeprune/train/schedule.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fstream>

TEST_CASE("the warm-up cosine schedule at hand-computed steps", "[lm]") {
  // 10 warm-up steps to 1e-3, then cosine over 90 steps to 1e-4.
  CHECK(moeprune::warmup_cosine_lr(0, 100, 1e-3, 10, 0.1) == Approx(1e-4));
  CHECK(moeprune::warmup_cosine_lr(9, 100, 1e-3, 10, 0.1) == Approx(1e-3));
  CHECK(moeprune::warmup_cosine_lr(10, 100, 1e-3, 10, 0.1) == Approx(1e-3));
  // Half-way through the decay: low + (base - low) / 2.
  CHECK(moeprune::warmup_cosine_lr(55, 100, 1e-3, 10, 0.1) == Approx(5.5e-4));
  CHECK(moeprune::warmup_cosine_lr(100, 100, 1e-3, 10, 0.1) == Approx(1e-4));
}

TEST_CASE("train_lm learns a repeating token pattern and logs the run", "[lm]") {
  auto model = moeprune::lm::load_causal_lm(MOEPRUNE_TEST_FIXTURES "/lm/olmoe");
  // A period-7 pattern: after a few steps the next token is predictable from the context.
  const auto pattern = torch::tensor({3, 17, 42, 8, 91, 23, 60}, torch::kLong);
  const auto stream = pattern.repeat({40});
  const auto before = moeprune::lm::perplexity(model, stream.narrow(0, 0, 64),
                                               moeprune::lm::PerplexityOptions().context(32));
  const auto log = test::scratch_dir() + "/lm_train/log.json";
  const auto result = moeprune::train_lm(model, stream, stream.narrow(0, 0, 64),
                                         moeprune::LMTrainerOptions()
                                             .steps(30)
                                             .batch_size(4)
                                             .context(16)
                                             .lr(1e-2)
                                             .warmup_steps(3)
                                             .eval_every(10)
                                             .eval_context(32)
                                             .gradient_checkpointing(true)
                                             .log_path(log)
                                             .progress(false));
  REQUIRE(result.steps.size() == 30);
  REQUIRE(result.evals.size() == 3);  // steps 10, 20 and the end
  INFO("perplexity " << before.perplexity() << " -> " << result.evals.back().perplexity);
  // A uniform guess over the 96 tokens is perplexity 96; the pattern is nearly deterministic.
  CHECK(result.evals.back().perplexity < 0.25 * before.perplexity());
  CHECK(result.steps.back().loss < result.steps.front().loss);
  CHECK(result.steps[0].lr == Approx(1e-2 / 3));
  CHECK(!model->gradient_checkpointing());
  std::ifstream in(log);
  const auto json = nlohmann::json::parse(in);
  CHECK(json.at("steps").size() == 30);
  CHECK(json.at("evals").back().at("perplexity").get<double>() ==
        Approx(result.evals.back().perplexity));
  CHECK_THROWS_WITH(moeprune::train_lm(model, stream.narrow(0, 0, 10), {},
                                       moeprune::LMTrainerOptions().context(16).progress(false)),
                    Catch::Contains("a window needs context + 1 = 17"));
}

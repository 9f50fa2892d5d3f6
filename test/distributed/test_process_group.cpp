// The process group's set-up errors that one process can show: the environment it reads, peers
// that never join, a rank 0 that is not there. The multi-process ones (two processes with one
// RANK, another WORLD_SIZE) are in setup_errors.sh; the collectives in ep_worker.cpp.
#include "free_port.h"

#include <moeprune/distributed/process_group.h>

#include <torch/torch.h>
#include <catch2/catch.hpp>

#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dist = moeprune::distributed;

namespace {

// Sets environment variables for a scope and restores the previous values after.
class ScopedEnv {
 public:
  ScopedEnv& set(const std::string& name, std::optional<std::string> value) {
    const char* old = std::getenv(name.c_str());
    saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
    apply(name, value);
    return *this;
  }
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      apply(it->first, it->second);
    }
  }

 private:
  static void apply(const std::string& name, const std::optional<std::string>& value) {
    if (value) {
      setenv(name.c_str(), value->c_str(), 1);
    } else {
      unsetenv(name.c_str());
    }
  }
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

}  // namespace

TEST_CASE("the process group reads the launcher's environment and names what is wrong",
          "[distributed]") {
  ScopedEnv env;
  env.set("RANK", "1").set("WORLD_SIZE", "4").set("LOCAL_RANK", std::nullopt);
  env.set("MASTER_ADDR", "127.0.0.1").set("MASTER_PORT", "29511");
  const auto ok = dist::Environment::from_env();
  CHECK(ok.rank == 1);
  CHECK(ok.world_size == 4);
  CHECK(ok.local_rank == 1);  // LOCAL_RANK defaults to RANK
  CHECK(ok.master_port == 29511);

  SECTION("missing") {
    env.set("WORLD_SIZE", std::nullopt);
    CHECK_THROWS_WITH(dist::Environment::from_env(), Catch::Contains("WORLD_SIZE is not set") &&
                                                         Catch::Contains("scripts/launch -n N"));
  }
  SECTION("not a number") {
    env.set("RANK", "one");
    CHECK_THROWS_WITH(dist::Environment::from_env(),
                      Catch::Contains("RANK='one' is not an integer"));
  }
  SECTION("rank out of range") {
    env.set("RANK", "4");
    CHECK_THROWS_WITH(dist::Environment::from_env(),
                      Catch::Contains("RANK 4 is outside [0, WORLD_SIZE = 4)"));
  }
  SECTION("port") {
    env.set("MASTER_PORT", "70000");
    CHECK_THROWS_WITH(dist::Environment::from_env(),
                      Catch::Contains("MASTER_PORT 70000 is not a TCP port"));
  }
}

TEST_CASE("a process group names the ranks that did not join in time", "[distributed]") {
  dist::Environment env;
  env.rank = 0;
  env.world_size = 3;
  env.master_port = test::free_port();
  const auto options = dist::ProcessGroupOptions().timeout(std::chrono::milliseconds(1500));
  CHECK_THROWS_WITH(dist::ProcessGroup(env, options),
                    Catch::Contains("rank 0 of 3: rank(s) 1, 2 did not join within 1.5 s at "
                                    "127.0.0.1:" +
                                    std::to_string(env.master_port)));
}

TEST_CASE("a process group names a rank 0 it cannot reach", "[distributed]") {
  dist::Environment env;
  env.rank = 1;
  env.world_size = 2;
  env.master_port = test::free_port();
  const auto options = dist::ProcessGroupOptions().timeout(std::chrono::milliseconds(1500));
  CHECK_THROWS_WITH(dist::ProcessGroup(env, options),
                    Catch::Contains("rank 1 of 2 could not reach rank 0 at 127.0.0.1:" +
                                    std::to_string(env.master_port) + " within 1.5 s"));
}

TEST_CASE("a process group of one exchanges with itself", "[distributed]") {
  dist::Environment env;
  env.master_port = test::free_port();
  const dist::ProcessGroup group(env,
                                 dist::ProcessGroupOptions().timeout(std::chrono::seconds(10)));
  CHECK(group.world_size() == 1);
  const auto x = torch::arange(12, torch::kFloat).reshape({6, 2});
  CHECK(torch::equal(group.all_to_all(x, {6}, {6}), x));
  CHECK_THROWS_WITH(group.all_to_all(x, {5}, {6}),
                    Catch::Contains("send counts sum to 5 but the input has 6 rows"));
  CHECK_THROWS_WITH(group.all_to_all(x, {3, 3}, {6}),
                    Catch::Contains("2 send and 1 receive counts for 1 ranks"));
  std::vector<torch::Tensor> sums{x.clone()};
  group.all_reduce_sum_(sums);
  CHECK(torch::equal(sums[0], x));
  CHECK(torch::equal(group.all_gather(x), x.unsqueeze(0)));
}

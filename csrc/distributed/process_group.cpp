// c10d underneath moeprune::distributed::ProcessGroup. Only this file and nccl_backend.cpp see
// c10d's headers: ProcessGroupGloo.hpp includes Gloo's, which come from Debian's libgloo-dev while
// the Gloo code that runs is the copy inside libtorch_cpu; nothing here calls an inline function
// that reads a Gloo object (docs/distributed.md, "Gloo headers and torch's Gloo").
#include <moeprune/distributed/process_group.h>

#include "distributed/backends.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cerrno>
#include <cstdlib>
#include <numeric>
#include <string>

namespace moeprune::distributed {

struct ProcessGroup::Impl {
  Environment env;
  ProcessGroupOptions options;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

namespace {

// The message of an exception without torch's backtrace.
std::string message_of(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) {
    return c10_error->msg();
  }
  return e.what();
}

const char* kLaunchHint =
    "start the processes with scripts/launch -n N (or torchrun), which sets RANK, WORLD_SIZE, "
    "LOCAL_RANK, MASTER_ADDR and MASTER_PORT";

std::string env_string(const char* name) {
  const char* value = std::getenv(name);
  TORCH_CHECK(value != nullptr && *value != '\0', "ProcessGroup: the environment variable ", name,
              " is not set; ", kLaunchHint);
  return value;
}

int64_t env_int(const char* name, const std::string& value) {
  char* end = nullptr;
  errno = 0;
  const long long parsed = std::strtoll(value.c_str(), &end, 10);
  TORCH_CHECK(errno == 0 && end != value.c_str() && *end == '\0', "ProcessGroup: ", name, "='",
              value, "' is not an integer");
  return parsed;
}

std::string key(const char* what, int64_t rank) {
  return std::string("moeprune/") + what + "/" + std::to_string(rank);
}

double seconds(std::chrono::milliseconds t) {
  return static_cast<double>(t.count()) / 1000.0;
}

// Every rank announces itself and its WORLD_SIZE; each then waits for all the others, so a missing
// peer, a second process with one RANK, or a peer launched with another WORLD_SIZE is named.
void meet_peers(c10d::Store& store, const Environment& env, std::chrono::milliseconds timeout) {
  const int64_t claims = store.add(key("rank_claims", env.rank), 1);
  TORCH_CHECK(claims == 1, "ProcessGroup: two processes were started with RANK ", env.rank,
              " (this one and another); each rank needs one process");
  store.set(key("world_size", env.rank), std::to_string(env.world_size));
  const auto same_world_size = [&](int64_t r, const std::string& value) {
    TORCH_CHECK(value == std::to_string(env.world_size), "ProcessGroup: rank ", r,
                " was started with WORLD_SIZE ", value, ", rank ", env.rank, " with WORLD_SIZE ",
                env.world_size, "; every process needs the same WORLD_SIZE");
  };
  std::vector<std::string> keys;
  for (int64_t r = 0; r < env.world_size; ++r) {
    keys.push_back(key("world_size", r));
  }
  try {
    // Rank 0 first: a WORLD_SIZE that differs from its own is refused before waiting for ranks
    // that may never exist.
    store.wait({keys[0]}, timeout);
    same_world_size(0, store.get_to_str(keys[0]));
    store.wait(keys, timeout);
  } catch (const c10::DistError& e) {
    std::string missing;
    try {
      for (int64_t r = 0; r < env.world_size; ++r) {
        if (!store.check({keys[static_cast<size_t>(r)]})) {
          missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        }
      }
    } catch (const c10::DistError&) {
      TORCH_CHECK(false, "ProcessGroup: rank ", env.rank, " of ", env.world_size,
                  " lost the rendezvous at ", env.master_addr, ":", env.master_port,
                  " (rank 0 stopped?): ", message_of(e));
    }
    TORCH_CHECK(false, "ProcessGroup: rank ", env.rank, " of ", env.world_size, ": rank(s) ",
                missing, " did not join within ", seconds(timeout), " s at ", env.master_addr, ":",
                env.master_port, " (", message_of(e), ")");
  }
  for (int64_t r = 0; r < env.world_size; ++r) {
    same_world_size(r, store.get_to_str(keys[static_cast<size_t>(r)]));
  }
}

void wait_for(const c10::intrusive_ptr<c10d::Work>& work, const Environment& env,
              const char* what) {
  try {
    work->wait();
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "ProcessGroup: ", what, " on rank ", env.rank, " of ", env.world_size,
                " failed: ", message_of(e));
  }
}

}  // namespace

Environment Environment::from_env() {
  Environment env;
  env.rank = env_int("RANK", env_string("RANK"));
  env.world_size = env_int("WORLD_SIZE", env_string("WORLD_SIZE"));
  const char* local = std::getenv("LOCAL_RANK");
  env.local_rank = local != nullptr && *local != '\0' ? env_int("LOCAL_RANK", local) : env.rank;
  env.master_addr = env_string("MASTER_ADDR");
  env.master_port = env_int("MASTER_PORT", env_string("MASTER_PORT"));
  TORCH_CHECK(env.world_size >= 1, "ProcessGroup: WORLD_SIZE should be >= 1, got ", env.world_size);
  TORCH_CHECK(env.rank >= 0 && env.rank < env.world_size, "ProcessGroup: RANK ", env.rank,
              " is outside [0, WORLD_SIZE = ", env.world_size, ")");
  TORCH_CHECK(env.master_port >= 1 && env.master_port <= 65535, "ProcessGroup: MASTER_PORT ",
              env.master_port, " is not a TCP port (1-65535)");
  return env;
}

ProcessGroup::ProcessGroup(const Environment& env, ProcessGroupOptions options)
    : impl_(std::make_shared<Impl>()) {
  TORCH_CHECK(env.world_size >= 1 && env.rank >= 0 && env.rank < env.world_size,
              "ProcessGroup: rank ", env.rank, " is outside [0, world size ", env.world_size, ")");
  TORCH_CHECK(options.timeout().count() > 0, "ProcessGroup: the timeout should be positive");
  impl_->env = env;
  impl_->options = options;
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(env.master_port);
  store_options.isServer = env.rank == 0;
  store_options.numWorkers = static_cast<size_t>(env.world_size);
  store_options.waitWorkers = false;  // meet_peers waits, naming whoever is missing
  store_options.timeout = options.timeout();
  try {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
  } catch (const std::exception& e) {
    TORCH_CHECK(
        false, "ProcessGroup: rank ", env.rank, " of ", env.world_size,
        env.rank == 0 ? " could not serve the rendezvous at " : " could not reach rank 0 at ",
        env.master_addr, ":", env.master_port, " within ", seconds(options.timeout()), " s (",
        message_of(e), ")");
  }
  meet_peers(*impl_->store, env, options.timeout());
  const auto backend_store =
      c10::make_intrusive<c10d::PrefixStore>("moeprune/backend", impl_->store);
  if (options.backend() == Backend::kNccl) {
    impl_->backend = detail::make_nccl_backend(backend_store, env, options.timeout());
  } else {
    auto gloo = c10d::ProcessGroupGloo::Options::create(options.timeout());
    const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
    if (interface != nullptr && *interface != '\0') {
      gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
    } else if (env.master_addr == "127.0.0.1" || env.master_addr == "localhost") {
      // All ranks on this machine: the loopback interface, whatever the host name resolves to.
      gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      gloo->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    try {
      impl_->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
          backend_store, static_cast<int>(env.rank), static_cast<int>(env.world_size), gloo);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "ProcessGroup: rank ", env.rank,
                  " could not connect Gloo to its peers: ", message_of(e));
    }
  }
}

ProcessGroup ProcessGroup::from_env(ProcessGroupOptions options) {
  return ProcessGroup(Environment::from_env(), options);
}

int64_t ProcessGroup::rank() const {
  return impl_->env.rank;
}
int64_t ProcessGroup::world_size() const {
  return impl_->env.world_size;
}
int64_t ProcessGroup::local_rank() const {
  return impl_->env.local_rank;
}
Backend ProcessGroup::backend() const {
  return impl_->options.backend();
}
torch::Device ProcessGroup::device() const {
  return backend() == Backend::kNccl
             ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank()))
             : torch::Device(torch::kCPU);
}

torch::Tensor ProcessGroup::all_to_all(const torch::Tensor& input,
                                       const std::vector<int64_t>& send_rows,
                                       const std::vector<int64_t>& recv_rows) const {
  const auto W = static_cast<size_t>(world_size());
  TORCH_CHECK(send_rows.size() == W && recv_rows.size() == W,
              "ProcessGroup::all_to_all: ", send_rows.size(), " send and ", recv_rows.size(),
              " receive counts for ", W, " ranks");
  TORCH_CHECK(input.dim() >= 1, "ProcessGroup::all_to_all: the input needs a row dimension");
  for (size_t r = 0; r < W; ++r) {
    TORCH_CHECK(send_rows[r] >= 0 && recv_rows[r] >= 0,
                "ProcessGroup::all_to_all: negative row count for rank ", r);
  }
  const int64_t sent = std::accumulate(send_rows.begin(), send_rows.end(), int64_t{0});
  TORCH_CHECK(sent == input.size(0), "ProcessGroup::all_to_all: send counts sum to ", sent,
              " but the input has ", input.size(0), " rows");
  auto in = input.contiguous();
  auto sizes = in.sizes().vec();
  sizes[0] = std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0});
  auto out = torch::empty(sizes, in.options());
  if (W == 1) {
    out.copy_(in);
    return out;
  }
  auto send = send_rows;
  auto recv = recv_rows;
  wait_for(impl_->backend->alltoall_base(out, in, recv, send), impl_->env, "all_to_all");
  return out;
}

void ProcessGroup::all_reduce_sum_(std::vector<torch::Tensor>& tensors) const {
  if (world_size() == 1 || tensors.empty()) {
    return;
  }
  for (const auto& t : tensors) {
    TORCH_CHECK(t.is_contiguous(), "ProcessGroup::all_reduce_sum_: tensors should be contiguous");
  }
  wait_for(impl_->backend->allreduce(tensors), impl_->env, "all_reduce");
}

torch::Tensor ProcessGroup::all_gather(const torch::Tensor& input) const {
  const auto in = input.contiguous();
  std::vector<torch::Tensor> outputs;
  for (int64_t r = 0; r < world_size(); ++r) {
    outputs.push_back(torch::empty_like(in));
  }
  if (world_size() == 1) {
    outputs[0].copy_(in);
  } else {
    std::vector<std::vector<torch::Tensor>> out_lists{outputs};
    std::vector<torch::Tensor> in_list{in};
    wait_for(impl_->backend->allgather(out_lists, in_list), impl_->env, "all_gather");
    outputs = out_lists[0];
  }
  return torch::stack(outputs);
}

void ProcessGroup::barrier() const {
  if (world_size() > 1) {
    wait_for(impl_->backend->barrier(), impl_->env, "barrier");
  }
}

}  // namespace moeprune::distributed

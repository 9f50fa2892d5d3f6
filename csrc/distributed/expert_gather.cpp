// Bringing a spread layer's experts back together: to every process (unshard_experts) or to one
// that writes the checkpoint (write_on_root). One all-to-all per layer moves whole experts, each
// packed as one row of its parameters.
#include <moeprune/distributed/expert_parallel.h>

#include "distributed/expert_parallel_exchange.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>
#include <utility>

namespace moeprune::distributed {
namespace {

// A bank's parameters, one row per expert ([n, P]: w1's elements, then b1's, ...), and back.
struct PackedLayout {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;  // one expert's
  std::vector<int64_t> widths;               // elements per expert
};

// The layout always; the packed rows only when `rows` (a process that sends nothing skips the
// copy of its experts).
torch::Tensor pack(const ExpertBankImpl& bank, PackedLayout& layout, bool rows) {
  std::vector<torch::Tensor> parts;
  const auto params = bank.named_parameters(/*recurse=*/false);
  const auto dtype = bank.w1.dtype();
  for (const auto& p : params) {
    const auto& t = p.value();
    TORCH_CHECK(t.dtype() == dtype, "distributed: expert parameter '", p.key(), "' is ", t.dtype(),
                ", w1 ", dtype, "; gathering needs one dtype");
    layout.names.push_back(p.key());
    layout.shapes.emplace_back(t.sizes().begin() + 1, t.sizes().end());
    layout.widths.push_back(t[0].numel());
    parts.push_back(t.detach().reshape({t.size(0), -1}));
  }
  return rows ? torch::cat(parts, 1).contiguous() : torch::Tensor();
}

int64_t total_width(const PackedLayout& layout) {
  int64_t width = 0;
  for (const int64_t w : layout.widths) {
    width += w;
  }
  return width;
}

std::map<std::string, torch::Tensor> unpack(const torch::Tensor& rows, const PackedLayout& layout) {
  std::map<std::string, torch::Tensor> weights;
  int64_t at = 0;
  for (size_t i = 0; i < layout.names.size(); ++i) {
    auto shape = layout.shapes[i];
    shape.insert(shape.begin(), rows.size(0));
    weights[layout.names[i]] = rows.narrow(1, at, layout.widths[i]).reshape(shape).contiguous();
    at += layout.widths[i];
  }
  return weights;
}

// Every process sends its experts of `layer` to the processes that `receive`; those add the
// others' experts to their bank (which then holds the whole layer's).
void gather_bank(MoELayer layer, const detail::ExpertParallelExchange& exchange,
                 const std::vector<bool>& receive) {
  const auto& group = exchange.group();
  const int64_t W = group.world_size(), me = group.rank();
  auto& bank = *layer->experts();
  bool sends = false;
  for (int64_t r = 0; r < W; ++r) {
    sends = sends || (r != me && receive[r]);
  }
  PackedLayout layout;
  const auto mine = pack(bank, layout, sends);
  std::vector<int64_t> send(static_cast<size_t>(W), 0), recv(static_cast<size_t>(W), 0);
  std::vector<torch::Tensor> outgoing;
  std::vector<int64_t> incoming_ids;
  for (int64_t r = 0; r < W; ++r) {
    if (r == me) {
      continue;
    }
    if (receive[r]) {
      send[r] = bank.num_held();
      outgoing.push_back(mine);
    }
    if (receive[me]) {
      const auto ids = exchange.experts_of(r);
      recv[r] = static_cast<int64_t>(ids.size());
      incoming_ids.insert(incoming_ids.end(), ids.begin(), ids.end());
    }
  }
  const auto input = outgoing.empty() ? torch::empty({0, total_width(layout)}, bank.w1.options())
                                      : torch::cat(outgoing);
  const auto received = group.all_to_all(input, send, recv);
  if (receive[me]) {
    bank.add_experts(incoming_ids, unpack(received, layout));
    TORCH_CHECK(bank.expert_ids() == exchange.held_experts(),
                "distributed: the gathered experts are not the layer's");
  }
}

}  // namespace

void shard_experts(const MoEView& view, const ProcessGroup& group) {
  for (const auto& entry : view.layers()) {
    auto layer = entry.layer;
    shard_experts(layer, group);
  }
}

void unshard_experts(MoELayer& layer) {
  const auto* exchange = detail::exchange_of(layer);
  TORCH_CHECK(exchange != nullptr,
              "distributed::unshard_experts: the layer's experts are not spread over processes "
              "(distributed::shard_experts)");
  gather_bank(layer, *exchange,
              std::vector<bool>(static_cast<size_t>(exchange->group().world_size()), true));
  layer->set_expert_exchange(nullptr);
}

void unshard_experts(const MoEView& view) {
  for (const auto& entry : view.layers()) {
    auto layer = entry.layer;
    if (detail::exchange_of(layer) != nullptr) {
      unshard_experts(layer);
    }
  }
}

void write_on_root(const MoEView& view, const ProcessGroup& group,
                   const std::function<void()>& write, int64_t root) {
  const int64_t W = group.world_size(), me = group.rank();
  TORCH_CHECK(root >= 0 && root < W, "distributed::write_on_root: root ", root, " is outside [0, ",
              W, ")");
  std::vector<bool> receive(static_cast<size_t>(W), false);
  receive[static_cast<size_t>(root)] = true;
  // Every layer checked before any moves, so a refusal leaves the model as it was.
  std::vector<MoELayer> spread_layers;
  for (const auto& entry : view.layers()) {
    const auto* exchange = detail::exchange_of(entry.layer);
    if (exchange != nullptr) {
      TORCH_CHECK(exchange->group().world_size() == W, "distributed::write_on_root: layer ",
                  entry.name, " is spread over ", exchange->group().world_size(),
                  " processes, the group has ", W);
      spread_layers.push_back(entry.layer);
    }
  }
  // The layers whole on root, with the exchanges that spread them again afterwards.
  std::vector<std::pair<MoELayer, std::shared_ptr<ExpertExchange>>> regrown;
  for (auto& layer : spread_layers) {
    gather_bank(layer, *detail::exchange_of(layer), receive);
    if (me == root) {
      regrown.emplace_back(layer, layer->expert_exchange());
      layer->set_expert_exchange(nullptr);
    }
  }
  std::exception_ptr failure;
  std::string message;
  if (me == root) {
    try {
      write();
    } catch (const c10::Error& e) {
      failure = std::current_exception();
      message = e.what_without_backtrace();
    } catch (const std::exception& e) {
      failure = std::current_exception();
      message = e.what();
    } catch (...) {
      failure = std::current_exception();
      message = "an unknown exception";
    }
    for (auto& [layer, exchange] : regrown) {
      const auto& spread = static_cast<const detail::ExpertParallelExchange&>(*exchange);
      layer->experts()->keep_experts(spread.experts_of(root));
      layer->set_expert_exchange(exchange);
    }
  }
  // Every process learns whether root wrote, and its error's first line(s).
  constexpr int64_t kMessageBytes = 512;
  auto status = torch::zeros({kMessageBytes + 1}, torch::kInt);  // on the CPU, to fill
  if (failure) {
    auto* s = status.data_ptr<int32_t>();
    s[0] = 1;
    for (size_t i = 0; i < message.size() && i < static_cast<size_t>(kMessageBytes); ++i) {
      s[i + 1] = static_cast<unsigned char>(message[i]);
    }
  }
  std::vector<torch::Tensor> tensors{status.to(group.device())};
  group.all_reduce_sum_(tensors);
  if (failure) {
    std::rethrow_exception(failure);
  }
  const auto summed = tensors[0].cpu();
  const auto* s = summed.const_data_ptr<int32_t>();
  if (s[0] != 0) {
    std::string text;
    for (int64_t i = 1; i <= kMessageBytes && s[i] != 0; ++i) {
      text.push_back(static_cast<char>(s[i]));
    }
    TORCH_CHECK(false, "distributed::write_on_root: rank ", root, " could not write: ", text);
  }
}

}  // namespace moeprune::distributed

#pragma once

// Input checks shared by the CPU kernels of dispatch and combine.
#include <torch/types.h>

namespace moeprune::cpu {

inline void check_cpu(const torch::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " should be a CPU tensor, got ", t.device());
}

inline void check_routing_indices(const torch::Tensor& slot_row, const torch::Tensor& row_slot,
                                  const char* op) {
  TORCH_CHECK(slot_row.dim() == 2, op, ": slot_row should be a 2-D [tokens, slots] tensor, got ",
              slot_row.dim(), "-D");
  TORCH_CHECK(slot_row.scalar_type() == torch::kLong, op, ": slot_row should be int64, got ",
              slot_row.scalar_type());
  TORCH_CHECK(row_slot.dim() == 1, op, ": row_slot should be a 1-D [rows] tensor, got ",
              row_slot.dim(), "-D");
  TORCH_CHECK(row_slot.scalar_type() == torch::kLong, op, ": row_slot should be int64, got ",
              row_slot.scalar_type());
  TORCH_CHECK(slot_row.device() == row_slot.device(), op,
              ": slot_row and row_slot should be on one device, got ", slot_row.device(), " and ",
              row_slot.device());
}

inline void check_rows(const torch::Tensor& rows, const torch::Tensor& row_slot, const char* op,
                       const char* name) {
  TORCH_CHECK(rows.dim() == 2, op, ": ", name, " should be a 2-D [rows, d] tensor, got ",
              rows.dim(), "-D");
  TORCH_CHECK(rows.size(0) == row_slot.size(0), op, ": ", name, " has ", rows.size(0),
              " rows but row_slot names ", row_slot.size(0));
}

inline void check_tokens(const torch::Tensor& tokens, const torch::Tensor& slot_row, const char* op,
                         const char* name) {
  TORCH_CHECK(tokens.dim() == 2, op, ": ", name, " should be a 2-D [tokens, d] tensor, got ",
              tokens.dim(), "-D");
  TORCH_CHECK(tokens.size(0) == slot_row.size(0), op, ": ", name, " has ", tokens.size(0),
              " tokens but slot_row has ", slot_row.size(0));
}

inline void check_weight(const torch::Tensor& weight, const torch::Tensor& slot_row,
                         const torch::Tensor& rows, const char* op) {
  TORCH_CHECK(weight.sizes() == slot_row.sizes(), op, ": weight should have the shape of slot_row ",
              slot_row.sizes(), ", got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == rows.scalar_type(), op,
              ": weight and expert_output should have one dtype, got ", weight.scalar_type(),
              " and ", rows.scalar_type());
}

}  // namespace moeprune::cpu

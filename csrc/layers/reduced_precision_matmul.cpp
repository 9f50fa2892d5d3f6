#include "layers/reduced_precision_matmul.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/torch.h>

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MOEPRUNE_SMALL_ROWS_X86 1
#endif

namespace moeprune::detail {
namespace {

// The weight is read in chunks of whole rows, each a contiguous run of memory that the hardware
// prefetchers stream (blocks of columns instead would jump a row's length at every row, and run
// at a third of the speed here). Each chunk sums into its own fp32 partial [R, out]; the partials
// are added in chunk order, so the chunking, not the thread count, fixes the summation order.
int64_t chunk_rows(int64_t in) {
  constexpr int64_t kChunks = 16, kMinRows = 64;
  const int64_t rows = std::max(kMinRows, (in + kChunks - 1) / kChunks);
  return (rows + 3) / 4 * 4;
}

template <typename T>
float widen(uint16_t bits) {
  return static_cast<float>(c10::bit_cast<T>(bits));
}

// partial[r, c] = sum over i in [i0, i1) of x[r, i] w[i, c], for columns [c0, out).
template <typename T>
void chunk_scalar(const float* x, int64_t rows, int64_t in, const uint16_t* w, int64_t out,
                  int64_t i0, int64_t i1, int64_t c0, float* partial) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = c0; c < out; ++c) {
      float s = 0.0f;
      for (int64_t i = i0; i < i1; ++i) {
        s += x[r * in + i] * widen<T>(w[i * out + c]);
      }
      partial[r * out + c] = s;
    }
  }
}

#ifdef MOEPRUNE_SMALL_ROWS_X86

template <bool kHalf>
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const uint16_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (kHalf) {
    return _mm256_cvtph_ps(v);
  } else {
    // bf16 is the top half of an fp32: widen each lane and shift it up.
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
  }
}

// The first `columns` (a multiple of 8) columns of partial = x[:, i0:i1] w[i0:i1, :]. Four weight
// rows per pass, so each accumulator is loaded and stored once per four multiply-adds; the row
// count is a template argument so the x broadcasts stay in registers across the columns.
template <bool kHalf, int64_t rows>
__attribute__((target("avx2,fma,f16c"))) void chunk_rows_avx2(const float* x, int64_t in,
                                                              const uint16_t* w, int64_t out,
                                                              int64_t i0, int64_t i1,
                                                              int64_t columns, float* partial) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < columns; c += 8) {
      _mm256_storeu_ps(partial + r * out + c, _mm256_setzero_ps());
    }
  }
  int64_t i = i0;
  for (; i + 4 <= i1; i += 4) {
    const uint16_t* w0 = w + i * out;
    __m256 xb[rows][4];
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < 4; ++j) {
        xb[r][j] = _mm256_broadcast_ss(x + r * in + i + j);
      }
    }
    for (int64_t c = 0; c < columns; c += 8) {
      const __m256 a0 = load8<kHalf>(w0 + c);
      const __m256 a1 = load8<kHalf>(w0 + out + c);
      const __m256 a2 = load8<kHalf>(w0 + 2 * out + c);
      const __m256 a3 = load8<kHalf>(w0 + 3 * out + c);
      for (int64_t r = 0; r < rows; ++r) {
        float* target = partial + r * out + c;
        __m256 s = _mm256_loadu_ps(target);
        s = _mm256_fmadd_ps(xb[r][0], a0, s);
        s = _mm256_fmadd_ps(xb[r][1], a1, s);
        s = _mm256_fmadd_ps(xb[r][2], a2, s);
        s = _mm256_fmadd_ps(xb[r][3], a3, s);
        _mm256_storeu_ps(target, s);
      }
    }
  }
  for (; i < i1; ++i) {
    const uint16_t* wi = w + i * out;
    for (int64_t c = 0; c < columns; c += 8) {
      const __m256 a = load8<kHalf>(wi + c);
      for (int64_t r = 0; r < rows; ++r) {
        float* target = partial + r * out + c;
        _mm256_storeu_ps(target, _mm256_fmadd_ps(_mm256_broadcast_ss(x + r * in + i), a,
                                                 _mm256_loadu_ps(target)));
      }
    }
  }
}

template <bool kHalf>
void chunk_avx2(const float* x, int64_t rows, int64_t in, const uint16_t* w, int64_t out,
                int64_t i0, int64_t i1, int64_t columns, float* partial) {
  switch (rows) {
#define MOEPRUNE_CHUNK_ROWS(R) \
  case R:                      \
    return chunk_rows_avx2<kHalf, R>(x, in, w, out, i0, i1, columns, partial);
    MOEPRUNE_CHUNK_ROWS(1)
    MOEPRUNE_CHUNK_ROWS(2)
    MOEPRUNE_CHUNK_ROWS(3)
    MOEPRUNE_CHUNK_ROWS(4)
    MOEPRUNE_CHUNK_ROWS(5)
    MOEPRUNE_CHUNK_ROWS(6)
    MOEPRUNE_CHUNK_ROWS(7)
    MOEPRUNE_CHUNK_ROWS(8)
#undef MOEPRUNE_CHUNK_ROWS
    default:
      TORCH_CHECK(false, "small_rows_matmul: ", rows, " rows");
  }
}

#endif  // MOEPRUNE_SMALL_ROWS_X86

template <typename T>
void run(const float* x, int64_t rows, int64_t in, const uint16_t* w, int64_t out, float* y) {
  const int64_t step = chunk_rows(in);
  const int64_t chunks = (in + step - 1) / step;
  // Not zeroed here: each chunk's kernel starts its columns from zero.
  std::unique_ptr<float[]> partials(new float[static_cast<size_t>(chunks * rows * out)]);
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t i0 = k * step, i1 = std::min(in, i0 + step);
      float* partial = partials.get() + k * rows * out;
      int64_t columns = 0;
#ifdef MOEPRUNE_SMALL_ROWS_X86
      columns = out / 8 * 8;
      chunk_avx2<std::is_same_v<T, c10::Half>>(x, rows, in, w, out, i0, i1, columns, partial);
#endif
      chunk_scalar<T>(x, rows, in, w, out, i0, i1, columns, partial);
    }
  });
  at::parallel_for(0, rows * out, 4096, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      float s = 0.0f;
      for (int64_t k = 0; k < chunks; ++k) {
        s += partials[k * rows * out + j];
      }
      y[j] = s;
    }
  });
}

}  // namespace

bool has_small_rows_kernel() {
#ifdef MOEPRUNE_SMALL_ROWS_X86
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                __builtin_cpu_supports("f16c");
  return supported;
#else
  return false;
#endif
}

torch::Tensor small_rows_matmul(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(0), "small_rows_matmul: x ",
              x.sizes(), " and w ", w.sizes(), " do not multiply");
  TORCH_CHECK(x.size(0) <= kSmallRowsMax, "small_rows_matmul: ", x.size(0), " rows, at most ",
              kSmallRowsMax);
  TORCH_CHECK(w.is_cpu() && w.is_contiguous() &&
                  (w.scalar_type() == torch::kBFloat16 || w.scalar_type() == torch::kHalf),
              "small_rows_matmul: w should be a contiguous bf16 or fp16 CPU tensor, got ",
              w.scalar_type(), " on ", w.device());
  if (!has_small_rows_kernel()) {
    std::vector<torch::Tensor> rows;
    for (int64_t r = 0; r < x.size(0); ++r) {
      rows.push_back(torch::mv(w.t(), x[r].to(w.scalar_type())));
    }
    return rows.empty() ? torch::empty({0, w.size(1)}, w.options()) : torch::stack(rows);
  }
  const auto xf = x.to(torch::kFloat).contiguous();
  auto y = torch::empty({x.size(0), w.size(1)}, xf.options());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr());
  if (w.scalar_type() == torch::kBFloat16) {
    run<c10::BFloat16>(xf.data_ptr<float>(), x.size(0), x.size(1), wp, w.size(1),
                       y.data_ptr<float>());
  } else {
    run<c10::Half>(xf.data_ptr<float>(), x.size(0), x.size(1), wp, w.size(1), y.data_ptr<float>());
  }
  return y.to(w.scalar_type());
}

}  // namespace moeprune::detail

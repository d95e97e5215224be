// AVX2 epilogue rows (see epilogue_simd.hpp). Compiled with -mavx2 -mfma; only called when the
// plan's instruction set is AVX2 or better (isa.cpp checks the CPU). No FMA is used: the bias and
// residual additions and the activation round exactly as the scalar code does.
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "epilogue_simd.hpp"
#include "transpose_avx2.hpp"

namespace walle {

namespace {

// Lane i is enabled when i < left (left in [1, 8]).
__m256i tail_mask(int64_t left) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), lanes);
}

// The activations written as the scalar code's comparisons so NaN propagates the same way:
// _mm256_max_ps(a, b) is `a > b ? a : b`, so max(lo, v) keeps a NaN v.
template <UnaryFn Fn>
__m256 activate(__m256 v, __m256 alpha, __m256 beta) {
  if constexpr (Fn == UnaryFn::kRelu) {
    return _mm256_max_ps(_mm256_setzero_ps(), v);  // v < 0 ? 0 : v
  } else if constexpr (Fn == UnaryFn::kClip) {
    return _mm256_min_ps(beta, _mm256_max_ps(alpha, v));  // min(max(v, alpha), beta)
  } else if constexpr (Fn == UnaryFn::kLeakyRelu) {
    const __m256 neg = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ);  // v >= 0 ? v : alpha * v
    return _mm256_blendv_ps(v, _mm256_mul_ps(alpha, v), neg);
  } else {
    return v;
  }
}

template <UnaryFn Fn, bool HasBias, bool BiasVector, bool HasResidual>
void row_body(float* row, int64_t n, const float* bias, const float* residual, const Act& act) {
  const __m256 alpha = _mm256_set1_ps(act.alpha), beta = _mm256_set1_ps(act.beta);
  const __m256 bias_one = HasBias && !BiasVector ? _mm256_set1_ps(bias[0]) : _mm256_setzero_ps();
  auto step = [&](int64_t j, __m256 v, __m256i mask, bool full) {
    if constexpr (HasBias) {
      if constexpr (BiasVector) {
        v = _mm256_add_ps(v, full ? _mm256_loadu_ps(bias + j) : _mm256_maskload_ps(bias + j, mask));
      } else {
        v = _mm256_add_ps(v, bias_one);
      }
    }
    if constexpr (HasResidual) {
      v = _mm256_add_ps(v, full ? _mm256_loadu_ps(residual + j) : _mm256_maskload_ps(residual + j, mask));
    }
    return activate<Fn>(v, alpha, beta);
  };
  const __m256i all = _mm256_set1_epi32(-1);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(row + j, step(j, _mm256_loadu_ps(row + j), all, true));
  if (j < n) {
    const __m256i mask = tail_mask(n - j);
    _mm256_maskstore_ps(row + j, mask, step(j, _mm256_maskload_ps(row + j, mask), mask, false));
  }
}

template <UnaryFn Fn>
void row_for_act(float* row, int64_t n, const float* bias, int64_t bias_cs, const float* residual, const Act& act) {
  if (bias && bias_cs == 1) {
    if (residual) row_body<Fn, true, true, true>(row, n, bias, residual, act);
    else row_body<Fn, true, true, false>(row, n, bias, residual, act);
  } else if (bias) {
    if (residual) row_body<Fn, true, false, true>(row, n, bias, residual, act);
    else row_body<Fn, true, false, false>(row, n, bias, residual, act);
  } else {
    if (residual) row_body<Fn, false, false, true>(row, n, bias, residual, act);
    else row_body<Fn, false, false, false>(row, n, bias, residual, act);
  }
}

// Calls f(std::integral_constant<UnaryFn, Fn>{}) when fn is an activation the vector epilogue
// handles (identity, relu, clip, leaky relu); false, calling nothing, for any other.
template <class F>
bool with_vector_act(UnaryFn fn, F&& f) {
  switch (fn) {
    case UnaryFn::kIdentity: f(std::integral_constant<UnaryFn, UnaryFn::kIdentity>{}); return true;
    case UnaryFn::kRelu: f(std::integral_constant<UnaryFn, UnaryFn::kRelu>{}); return true;
    case UnaryFn::kClip: f(std::integral_constant<UnaryFn, UnaryFn::kClip>{}); return true;
    case UnaryFn::kLeakyRelu: f(std::integral_constant<UnaryFn, UnaryFn::kLeakyRelu>{}); return true;
    default: return false;
  }
}

template <UnaryFn Fn>
void transpose_finish(const float* src, int64_t lds, int64_t rows, int64_t full, float* dst, int64_t ldd,
                      const float* bias, const float* residual, int64_t ldr, const Act& act) {
  const __m256 alpha = _mm256_set1_ps(act.alpha), beta = _mm256_set1_ps(act.beta);
  for (int64_t q = 0; q < full; q += 8) {
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {
      const int64_t n = std::min<int64_t>(8, rows - r0);
      __m256 v[8];
      for (int64_t i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(src + (r0 + std::min(i, n - 1)) * lds + q);
      store_planes8(v, dst + q * ldd, ldd, r0, n, [&](__m256 x, int l) {
        if (bias) x = _mm256_add_ps(x, _mm256_set1_ps(bias[q + l]));
        if (residual) {
          const float* at = residual + (q + l) * ldr + r0;
          x = _mm256_add_ps(x, n == 8 ? _mm256_loadu_ps(at) : _mm256_maskload_ps(at, tail_mask(n)));
        }
        return activate<Fn>(x, alpha, beta);
      });
    }
  }
}

}  // namespace

int64_t transpose_finish_avx2(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd,
                              const float* bias, const float* residual, int64_t ldr, const Act& act) {
  const int64_t full = cols / 8 * 8;
  int64_t finished = full;
  const bool done = with_vector_act(act.fn, [&](auto fn) {
    transpose_finish<decltype(fn)::value>(src, lds, rows, full, dst, ldd, bias, residual, ldr, act);
  });
  if (!done) {  // transposed only
    transpose_finish<UnaryFn::kIdentity>(src, lds, rows, full, dst, ldd, nullptr, nullptr, 0, act);
    finished = 0;
  }
  for (int64_t q = full; q < cols; ++q)
    for (int64_t r = 0; r < rows; ++r) dst[q * ldd + r] = src[r * lds + q];
  return finished;
}

bool epilogue_row_avx2(float* row, int64_t n, const float* bias, int64_t bias_cs, const float* residual,
                       const Act& act) {
  if (bias && bias_cs != 0 && bias_cs != 1) return false;
  return with_vector_act(act.fn, [&](auto fn) { row_for_act<decltype(fn)::value>(row, n, bias, bias_cs, residual, act); });
}

}  // namespace walle

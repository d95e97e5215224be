// AVX2 + FMA depthwise tap accumulation (see depthwise_taps.hpp). Compiled with -mavx2 -mfma;
// only called when the plan's instruction set is AVX2 (isa.cpp checks the CPU).
#include <immintrin.h>

#include "depthwise_taps.hpp"

namespace walle {

namespace {

// Lane i is enabled when i < left (left in [1, 8]).
__m256i tail_mask(int64_t left) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), lanes);
}

}  // namespace

void depthwise_taps_avx2(const float* const* src, const float* w, int64_t taps, float* rows, int64_t n) {
  int64_t e = 0;
  // Eight vectors per step: an FMA has a latency of several cycles and two can issue per cycle,
  // so this many independent accumulator chains keep both units busy.
  for (; e + 64 <= n; e += 64) {
    __m256 acc[8];
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (int64_t t = 0; t < taps; ++t) {
      const __m256 wv = _mm256_broadcast_ss(w + t);
      const float* p = src[t] + e;
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) acc[v] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p + 8 * v), acc[v]);
    }
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v) _mm256_storeu_ps(rows + e + 8 * v, acc[v]);
  }
  for (; e + 8 <= n; e += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t t = 0; t < taps; ++t) acc = _mm256_fmadd_ps(_mm256_broadcast_ss(w + t), _mm256_loadu_ps(src[t] + e), acc);
    _mm256_storeu_ps(rows + e, acc);
  }
  if (e < n) {
    const __m256i mask = tail_mask(n - e);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t t = 0; t < taps; ++t) {
      acc = _mm256_fmadd_ps(_mm256_broadcast_ss(w + t), _mm256_maskload_ps(src[t] + e, mask), acc);
    }
    _mm256_maskstore_ps(rows + e, mask, acc);
  }
}

}  // namespace walle

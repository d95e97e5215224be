// AVX-512F depthwise tap accumulation (see depthwise_taps.hpp). Compiled with -mavx512f; only
// called when the plan's instruction set is AVX-512 (isa.cpp checks the CPU).
#include <immintrin.h>

#include "depthwise_taps.hpp"

namespace walle {

void depthwise_taps_avx512(const float* const* src, const float* w, int64_t taps, float* rows, int64_t n) {
  int64_t e = 0;
  // two vectors per step: independent FMA chains hide each other's latency
  for (; e + 32 <= n; e += 32) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (int64_t t = 0; t < taps; ++t) {
      const __m512 wv = _mm512_set1_ps(w[t]);
      a0 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(src[t] + e), a0);
      a1 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(src[t] + e + 16), a1);
    }
    _mm512_storeu_ps(rows + e, a0);
    _mm512_storeu_ps(rows + e + 16, a1);
  }
  for (; e < n; e += 16) {
    const int64_t left = n - e;
    const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t t = 0; t < taps; ++t) {
      acc = _mm512_fmadd_ps(_mm512_set1_ps(w[t]), _mm512_maskz_loadu_ps(mask, src[t] + e), acc);
    }
    _mm512_mask_storeu_ps(rows + e, mask, acc);
  }
}

}  // namespace walle

// AVX-512F micro-kernel: a 12x32 tile is 24 zmm accumulators, plus 2 for B and 1 broadcast of
// A (27 of 32 registers), enough independent FMAs to hide their latency on two FMA ports.
// Compiled with -mavx512f; only called after the run-time check in isa.cpp.
#include <immintrin.h>

#include "microkernel.hpp"

namespace walle {

namespace {

constexpr int kMr = 12;
constexpr int kNr = 32;

void kernel_12x32(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc,
                  bool accumulate, const float* /*next: no prefetch*/, int64_t) {
  __m512 acc[kMr][2];
#pragma GCC unroll 12
  for (int i = 0; i < kMr; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
#pragma GCC unroll 4  // as the AVX2 kernel: fewer loop updates per multiply-add
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(b);
    const __m512 b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 12
    for (int i = 0; i < kMr; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += kMr;
    b += ldb;
  }
#pragma GCC unroll 12
  for (int i = 0; i < kMr; ++i) {
    float* row = c + i * ldc;
    if (accumulate) {
      acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_loadu_ps(row));
      acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_loadu_ps(row + 16));
    }
    _mm512_storeu_ps(row, acc[i][0]);
    _mm512_storeu_ps(row + 16, acc[i][1]);
  }
}

}  // namespace

MicroKernel micro_kernel_avx512() { return {kMr, kNr, kernel_12x32}; }

}  // namespace walle

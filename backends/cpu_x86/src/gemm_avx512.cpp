// AVX-512F register tiles: 12 rows of 16 columns are 12 zmm accumulators, one B vector per k
// step and A broadcast into the multiply-add. The same 16-column tile as AVX2's, so packed
// weights, blocked activations and every tile variant carry over; the taller tile has the
// independent multiply-adds two 512-bit FMA ports need. Compiled with -mavx512f; only called
// after the run-time check in isa.cpp.
#include <immintrin.h>

#include <type_traits>

#include "microkernel.hpp"

namespace walle {
namespace gemm_avx512 {
namespace {

constexpr int kMr = 8;

using Row = __m512;

inline Row row_zero() { return _mm512_setzero_ps(); }
inline Row row_load(const float* p) { return _mm512_loadu_ps(p); }
inline Row row_load(const float* p, int64_t second) {
  if (second == 8) return _mm512_loadu_ps(p);
  const __m512d lo = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(p)));
  return _mm512_castpd_ps(_mm512_insertf64x4(lo, _mm256_castps_pd(_mm256_loadu_ps(p + second)), 1));
}
inline void row_store(float* p, int64_t second, Row v) {
  if (second == 8) return _mm512_storeu_ps(p, v);
  _mm256_storeu_ps(p, _mm512_castps512_ps256(v));
  _mm256_storeu_ps(p + second, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
inline Row row_splat(float x) { return _mm512_set1_ps(x); }
inline Row row_fma(float a, Row b, Row acc) { return _mm512_fmadd_ps(_mm512_set1_ps(a), b, acc); }
inline Row row_add(Row x, Row y) { return _mm512_add_ps(x, y); }
inline Row row_max(Row x, Row y) { return _mm512_max_ps(x, y); }
inline Row row_min(Row x, Row y) { return _mm512_min_ps(x, y); }

#include "gemm_tiles.inc"

}  // namespace
}  // namespace gemm_avx512

MicroKernel micro_kernel_avx512() { return gemm_avx512::tile_kernels(); }

}  // namespace walle

// AVX2 + FMA register tiles: 6 rows of 16 columns are 12 ymm accumulators, plus 2 for B and 1
// broadcast of A, which fills the 16 ymm registers without spilling. Compiled with -mavx2 -mfma;
// only called after the run-time check in isa.cpp.
#include <immintrin.h>

#include <type_traits>

#include "microkernel.hpp"

namespace walle {
namespace gemm_avx2 {
namespace {

constexpr int kMr = 6;

struct Row {
  __m256 lo, hi;
};

inline Row row_zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline Row row_load(const float* p, int64_t second = 8) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + second)}; }
inline void row_store(float* p, int64_t second, Row v) {
  _mm256_storeu_ps(p, v.lo);
  _mm256_storeu_ps(p + second, v.hi);
}
inline Row row_splat(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
inline Row row_fma(float a, Row b, Row acc) {
  const __m256 av = _mm256_set1_ps(a);
  return {_mm256_fmadd_ps(av, b.lo, acc.lo), _mm256_fmadd_ps(av, b.hi, acc.hi)};
}
inline Row row_add(Row x, Row y) { return {_mm256_add_ps(x.lo, y.lo), _mm256_add_ps(x.hi, y.hi)}; }
inline Row row_max(Row x, Row y) { return {_mm256_max_ps(x.lo, y.lo), _mm256_max_ps(x.hi, y.hi)}; }
inline Row row_min(Row x, Row y) { return {_mm256_min_ps(x.lo, y.lo), _mm256_min_ps(x.hi, y.hi)}; }

#include "gemm_tiles.inc"

}  // namespace
}  // namespace gemm_avx2

MicroKernel micro_kernel_avx2() { return gemm_avx2::tile_kernels(); }

}  // namespace walle

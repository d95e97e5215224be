// AVX2 + FMA micro-kernel: a 6x16 tile is 12 ymm accumulators, plus 2 for B and 1 broadcast
// of A, which fills the 16 ymm registers without spilling. Compiled with -mavx2 -mfma; only
// called after the run-time check in isa.cpp.
#include <immintrin.h>

#include <type_traits>

#include "microkernel.hpp"

namespace walle {

namespace {

constexpr int kMr = 6;
constexpr int kNr = 16;

// The fused epilogue of tile row i, the separate epilogue pass's operations in its order so the
// result is bit-identical: + bias (one per row, or per column when ColumnBias), + residual (its
// second 8 columns `residual_second` floats after its first), then relu / clip.
template <bool ColumnBias>
inline void finish_row(__m256 (&v)[2], int i, const TileEpilogue& ep, int64_t residual_second) {
  if (ep.bias && ColumnBias) {
    v[0] = _mm256_add_ps(v[0], _mm256_loadu_ps(ep.bias));
    v[1] = _mm256_add_ps(v[1], _mm256_loadu_ps(ep.bias + 8));
  } else if (ep.bias) {
    const __m256 bias = _mm256_broadcast_ss(ep.bias + i);
    v[0] = _mm256_add_ps(v[0], bias);
    v[1] = _mm256_add_ps(v[1], bias);
  }
  if (ep.residual) {
    const float* r = ep.residual + i * ep.ldr;
    v[0] = _mm256_add_ps(v[0], _mm256_loadu_ps(r));
    v[1] = _mm256_add_ps(v[1], _mm256_loadu_ps(r + residual_second));
  }
  if (ep.act != 0) {  // max(lo, v) keeps a NaN v, as the scalar `v < lo ? lo : v` does
    const __m256 lo = _mm256_set1_ps(ep.act == 1 ? 0.f : ep.lo);
    v[0] = _mm256_max_ps(lo, v[0]);
    v[1] = _mm256_max_ps(lo, v[1]);
    if (ep.act == 2) {
      const __m256 hi = _mm256_set1_ps(ep.hi);
      v[0] = _mm256_min_ps(hi, v[0]);
      v[1] = _mm256_min_ps(hi, v[1]);
    }
  }
}

// Rows [0, R) of a finished tile to c (row i at c + i * ldc, its second 8 columns `second` on):
// + what c held when accumulating, then (Fused) the epilogue.
template <int R, bool Fused, bool ColumnBias>
inline void store_rows(__m256 (&acc)[R][2], float* c, int64_t ldc, int64_t second, bool accumulate,
                       const TileEpilogue* ep, int64_t residual_second) {
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i) {
    float* row = c + i * ldc;
    if (accumulate) {
      acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_loadu_ps(row));
      acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_loadu_ps(row + second));
    }
    if constexpr (Fused) finish_row<ColumnBias>(acc[i], i, *ep, residual_second);
    _mm256_storeu_ps(row, acc[i][0]);
    _mm256_storeu_ps(row + second, acc[i][1]);
  }
}

// The first R rows of a tile (R = kMr for a whole one; A's panels always hold kMr rows).
// Row i of the tile goes to c + i * ldc, its second 8 columns `second` floats after its first
// (8 in a row-major C; a block apart in a blocked one, whose bias is per column: ColumnBias).
// Row k of B is at b + k * ldb, or (Gather) at b + b_offsets[k].
template <int R, bool Fused, bool ColumnBias = false, bool Gather = false>
inline void tile_rx16(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate,
                      const float* next, int64_t next_ld, const TileEpilogue* ep, int64_t second = 8,
                      const int64_t* b_offsets = nullptr) {
  __m256 acc[R][2];
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  // unrolled four times: the loop's own pointer and counter updates otherwise cost ~10% of the
  // FMA throughput (measured: 40 -> 45 G multiply-adds/s on an L1/L2-resident tile stream)
  if (!next) next_ld = 0;  // prefetching the same line over and over: harmless
  const char* pf = reinterpret_cast<const char*>(next ? next : a);
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    _mm_prefetch(pf, _MM_HINT_T0);
    pf += next_ld * static_cast<int64_t>(sizeof(float));
    const float* bk = Gather ? b + b_offsets[k] : b;
    const __m256 b0 = _mm256_loadu_ps(bk);
    const __m256 b1 = _mm256_loadu_ps(bk + 8);
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += kMr;
    if constexpr (!Gather) b += ldb;
  }
  store_rows<R, Fused, ColumnBias>(acc, c, ldc, second, accumulate, ep, 8);
}

void kernel_6x16(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate,
                 const float* next, int64_t next_ld) {
  tile_rx16<kMr, false>(kc, a, b, ldb, c, ldc, accumulate, next, next_ld, nullptr);
}

void kernel_6x16_fused(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc,
                       bool accumulate, const float* next, int64_t next_ld, const TileEpilogue& ep) {
  tile_rx16<kMr, true>(kc, a, b, ldb, c, ldc, accumulate, next, next_ld, &ep);
}

// f(std::integral_constant<int, R>{}) for R = rows (1 .. kMr).
template <class F>
void with_rows(int rows, F f) {
  switch (rows) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    default: return f(std::integral_constant<int, kMr>{});
  }
}

void kernel_rows(int rows, int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc,
                 bool accumulate, const float* next, int64_t next_ld, const TileEpilogue* ep) {
  with_rows(rows, [&](auto r) {
    if (ep) tile_rx16<decltype(r)::value, true>(kc, a, b, ldb, c, ldc, accumulate, next, next_ld, ep);
    else tile_rx16<decltype(r)::value, false>(kc, a, b, ldb, c, ldc, accumulate, next, next_ld, nullptr);
  });
}

void kernel_6x16_blocked(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t c_block,
                         bool accumulate, const float* next, int64_t next_ld, const TileEpilogue* ep) {
  if (ep) tile_rx16<kMr, true, true>(kc, a, b, ldb, c, 8, accumulate, next, next_ld, ep, c_block);
  else tile_rx16<kMr, false>(kc, a, b, ldb, c, 8, accumulate, next, next_ld, nullptr, c_block);
}

void kernel_gathered(int rows, int64_t kc, const float* a, const float* b, const int64_t* b_offsets, float* c,
                     int64_t ldc, const TileEpilogue* ep) {
  with_rows(rows, [&](auto r) {
    if (ep) tile_rx16<decltype(r)::value, true, false, true>(kc, a, b, 0, c, ldc, false, nullptr, 0, ep, 8, b_offsets);
    else tile_rx16<decltype(r)::value, false, false, true>(kc, a, b, 0, c, ldc, false, nullptr, 0, nullptr, 8, b_offsets);
  });
}

// The first R rows of a tile whose A is read in 8-column blocks in place (MicroKernel::a_blocked):
// the same multiply-adds in the same order as tile_rx16 over a packed panel, and the same
// epilogue as its blocked variant, so the same bits.
template <int R, bool Fused>
inline void tile_rx16_blocked_a(int64_t kc, const float* a, int64_t a_block, const float* b, int64_t ldb, float* c,
                                int64_t ldc, int64_t second, bool accumulate, const TileEpilogue* ep) {
  __m256 acc[R][2];
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k0 = 0; k0 < kc; k0 += 8, a += a_block) {
#pragma GCC unroll 8
    for (int kk = 0; kk < 8; ++kk) {
      const __m256 b0 = _mm256_loadu_ps(b);
      const __m256 b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
      for (int i = 0; i < R; ++i) {
        const __m256 ai = _mm256_broadcast_ss(a + i * 8 + kk);
        acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
      }
      b += ldb;
    }
  }
  store_rows<R, Fused, true>(acc, c, ldc, second, accumulate, ep, Fused ? ep->residual_second : 8);
}

void kernel_a_blocked(int rows, int64_t kc, const float* a, int64_t a_block, const float* b, int64_t ldb, float* c,
                      int64_t ldc, int64_t second, bool accumulate, const TileEpilogue* ep) {
  with_rows(rows, [&](auto r) {
    if (ep) tile_rx16_blocked_a<decltype(r)::value, true>(kc, a, a_block, b, ldb, c, ldc, second, accumulate, ep);
    else tile_rx16_blocked_a<decltype(r)::value, false>(kc, a, a_block, b, ldb, c, ldc, second, accumulate, nullptr);
  });
}

// The first R rows of a tile whose A is read from an image (MicroKernel::a_gathered): the same
// multiply-adds in the same order as tile_rx16 over a packed panel, so the same bits.
template <int R>
inline void tile_rx16_gathered_a(int64_t kc, const float* a, const int64_t* a_rows, const int64_t* a_taps,
                                 const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  const float* row[R];
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i) row[i] = a + a_rows[i];
  __m256 acc[R][2];
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const int64_t tap = a_taps[k];
    const __m256 b0 = _mm256_loadu_ps(b);
    const __m256 b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i) {
      const __m256 ai = _mm256_broadcast_ss(row[i] + tap);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
    b += ldb;
  }
  store_rows<R, false, false>(acc, c, ldc, 8, accumulate, nullptr, 8);
}

void kernel_a_gathered(int rows, int64_t kc, const float* a, const int64_t* a_rows, const int64_t* a_taps,
                       const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  with_rows(rows, [&](auto r) {
    tile_rx16_gathered_a<decltype(r)::value>(kc, a, a_rows, a_taps, b, ldb, c, ldc, accumulate);
  });
}

// Row 0 of an A panel against P whole B panels (MicroKernel::row_panels): 2 P independent
// accumulators per k step; each column's multiply-adds are tile_rx16<1>'s, in its order.
template <int P>
inline void row_against_panels(int64_t kc, const float* a, const float* b, int64_t ldb, int64_t b_stride, float* c,
                               bool accumulate) {
  __m256 acc[P][2];
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p) acc[p][0] = acc[p][1] = _mm256_setzero_ps();
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 ak = _mm256_broadcast_ss(a + k * kMr);
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      const float* bk = b + p * b_stride + k * ldb;
      acc[p][0] = _mm256_fmadd_ps(ak, _mm256_loadu_ps(bk), acc[p][0]);
      acc[p][1] = _mm256_fmadd_ps(ak, _mm256_loadu_ps(bk + 8), acc[p][1]);
    }
  }
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p) {
    float* out = c + p * kNr;
    if (accumulate) {
      acc[p][0] = _mm256_add_ps(acc[p][0], _mm256_loadu_ps(out));
      acc[p][1] = _mm256_add_ps(acc[p][1], _mm256_loadu_ps(out + 8));
    }
    _mm256_storeu_ps(out, acc[p][0]);
    _mm256_storeu_ps(out + 8, acc[p][1]);
  }
}

void kernel_row_panels(int panels, int64_t kc, const float* a, const float* b, int64_t ldb, int64_t b_stride,
                       float* c, bool accumulate) {
  static_assert(MicroKernel::kRowPanels == 4, "one case per panel count");
  switch (panels) {
    case 1: return row_against_panels<1>(kc, a, b, ldb, b_stride, c, accumulate);
    case 2: return row_against_panels<2>(kc, a, b, ldb, b_stride, c, accumulate);
    case 3: return row_against_panels<3>(kc, a, b, ldb, b_stride, c, accumulate);
    default: return row_against_panels<4>(kc, a, b, ldb, b_stride, c, accumulate);
  }
}

}  // namespace

MicroKernel micro_kernel_avx2() {
  MicroKernel k{kMr, kNr, kernel_6x16, kernel_6x16_fused, kernel_rows, kernel_6x16_blocked, kernel_gathered,
                kernel_a_blocked};
  k.row_panels = kernel_row_panels;
  k.a_gathered = kernel_a_gathered;
  return k;
}

}  // namespace walle

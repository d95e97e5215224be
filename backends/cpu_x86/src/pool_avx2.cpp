// POOL2D plane loops compiled for -mavx2 -mfma; only called when the plan's instruction set is AVX2 or better.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "pool.hpp"
#include "transpose_avx2.hpp"

namespace walle {
namespace pool_avx2 {
namespace {

// nan_max on eight lanes: max_ps returns its second operand when either is a NaN, so a NaN
// already in acc is put back.
inline __m256 nan_max8(__m256 acc, __m256 v) {
  return _mm256_blendv_ps(_mm256_max_ps(acc, v), acc, _mm256_cmp_ps(acc, acc, _CMP_UNORD_Q));
}

// Output columns [lo, hi) of a 3-wide, stride-2 max over `row`, whose windows lie inside it:
// out[ox] = max(row[2 ox - pl], row[2 ox - pl + 1], row[2 ox - pl + 2]), combined left to
// right like pool_planes' taps. Eight outputs read 18 consecutive values, split into their
// even and odd columns by in-lane shuffles; the lanes come out in the order
// 0 1 4 5 2 3 6 7 and one permute restores it. A last partial group is done as the eight
// columns ending at hi (recomputing some). Returns the first column not done: hi, or lo
// when there are fewer than eight. `row` must be readable one float past the inner
// windows' extent.
int64_t max3_stride2(const float* row, int64_t pl, float* out, int64_t lo, int64_t hi) {
  if (hi - lo < 8) return lo;
  for (int64_t group = lo; group < hi; group += 8) {
    const int64_t ox = std::min(group, hi - 8);
    const float* at = row + 2 * ox - pl;
    const __m256 a = _mm256_loadu_ps(at), b = _mm256_loadu_ps(at + 8);
    const __m256 c = _mm256_loadu_ps(at + 2), d = _mm256_loadu_ps(at + 10);
    const __m256 left = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 mid = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    const __m256 right = _mm256_shuffle_ps(c, d, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 m = nan_max8(nan_max8(left, mid), right);
    _mm256_storeu_ps(out + ox, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(m), _MM_SHUFFLE(3, 1, 2, 0))));
  }
  return hi;
}

}  // namespace

#include "pool_planes.inc"

namespace {

// Rows and columns of the padded extent the windows cover, from (-pt, -pl).
void block8_extent(const PoolParams& p, int64_t& rows, int64_t& cols) {
  rows = (p.oh - 1) * p.sh + (p.kh - 1) * p.dh + 1;
  cols = (p.ow - 1) * p.sw + (p.kw - 1) * p.dw + 1;
}

}  // namespace

int64_t block8_floats(const PoolParams& p) {
  int64_t rows, cols;
  block8_extent(p, rows, cols);
  return rows * cols * 8 + 8;  // + room to align to 32 bytes
}

namespace {

// pool_block8 for a max or an average (IsMax) and, K = 3, a 3x3 undilated window (nearly every
// pool), known at compile time: read at run time, the per-tap branches and loops kept each
// pixel's vector in memory (the depthwise kernel had the same trouble, see its README section).
template <bool IsMax, int K>
void block8(const PoolParams& p, const float* x, float* y, float* scratch) {
  int64_t rows, cols;
  block8_extent(p, rows, cols);
  const int64_t plane_in = p.h * p.w, plane_out = p.oh * p.ow;
  float* padded = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch) + 31) & ~uintptr_t(31));
  // cells outside the input take the value that leaves a max or a sum unchanged
  const __m256 fill = _mm256_set1_ps(IsMax ? -std::numeric_limits<float>::infinity() : 0.f);
  pad_planes8(x, plane_in, false, p.h, p.w, p.pt, p.pl, rows, cols, fill, padded);
  // the average's divisors, as pool_planes counts them: window taps per output column and row
  auto counts = [&](int64_t outputs, int64_t stride, int64_t pad, int64_t pad_end, int64_t dil, int64_t taps,
                    int64_t size) {
    std::vector<int64_t> count(static_cast<size_t>(outputs));
    for (int64_t o = 0; o < outputs; ++o) {
      const int64_t start = o * stride - pad;
      int64_t lo, hi;
      tap_range(start, dil, taps, size, lo, hi);
      count[static_cast<size_t>(o)] = p.count_include_pad ? padded_taps(start, dil, taps, size, pad, pad_end) : hi - lo;
    }
    return count;
  };
  const std::vector<int64_t> count_x = counts(p.ow, p.sw, p.pl, p.pr, p.dw, p.kw, p.w);
  const std::vector<int64_t> count_y = counts(p.oh, p.sh, p.pt, p.pb, p.dh, p.kh, p.h);
  const int64_t row_step = p.dh * cols * 8;
  // the eight planes' output pixel (oy, ox): each window column's rows combined in order, then
  // the columns in order
  const int64_t kh = K ? K : p.kh, kw = K ? K : p.kw, dw = K ? 1 : p.dw;
  auto pixel = [&](int64_t oy, int64_t ox) {
    const float* corner = padded + (oy * p.sh * cols + ox * p.sw) * 8;
    __m256 out = _mm256_setzero_ps();
#pragma GCC unroll 3
    for (int64_t j = 0; j < kw; ++j) {
      const float* at = corner + j * dw * 8;
      __m256 col = _mm256_load_ps(at);
#pragma GCC unroll 3
      for (int64_t i = 1; i < kh; ++i) {
        const __m256 v = _mm256_load_ps(at + i * row_step);
        col = IsMax ? nan_max8(col, v) : _mm256_add_ps(col, v);
      }
      out = j == 0 ? col : IsMax ? nan_max8(out, col) : _mm256_add_ps(out, col);
    }
    if constexpr (IsMax) return out;
    const int64_t count = std::max<int64_t>(count_y[static_cast<size_t>(oy)] * count_x[static_cast<size_t>(ox)], 1);
    return _mm256_div_ps(out, _mm256_set1_ps(static_cast<float>(count)));
  };
  // eight output pixels at a time in plane order, across row ends (short rows would otherwise
  // leave a partial group per row), transposed back to eight runs of the eight planes
  int64_t oy = 0, ox = 0;
  for (int64_t at = 0; at < plane_out; at += 8) {
    const int64_t n = std::min<int64_t>(8, plane_out - at);
    __m256 r[8];
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) {
      if (q < n) {
        r[q] = pixel(oy, ox);
        if (++ox == p.ow) ox = 0, ++oy;
      } else {
        r[q] = r[q - 1];
      }
    }
    store_planes8(r, y, plane_out, at, n, [](__m256 v, int) { return v; });
  }
}

}  // namespace

void pool_block8(const PoolParams& p, const float* x, float* y, float* scratch) {
  const bool k3 = p.kh == 3 && p.kw == 3 && p.dh == 1 && p.dw == 1;
  if (p.is_max) k3 ? block8<true, 3>(p, x, y, scratch) : block8<true, 0>(p, x, y, scratch);
  else k3 ? block8<false, 3>(p, x, y, scratch) : block8<false, 0>(p, x, y, scratch);
}

}  // namespace pool_avx2
}  // namespace walle

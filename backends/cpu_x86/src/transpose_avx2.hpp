// An 8x8 transpose of floats in AVX registers and the eight-plane interleave built on it, for the
// AVX2 translation units that work on eight channels at a time. Include it only from files
// compiled with -mavx2: the functions are internal to each of them, so no copy of them reaches
// code built for the baseline.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace walle {
namespace {

// r[i] holds row i of an 8x8 block; afterwards r[i] holds column i.
inline void transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// dst[i][l] = src[l * plane_stride + i] for i < n, l < 8: pixels [0, n) of one row of eight
// planes, interleaved ([pixel][plane], dst 32-byte aligned). Eight pixels per 8x8 transpose; the
// row's tail one by one, or, when each plane may be read up to 7 floats past the row's end
// (read_past: any row but a plane's last), by one more transpose of which only the tail is kept.
inline void interleave_row8(const float* src, int64_t plane_stride, int64_t n, float* dst, bool read_past = false) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 r[8];
    for (int l = 0; l < 8; ++l) r[l] = _mm256_loadu_ps(src + l * plane_stride + i);
    transpose8x8(r);
    for (int q = 0; q < 8; ++q) _mm256_store_ps(dst + (i + q) * 8, r[q]);
  }
  if (read_past && i < n) {
    __m256 r[8];
    for (int l = 0; l < 8; ++l) r[l] = _mm256_loadu_ps(src + l * plane_stride + i);
    transpose8x8(r);
    for (int64_t q = 0; q < n - i; ++q) _mm256_store_ps(dst + (i + q) * 8, r[q]);
    return;
  }
  for (; i < n; ++i) {
    for (int l = 0; l < 8; ++l) dst[i * 8 + l] = src[l * plane_stride + i];
  }
}

// The padded [rows][cols][8] copy of eight planes of h x w floats (plane_stride apart) or, when
// blocked, of one NCHW8c block ([h][w][8]): input pixel (iy, ix) at (iy + pt, ix + pl), `fill`
// in every other cell. Only the cells around the copied pixels are filled, not the whole copy
// first (it is as large as the input).
inline void pad_planes8(const float* x, int64_t plane_stride, bool blocked, int64_t h, int64_t w, int64_t pt,
                        int64_t pl, int64_t rows, int64_t cols, __m256 fill, float* padded) {
  auto fill_cells = [&](float* p, int64_t cells) {
    for (int64_t i = 0; i < cells * 8; i += 8) _mm256_store_ps(p + i, fill);
  };
  const int64_t n = std::min(w, cols - pl);  // the pixels of a row that land in the copy
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t iy = r - pt;
    float* row = padded + r * cols * 8;
    if (iy < 0 || iy >= h || n <= 0) {
      fill_cells(row, cols);
      continue;
    }
    fill_cells(row, pl);
    fill_cells(row + (pl + n) * 8, cols - pl - n);
    if (blocked) std::copy_n(x + iy * w * 8, n * 8, row + pl * 8);
    else interleave_row8(x + iy * w, plane_stride, n, row + pl * 8, iy + 1 < h);
  }
}

// r holds eight output pixels' eight planes (the last of them repeated when n < 8 are real):
// transposed, plane l's n pixels go to y + l * plane + at, each vector through finish(v, l)
// first (which may read plane l's n pixels of another tensor at the same place).
template <class Finish>
inline void store_planes8(__m256 (&r)[8], float* y, int64_t plane, int64_t at, int64_t n, Finish finish) {
  transpose8x8(r);
  alignas(32) float lanes[8];
  for (int l = 0; l < 8; ++l) {
    float* out = y + l * plane + at;
    if (n == 8) {
      _mm256_storeu_ps(out, finish(r[l], l));
      continue;
    }
    _mm256_store_ps(lanes, finish(r[l], l));
    for (int64_t p = 0; p < n; ++p) out[p] = lanes[p];
  }
}

}  // namespace
}  // namespace walle

// AVX2 + FMA depthwise tap accumulation (see depthwise_taps.hpp). Compiled with -mavx2 -mfma;
// only called when the plan's instruction set is AVX2 (isa.cpp checks the CPU).
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "depthwise_taps.hpp"
#include "transpose_avx2.hpp"

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

int64_t depthwise_block_scratch_floats(int64_t oh, int64_t ow, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                       int64_t dh, int64_t dw) {
  const int64_t rows = (oh - 1) * sh + (kh - 1) * dh + 1, cols = (ow - 1) * sw + (kw - 1) * dw + 1;
  // a patch of one output row (see depthwise_block8_avx2): whole groups of 8 pixels
  const int64_t patch = ((kh - 1) * dh + 1) * (((ow + 7) / 8 * 8 - 1) * sw + (kw - 1) * dw + 1);
  return kh * kw * 8 + std::max(rows * cols, patch) * 8;  // the tap weights, then the padded image
}

namespace {

// Output rows at least this wide read a blocked input in place with patches at the borders (see
// depthwise_block8_avx2): measured in MobileNetV2, rows of 56 pixels take 20-50 % less time that
// way than through a padded copy of the whole plane, rows of 28 up to 20 % more (the copy of a
// small plane stays in L1, the per-row patches do not pay off). Narrower rows with 3x3 windows
// are read in place by narrow_rows, other windows through the padded copy.
constexpr int64_t kDepthwiseInPlaceWidth = 32;

// r[p] = the eight channels of the output pixel whose window starts at base[p] in the padded
// image, summed tap by tap in order from zero: eight accumulators and one weight vector in
// registers (all the weights per pixel would spill). KH, KW: the window when known at compile
// time (3x3), else 0. OneRow: the pixels are consecutive in one row, base[p] = base[0] + p
// strides (one pointer instead of eight: the common case, and faster).
template <int KH, int KW, bool OneRow>
inline void taps8(const DepthwiseBlock& b, int64_t cols, const float* wv, const float* const (&base)[8],
                  __m256 (&r)[8]) {
  const int64_t kh = KH ? KH : b.kh, kw = KW ? KW : b.kw;
  for (int p = 0; p < 8; ++p) r[p] = _mm256_setzero_ps();
  for (int64_t i = 0; i < kh; ++i) {
    for (int64_t j = 0; j < kw; ++j) {
      const __m256 wt = _mm256_load_ps(wv + (i * kw + j) * 8);
      const int64_t offset = (i * b.dh * cols + j * b.dw) * 8;
#pragma GCC unroll 8
      for (int p = 0; p < 8; ++p) {
        const float* src = OneRow ? base[0] + p * b.sw * 8 : base[p];
        r[p] = _mm256_fmadd_ps(wt, _mm256_load_ps(src + offset), r[p]);
      }
    }
  }
}

// Which input columns of a group's windows taps8_3x3 treats as padding (reads nothing from).
// Column 0 feeds only the first window's first tap and the last column only the last window's
// last tap, so a row's first and last groups of 8 skip them at compile time; kClip takes a
// range known only at run time, for rows narrower than a group.
enum class PadColumns { kNone, kFirst, kLast, kBoth, kClip };

// taps8 for a 3x3 window with dilation 1, column stride S (1 or 2) and the pixels in one row:
// each input vector of a window row is loaded once for the output pixels that read it (S = 1: 10
// loads per window row instead of 24, which bounded the loop; S = 2: 17). The same sums in the
// same order. Window row i is read at x + row + i * cols * 8 + c * 8 for columns c (an offset
// that may lie before the image when row i0 or column 0 is padding). Only rows [i0, i1) exist:
// padding rows are skipped. Padding columns (Pad) add nothing either: skipped when known at
// compile time; with kClip only columns [c0, c1) exist and the others are read from `zeros`
// (8 zero floats). Skipping those at run time made every multiply-add conditional, and the
// compiler then kept the eight sums in memory: MobileNetV2's 14x14 layers took 0.056-0.084 ms
// (it varied by the hour), against 0.048 now.
template <int S, PadColumns Pad = PadColumns::kNone>
__attribute__((always_inline)) inline void taps8_3x3(int64_t cols, const float* wv, const float* x, int64_t row,
                                                    __m256 (&r)[8], int i0 = 0, int i1 = 3, int c0 = 0,
                                                    int c1 = 7 * S + 3, const float* zeros = nullptr) {
  constexpr int kColumns = 7 * S + 3;  // input columns the 8 windows of one row cover
  constexpr bool kClip = Pad == PadColumns::kClip;
  constexpr bool kSkipFirst = Pad == PadColumns::kFirst || Pad == PadColumns::kBoth;
  constexpr bool kSkipLast = Pad == PadColumns::kLast || Pad == PadColumns::kBoth;
  for (int p = 0; p < 8; ++p) r[p] = _mm256_setzero_ps();
  for (int i = i0; i < i1; ++i) {
    const int64_t line = row + i * cols * 8;
    const __m256 w[3] = {_mm256_load_ps(wv + i * 24), _mm256_load_ps(wv + i * 24 + 8),
                         _mm256_load_ps(wv + i * 24 + 16)};
    const float* at[kColumns];  // with kClip, where column c is read from
    if constexpr (kClip) {
      for (int c = 0; c < kColumns; ++c) at[c] = c < c0 || c >= c1 ? zeros : x + line + c * 8;
    }
#pragma GCC unroll 17
    for (int c = 0; c < kColumns; ++c) {
      if ((kSkipFirst && c == 0) || (kSkipLast && c == kColumns - 1)) continue;
      const __m256 v = _mm256_load_ps(kClip ? at[c] : x + line + c * 8);
#pragma GCC unroll 3
      for (int j = 0; j < 3; ++j) {  // pixel p reads column c as its tap j when c = S p + j
        const int p = (c - j) / S;
        if (c >= j && (c - j) % S == 0 && p < 8) r[p] = _mm256_fmadd_ps(w[j], v, r[p]);
      }
    }
  }
}

// `groups` groups of 8 consecutive output pixels of one row whose 3x3 windows lie inside a
// blocked image of rows `w_in` pixels long, the first window's corner at x; store(r, at, 8)
// takes each group from plane position `at` on. A function of its own, with the store taken by
// value, so that the sums and what the store reads stay in registers.
template <int S, class Store>
__attribute__((noinline)) void inner_groups(const float* x, int64_t w_in, const float* wv, int64_t groups,
                                            int64_t at, Store store) {
  for (int64_t g = 0; g < groups; ++g, x += 8 * S * 8, at += 8) {
    __m256 r[8];
    taps8_3x3<S>(w_in, wv, x, 0, r);
    store(r, at, 8);
  }
}

// The narrow in-place rows of depthwise_block8_avx2 (see there), at column stride S; store(r,
// at, n) stores the n <= 8 pixels from plane position `at` on.
template <int S, class Store>
__attribute__((noinline)) void narrow_rows(const DepthwiseBlock& b, const float* wv, Store store) {
  constexpr int kColumns = 7 * S + 3;  // input columns a group's windows cover
  alignas(32) static constexpr float zeros[8] = {};
  for (int64_t oy = 0; oy < b.oh; ++oy) {
    const int64_t iy = oy * b.sh - b.pt;  // the window's first input row
    const int i0 = static_cast<int>(std::clamp<int64_t>(-iy, 0, 3));
    const int i1 = static_cast<int>(std::clamp<int64_t>(b.h - iy, i0, 3));
    for (int64_t group = 0; group < b.ow; group += 8) {
      const int64_t ox = b.ow >= 8 ? std::min(group, b.ow - 8) : group;
      const int64_t n = std::min<int64_t>(8, b.ow - ox);
      const int64_t ix = ox * S - b.pl;  // the first window's first input column
      const int c0 = static_cast<int>(std::clamp<int64_t>(-ix, 0, kColumns));
      const int c1 = static_cast<int>(std::clamp<int64_t>(b.w_in - ix, c0, kColumns));
      const int64_t at = (iy * b.w_in + ix) * 8;  // where column 0 of window row 0 would be
      const bool first = c0 == 1, last = c1 == kColumns - 1;
      __m256 r[8];
      if (n < 8 || c0 > 1 || c1 < kColumns - 1) {
        taps8_3x3<S, PadColumns::kClip>(b.w_in, wv, b.x, at, r, i0, i1, c0, c1, zeros);
      } else if (first && last) {
        taps8_3x3<S, PadColumns::kBoth>(b.w_in, wv, b.x, at, r, i0, i1);
      } else if (first) {
        taps8_3x3<S, PadColumns::kFirst>(b.w_in, wv, b.x, at, r, i0, i1);
      } else if (last) {
        taps8_3x3<S, PadColumns::kLast>(b.w_in, wv, b.x, at, r, i0, i1);
      } else {
        taps8_3x3<S>(b.w_in, wv, b.x, at, r, i0, i1);
      }
      store(r, oy * b.ow + ox, n);
    }
  }
}

// depthwise_block8_avx2 for one output layout, residual and activation, known at compile time:
// with them read at run time, the store that served every case kept the eight sums in memory,
// and a 3x3 layer took about 115 cycles per 64 outputs where its multiply-adds need 40.
template <bool YBlocked, bool HasResidual, int Act>
void block8(const DepthwiseBlock& b) {
  const int64_t taps = b.kh * b.kw, plane_in = b.h * b.w_in, plane_out = b.oh * b.ow;
  float* wv = b.scratch;                // [taps][8]
  float* padded = b.scratch + taps * 8;  // a padded copy of the input, see below
  for (int64_t t = 0; t < taps; ++t) {
    for (int l = 0; l < 8; ++l) wv[t * 8 + l] = b.w[l * taps + t];
  }
  const __m256 bias = b.bias ? _mm256_loadu_ps(b.bias) : _mm256_setzero_ps();
  const __m256 lo = _mm256_set1_ps(b.act == 1 ? 0.f : b.lo), hi = _mm256_set1_ps(b.hi);
  // + residual (plane l's pixels of the group), then the activation
  const float* const residual_planes = b.residual;
  float* const y = b.y;
  const bool has_bias = b.bias != nullptr;
  auto finish = [=](__m256 v, int l, int64_t at, int64_t n) {
    if constexpr (HasResidual) {
      const float* residual = residual_planes + l * plane_out + at;
      if (n == 8) {
        v = _mm256_add_ps(v, _mm256_loadu_ps(residual));
      } else {  // only the group's pixels: the plane may end here
        alignas(32) float lanes[8] = {};
        std::copy_n(residual, n, lanes);
        v = _mm256_add_ps(v, _mm256_load_ps(lanes));
      }
    }
    if constexpr (Act != 0) v = _mm256_max_ps(lo, v);  // max(lo, v) keeps a NaN v, as the row epilogue does
    if constexpr (Act == 2) v = _mm256_min_ps(hi, v);
    return v;
  };
  const bool three = b.kh == 3 && b.kw == 3;  // nearly every layer
  const bool unit3 = three && b.dh == 1 && b.dw == 1;  // with sw 1 or 2: taps8_3x3
  // bias, then the n <= 8 pixels from plane position `at` on stored through finish
  auto store = [=](__m256 (&r)[8], int64_t at, int64_t n) {
    if (has_bias) {
      for (auto& v : r) v = _mm256_add_ps(v, bias);
    }
    if constexpr (YBlocked) {  // each pixel's eight channels as they are
      if (n == 8) {
#pragma GCC unroll 8
        for (int p = 0; p < 8; ++p) _mm256_store_ps(y + (at + p) * 8, finish(r[p], 0, at, n));
        return;
      }
#pragma GCC unroll 8
      for (int p = 0; p < 8; ++p) {
        if (p < n) _mm256_store_ps(y + (at + p) * 8, finish(r[p], 0, at, n));
      }
    } else {
      store_planes8(r, y, plane_out, at, n, [&](__m256 v, int l) { return finish(v, l, at, n); });
    }
  };
  // The n <= 8 output pixels from plane position `at` on: their windows, in an image whose rows
  // are `pitch` pixels apart, start at base[0] + p strides (one_row) or at base[p].
  auto group = [&](bool one_row, int64_t pitch, const float* const (&base)[8], int64_t at, int64_t n) {
    __m256 r[8];
    if (one_row && unit3 && b.sw == 1) taps8_3x3<1>(pitch, wv, base[0], 0, r);
    else if (one_row && unit3 && b.sw == 2) taps8_3x3<2>(pitch, wv, base[0], 0, r);
    else if (one_row) three ? taps8<3, 3, true>(b, pitch, wv, base, r) : taps8<0, 0, true>(b, pitch, wv, base, r);
    else three ? taps8<3, 3, false>(b, pitch, wv, base, r) : taps8<0, 0, false>(b, pitch, wv, base, r);
    store(r, at, n);
  };

  if (b.x_blocked && b.ow >= kDepthwiseInPlaceWidth) {
    // Wide rows of a blocked input are read where they are: only the windows that overlap the
    // padding (whole rows at the top and bottom, a group of 8 at each row end) go through a
    // zero-padded copy of what they read, one output row's pixels [ox0, ox1) at a time.
    const int64_t win_rows = (b.kh - 1) * b.dh + 1;
    auto from_patch = [&](int64_t oy, int64_t ox0, int64_t ox1) {
      const int64_t groups = (ox1 - ox0 + 7) / 8;
      const int64_t pitch = (groups * 8 - 1) * b.sw + (b.kw - 1) * b.dw + 1;
      const int64_t iy0 = oy * b.sh - b.pt, ix0 = ox0 * b.sw - b.pl;
      // the patch's columns [c0, c1) are in the input
      const int64_t c0 = std::clamp<int64_t>(-ix0, 0, pitch), c1 = std::clamp<int64_t>(b.w_in - ix0, c0, pitch);
      for (int64_t r = 0; r < win_rows; ++r) {
        float* row = padded + r * pitch * 8;
        const int64_t iy = iy0 + r;
        const bool inside = iy >= 0 && iy < b.h;
        const int64_t a = inside ? c0 : pitch, e = inside ? c1 : pitch;
        for (int64_t c = 0; c < a; ++c) _mm256_store_ps(row + c * 8, _mm256_setzero_ps());
        if (e > a) std::copy_n(b.x + (iy * b.w_in + ix0 + a) * 8, (e - a) * 8, row + a * 8);
        for (int64_t c = e; c < pitch; ++c) _mm256_store_ps(row + c * 8, _mm256_setzero_ps());
      }
      for (int64_t g = 0; g < groups; ++g) {
        const float* base[8] = {padded + g * 8 * b.sw * 8};
        group(true, pitch, base, oy * b.ow + ox0 + g * 8, std::min<int64_t>(8, ox1 - ox0 - g * 8));
      }
    };
    // output columns [first, end) read no padding
    const int64_t first = (b.pl + b.sw - 1) / b.sw;
    const int64_t last = b.pl + b.w_in - 1 - (b.kw - 1) * b.dw;  // the last window's first padded column
    const int64_t end = last < 0 ? 0 : std::min(b.ow, last / b.sw + 1);
    const int64_t left = first == 0 ? 0 : std::min(b.ow, (first + 7) / 8 * 8);  // a whole group from a patch
    for (int64_t oy = 0; oy < b.oh; ++oy) {
      const int64_t iy0 = oy * b.sh - b.pt;
      if (iy0 < 0 || iy0 + win_rows > b.h) {
        from_patch(oy, 0, b.ow);
        continue;
      }
      if (left > 0) from_patch(oy, 0, left);
      int64_t ox = left;
      if (unit3 && ox + 8 <= end) {  // nearly every layer
        const int64_t groups = (end - ox) / 8;
        const float* x0 = b.x + (iy0 * b.w_in + ox * b.sw - b.pl) * 8;
        if (b.sw == 1) inner_groups<1>(x0, b.w_in, wv, groups, oy * b.ow + ox, store);
        else inner_groups<2>(x0, b.w_in, wv, groups, oy * b.ow + ox, store);
        ox += groups * 8;
      }
      for (; ox + 8 <= end; ox += 8) {
        const float* base[8] = {b.x + (iy0 * b.w_in + ox * b.sw - b.pl) * 8};
        group(true, b.w_in, base, oy * b.ow + ox, 8);
      }
      if (ox < b.ow) from_patch(oy, ox, b.ow);
    }
    return;
  }

  if (b.x_blocked && unit3) {
    // Narrower rows of a blocked input, 3x3 windows: read in place too, a row's groups of 8
    // pixels with the taps in the padding skipped instead of copied. A row of 8 pixels or more
    // ends with a whole group (overlapping the one before it), so only a row's first group can
    // start in the left padding and only its last one end in the right padding, each by at
    // most one column with pads of 1; other cases take the run-time column range. Measured in
    // MobileNetV2 against the whole-plane padded copy below: 7x7 and 14x14 stride 2 20-23 % less
    // time, 28x28 stride 2 11 %, 7x7 stride 1 23 %, 14x14 stride 1 6 %; since the sums stay in
    // registers (see taps8_3x3) also 28x28 stride 1, 6 % less (the copy was faster before).
    if (b.sw == 1) narrow_rows<1>(b, wv, store);
    else narrow_rows<2>(b, wv, store);
    return;
  }

  const int64_t rows = (b.oh - 1) * b.sh + (b.kh - 1) * b.dh + 1;
  const int64_t cols = (b.ow - 1) * b.sw + (b.kw - 1) * b.dw + 1;
  pad_planes8(b.x, plane_in, b.x_blocked, b.h, b.w_in, b.pt, b.pl, rows, cols, _mm256_setzero_ps(), padded);
  // Eight output pixels at a time in plane order, across row ends (short rows would otherwise
  // leave a partial group per row), the last n < 8 repeating the last one; transposed back to
  // eight runs of the eight channels' planes.
  int64_t oy = 0, ox = 0;  // the group's first pixel
  for (int64_t at = 0; at < plane_out; at += 8) {
    const int64_t n = std::min<int64_t>(8, plane_out - at);
    const bool one_row = n == 8 && ox + 8 <= b.ow;
    const float* base[8];
    for (int64_t p = 0, y = oy, x = ox; p < (one_row ? 1 : 8); ++p) {
      base[p] = padded + (y * b.sh * cols + x * b.sw) * 8;
      if (p + 1 < n && ++x == b.ow) x = 0, ++y;
    }
    ox += n;
    while (ox >= b.ow) ox -= b.ow, ++oy;
    // as the wide rows' inner groups, but inline: a call of inner_groups per group took MobileNetV2's
    // first layer (112x112 from NCHW) 0.19 -> 0.22 ms
    if (one_row && unit3) {
      __m256 r[8];
      if (b.sw == 1) taps8_3x3<1>(cols, wv, base[0], 0, r);
      else taps8_3x3<2>(cols, wv, base[0], 0, r);
      store(r, at, n);
    } else {
      group(one_row, cols, base, at, n);
    }
  }
}

}  // namespace

void depthwise_block8_avx2(const DepthwiseBlock& b) {
  auto with_act = [&](auto y_blocked, auto has_residual) {
    constexpr bool kYBlocked = decltype(y_blocked)::value, kResidual = decltype(has_residual)::value;
    if (b.act == 1) block8<kYBlocked, kResidual, 1>(b);
    else if (b.act == 2) block8<kYBlocked, kResidual, 2>(b);
    else block8<kYBlocked, kResidual, 0>(b);
  };
  if (b.y_blocked) with_act(std::true_type{}, std::false_type{});  // a blocked output has no residual
  else if (b.residual) with_act(std::false_type{}, std::true_type{});
  else with_act(std::false_type{}, std::false_type{});
}

}  // namespace walle

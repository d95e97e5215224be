// The inner loop of depthwise convolution, per instruction set: rows[e] = sum over t < taps of
// w[t] * src[t][e] for e < n, accumulated in registers across all taps so each output element
// is written once. Like microkernel.hpp this header holds declarations only, so no inline
// function compiled for a wider instruction set can leak into baseline code.
#pragma once

#include <cstdint>

namespace walle {

using DepthwiseTapsFn = void (*)(const float* const* src, const float* w, int64_t taps, float* rows, int64_t n);

void depthwise_taps_portable(const float* const* src, const float* w, int64_t taps, float* rows, int64_t n);
void depthwise_taps_avx2(const float* const* src, const float* w, int64_t taps, float* rows, int64_t n);
void depthwise_taps_avx512(const float* const* src, const float* w, int64_t taps, float* rows, int64_t n);

}  // namespace walle

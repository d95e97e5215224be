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

// Eight channels of a depthwise convolution at once, with neither per-plane set-up nor row tails
// (up to 1 MiB of interleaved input, see conv.cpp): the channels are interleaved into a zero-padded
// [row][column][8] copy (a blocked input with wide rows is read in place instead, only the border
// windows copied), each tap is then one 8-lane multiply-add per output pixel, and the results go
// back to the channels' planes. Every element gets exactly the operations of the
// per-plane path (taps in order from zero, then + bias, + residual, activation), so the results
// are bit-identical. act: 0 none, 1 relu, 2 clip; any other activation is left to the caller.
// x is either 8 planes one after another (NCHW) or, when x_blocked, one block of the 8 channels
// interleaved pixel by pixel ([pixel][8], the NCHW8c layout): the same address either way, since
// a block holds the same floats as its 8 planes. Likewise y (y_blocked), which then has no
// residual.
struct DepthwiseBlock {
  const float* x;         // channel c0's input plane, or its block
  float* y;               // channel c0's output plane; the 8 planes follow one another
  const float* w;         // [8][kh * kw] weights of the 8 channels
  const float* bias;      // 8 values, or nullptr
  const float* residual;  // channel c0's residual plane (planes like y's), or nullptr
  int64_t h, w_in, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl;
  int act;
  float lo, hi;
  bool x_blocked, y_blocked;
  float* scratch;  // depthwise_block_scratch_floats() floats, 32-byte aligned
};
int64_t depthwise_block_scratch_floats(int64_t oh, int64_t ow, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                       int64_t dh, int64_t dw);
void depthwise_block8_avx2(const DepthwiseBlock& b);

}  // namespace walle

// Winograd convolution F(m x m, 3 x 3) for 3x3, stride 1, dilation 1, single-group convolutions.
//
// Each m x m output tile is computed from a (m+2) x (m+2) input tile with (m+2)^2 multiplies
// per channel pair instead of 9 m^2: the input tiles are transformed (V = B^T d B), multiplied
// with the transformed weights (U = G g G^T, prepared once at compile time) as (m+2)^2
// independent GEMMs [O x C] x [C x tiles] on the packed GEMM, and transformed back
// (Y = A^T M A). m = 2 saves 2.25x of the multiplies, m = 4 saves 4x and m = 6 5.06x, each at
// the price of larger transforms, more rounding error (about 1e-6 relative on unit-scale data
// at m = 4, 1e-5 at m = 6) and more padding where m does not divide the output.
#pragma once

#include <cstdint>

#include "common.hpp"
#include "gemm.hpp"
#include "threadpool.hpp"

namespace walle {

struct WinogradShape {
  int64_t c = 0, h = 0, w = 0, o = 0, oh = 0, ow = 0, pt = 0, pl = 0;
};

// The tile size the cost rule picks for this shape: 0 (direct convolution is cheaper), 2, 4 or 6.
//
// Cost rule, in multiply-adds of the direct GEMM's speed: the direct convolution costs
// 9*C*O per output pixel. F(m,3) costs (m+2)^2 * C * O per tile on the GEMM, with the tile count
// rounded up to the GEMM's column panel (tiles are its columns), plus the transforms, which run
// on narrower vectors with a shuffle-heavy access pattern: each transform multiply-add is
// charged kTransformWeight GEMM multiply-adds (calibrated on ResNet-18's layers, where it put
// the direct/Winograd crossover within 10% of the measured one).
int choose_winograd_tile(const WinogradShape& s, int nr);

// Floats from one position's packed B operand (C rows of the tiles rounded up to whole panels of
// nr columns) to the next's: an odd number of cache lines, so that the T*T stores of a lane block
// of the input transform fall in different cache sets. (With ResNet's shapes the operands are
// multiples of 4 KiB: all T*T stores went to one L1 set, evicting each other.) Not inline: this
// header is also included by translation units built for wider instruction sets.
int64_t position_floats(int64_t c, int64_t tiles, int nr);

// Shared workspace WinogradConv::workspace_bytes() will need for this tile and shape: the
// transformed input, already in the GEMM's packed B layout ([position][panel of nr tiles][C][nr],
// so the GEMM packs nothing), and the GEMM output [O][position][tiles].
size_t winograd_workspace_bytes(int m, const WinogradShape& s, int nr);

// Bytes of the transformed weights U = G g G^T of F(m, 3) for this shape, as the GEMM's packed A
// operands of the (m+2)^2 positions for a kernel of mr rows.
size_t winograd_weight_bytes(int m, const WinogradShape& s, int mr);

// Writes those transformed weights to dst (winograd_weight_bytes(), 64-byte aligned). weights:
// [O, C, 3, 3] float32 at any byte alignment (read byte-wise, so a weight viewed in a mapped
// model file needs no aligned copy).
void transform_winograd_weights(int m, const WinogradShape& s, const void* weights, int mr, float* dst);

class WinogradConv {
 public:
  // weights: transform_winograd_weights() of this m, shape and mr. mr, nr: register tile of the
  // GEMM kernel that will run it.
  WinogradConv(int m, const WinogradShape& s, AlignedBuffer weights, int mr, int nr);

  int tile() const { return m_; }
  // Per worker: a zero-bordered copy of one input plane (the GEMM's scratch is reused after it).
  size_t scratch_bytes() const;
  // Transformed input and GEMM output of one image, shared by the workers.
  size_t workspace_bytes() const { return winograd_workspace_bytes(m_, s_, nr_); }
  // One image: x [C, H, W] -> y [O, OH, OW], then bias, residual [O, OH, OW] and activation.
  // Work not yet started is skipped once *cancel is raised.
  void run(const GemmBlocking& blk, const float* x, float* y, const float* bias, const float* residual,
           const Act& act, ThreadPool& pool, FunctionRef<float*(int)> scratch, float* workspace,
           const CancelFlag* cancel = nullptr) const;

 private:
  int m_;
  int t_;  // input tile size m + 2
  int nr_;
  WinogradShape s_;
  int64_t tiles_y_, tiles_x_, tiles_;
  AlignedBuffer weights_;  // t*t packed [O x C] A operands
  int64_t packed_stride_;
};

}  // namespace walle

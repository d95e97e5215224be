// Packed single-precision GEMM: C = act(A * B + bias + residual).
//
// Operands are packed into panels the micro-kernel streams through: A in panels of MR rows laid
// out [k][MR], B in panels of NR columns laid out [k][NR] (zero padded at the edges). Constant
// operands (weights) are packed once at compile time over the full K; runtime operands are packed
// per (MC x KC) / (KC x NC) block into per-worker scratch, so the working set stays in L1/L2.
// B may also be read straight from an image through an im2col view, which is how convolution
// avoids materialising the im2col matrix.
#pragma once

#include <cstdint>

#include "common.hpp"
#include "isa.hpp"
#include "microkernel.hpp"
#include "threadpool.hpp"

namespace walle {

MicroKernel micro_kernel(Isa isa);

// Element (i, j) of a strided matrix is p[i * rs + j * cs]; strides of 0 broadcast.
struct MatView {
  const float* p = nullptr;
  int64_t rs = 0;
  int64_t cs = 0;
  float at(int64_t i, int64_t j) const { return p[i * rs + j * cs]; }
};

// B as the im2col matrix of one image [C, H, W] (the channels of one group; the image pointer
// is the operand's view.p): row k = (c, kh, kw), column j = (oy, ox). Reads outside the image
// are the zero padding.
struct Im2col {
  int64_t C = 0, H = 0, W = 0, KH = 0, KW = 0;
  int64_t sh = 1, sw = 1, dh = 1, dw = 1, pt = 0, pl = 0, OH = 0, OW = 0;
  // Stride 2, no dilation: the image is given already padded and split into its four phases,
  // channel c's phase (a, b) holding padded pixel (2i + a, 2j + b) at [i * pitch + j], so every
  // run of a row is one contiguous copy. Floats per channel and per phase, and the row pitch:
  bool phased = false;
  int64_t phase_channel = 0, phase_plane = 0, phase_pitch = 0;
};

// One operand: prepacked (full-K panels), a strided view, or (B only) an im2col view of view.p.
struct GemmOperand {
  const float* packed = nullptr;
  MatView view;
  const Im2col* im2col = nullptr;
  // > 0 (A only, with a transposed or blocked C): A is read in place in blocks of 8 columns of
  // this many floats, element (i, k) at view.p[(k / 8) * block + i * 8 + k % 8] (an NCHW8c image
  // with the pixels as rows); K must be a multiple of 8.
  int64_t block = 0;
  // Both set (A only, with a transposed C and a kernel that has a_gathered): A is read straight
  // from view.p, element (i, k) at view.p[row_offsets[i] + k_offsets[k]] (a convolution's output
  // pixel i and tap k in its phase-split image; see MicroKernel::a_gathered).
  const int64_t* row_offsets = nullptr;
  const int64_t* k_offsets = nullptr;
  // (B only) `packed` holds constant weights: read once per run, so they come from memory, not
  // from a cache a previous op warmed.
  bool weights = false;
};

// Applied to each finished output tile, while it is still in cache.
struct Epilogue {
  MatView bias;      // p == nullptr: none
  MatView residual;  // p == nullptr: none
  Act act;
};

struct GemmProblem {
  GemmOperand a;
  GemmOperand b;
  float* c = nullptr;
  int64_t ldc = 0;
  // C stored transposed: element (i, j) at c[j * ldc + i]. How a convolution computes its
  // output with the pixels as GEMM rows while keeping the NCHW layout; the tiles then go through
  // a buffer, and the epilogue's views are in (i, j) terms as usual.
  bool c_transposed = false;
  // > 0: C is stored in blocks of 8 columns of this many floats, element (i, j) at
  // c[(j / 8) * c_block + i * 8 + j % 8] (ldc unused): how a convolution with the pixels as rows
  // writes NCHW8c. N must be a multiple of 8; the epilogue's bias is per column, and a residual
  // (only with a blocked A) has C's layout: its view's strides are not used.
  int64_t c_block = 0;
  Epilogue epilogue;
};

// The TileEpilogue activation code of act: 0 none, 1 relu, 2 clip; -1 for one a register tile
// cannot apply (then applied by apply_epilogue).
int tile_act(const Act& act);

// What a kernel applies as it stores the tile whose first element is (i, j) of C, for an epilogue
// whose bias is per row (bias(i) = ep.bias.p[i]) and whose residual has unit column stride.
TileEpilogue row_tile_epilogue(const Epilogue& ep, int64_t i, int64_t j);

// Blocking of one ISA's kernel; MC and NC are multiples of MR and NR.
struct GemmBlocking {
  Isa isa;  // the plan's instruction set, for kernels that dispatch on it too
  MicroKernel kernel;
  int64_t mc, kc, nc;
  explicit GemmBlocking(Isa isa);
  // Per-worker scratch: one A block, one B block and one edge tile.
  size_t scratch_bytes() const;
};

// Full-K packing of a constant operand (done once, at compile time).
// dst holds packed_a_floats(m, k, mr) / packed_b_floats(k, n, nr) floats.
void pack_a_full(const MatView& a, int64_t m, int64_t k, int mr, float* dst);
void pack_b_full(const MatView& b, int64_t k, int64_t n, int nr, float* dst);
size_t packed_a_floats(int64_t m, int64_t k, int mr);
// pack_a_full of an operand known only at run time, one row panel per task of the pool.
void pack_a_panels(const MatView& a, int64_t m, int64_t k, int mr, float* dst, ThreadPool& pool);
// Columns [j0, j0+cols) of an im2col matrix over the full K, packed as panels of `width`
// columns ([panel][k][width], zero padded): the B layout, or with width = MR the A layout of the
// transposed matrix (each output pixel a row), at dst + (j0 / width) * k * width.
void pack_im2col_full(const Im2col& g, const float* image, int64_t k, int64_t j0, int64_t cols, int width,
                      float* dst);
size_t packed_b_floats(int64_t k, int64_t n, int nr);

// Runs `batch` independent problems of one shape, parallel over batch x output tiles.
// scratch(worker) returns that worker's scratch_bytes() of 64-byte aligned memory.
// Tasks not yet started are skipped once *cancel is raised (the result is then incomplete).
void gemm(const GemmBlocking& blk, int64_t m, int64_t n, int64_t k, int64_t batch,
          FunctionRef<GemmProblem(int64_t)> problem, ThreadPool& pool, FunctionRef<float*(int)> scratch,
          const CancelFlag* cancel = nullptr);

// Applies bias, residual and activation to rows [i0, i0+rows) x cols [j0, j0+cols) of c, with
// vector code when isa allows it.
void apply_epilogue(const Epilogue& ep, Isa isa, float* c, int64_t ldc, int64_t i0, int64_t rows, int64_t j0,
                    int64_t cols);

}  // namespace walle

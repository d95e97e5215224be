// The GEMM register-tile kernel interface, kept free of inline functions on purpose: the
// ISA-specific translation units include only this header, so no inline function compiled with
// -mavx512f/-mavx2 can be picked by the linker for use on a CPU without those instructions.
#pragma once

#include <cstdint>

namespace walle {

// What a kernel may apply to a full tile as it stores it after the last k block:
// c = act(c + bias[row] + residual[row][col]), in that order (as the separate epilogue pass
// rounds). act: 0 none, 1 relu (max(0, v)), 2 clip (min(hi, max(lo, v))).
struct TileEpilogue {
  const float* bias = nullptr;      // one value per tile row; nullptr: none
  const float* residual = nullptr;  // the tile's residual, row stride ldr; nullptr: none
  int64_t ldr = 0;
  int act = 0;
  float lo = 0.f, hi = 0.f;
  // a_blocked only: the residual's second 8 columns are this many floats after its first (a
  // residual in blocks, like C's `second`); other kernels read them 8 floats on
  int64_t residual_second = 8;
};

// c[MR x NR] (row stride ldc) = (accumulate ? c : 0) + sum over k < kc of the outer product of
// a[k*MR .. k*MR+MR) and b[k*ldb .. k*ldb+NR): ldb is NR for a packed panel, or the row stride
// of a row-major B read in place. `fused` (nullptr where a kernel has none) does the same, then
// applies a TileEpilogue before storing. `next` (may be null): a panel the following call will
// read, `next_ld` floats per k step, which the kernel prefetches into L2, one line per k step
// (weights streamed from memory would otherwise stall the first tile that reads them).
struct MicroKernel {
  int mr;
  int nr;
  void (*fn)(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate,
             const float* next, int64_t next_ld);
  void (*fused)(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate,
                const float* next, int64_t next_ld, const TileEpilogue& ep) = nullptr;
  // The first `rows` (< MR) rows of a whole-width tile, stored straight to c, then (ep not null)
  // finished like `fused`: the last row panel of an M that MR does not divide. nullptr where a
  // kernel has none (such tiles then go through a buffer).
  void (*rows)(int rows, int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc,
               bool accumulate, const float* next, int64_t next_ld, const TileEpilogue* ep) = nullptr;
  // A whole tile stored in blocks of 8 columns: element (i, j) at c[(j / 8) * c_block + i * 8 + j % 8]
  // (NCHW8c, with the pixels as rows), then (ep not null) finished like `fused`, except that ep's
  // bias holds one value per tile column and there is no residual. nullptr where a kernel has
  // none (such tiles then go through a buffer).
  void (*blocked)(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t c_block,
                  bool accumulate, const float* next, int64_t next_ld, const TileEpilogue* ep) = nullptr;
  // The first `rows` (<= MR) rows of a whole-width tile over one k block, row k of B read at
  // b + b_offsets[k] (a convolution's tap k read straight from its image: NR consecutive pixels
  // of one row), stored straight to c and finished with ep when it is not null. nullptr where a
  // kernel has none.
  void (*gathered)(int rows, int64_t kc, const float* a, const float* b, const int64_t* b_offsets, float* c,
                   int64_t ldc, const TileEpilogue* ep) = nullptr;
  // The first `rows` (<= MR) rows of a whole-width tile with A read in blocks of 8 columns, in
  // place: element (i, k) at a[(k / 8) * a_block + i * 8 + k % 8] (an NCHW8c image with the
  // pixels as rows; kc a multiple of 8). Row i is stored at c + i * ldc, its second 8 columns
  // `second` floats after its first (a block apart in a blocked C), then (ep not null) finished
  // with a bias per column, the residual (ep->residual_second apart) and relu/clip. nullptr
  // where a kernel has none.
  void (*a_blocked)(int rows, int64_t kc, const float* a, int64_t a_block, const float* b, int64_t ldb, float* c,
                    int64_t ldc, int64_t second, bool accumulate, const TileEpilogue* ep) = nullptr;
  // The first `rows` (<= MR) rows of a whole-width tile with A read straight from an image:
  // element (i, k) at a[a_rows[i] + a_taps[k]] (row i an output pixel, column k a tap of a
  // convolution over its phase-split image, so no im2col matrix is packed). Stored at c (row
  // stride ldc), plus c when accumulating; no epilogue. nullptr where a kernel has none.
  void (*a_gathered)(int rows, int64_t kc, const float* a, const int64_t* a_rows, const int64_t* a_taps,
                     const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) = nullptr;
  // One row of A (its panel's first row) against `panels` (1 .. kRowPanels) whole-width B panels,
  // panel p at b + p * b_stride, stored to c[p * NR ..], no epilogue: a GEMV (M = 1), where one
  // tile's few accumulators would leave the multiply-add unit waiting on its own latency. nullptr
  // where a kernel has none.
  static constexpr int kRowPanels = 4;
  void (*row_panels)(int panels, int64_t kc, const float* a, const float* b, int64_t ldb, int64_t b_stride, float* c,
                     bool accumulate) = nullptr;
};

MicroKernel micro_kernel_portable();
MicroKernel micro_kernel_avx2();
MicroKernel micro_kernel_avx512();

}  // namespace walle

// Vector bodies of the GEMM/convolution epilogue, per instruction set. Like microkernel.hpp this
// header holds declarations only, so no inline function compiled for a wider instruction set can
// leak into baseline code.
#pragma once

#include <cstdint>

#include "common.hpp"

namespace walle {

// row[j] = act(row[j] + bias[j * bias_cs] + residual[j]) for j < n, in that order of additions
// (the scalar epilogue's order, so results are identical). bias/residual may be null; bias_cs
// is 0 (one value for the row) or 1. Handles the activations convolutions fuse most (identity,
// relu, clip, leaky relu) and returns false, touching nothing, for any other.
bool epilogue_row_avx2(float* row, int64_t n, const float* bias, int64_t bias_cs, const float* residual,
                       const Act& act);

// dst[q * ldd + r] = src[r * lds + q] for r < rows, q < cols: a GEMM block built with the pixels
// as rows, stored as the output's channel rows, eight channels by eight pixels per 8x8 register
// transpose. Each stored vector is finished on the way (epilogue_row_avx2's arithmetic, in its
// order): + bias[q] (per channel; may be null), + residual[q * ldr + r] (may be null), then the
// activation. Returns the first channel left unfinished, for the caller's epilogue: cols rounded
// down to eight, or 0 when the activation is not one handled here.
int64_t transpose_finish_avx2(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd,
                              const float* bias, const float* residual, int64_t ldr, const Act& act);

}  // namespace walle

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

}  // namespace walle

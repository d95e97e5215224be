// Entry points of the Winograd tile transforms, one set per instruction set (see
// winograd_tiles.inc). Declarations only, like microkernel.hpp.
#pragma once

#include <cstdint>

#include "winograd.hpp"

namespace walle {

// Tiles the transforms run side by side, one per vector lane. The GEMM's column panels must hold
// a whole number of such blocks (WinogradConv checks).
constexpr int kWinogradLanes = 8;

#define WALLE_WINOGRAD_TILES_API                                                                         \
  /* (B^T d B) of the tiles of input channel c into v, packed as WinogradConv's GEMM B operands */       \
  void input_tiles(int m, const WinogradShape& s, int64_t tiles_y, int64_t tiles_x, const float* plane,   \
                   int64_t c, int nr, float* pad, float* v);                                               \
  /* y[o] = A^T M A over the tiles of output channel o, clipped at the image's edges */                   \
  void output_tiles(int m, const WinogradShape& s, int64_t tiles_y, int64_t tiles_x, const float* mm,      \
                    int64_t o, float* y);                                                                  \
  /* floats of the zero-bordered input plane copy input_tiles needs */                                    \
  int64_t padded_plane_floats(int m, int64_t tiles_y, int64_t tiles_x);

namespace winograd_portable {
WALLE_WINOGRAD_TILES_API
}
namespace winograd_avx2 {
WALLE_WINOGRAD_TILES_API
}

#undef WALLE_WINOGRAD_TILES_API

}  // namespace walle

// POOL2D over NCHW float32: max or average windows with pads and dilations. Windows are clipped
// to the input; an average counts padded cells only with count_include_pad.
#pragma once

#include <cstdint>

#include "common.hpp"
#include "isa.hpp"
#include "threadpool.hpp"

namespace walle {

struct PoolParams {
  bool is_max = true;
  int64_t n = 0, c = 0, h = 0, w = 0;
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, pt = 0, pl = 0, pb = 0, pr = 0, dh = 1, dw = 1, oh = 1, ow = 1;
  bool count_include_pad = false;
};

// Per-worker scratch pool2d_op needs (zero when every plane takes the per-plane path).
size_t pool2d_scratch_bytes(const PoolParams& p, Isa isa);
void pool2d_op(const PoolParams& p, Isa isa, const float* x, float* y, ThreadPool& pool,
               FunctionRef<float*(int)> scratch);

// Planes [begin, end) of the output, per instruction set (declarations only, like microkernel.hpp).
namespace pool_portable {
void pool_planes(const PoolParams& p, const float* x, float* y, int64_t begin, int64_t end);
}
namespace pool_avx2 {
void pool_planes(const PoolParams& p, const float* x, float* y, int64_t begin, int64_t end);
// Eight consecutive planes at once, for small planes where the per-row passes of pool_planes are
// mostly loop overhead: the planes are interleaved into a padded [row][column][8] copy, each
// window tap is then one 8-lane operation per output pixel. Same operations per element in the
// same order as pool_planes (rows combined first, then columns), so the results are identical.
// scratch: block8_floats(p) floats.
int64_t block8_floats(const PoolParams& p);
void pool_block8(const PoolParams& p, const float* x, float* y, float* scratch);
}

}  // namespace walle

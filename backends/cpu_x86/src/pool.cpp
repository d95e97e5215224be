// POOL2D: splits the planes over the workers and runs the per-ISA plane loops (pool_planes.inc).
#include "pool.hpp"

#include <algorithm>

namespace walle {

// Eight planes at a time when the interleaved copy of their windows' extent stays this small
// (about L2-sized); larger planes go row by row, where the per-row passes are long.
constexpr int64_t kBlock8MaxFloats = int64_t(64) << 10;

static bool use_block8(const PoolParams& p, Isa isa) {
  // the AVX2 row kernel of the 3-wide stride-2 max does rows of four or more full groups of
  // eight outputs faster (it did two, before block8 kept its vectors in registers: 128 planes
  // of 55x55 took 0.144 ms that way on a Zen 3; on a Zen 4 0.091 by rows, 0.075 in blocks; 64
  // planes of 111x111, too large for blocks here, 0.135 by rows and 0.156 in blocks)
  if (p.is_max && p.kw == 3 && p.sw == 2 && p.dw == 1 && p.ow >= 32) return false;
  return isa != Isa::kPortable && p.n * p.c >= 8 && pool_avx2::block8_floats(p) <= kBlock8MaxFloats;
}

size_t pool2d_scratch_bytes(const PoolParams& p, Isa isa) {
  return use_block8(p, isa) ? static_cast<size_t>(pool_avx2::block8_floats(p)) * sizeof(float) : 0;
}

void pool2d_op(const PoolParams& p, Isa isa, const float* x, float* y, ThreadPool& pool,
               FunctionRef<float*(int)> scratch) {
  const int64_t planes = p.n * p.c;
  const int64_t plane_in = p.h * p.w, plane_out = p.oh * p.ow;
  if (use_block8(p, isa)) {
    const int64_t blocks = planes / 8, rest = planes % 8;
    pool.parallel_for(blocks + (rest ? 1 : 0), [&](int64_t t, int worker) {
      if (t < blocks) pool_avx2::pool_block8(p, x + t * 8 * plane_in, y + t * 8 * plane_out, scratch(worker));
      else pool_avx2::pool_planes(p, x, y, blocks * 8, planes);
    });
    return;
  }
  // a few planes per task: one row buffer per task, and enough tasks to balance two workers
  const int64_t chunk = std::max<int64_t>(1, planes / (4 * pool.threads()));
  const int64_t tasks = (planes + chunk - 1) / chunk;
  pool.parallel_for(tasks, [&](int64_t task, int) {
    const int64_t begin = task * chunk, end = std::min(planes, (task + 1) * chunk);
    if (isa != Isa::kPortable) pool_avx2::pool_planes(p, x, y, begin, end);
    else pool_portable::pool_planes(p, x, y, begin, end);
  });
}

}  // namespace walle

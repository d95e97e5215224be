// POOL2D: splits the planes over the workers and runs the per-ISA plane loops (pool_planes.inc).
#include "pool.hpp"

#include <algorithm>

namespace walle {

void pool2d_op(const PoolParams& p, Isa isa, const float* x, float* y, ThreadPool& pool) {
  const int64_t planes = p.n * p.c;
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

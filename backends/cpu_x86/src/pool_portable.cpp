// POOL2D plane loops compiled for baseline x86-64.
#include <algorithm>
#include <limits>
#include <vector>

#include "pool.hpp"

namespace walle {
namespace pool_portable {
namespace {

// No hand-written row kernel in the baseline build: pool_planes does every column.
int64_t max3_stride2(const float*, int64_t, float*, int64_t lo, int64_t) { return lo; }

}  // namespace

#include "pool_planes.inc"

}  // namespace pool_portable
}  // namespace walle

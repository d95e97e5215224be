// POOL2D plane loops compiled for -mavx2 -mfma; only called when the plan's instruction set is AVX2 or better.
#include <algorithm>
#include <limits>
#include <vector>

#include "pool.hpp"

namespace walle {
namespace pool_avx2 {

#include "pool_planes.inc"

}  // namespace pool_avx2
}  // namespace walle

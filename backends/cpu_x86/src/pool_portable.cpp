// POOL2D plane loops compiled for baseline x86-64.
#include <algorithm>
#include <limits>
#include <vector>

#include "pool.hpp"

namespace walle {
namespace pool_portable {

#include "pool_planes.inc"

}  // namespace pool_portable
}  // namespace walle

// Winograd tile transforms compiled for -mavx2 -mfma; only called when the plan's instruction set is AVX2 or better.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "winograd_matrices.hpp"
#include "winograd_tiles.hpp"

namespace walle {
namespace winograd_avx2 {

#include "winograd_tiles.inc"

}  // namespace winograd_avx2
}  // namespace walle

// Winograd tile transforms compiled for baseline x86-64.
#include <algorithm>
#include <cstring>

#include "winograd_matrices.hpp"
#include "winograd_tiles.hpp"

namespace walle {
namespace winograd_portable {

#include "winograd_tiles.inc"

}  // namespace winograd_portable
}  // namespace walle

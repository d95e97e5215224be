// AlignedBuffer's allocator (see common.hpp). Built for the baseline ISA like the rest of the
// plan code.
#include <cstdlib>
#include <new>

#include "common.hpp"

#if defined(__linux__) || defined(__APPLE__)
#include <sys/mman.h>
#define WALLE_MAP_LARGE_BLOCKS 1
#endif

namespace walle {

void* allocate_aligned(size_t bytes) {
#ifdef WALLE_MAP_LARGE_BLOCKS
  if (bytes >= kMappedBlockBytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return p;  // page aligned
  }
#endif
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  return p;
}

void release_aligned(void* p, size_t bytes) noexcept {
  if (!p) return;
#ifdef WALLE_MAP_LARGE_BLOCKS
  if (bytes >= kMappedBlockBytes) {
    munmap(p, bytes);
    return;
  }
#endif
  (void)bytes;
  std::free(p);
}

}  // namespace walle

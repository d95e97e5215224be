// AlignedBuffer's allocator (see common.hpp). Built for the baseline ISA like the rest of the
// plan code.
#include <cstdint>
#include <cstdlib>
#include <new>

#include "common.hpp"

#if defined(__linux__) || defined(__APPLE__)
#include <sys/mman.h>
#define WALLE_MAP_LARGE_BLOCKS 1
#endif

namespace walle {

#ifdef WALLE_MAP_LARGE_BLOCKS
namespace {

// Blocks of at least this size are placed on a huge-page boundary and offered to the kernel's
// transparent huge pages: a model's packed weights (190 MB for ResNet-50) otherwise arrive one
// 4 KiB page fault at a time, and faulting, zeroing and later unmapping those pages took a third
// of its load (ResNet-50 loaded again in one process: 0.19 s -> 0.11 s with huge pages).
constexpr size_t kHugePage = size_t(2) << 20;

void* map_block(size_t bytes) {
  if (bytes < kHugePage) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return p;  // page aligned
  }
  // map a huge page more, then give back what lies before the first boundary and after the block
  const size_t span = bytes + kHugePage;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePage - 1) & ~(uintptr_t(kHugePage) - 1);
  const size_t head = aligned - start, tail = span - head - bytes;
  if (head) munmap(raw, head);
  if (tail) munmap(reinterpret_cast<void*>(aligned + bytes), tail);
  void* p = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without it the block is still usable
#endif
  return p;
}

}  // namespace
#endif

void* allocate_aligned(size_t bytes) {
#ifdef WALLE_MAP_LARGE_BLOCKS
  if (bytes >= kMappedBlockBytes) return map_block(bytes);
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

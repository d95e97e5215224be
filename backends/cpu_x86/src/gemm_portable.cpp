// Portable micro-kernel: plain C++ the compiler vectorises with the baseline SSE2. It is the
// reference the SIMD kernels are tested against and the path for CPUs without AVX2.
#include "microkernel.hpp"

namespace walle {

namespace {

constexpr int kMr = 4;
constexpr int kNr = 16;

void kernel_4x16(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc,
                 bool accumulate, const float* /*next: no prefetch*/, int64_t) {
  float acc[kMr][kNr] = {};
  for (int64_t k = 0; k < kc; ++k) {
    for (int i = 0; i < kMr; ++i) {
      const float ai = a[i];
      for (int j = 0; j < kNr; ++j) acc[i][j] += ai * b[j];
    }
    a += kMr;
    b += ldb;
  }
  for (int i = 0; i < kMr; ++i) {
    float* row = c + i * ldc;
    for (int j = 0; j < kNr; ++j) row[j] = accumulate ? row[j] + acc[i][j] : acc[i][j];
  }
}

}  // namespace

MicroKernel micro_kernel_portable() { return {kMr, kNr, kernel_4x16}; }

}  // namespace walle

// The GEMM register-tile kernel interface, kept free of inline functions on purpose: the
// ISA-specific translation units include only this header, so no inline function compiled with
// -mavx512f/-mavx2 can be picked by the linker for use on a CPU without those instructions.
#pragma once

#include <cstdint>

namespace walle {

// c[MR x NR] (row stride ldc) = (accumulate ? c : 0) + sum over k < kc of the outer product of
// a[k*MR .. k*MR+MR) and b[k*NR .. k*NR+NR).
struct MicroKernel {
  int mr;
  int nr;
  void (*fn)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate);
};

MicroKernel micro_kernel_portable();
MicroKernel micro_kernel_avx2();
MicroKernel micro_kernel_avx512();

}  // namespace walle

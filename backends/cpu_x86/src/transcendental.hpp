// Vectorised exp, sigmoid, tanh and erf for float32, per instruction set. Declarations only,
// like microkernel.hpp, so no inline function compiled for a wider instruction set can leak into
// baseline code.
//
// Accuracy against the exact result (largest error over the test's sweep of 510k values in
// [-110, 100], pinned by tests/test_cpu_x86.py):
//   exp      within 1 ulp; +inf above 88.72, subnormal results rounded once, 0 below -103.9
//   sigmoid  within 3 ulp (e^-|x| / (1 + e^-|x|) for x < 0, so tiny results keep their precision)
//   tanh     within 3 ulp; from expm1 (a polynomial below 0.3125), so no cancellation near 0
//   erf      within 3 ulp and 2e-7 absolute (its series below 1, an Abramowitz-Stegun 7.1.26
//            rational form times exp(-x^2) above)
// NaN inputs give NaN; infinities give the limits (exp(-inf) = 0, sigmoid(+-inf) = 1 / 0,
// tanh and erf of +-inf = +-1).
#pragma once

#include <cstdint>

#include "common.hpp"

namespace walle {

// y[i] = fn(x[i]) for i < n (x == y allowed) when fn is one of the functions above; returns
// false, touching nothing, for any other.
bool transcendental_avx2(UnaryFn fn, const float* x, float* y, int64_t n);

}  // namespace walle

// Elementwise kernels: UNARY, BINARY (NumPy broadcasting), SELECT and CAST.
#pragma once

#include <cstdint>

#include "common.hpp"
#include "isa.hpp"
#include "threadpool.hpp"

namespace walle {

constexpr int kMaxBroadcastInputs = 3;

// Output shape and, per input, element strides with 0 on broadcast dimensions. Adjacent
// dimensions that every operand walks contiguously are merged, so same-shape and scalar
// operands become one flat loop.
struct Broadcast {
  int rank = 1;
  int inputs = 0;
  int64_t shape[kMaxRank] = {1};
  int64_t strides[kMaxBroadcastInputs][kMaxRank] = {};
  int64_t total = 1;

  // Throws if an input shape does not broadcast to `out`.
  static Broadcast make(const Shape& out, const std::vector<Shape>& ins);

  // Calls f(out_offset, in_offsets, n, inner_strides) for runs of n output elements that cover
  // the flat range [begin, end); within a run input i advances by inner_strides[i] (0 or 1).
  template <class F>
  void walk(int64_t begin, int64_t end, F&& f) const {
    int64_t idx[kMaxRank] = {};
    int64_t off[kMaxBroadcastInputs] = {};
    int64_t rem = begin;
    for (int d = rank - 1; d >= 0; --d) {
      idx[d] = rem % shape[d];
      rem /= shape[d];
      for (int i = 0; i < inputs; ++i) off[i] += idx[d] * strides[i][d];
    }
    int64_t inner[kMaxBroadcastInputs];
    for (int i = 0; i < inputs; ++i) inner[i] = strides[i][rank - 1];
    int64_t pos = begin;
    while (pos < end) {
      int64_t n = shape[rank - 1] - idx[rank - 1];
      if (n > end - pos) n = end - pos;
      f(pos, static_cast<const int64_t*>(off), n, static_cast<const int64_t*>(inner));
      pos += n;
      idx[rank - 1] += n;
      for (int i = 0; i < inputs; ++i) off[i] += n * inner[i];
      for (int d = rank - 1; d > 0 && idx[d] == shape[d]; --d) {
        for (int i = 0; i < inputs; ++i) off[i] -= shape[d] * strides[i][d] - strides[i][d - 1];
        idx[d] = 0;
        ++idx[d - 1];
      }
    }
  }
};

// y[i] = fn(x[i]) for any float UnaryFn except NOT; serial (used by epilogues too). y may be x.
// On AVX2 plans exp, sigmoid, tanh and erf use the vector approximations of transcendental.hpp
// (a few ulp), elsewhere the C library.
void unary_f32(const Act& act, const float* x, float* y, int64_t n, Isa isa);

bool unary_supported(UnaryFn fn, DType dtype);
void unary_op(const Act& act, DType dtype, const void* x, void* y, int64_t n, Isa isa, ThreadPool& pool);

// Whether fn is implemented for inputs of dtype (output is bool for comparisons and logic).
bool binary_supported(BinaryFn fn, DType dtype);
void binary_op(BinaryFn fn, DType dtype, const Broadcast& geom, const void* a, const void* b, void* y,
               ThreadPool& pool);

// y = cond ? a : b, for elements of itemsize 1, 2, 4 or 8 bytes.
void select_op(int itemsize, const Broadcast& geom, const uint8_t* cond, const void* a, const void* b,
               void* y, ThreadPool& pool);

bool cast_supported(DType from, DType to);
void cast_op(DType from, DType to, const void* x, void* y, int64_t n);

}  // namespace walle

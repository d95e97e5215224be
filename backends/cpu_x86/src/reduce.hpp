// Reductions and scans over float32: REDUCE, ARG_REDUCE, CUMULATIVE, TOPK. All accumulate in
// float32, in index order.
#pragma once

#include <cstdint>

#include "common.hpp"
#include "threadpool.hpp"

namespace walle {

// A tensor seen as [outer, n, inner] around one axis (or around a contiguous block of axes).
struct AxisView {
  int64_t outer = 1, n = 1, inner = 1;
  static AxisView around(const Shape& shape, int axis);
};

// REDUCE: reduces the axes flagged in `reduced` (one flag per input dim).
struct ReducePlan {
  ReduceFn fn = ReduceFn::kSum;
  bool simple = true;       // the reduced dims form one block: [outer, n, inner]
  AxisView view;            // when simple
  Shape out_shape;          // general case: the input shape with reduced dims kept as 1
  Shape in_shape;
  int64_t count = 1;        // number of reduced elements per output element
  static ReducePlan make(ReduceFn fn, const Shape& in, const std::vector<bool>& reduced);
};
void reduce_op(const ReducePlan& p, const float* x, float* y, ThreadPool& pool);

void arg_reduce_op(const AxisView& v, bool largest, bool select_last, const float* x, int64_t* y);

void cumulative_op(const AxisView& v, bool exclusive, bool reverse, const float* x, float* y);

// scratch(worker) must hold v.n int64 values.
void topk_op(const AxisView& v, int64_t k, bool largest, const float* x, float* values, int64_t* indices,
             ThreadPool& pool, FunctionRef<float*(int)> scratch);

}  // namespace walle

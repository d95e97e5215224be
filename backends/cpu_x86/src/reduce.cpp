#include "reduce.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace walle {

AxisView AxisView::around(const Shape& shape, int axis) {
  AxisView v;
  for (int d = 0; d < static_cast<int>(shape.size()); ++d) {
    if (d < axis) v.outer *= shape[d];
    else if (d == axis) v.n = shape[d];
    else v.inner *= shape[d];
  }
  return v;
}

ReducePlan ReducePlan::make(ReduceFn fn, const Shape& in, const std::vector<bool>& reduced) {
  ReducePlan p;
  p.fn = fn;
  p.in_shape = in;
  p.out_shape = in;
  int first = -1, last = -1, blocks = 0;
  bool prev = false;
  for (int d = 0; d < static_cast<int>(in.size()); ++d) {
    bool r = reduced[d] && in[d] != 1;  // reducing a size-1 dim is a copy
    if (reduced[d]) {
      p.count *= in[d];
      p.out_shape[d] = 1;
    }
    if (r && !prev) ++blocks;
    if (r) {
      if (first < 0) first = d;
      last = d;
    }
    prev = r || (prev && in[d] == 1);
  }
  p.simple = blocks <= 1;
  if (p.simple) {
    for (int d = 0; d < static_cast<int>(in.size()); ++d) {
      if (first < 0 || d < first) p.view.outer *= in[d];
      else if (d <= last) p.view.n *= in[d];
      else p.view.inner *= in[d];
    }
  }
  return p;
}

namespace {

float init_of(ReduceFn fn) {
  switch (fn) {
    case ReduceFn::kMax: return -std::numeric_limits<float>::infinity();
    case ReduceFn::kMin: return std::numeric_limits<float>::infinity();
    case ReduceFn::kProd: return 1.f;
    default: return 0.f;
  }
}

// NaN propagates through max/min, as np.max / np.min
inline float combine(ReduceFn fn, float acc, float v) {
  switch (fn) {
    case ReduceFn::kMax: return (v > acc || v != v) ? v : acc;
    case ReduceFn::kMin: return (v < acc || v != v) ? v : acc;
    case ReduceFn::kProd: return acc * v;
    default: return acc + v;
  }
}

// Sum of a contiguous run with eight independent partial sums: a single running sum is one
// long dependency chain that neither pipelines nor vectorises (e.g. global average pooling).
float sum_contiguous(const float* x, int64_t n) {
  float part[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) part[l] += x[i + l];
  }
  float acc = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; i < n; ++i) acc += x[i];
  return acc;
}

template <ReduceFn F>
void reduce_block(const AxisView& v, const float* x, float* y, int64_t o0, int64_t o1) {
  if (F == ReduceFn::kSum && v.inner == 1) {
    for (int64_t o = o0; o < o1; ++o) y[o] = sum_contiguous(x + o * v.n, v.n);
    return;
  }
  for (int64_t o = o0; o < o1; ++o) {
    float* out = y + o * v.inner;
    const float* in = x + o * v.n * v.inner;
    for (int64_t i = 0; i < v.inner; ++i) out[i] = init_of(F);
    for (int64_t r = 0; r < v.n; ++r) {
      const float* row = in + r * v.inner;
      for (int64_t i = 0; i < v.inner; ++i) out[i] = combine(F, out[i], row[i]);
    }
  }
}

void reduce_general(const ReducePlan& p, const float* x, float* y) {
  const int rank = static_cast<int>(p.in_shape.size());
  Shape in_st = row_strides(p.in_shape), out_st = row_strides(p.out_shape);
  int64_t total_out = numel(p.out_shape);
  for (int64_t o = 0; o < total_out; ++o) y[o] = init_of(p.fn);
  // walk the input once in order; each element lands in the output element it reduces into
  int64_t idx[kMaxRank] = {};
  int64_t out_off = 0;
  const int64_t total = numel(p.in_shape);
  for (int64_t e = 0; e < total; ++e) {
    y[out_off] = combine(p.fn, y[out_off], x[e]);
    for (int d = rank - 1; d >= 0; --d) {
      const int64_t step = p.out_shape[d] == 1 ? 0 : out_st[d];
      out_off += step;
      if (++idx[d] < p.in_shape[d]) break;
      out_off -= step * p.in_shape[d];
      idx[d] = 0;
    }
  }
}

}  // namespace

void reduce_op(const ReducePlan& p, const float* x, float* y, ThreadPool& pool) {
  if (!p.simple) {
    reduce_general(p, x, y);
  } else {
    const AxisView& v = p.view;
    // ~64k elements per task
    const int64_t per = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, v.n * v.inner));
    const int64_t tasks = (v.outer + per - 1) / per;
    pool.parallel_for(tasks, [&](int64_t t, int) {
      int64_t o0 = t * per, o1 = std::min(v.outer, o0 + per);
      switch (p.fn) {
        case ReduceFn::kMax: return reduce_block<ReduceFn::kMax>(v, x, y, o0, o1);
        case ReduceFn::kMin: return reduce_block<ReduceFn::kMin>(v, x, y, o0, o1);
        case ReduceFn::kProd: return reduce_block<ReduceFn::kProd>(v, x, y, o0, o1);
        default: return reduce_block<ReduceFn::kSum>(v, x, y, o0, o1);
      }
    });
  }
  if (p.fn == ReduceFn::kMean) {
    const int64_t total_out = numel(p.out_shape);
    const float inv = static_cast<float>(p.count);
    for (int64_t o = 0; o < total_out; ++o) y[o] /= inv;
  }
}

void arg_reduce_op(const AxisView& v, bool largest, bool select_last, const float* x, int64_t* y) {
  for (int64_t o = 0; o < v.outer; ++o) {
    for (int64_t i = 0; i < v.inner; ++i) {
      const float* p = x + o * v.n * v.inner + i;
      int64_t best = 0;
      float bv = p[0];
      for (int64_t r = 1; r < v.n; ++r) {
        const float cur = p[r * v.inner];
        if (bv != bv) break;  // the first NaN wins, as np.argmax
        bool better = cur != cur || (largest ? (select_last ? cur >= bv : cur > bv)
                                             : (select_last ? cur <= bv : cur < bv));
        if (better) {
          best = r;
          bv = cur;
        }
      }
      y[o * v.inner + i] = best;
    }
  }
}

void cumulative_op(const AxisView& v, bool exclusive, bool reverse, const float* x, float* y) {
  for (int64_t o = 0; o < v.outer; ++o) {
    for (int64_t i = 0; i < v.inner; ++i) {
      const float* p = x + o * v.n * v.inner + i;
      float* q = y + o * v.n * v.inner + i;
      float acc = 0.f;
      for (int64_t s = 0; s < v.n; ++s) {
        const int64_t r = reverse ? v.n - 1 - s : s;
        const float cur = p[r * v.inner];
        if (exclusive) {
          q[r * v.inner] = acc;
          acc += cur;
        } else {
          acc += cur;
          q[r * v.inner] = acc;
        }
      }
    }
  }
}

void topk_op(const AxisView& v, int64_t k, bool largest, const float* x, float* values, int64_t* indices,
             ThreadPool& pool, FunctionRef<float*(int)> scratch) {
  if (k == 0) return;
  pool.parallel_for(v.outer * v.inner, [&](int64_t task, int worker) {
    const int64_t o = task / v.inner, i = task % v.inner;
    const float* p = x + o * v.n * v.inner + i;
    int64_t* order = reinterpret_cast<int64_t*>(scratch(worker));
    for (int64_t r = 0; r < v.n; ++r) order[r] = r;
    // NaN sorts as the largest value (NumPy's sort order); ties keep the lower index first
    auto before = [&](int64_t a, int64_t b) {
      const float va = p[a * v.inner], vb = p[b * v.inner];
      const bool na = va != va, nb = vb != vb;
      if (na || nb) {
        if (na && nb) return a < b;
        return largest ? na : nb;
      }
      if (va != vb) return largest ? va > vb : va < vb;
      return a < b;
    };
    std::partial_sort(order, order + k, order + v.n, before);
    float* vo = values + o * k * v.inner + i;
    int64_t* io = indices + o * k * v.inner + i;
    for (int64_t r = 0; r < k; ++r) {
      io[r * v.inner] = order[r];
      vo[r * v.inner] = p[order[r] * v.inner];
    }
  });
}

}  // namespace walle

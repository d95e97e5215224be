// GATHER and SCATTER: reads and writes at positions known only at run time. Every index is
// range-checked before any byte moves, and a bad one raises IndexError naming the op.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "plan.hpp"

namespace walle {

namespace {

// Index i of a [n]-sized axis, negative counting from the end; throws when out of range.
inline int64_t normalise(int64_t i, int64_t n, const std::string& where) {
  if (i < -n || i >= n) {
    throw IndexError(where + ": index " + std::to_string(i) + " out of range for axis of size " + std::to_string(n));
  }
  return i < 0 ? i + n : i;
}

class GatherKernel : public OpKernel {
 public:
  explicit GatherKernel(const BuildContext& ctx) : where_(ctx.where()) {
    ctx.expect_arity(2, 2, 1);
    const TensorInfo &data = ctx.input(0), &idx = ctx.input(1), &y = ctx.output(0);
    ctx.check(idx.dtype == DType::kI32 || idx.dtype == DType::kI64, "indices must be int32 or int64");
    ctx.check(!data.shape.empty(), "data must be at least 1-D");
    const int64_t axis = ctx.int_at(0);
    ctx.check(axis >= 0 && axis < static_cast<int64_t>(data.shape.size()), "axis out of range");
    ctx.check(y.dtype == data.dtype && y.itemsize == data.itemsize, "output dtype differs from data");
    Shape out(data.shape.begin(), data.shape.begin() + axis);
    out.insert(out.end(), idx.shape.begin(), idx.shape.end());
    out.insert(out.end(), data.shape.begin() + axis + 1, data.shape.end());
    ctx.check(out == y.shape, "output shape is wrong");
    for (int64_t d = 0; d < axis; ++d) outer_ *= data.shape[d];
    n_ = data.shape[axis];
    for (size_t d = axis + 1; d < data.shape.size(); ++d) row_bytes_ *= data.shape[d];
    row_bytes_ *= data.itemsize;
    m_ = idx.numel;
    idx64_ = idx.dtype == DType::kI64;
    data_ = ctx.input_id(0);
    idx_ = ctx.input_id(1);
    y_ = ctx.output_id(0);
  }

  void run(const RunContext& ctx) const override {
    const auto* src = static_cast<const unsigned char*>(ctx.ptrs[data_]);
    auto* dst = static_cast<unsigned char*>(ctx.ptrs[y_]);
    const void* idx = ctx.ptrs[idx_];
    auto index = [&](int64_t j) {
      return idx64_ ? static_cast<const int64_t*>(idx)[j] : static_cast<int64_t>(static_cast<const int32_t*>(idx)[j]);
    };
    for (int64_t j = 0; j < m_; ++j) normalise(index(j), n_, where_);
    if (row_bytes_ == 0) return;
    ctx.pool.parallel_for(outer_, [&](int64_t o, int) {
      const unsigned char* base = src + o * n_ * row_bytes_;
      unsigned char* out = dst + o * m_ * row_bytes_;
      for (int64_t j = 0; j < m_; ++j) {
        const int64_t i = index(j);
        std::memcpy(out + j * row_bytes_, base + (i < 0 ? i + n_ : i) * row_bytes_, static_cast<size_t>(row_bytes_));
      }
    });
  }

 private:
  std::string where_;
  int64_t outer_ = 1, n_ = 0, row_bytes_ = 1, m_ = 0;
  bool idx64_ = true;
  int data_ = -1, idx_ = -1, y_ = -1;
};

template <class T>
void combine_row(int reduction, T* out, const T* upd, int64_t n) {
  // integers combine in unsigned arithmetic so overflow wraps instead of being undefined
  using A = std::conditional_t<std::is_integral_v<T>, std::make_unsigned_t<std::conditional_t<std::is_integral_v<T>, T, int>>, T>;
  switch (static_cast<BinaryFn>(reduction)) {
    case BinaryFn::kAdd:
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<A>(out[i]) + static_cast<A>(upd[i]));
      break;
    case BinaryFn::kMul:
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<A>(out[i]) * static_cast<A>(upd[i]));
      break;
    // NaN propagates as in np.maximum.at / np.minimum.at
    case BinaryFn::kMax:
      for (int64_t i = 0; i < n; ++i) out[i] = (upd[i] > out[i] || upd[i] != upd[i]) ? upd[i] : out[i];
      break;
    case BinaryFn::kMin:
      for (int64_t i = 0; i < n; ++i) out[i] = (upd[i] < out[i] || upd[i] != upd[i]) ? upd[i] : out[i];
      break;
    default: break;
  }
}

class ScatterKernel : public OpKernel {
 public:
  explicit ScatterKernel(const BuildContext& ctx) : where_(ctx.where()) {
    ctx.expect_arity(3, 3, 1);
    const TensorInfo &data = ctx.input(0), &idx = ctx.input(1), &upd = ctx.input(2), &y = ctx.output(0);
    ctx.check(idx.dtype == DType::kI64 && idx.shape.size() == 1, "indices must be 1-D int64");
    ctx.check(!data.shape.empty(), "data must be at least 1-D");
    Shape want = idx.shape;
    want.insert(want.end(), data.shape.begin() + 1, data.shape.end());
    ctx.check(upd.shape == want, "updates shape does not match indices and data");
    ctx.check(upd.dtype == data.dtype && upd.itemsize == data.itemsize, "updates dtype differs from data");
    ctx.check(y.dtype == data.dtype && y.itemsize == data.itemsize && y.shape == data.shape, "output type differs from data");
    reduction_ = static_cast<int>(ctx.int_at(0));
    if (reduction_ >= 0) {
      const auto fn = static_cast<BinaryFn>(reduction_);
      ctx.check(fn == BinaryFn::kAdd || fn == BinaryFn::kMul || fn == BinaryFn::kMax || fn == BinaryFn::kMin,
                "reduction must be none, add, mul, max or min");
      ctx.check(data.dtype == DType::kF32 || data.dtype == DType::kI32 || data.dtype == DType::kI64,
                "reductions need float32, int32 or int64 data");
    }
    dtype_ = data.dtype;
    outer_ = data.shape[0];
    row_elems_ = data.numel / std::max<int64_t>(outer_, 1);
    if (outer_ == 0) row_elems_ = 0;
    itemsize_ = data.itemsize;
    n_ = idx.numel;
    data_ = ctx.input_id(0);
    idx_ = ctx.input_id(1);
    upd_ = ctx.input_id(2);
    y_ = ctx.output_id(0);
  }

  void run(const RunContext& ctx) const override {
    const auto* idx = static_cast<const int64_t*>(ctx.ptrs[idx_]);
    for (int64_t j = 0; j < n_; ++j) normalise(idx[j], outer_, where_);
    const int64_t row_bytes = row_elems_ * itemsize_;
    auto* out = static_cast<unsigned char*>(ctx.ptrs[y_]);
    const auto* upd = static_cast<const unsigned char*>(ctx.ptrs[upd_]);
    if (outer_ * row_bytes != 0) std::memcpy(out, ctx.ptrs[data_], static_cast<size_t>(outer_ * row_bytes));
    for (int64_t j = 0; j < n_; ++j) {  // in order: later updates see earlier ones
      const int64_t row = idx[j] < 0 ? idx[j] + outer_ : idx[j];
      unsigned char* dst = out + row * row_bytes;
      const unsigned char* src = upd + j * row_bytes;
      if (reduction_ < 0) {
        std::memcpy(dst, src, static_cast<size_t>(row_bytes));
      } else if (dtype_ == DType::kF32) {
        combine_row(reduction_, reinterpret_cast<float*>(dst), reinterpret_cast<const float*>(src), row_elems_);
      } else if (dtype_ == DType::kI32) {
        combine_row(reduction_, reinterpret_cast<int32_t*>(dst), reinterpret_cast<const int32_t*>(src), row_elems_);
      } else {
        combine_row(reduction_, reinterpret_cast<int64_t*>(dst), reinterpret_cast<const int64_t*>(src), row_elems_);
      }
    }
  }

 private:
  std::string where_;
  DType dtype_ = DType::kF32;
  int reduction_ = -1;
  int64_t outer_ = 0, row_elems_ = 0, n_ = 0;
  int itemsize_ = 1;
  int data_ = -1, idx_ = -1, upd_ = -1, y_ = -1;
};

}  // namespace

std::unique_ptr<OpKernel> build_gather(const BuildContext& ctx) { return std::make_unique<GatherKernel>(ctx); }
std::unique_ptr<OpKernel> build_scatter(const BuildContext& ctx) { return std::make_unique<ScatterKernel>(ctx); }

}  // namespace walle

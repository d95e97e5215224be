// Kernel builders for the ops without compile-time preparation beyond validation: they decode
// and re-check the attribute record (the Python side checked it too; native code trusts nothing),
// then bind the kernel functions of elementwise / reduce / raster / pool.
#include <algorithm>

#include "elementwise.hpp"
#include "plan.hpp"
#include "pool.hpp"
#include "raster.hpp"
#include "reduce.hpp"

namespace walle {

namespace {

bool same_shape(const Shape& a, const Shape& b) { return a == b; }

std::string shape_str(const Shape& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

Shape broadcast_shape(const BuildContext& ctx, const std::vector<Shape>& shapes) {
  size_t rank = 0;
  for (const auto& s : shapes) rank = std::max(rank, s.size());
  Shape out(rank, 1);
  for (const auto& s : shapes) {
    for (size_t e = 0; e < s.size(); ++e) {
      int64_t& d = out[rank - s.size() + e];
      ctx.check(s[e] == d || s[e] == 1 || d == 1, "shapes do not broadcast");
      if (s[e] != 1) d = s[e];
    }
  }
  return out;
}

int checked_axis(const BuildContext& ctx, int64_t axis, size_t rank) {
  ctx.check(axis >= 0 && axis < static_cast<int64_t>(std::max<size_t>(rank, 1)), "axis out of range");
  return static_cast<int>(axis);
}

// --------------------------------------------------------------------------------- raster

class RasterKernel : public OpKernel {
 public:
  explicit RasterKernel(const BuildContext& ctx) {
    ctx.check(ctx.num_inputs() >= 1 && ctx.num_outputs() == 1, "takes >= 1 input and 1 output");
    const TensorInfo& out = ctx.output(0);
    for (size_t i = 0; i < ctx.num_inputs(); ++i) {
      ctx.check(ctx.input(i).itemsize == out.itemsize, "inputs and output differ in element size");
      inputs_.push_back(ctx.input_id(i));
    }
    itemsize_ = out.itemsize;
    out_id_ = ctx.output_id(0);
    out_elems_ = out.numel;
    fill_bits_ = static_cast<uint64_t>(ctx.int_at(0));
    const int64_t count = ctx.int_at(1);
    ctx.check(count >= 0 && count <= int64_t(1) << 24, "region count out of range");
    size_t pos = 2;
    for (int64_t r = 0; r < count; ++r) {
      RasterRegion reg;
      const int64_t input = ctx.int_at(pos++);
      ctx.check(input >= 0 && input < static_cast<int64_t>(inputs_.size()), "region input out of range");
      reg.input = static_cast<int>(input);
      const int64_t rank = ctx.int_at(pos++);
      ctx.check(rank >= 0 && rank <= kMaxRank, "region rank out of range");
      reg.rank = static_cast<int>(rank);
      for (int d = 0; d < reg.rank; ++d) reg.size[d] = ctx.int_at(pos++);
      reg.src_offset = ctx.int_at(pos++);
      for (int d = 0; d < reg.rank; ++d) reg.src_strides[d] = ctx.int_at(pos++);
      reg.dst_offset = ctx.int_at(pos++);
      for (int d = 0; d < reg.rank; ++d) reg.dst_strides[d] = ctx.int_at(pos++);
      try {
        validate_region(reg, ctx.input(reg.input).numel, out_elems_);
      } catch (const Error& e) {
        ctx.check(false, std::string("region ") + std::to_string(r) + ": " + e.what());
      }
      regions_.push_back(reg);
    }
    // optional: 1 when the rest of the output is written in place by the producers of its parts
    // (a concatenation; see TensorInfo::whole), so it must not be filled
    if (pos < ctx.rec().ints.size()) {
      const int64_t rest = ctx.int_at(pos++);
      ctx.check(rest == 0 || rest == 1, "in-place flag must be 0 or 1");
      rest_in_place_ = rest == 1;
    }
    ctx.check(pos == ctx.rec().ints.size(), "trailing attribute values");
    tiles_output_ = regions_tile_output(regions_, out_elems_);
  }

  void run(const RunContext& ctx) const override {
    // pointers gathered into a small fixed array when possible to avoid allocation
    constexpr size_t kInline = 16;
    const void* small[kInline];
    std::vector<const void*> big;
    const void** ins = small;
    if (inputs_.size() > kInline) {
      big.resize(inputs_.size());
      ins = big.data();
    }
    for (size_t i = 0; i < inputs_.size(); ++i) ins[i] = ctx.ptrs[inputs_[i]];
    // disjoint blocks that cover the output (a concatenation): no fill, and a large one is
    // copied a region per worker
    if ((tiles_output_ || rest_in_place_) && regions_.size() > 1 && out_elems_ * itemsize_ >= kParallelCopyBytes) {
      ctx.pool.parallel_for(static_cast<int64_t>(regions_.size()), [&](int64_t r, int) {
        const RasterRegion& reg = regions_[static_cast<size_t>(r)];
        raster_copy(itemsize_, reg, ins[reg.input], ctx.ptrs[out_id_]);
      });
      return;
    }
    raster_op(itemsize_, regions_, ins, ctx.ptrs[out_id_], out_elems_, fill_bits_, tiles_output_ || rest_in_place_);
  }

 private:
  static constexpr int64_t kParallelCopyBytes = int64_t(256) << 10;
  bool tiles_output_ = false;
  bool rest_in_place_ = false;
  std::vector<int> inputs_;
  std::vector<RasterRegion> regions_;
  int itemsize_ = 0;
  int out_id_ = 0;
  int64_t out_elems_ = 0;
  uint64_t fill_bits_ = 0;
};

// ---------------------------------------------------------------------------- elementwise

Act decode_act(const BuildContext& ctx, size_t fn_index, size_t alpha_index, bool allow_not) {
  const int64_t fn = ctx.int_at(fn_index);
  ctx.check(fn >= 0 && fn < static_cast<int64_t>(UnaryFn::kCount), "unknown unary function");
  Act act;
  act.fn = static_cast<UnaryFn>(fn);
  ctx.check(allow_not || act.fn != UnaryFn::kNot, "NOT is not an activation");
  act.alpha = static_cast<float>(ctx.float_at(alpha_index));
  act.beta = static_cast<float>(ctx.float_at(alpha_index + 1));
  return act;
}

class UnaryKernel : public OpKernel {
 public:
  explicit UnaryKernel(const BuildContext& ctx) : isa_(ctx.gemm().isa) {
    ctx.expect_arity(1, 1, 1);
    act_ = decode_act(ctx, 0, 0, true);
    dtype_ = ctx.input(0).dtype;
    ctx.check(unary_supported(act_.fn, dtype_), "function/dtype combination not supported");
    ctx.check(ctx.output(0).dtype == dtype_ && same_shape(ctx.input(0).shape, ctx.output(0).shape),
              "output type differs from input");
    x_ = ctx.input_id(0);
    y_ = ctx.output_id(0);
    n_ = ctx.output(0).numel;
  }
  void run(const RunContext& ctx) const override {
    unary_op(act_, dtype_, ctx.ptrs[x_], ctx.ptrs[y_], n_, isa_, ctx.pool);
  }

 private:
  Isa isa_;
  Act act_;
  DType dtype_;
  int x_, y_;
  int64_t n_;
};

class BinaryKernel : public OpKernel {
 public:
  explicit BinaryKernel(const BuildContext& ctx) {
    ctx.expect_arity(2, 2, 1);
    const int64_t fn = ctx.int_at(0);
    ctx.check(fn >= 0 && fn < static_cast<int64_t>(BinaryFn::kCount), "unknown binary function");
    fn_ = static_cast<BinaryFn>(fn);
    const TensorInfo &a = ctx.input(0), &b = ctx.input(1), &y = ctx.output(0);
    dtype_ = a.dtype;
    ctx.check(b.dtype == dtype_, "operand dtypes differ");
    ctx.check(binary_supported(fn_, dtype_), "function/dtype combination not supported");
    const bool to_bool = fn_ >= BinaryFn::kEq && fn_ <= BinaryFn::kXor;
    ctx.check(y.dtype == (to_bool ? DType::kBool : dtype_), "output dtype is wrong");
    const Shape out = broadcast_shape(ctx, {a.shape, b.shape});
    ctx.check(same_shape(out, y.shape), "output shape " + shape_str(y.shape) + " is not " + shape_str(out));
    geom_ = Broadcast::make(out, {a.shape, b.shape});
    a_ = ctx.input_id(0);
    b_ = ctx.input_id(1);
    y_ = ctx.output_id(0);
  }
  void run(const RunContext& ctx) const override {
    if (geom_.total) binary_op(fn_, dtype_, geom_, ctx.ptrs[a_], ctx.ptrs[b_], ctx.ptrs[y_], ctx.pool);
  }

 private:
  BinaryFn fn_;
  DType dtype_;
  Broadcast geom_;
  int a_, b_, y_;
};

class SelectKernel : public OpKernel {
 public:
  explicit SelectKernel(const BuildContext& ctx) {
    ctx.expect_arity(3, 3, 1);
    const TensorInfo &c = ctx.input(0), &a = ctx.input(1), &b = ctx.input(2), &y = ctx.output(0);
    ctx.check(c.dtype == DType::kBool, "condition must be bool");
    ctx.check(a.itemsize == b.itemsize && a.dtype == b.dtype && y.dtype == a.dtype && y.itemsize == a.itemsize,
              "branches and output must share one dtype");
    const Shape out = broadcast_shape(ctx, {c.shape, a.shape, b.shape});
    ctx.check(same_shape(out, y.shape), "output shape " + shape_str(y.shape) + " is not " + shape_str(out));
    geom_ = Broadcast::make(out, {c.shape, a.shape, b.shape});
    itemsize_ = a.itemsize;
    c_ = ctx.input_id(0);
    a_ = ctx.input_id(1);
    b_ = ctx.input_id(2);
    y_ = ctx.output_id(0);
  }
  void run(const RunContext& ctx) const override {
    if (geom_.total) {
      select_op(itemsize_, geom_, static_cast<const uint8_t*>(ctx.ptrs[c_]), ctx.ptrs[a_], ctx.ptrs[b_],
                ctx.ptrs[y_], ctx.pool);
    }
  }

 private:
  Broadcast geom_;
  int itemsize_;
  int c_, a_, b_, y_;
};

class CastKernel : public OpKernel {
 public:
  explicit CastKernel(const BuildContext& ctx) {
    ctx.expect_arity(1, 1, 1);
    from_ = ctx.input(0).dtype;
    to_ = ctx.output(0).dtype;
    ctx.check(cast_supported(from_, to_), "dtype pair not supported");
    ctx.check(same_shape(ctx.input(0).shape, ctx.output(0).shape), "output shape differs from input");
    x_ = ctx.input_id(0);
    y_ = ctx.output_id(0);
    n_ = ctx.output(0).numel;
  }
  void run(const RunContext& ctx) const override { cast_op(from_, to_, ctx.ptrs[x_], ctx.ptrs[y_], n_); }

 private:
  DType from_, to_;
  int x_, y_;
  int64_t n_;
};

// ----------------------------------------------------------------------------- reductions

void expect_f32(const BuildContext& ctx, const TensorInfo& t, const char* what) {
  ctx.check(t.dtype == DType::kF32, std::string(what) + " must be float32");
}

Shape reduced_shape(const Shape& in, const std::vector<bool>& reduced, bool keepdims, int64_t keep_size = 1) {
  Shape out;
  for (size_t d = 0; d < in.size(); ++d) {
    if (!reduced[d]) out.push_back(in[d]);
    else if (keepdims) out.push_back(keep_size);
  }
  return out;
}

class ReduceKernel : public OpKernel {
 public:
  explicit ReduceKernel(const BuildContext& ctx) {
    ctx.expect_arity(1, 1, 1);
    const TensorInfo &x = ctx.input(0), &y = ctx.output(0);
    expect_f32(ctx, x, "input");
    expect_f32(ctx, y, "output");
    const int64_t fn = ctx.int_at(0);
    ctx.check(fn >= 0 && fn < static_cast<int64_t>(ReduceFn::kCount), "unknown reduce function");
    const bool keepdims = ctx.int_at(1) != 0;
    std::vector<bool> reduced(x.shape.size(), false);
    for (size_t i = 2; i < ctx.rec().ints.size(); ++i) {
      const int axis = checked_axis(ctx, ctx.int_at(i), x.shape.size());
      ctx.check(x.shape.size() > 0, "axis out of range");
      ctx.check(!reduced[axis], "repeated axis");
      reduced[axis] = true;
    }
    ctx.check(same_shape(reduced_shape(x.shape, reduced, keepdims), y.shape), "output shape is wrong");
    plan_ = ReducePlan::make(static_cast<ReduceFn>(fn), x.shape, reduced);
    x_ = ctx.input_id(0);
    y_ = ctx.output_id(0);
  }
  void run(const RunContext& ctx) const override {
    reduce_op(plan_, static_cast<const float*>(ctx.ptrs[x_]), static_cast<float*>(ctx.ptrs[y_]), ctx.pool);
  }

 private:
  ReducePlan plan_;
  int x_, y_;
};

class ArgReduceKernel : public OpKernel {
 public:
  explicit ArgReduceKernel(const BuildContext& ctx) {
    ctx.expect_arity(1, 1, 1);
    const TensorInfo &x = ctx.input(0), &y = ctx.output(0);
    expect_f32(ctx, x, "input");
    ctx.check(y.dtype == DType::kI64, "output must be int64");
    const int axis = checked_axis(ctx, ctx.int_at(0), x.shape.size());
    const bool keepdims = ctx.int_at(1) != 0;
    largest_ = ctx.int_at(2) != 0;
    select_last_ = ctx.int_at(3) != 0;
    std::vector<bool> reduced(x.shape.size(), false);
    if (!x.shape.empty()) {
      reduced[axis] = true;
      ctx.check(x.shape[axis] > 0, "cannot reduce an empty axis");
    }
    ctx.check(same_shape(reduced_shape(x.shape, reduced, keepdims), y.shape), "output shape is wrong");
    view_ = AxisView::around(x.shape, x.shape.empty() ? -1 : axis);
    x_ = ctx.input_id(0);
    y_ = ctx.output_id(0);
  }
  void run(const RunContext& ctx) const override {
    arg_reduce_op(view_, largest_, select_last_, static_cast<const float*>(ctx.ptrs[x_]),
                  static_cast<int64_t*>(ctx.ptrs[y_]));
  }

 private:
  AxisView view_;
  bool largest_, select_last_;
  int x_, y_;
};

class CumulativeKernel : public OpKernel {
 public:
  explicit CumulativeKernel(const BuildContext& ctx) {
    ctx.expect_arity(1, 1, 1);
    const TensorInfo &x = ctx.input(0), &y = ctx.output(0);
    expect_f32(ctx, x, "input");
    ctx.check(y.dtype == DType::kF32 && same_shape(x.shape, y.shape), "output type differs from input");
    const int axis = checked_axis(ctx, ctx.int_at(0), x.shape.size());
    exclusive_ = ctx.int_at(1) != 0;
    reverse_ = ctx.int_at(2) != 0;
    view_ = AxisView::around(x.shape, x.shape.empty() ? -1 : axis);
    x_ = ctx.input_id(0);
    y_ = ctx.output_id(0);
  }
  void run(const RunContext& ctx) const override {
    cumulative_op(view_, exclusive_, reverse_, static_cast<const float*>(ctx.ptrs[x_]),
                  static_cast<float*>(ctx.ptrs[y_]));
  }

 private:
  AxisView view_;
  bool exclusive_, reverse_;
  int x_, y_;
};

class TopKKernel : public OpKernel {
 public:
  explicit TopKKernel(const BuildContext& ctx) {
    ctx.expect_arity(1, 1, 2);
    const TensorInfo &x = ctx.input(0), &v = ctx.output(0), &i = ctx.output(1);
    expect_f32(ctx, x, "input");
    ctx.check(x.shape.size() >= 1, "input must be at least 1-D");
    const int axis = checked_axis(ctx, ctx.int_at(0), x.shape.size());
    k_ = ctx.int_at(1);
    ctx.check(k_ >= 0 && k_ <= x.shape[axis], "k out of range");
    largest_ = ctx.int_at(2) != 0;
    Shape out = x.shape;
    out[axis] = k_;
    ctx.check(v.dtype == DType::kF32 && same_shape(v.shape, out), "values output type is wrong");
    ctx.check(i.dtype == DType::kI64 && same_shape(i.shape, out), "indices output type is wrong");
    view_ = AxisView::around(x.shape, axis);
    x_ = ctx.input_id(0);
    v_ = ctx.output_id(0);
    i_ = ctx.output_id(1);
  }
  size_t scratch_bytes() const override { return static_cast<size_t>(view_.n) * sizeof(int64_t); }
  void run(const RunContext& ctx) const override {
    topk_op(view_, k_, largest_, static_cast<const float*>(ctx.ptrs[x_]), static_cast<float*>(ctx.ptrs[v_]),
            static_cast<int64_t*>(ctx.ptrs[i_]), ctx.pool, ctx.scratch);
  }

 private:
  AxisView view_;
  int64_t k_;
  bool largest_;
  int x_, v_, i_;
};

// ----------------------------------------------------------------------------------- pool

class Pool2DKernel : public OpKernel {
 public:
  explicit Pool2DKernel(const BuildContext& ctx) : isa_(ctx.gemm().isa) {
    ctx.expect_arity(1, 1, 1);
    const TensorInfo &x = ctx.input(0), &y = ctx.output(0);
    expect_f32(ctx, x, "input");
    ctx.check(x.shape.size() == 4, "input must be 4-D");
    const int64_t kind = ctx.int_at(0);
    ctx.check(kind == 0 || kind == 1, "unknown pool kind");
    p_.is_max = kind == 0;
    int64_t* fields[] = {&p_.kh, &p_.kw, &p_.sh, &p_.sw, &p_.pt, &p_.pl, &p_.pb, &p_.pr, &p_.dh, &p_.dw, &p_.oh, &p_.ow};
    for (size_t f = 0; f < 12; ++f) *fields[f] = ctx.int_at(1 + f);
    p_.count_include_pad = ctx.int_at(13) != 0;
    ctx.check(p_.kh > 0 && p_.kw > 0 && p_.sh > 0 && p_.sw > 0 && p_.dh > 0 && p_.dw > 0 && p_.oh > 0 && p_.ow > 0,
              "kernel, strides, dilations and output size must be positive");
    ctx.check(p_.pt >= 0 && p_.pl >= 0 && p_.pb >= 0 && p_.pr >= 0, "pads must be non-negative");
    ctx.check(p_.kh <= (int64_t(1) << 20) && p_.kw <= (int64_t(1) << 20) && p_.dh <= (int64_t(1) << 20) &&
                  p_.dw <= (int64_t(1) << 20) && p_.sh <= (int64_t(1) << 30) && p_.sw <= (int64_t(1) << 30) &&
                  p_.pt <= (int64_t(1) << 30) && p_.pl <= (int64_t(1) << 30),
              "window parameters too large");
    p_.n = x.shape[0];
    p_.c = x.shape[1];
    p_.h = x.shape[2];
    p_.w = x.shape[3];
    ctx.check(y.dtype == DType::kF32 && same_shape(y.shape, Shape{p_.n, p_.c, p_.oh, p_.ow}), "output shape is wrong");
    x_ = ctx.input_id(0);
    y_ = ctx.output_id(0);
  }
  size_t scratch_bytes() const override { return pool2d_scratch_bytes(p_, isa_); }
  void run(const RunContext& ctx) const override {
    pool2d_op(p_, isa_, static_cast<const float*>(ctx.ptrs[x_]), static_cast<float*>(ctx.ptrs[y_]), ctx.pool,
              ctx.scratch);
  }

 private:
  Isa isa_;
  PoolParams p_;
  int x_, y_;
};

}  // namespace

std::unique_ptr<OpKernel> build_kernel(const BuildContext& ctx) {
  switch (ctx.rec().op) {
    case OpCode::kRaster: return std::make_unique<RasterKernel>(ctx);
    case OpCode::kUnary: return std::make_unique<UnaryKernel>(ctx);
    case OpCode::kBinary: return std::make_unique<BinaryKernel>(ctx);
    case OpCode::kSelect: return std::make_unique<SelectKernel>(ctx);
    case OpCode::kCast: return std::make_unique<CastKernel>(ctx);
    case OpCode::kReduce: return std::make_unique<ReduceKernel>(ctx);
    case OpCode::kArgReduce: return std::make_unique<ArgReduceKernel>(ctx);
    case OpCode::kCumulative: return std::make_unique<CumulativeKernel>(ctx);
    case OpCode::kTopK: return std::make_unique<TopKKernel>(ctx);
    case OpCode::kMatMul: return build_matmul(ctx);
    case OpCode::kConv2D: return build_conv2d(ctx);
    case OpCode::kPool2D: return std::make_unique<Pool2DKernel>(ctx);
    case OpCode::kGather: return build_gather(ctx);
    case OpCode::kScatter: return build_scatter(ctx);
    default: throw Error(ctx.where() + ": unknown op code");
  }
}

}  // namespace walle


// MATMUL: batched, broadcasting GEMM with optional transposes, bias and fused activation.
// A constant operand is packed once here, at compile time, for every one of its batch matrices.
#include <algorithm>

#include "gemm.hpp"
#include "plan.hpp"

namespace walle {

namespace {

// Element strides of `shape` seen through broadcasting to `out` (0 where broadcast), right-aligned.
Shape broadcast_strides(const Shape& shape, const Shape& out) {
  Shape st(out.size(), 0);
  const Shape own = row_strides(shape);
  for (size_t e = 0; e < shape.size(); ++e) {
    const size_t d = out.size() - shape.size() + e;
    st[d] = shape[e] == 1 ? 0 : own[e];
  }
  return st;
}

// Largest run-time A (all matrices of a batch, packed) that a MatMul packs once per run.
constexpr int64_t kMaxPackedAFloats = int64_t(4) << 20;

class MatMulKernel : public OpKernel {
 public:
  explicit MatMulKernel(const BuildContext& ctx) : blk_(ctx.gemm()) {
    ctx.expect_arity(2, 3, 1);
    const TensorInfo &a = ctx.input(0), &b = ctx.input(1), &y = ctx.output(0);
    for (size_t i = 0; i < ctx.num_inputs(); ++i) ctx.check(ctx.input(i).dtype == DType::kF32, "inputs must be float32");
    ctx.check(y.dtype == DType::kF32, "output must be float32");
    ctx.check(a.shape.size() >= 2 && b.shape.size() >= 2, "operands must be at least 2-D");
    const bool ta = ctx.int_at(0) != 0, tb = ctx.int_at(1) != 0;
    const int64_t fn = ctx.int_at(2);
    ctx.check(fn >= 0 && fn < static_cast<int64_t>(UnaryFn::kCount) && fn != static_cast<int64_t>(UnaryFn::kNot),
              "unknown activation");
    act_ = Act{static_cast<UnaryFn>(fn), static_cast<float>(ctx.float_at(0)), static_cast<float>(ctx.float_at(1))};
    const size_t ra = a.shape.size(), rb = b.shape.size();
    m_ = ta ? a.shape[ra - 1] : a.shape[ra - 2];
    k_ = ta ? a.shape[ra - 2] : a.shape[ra - 1];
    const int64_t k2 = tb ? b.shape[rb - 1] : b.shape[rb - 2];
    n_ = tb ? b.shape[rb - 2] : b.shape[rb - 1];
    ctx.check(k_ == k2, "inner dimensions differ");
    // batch dims broadcast
    const Shape ab(a.shape.begin(), a.shape.end() - 2), bb(b.shape.begin(), b.shape.end() - 2);
    const size_t rank = std::max(ab.size(), bb.size());
    Shape batch(rank, 1);
    for (const Shape* s : {&ab, &bb}) {
      for (size_t e = 0; e < s->size(); ++e) {
        int64_t& d = batch[rank - s->size() + e];
        ctx.check((*s)[e] == d || (*s)[e] == 1 || d == 1, "batch dimensions do not broadcast");
        if ((*s)[e] != 1) d = (*s)[e];
      }
    }
    Shape out = batch;
    out.push_back(m_);
    out.push_back(n_);
    ctx.check(y.shape == out, "output shape is wrong");
    batch_ = numel(batch);
    // per output batch: which matrix of a, b (and where in bias) it reads
    const Shape ast = broadcast_strides(ab, batch), bst = broadcast_strides(bb, batch);
    const Shape bstr = row_strides(batch);
    Shape bias_st;
    if (ctx.num_inputs() == 3) {
      const TensorInfo& bias = ctx.input(2);
      ctx.check(bias.shape.size() <= out.size(), "bias rank exceeds output rank");
      for (size_t e = 0; e < bias.shape.size(); ++e) {
        const int64_t d = out[out.size() - bias.shape.size() + e];
        ctx.check(bias.shape[e] == d || bias.shape[e] == 1, "bias does not broadcast to the output");
      }
      bias_st = broadcast_strides(bias.shape, out);
      bias_view_ = MatView{nullptr, bias_st[out.size() - 2], bias_st[out.size() - 1]};
      bias_ = ctx.input_id(2);
    }
    for (int64_t bi = 0; bi < batch_; ++bi) {
      int64_t rem = bi, ao = 0, bo = 0, co = 0;
      for (size_t d = 0; d < rank; ++d) {
        const int64_t idx = rem / bstr[d];
        rem %= bstr[d];
        ao += idx * ast[d];
        bo += idx * bst[d];
        if (!bias_st.empty()) co += idx * bias_st[d];
      }
      a_matrix_.push_back(ao);  // index of the matrix of a (batch strides count matrices)
      b_matrix_.push_back(bo);
      bias_off_.push_back(co);
    }
    a_view_ = ta ? MatView{nullptr, 1, m_} : MatView{nullptr, k_, 1};
    b_view_ = tb ? MatView{nullptr, 1, k_} : MatView{nullptr, n_, 1};
    const int mr = blk_.kernel.mr, nr = blk_.kernel.nr;
    // pack constant operands: every matrix of a batch-broadcast operand, once (or lent the
    // buffer a saved plan packed)
    auto pack_constant = [&](int input, int64_t count, int64_t stride, int64_t matrix_floats, const MatView& view,
                             AlignedBuffer& packed, auto pack) {
      if (!ctx.packed_buffer(packed, static_cast<size_t>(count * stride) * sizeof(float))) {
        const auto* data = static_cast<const float*>(ctx.constant_input(input));
        for (int64_t i = 0; i < count; ++i) {
          MatView v = view;
          v.p = data + i * matrix_floats;
          pack(v, packed.as<float>() + i * stride);
        }
      }
      ctx.release_constant(input);
    };
    if (ctx.constant_bytes(0) != nullptr) {
      a_packed_stride_ = static_cast<int64_t>(packed_a_floats(m_, k_, mr));
      pack_constant(0, numel(ab), a_packed_stride_, m_ * k_, a_view_, a_packed_,
                    [&](const MatView& v, float* dst) { pack_a_full(v, m_, k_, mr, dst); });
    }
    if (ctx.constant_bytes(1) != nullptr) {
      b_packed_stride_ = static_cast<int64_t>(packed_b_floats(k_, n_, nr));
      pack_constant(1, numel(bb), b_packed_stride_, k_ * n_, b_view_, b_packed_,
                    [&](const MatView& v, float* dst) { pack_b_full(v, k_, n_, nr, dst); });
    }
    // A run-time A that several column blocks of the GEMM read is packed once per run into the
    // workspace, rather than once per column block; within a bound on the workspace.
    const int64_t a_floats = batch_ * static_cast<int64_t>(packed_a_floats(m_, k_, mr));
    pack_a_per_run_ = !a_packed_.data() && n_ > blk_.nc && a_floats <= kMaxPackedAFloats;
    if (pack_a_per_run_) a_packed_stride_ = static_cast<int64_t>(packed_a_floats(m_, k_, mr));
    a_ = ctx.input_id(0);
    b_ = ctx.input_id(1);
    y_ = ctx.output_id(0);
  }

  size_t scratch_bytes() const override { return blk_.scratch_bytes(); }
  size_t workspace_bytes() const override {
    return pack_a_per_run_ ? static_cast<size_t>(batch_ * a_packed_stride_) * sizeof(float) : 0;
  }

  void run(const RunContext& ctx) const override {
    const float* a = static_cast<const float*>(ctx.ptrs[a_]);
    const float* b = static_cast<const float*>(ctx.ptrs[b_]);
    const float* bias = bias_ >= 0 ? static_cast<const float*>(ctx.ptrs[bias_]) : nullptr;
    float* y = static_cast<float*>(ctx.ptrs[y_]);
    for (int64_t bi = 0; pack_a_per_run_ && bi < batch_; ++bi) {
      MatView v = a_view_;
      v.p = a + a_matrix_[bi] * m_ * k_;
      pack_a_panels(v, m_, k_, blk_.kernel.mr, ctx.workspace + bi * a_packed_stride_, ctx.pool);
    }
    auto problem = [&](int64_t bi) {
      GemmProblem p;
      if (a_packed_.data()) {
        p.a.packed = a_packed_.as<float>() + a_matrix_[bi] * a_packed_stride_;
      } else if (pack_a_per_run_) {
        p.a.packed = ctx.workspace + bi * a_packed_stride_;
      } else {
        p.a.view = a_view_;
        p.a.view.p = a + a_matrix_[bi] * m_ * k_;
      }
      if (b_packed_.data()) {
        p.b.packed = b_packed_.as<float>() + b_matrix_[bi] * b_packed_stride_;
        p.b.weights = true;
      } else {
        p.b.view = b_view_;
        p.b.view.p = b + b_matrix_[bi] * k_ * n_;
      }
      p.c = y + bi * m_ * n_;
      p.ldc = n_;
      if (bias) {
        p.epilogue.bias = bias_view_;
        p.epilogue.bias.p = bias + bias_off_[bi];
      }
      p.epilogue.act = act_;
      return p;
    };
    gemm(blk_, m_, n_, k_, batch_, problem, ctx.pool, ctx.scratch, ctx.cancel);
  }

 private:
  GemmBlocking blk_;
  int64_t m_ = 0, n_ = 0, k_ = 0, batch_ = 1;
  Act act_;
  MatView a_view_, b_view_, bias_view_;
  std::vector<int64_t> a_matrix_, b_matrix_, bias_off_;
  AlignedBuffer a_packed_, b_packed_;
  bool pack_a_per_run_ = false;
  int64_t a_packed_stride_ = 0, b_packed_stride_ = 0;
  int a_ = -1, b_ = -1, bias_ = -1, y_ = -1;
};

}  // namespace

std::unique_ptr<OpKernel> build_matmul(const BuildContext& ctx) { return std::make_unique<MatMulKernel>(ctx); }

}  // namespace walle

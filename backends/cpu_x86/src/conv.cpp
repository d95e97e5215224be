// CONV2D (NCHW) with fused bias, residual add and activation. Three algorithms:
//  - depthwise (one input channel per group): direct loops, vectorised along output rows;
//  - 1x1, stride 1, no padding: a plain GEMM of the weights with the image (no copy at all);
//  - anything else: GEMM whose B operand is read through an im2col view of the image, packed
//    block by block, so the im2col matrix is never materialised.
// Constant weights are packed once, per group, when the plan is compiled.
#include <algorithm>

#include "elementwise.hpp"
#include "gemm.hpp"
#include "plan.hpp"

namespace walle {

namespace {

struct ConvShape {
  int64_t n, c, h, w, o, cg, og, kh, kw, oh, ow, groups;
  int64_t sh, sw, pt, pl, pb, pr, dh, dw;
};

// out[oy, :] += w * in[iy, :] over the output columns whose taps fall inside the row.
void depthwise_plane(const ConvShape& s, const float* in, const float* wt, float* out) {
  std::fill(out, out + s.oh * s.ow, 0.f);
  for (int64_t oy = 0; oy < s.oh; ++oy) {
    float* orow = out + oy * s.ow;
    for (int64_t i = 0; i < s.kh; ++i) {
      const int64_t iy = oy * s.sh - s.pt + i * s.dh;
      if (iy < 0 || iy >= s.h) continue;
      const float* irow = in + iy * s.w;
      for (int64_t j = 0; j < s.kw; ++j) {
        const float wv = wt[i * s.kw + j];
        const int64_t shift = j * s.dw - s.pl;  // ix = ox * sw + shift
        // first ox with ix >= 0, last ox with ix < w
        int64_t lo = shift >= 0 ? 0 : (-shift + s.sw - 1) / s.sw;
        int64_t hi = (s.w - 1 - shift) < 0 ? -1 : (s.w - 1 - shift) / s.sw;
        hi = std::min(hi, s.ow - 1);
        if (s.sw == 1) {
          const float* src = irow + shift;
          for (int64_t ox = lo; ox <= hi; ++ox) orow[ox] += wv * src[ox];
        } else {
          for (int64_t ox = lo; ox <= hi; ++ox) orow[ox] += wv * irow[ox * s.sw + shift];
        }
      }
    }
  }
}

class Conv2DKernel : public OpKernel {
 public:
  explicit Conv2DKernel(const BuildContext& ctx) : blk_(ctx.gemm()) {
    ctx.expect_arity(2, 4, 1);
    for (size_t i = 0; i < ctx.num_inputs(); ++i) ctx.check(ctx.input(i).dtype == DType::kF32, "inputs must be float32");
    const TensorInfo &x = ctx.input(0), &w = ctx.input(1), &y = ctx.output(0);
    ctx.check(y.dtype == DType::kF32, "output must be float32");
    ctx.check(x.shape.size() == 4 && w.shape.size() == 4, "input and weight must be 4-D");
    int64_t* fields[] = {&s_.sh, &s_.sw, &s_.pt, &s_.pl, &s_.pb, &s_.pr, &s_.dh, &s_.dw, &s_.groups};
    for (size_t f = 0; f < 9; ++f) *fields[f] = ctx.int_at(f);
    const bool has_bias = ctx.int_at(9) != 0, has_residual = ctx.int_at(10) != 0;
    const int64_t fn = ctx.int_at(11);
    ctx.check(fn >= 0 && fn < static_cast<int64_t>(UnaryFn::kCount) && fn != static_cast<int64_t>(UnaryFn::kNot),
              "unknown activation");
    act_ = Act{static_cast<UnaryFn>(fn), static_cast<float>(ctx.float_at(0)), static_cast<float>(ctx.float_at(1))};
    ctx.check(ctx.num_inputs() == 2 + size_t(has_bias) + size_t(has_residual),
              "input count does not match has_bias/has_residual");
    s_.n = x.shape[0];
    s_.c = x.shape[1];
    s_.h = x.shape[2];
    s_.w = x.shape[3];
    s_.o = w.shape[0];
    s_.cg = w.shape[1];
    s_.kh = w.shape[2];
    s_.kw = w.shape[3];
    const int64_t g = s_.groups;
    ctx.check(g > 0 && s_.c % g == 0 && s_.o % g == 0 && s_.cg * g == s_.c, "channels do not match groups");
    constexpr int64_t kBig = int64_t(1) << 30;
    ctx.check(s_.sh > 0 && s_.sw > 0 && s_.dh > 0 && s_.dw > 0 && s_.sh < kBig && s_.sw < kBig && s_.dh < kBig &&
                  s_.dw < kBig, "strides and dilations must be positive");
    ctx.check(s_.pt >= 0 && s_.pl >= 0 && s_.pb >= 0 && s_.pr >= 0 && s_.pt < kBig && s_.pl < kBig &&
                  s_.pb < kBig && s_.pr < kBig, "pads must be non-negative");
    ctx.check(s_.kh > 0 && s_.kw > 0, "kernel must not be empty");
    s_.og = s_.o / g;
    const int64_t span_h = s_.dh * (s_.kh - 1) + 1, span_w = s_.dw * (s_.kw - 1) + 1;
    ctx.check(s_.h + s_.pt + s_.pb >= span_h && s_.w + s_.pl + s_.pr >= span_w, "window does not fit the input");
    s_.oh = (s_.h + s_.pt + s_.pb - span_h) / s_.sh + 1;
    s_.ow = (s_.w + s_.pl + s_.pr - span_w) / s_.sw + 1;
    ctx.check(y.shape == Shape{s_.n, s_.o, s_.oh, s_.ow}, "output shape is wrong");
    size_t next = 2;
    if (has_bias) {
      ctx.check(ctx.input(next).shape == Shape{s_.o}, "bias must have shape (O,)");
      bias_ = ctx.input_id(next++);
    }
    if (has_residual) {
      ctx.check(ctx.input(next).shape == y.shape, "residual shape differs from the output");
      residual_ = ctx.input_id(next++);
    }
    depthwise_ = s_.cg == 1 && g == s_.c;
    direct_1x1_ = s_.kh == 1 && s_.kw == 1 && s_.sh == 1 && s_.sw == 1 && s_.pt == 0 && s_.pl == 0 &&
                  s_.pb == 0 && s_.pr == 0;
    gemm_k_ = s_.cg * s_.kh * s_.kw;
    im2col_ = Im2col{s_.cg, s_.h, s_.w, s_.kh, s_.kw, s_.sh, s_.sw, s_.dh, s_.dw, s_.pt, s_.pl, s_.oh, s_.ow};
    if (!depthwise_) {
      if (const void* data = ctx.constant_input(1)) {
        // weights of group gi: rows [gi*og, (gi+1)*og) of the [O, cg*kh*kw] matrix
        const int mr = blk_.kernel.mr;
        packed_stride_ = static_cast<int64_t>(packed_a_floats(s_.og, gemm_k_, mr));
        packed_.resize(static_cast<size_t>(g * packed_stride_) * sizeof(float));
        for (int64_t gi = 0; gi < g; ++gi) {
          MatView v{static_cast<const float*>(data) + gi * s_.og * gemm_k_, gemm_k_, 1};
          AlignedBuffer one = pack_a_full(v, s_.og, gemm_k_, mr);
          std::copy_n(one.as<float>(), packed_stride_, packed_.as<float>() + gi * packed_stride_);
        }
      }
    }
    x_ = ctx.input_id(0);
    w_ = ctx.input_id(1);
    y_ = ctx.output_id(0);
  }

  size_t scratch_bytes() const override { return depthwise_ ? 0 : blk_.scratch_bytes(); }

  void run(const RunContext& ctx) const override {
    const float* x = static_cast<const float*>(ctx.ptrs[x_]);
    const float* w = static_cast<const float*>(ctx.ptrs[w_]);
    const float* bias = bias_ >= 0 ? static_cast<const float*>(ctx.ptrs[bias_]) : nullptr;
    const float* res = residual_ >= 0 ? static_cast<const float*>(ctx.ptrs[residual_]) : nullptr;
    float* y = static_cast<float*>(ctx.ptrs[y_]);
    if (depthwise_) return run_depthwise(ctx, x, w, bias, res, y);
    const int64_t plane_in = s_.h * s_.w, plane_out = s_.oh * s_.ow;
    auto problem = [&](int64_t bi) {
      const int64_t n = bi / s_.groups, gi = bi % s_.groups;
      GemmProblem p;
      if (packed_.data()) p.a.packed = packed_.as<float>() + gi * packed_stride_;
      else p.a.view = MatView{w + gi * s_.og * gemm_k_, gemm_k_, 1};
      const float* image = x + (n * s_.c + gi * s_.cg) * plane_in;
      if (direct_1x1_) {
        p.b.view = MatView{image, plane_in, 1};
      } else {
        p.b.im2col = &im2col_;  // geometry shared by all problems; only the image differs
        p.b.view.p = image;
      }
      const int64_t out_off = (n * s_.o + gi * s_.og) * plane_out;
      p.c = y + out_off;
      p.ldc = plane_out;
      if (bias) p.epilogue.bias = MatView{bias + gi * s_.og, 1, 0};
      if (res) p.epilogue.residual = MatView{res + out_off, plane_out, 1};
      p.epilogue.act = act_;
      return p;
    };
    gemm(blk_, s_.og, plane_out, gemm_k_, s_.n * s_.groups, problem, ctx.pool, ctx.scratch);
  }

 private:
  void run_depthwise(const RunContext& ctx, const float* x, const float* w, const float* bias, const float* res,
                     float* y) const {
    const int64_t mult = s_.og;  // output channels per input channel
    const int64_t plane_in = s_.h * s_.w, plane_out = s_.oh * s_.ow;
    ctx.pool.parallel_for(s_.n * s_.o, [&](int64_t t, int) {
      const int64_t n = t / s_.o, o = t % s_.o, c = o / mult;
      float* out = y + t * plane_out;
      depthwise_plane(s_, x + (n * s_.c + c) * plane_in, w + o * s_.kh * s_.kw, out);
      Epilogue ep;
      if (bias) ep.bias = MatView{bias + o, 0, 0};
      if (res) ep.residual = MatView{res + t * plane_out, 0, 1};
      ep.act = act_;
      apply_epilogue(ep, out, plane_out, 0, 1, 0, plane_out);
    });
  }

  GemmBlocking blk_;
  ConvShape s_{};
  Act act_;
  bool depthwise_ = false, direct_1x1_ = false;
  int64_t gemm_k_ = 0;
  Im2col im2col_;
  AlignedBuffer packed_;
  int64_t packed_stride_ = 0;
  int x_ = -1, w_ = -1, bias_ = -1, residual_ = -1, y_ = -1;
};

}  // namespace

std::unique_ptr<OpKernel> build_conv2d(const BuildContext& ctx) { return std::make_unique<Conv2DKernel>(ctx); }

}  // namespace walle

// CONV2D (NCHW) with fused bias, residual add and activation. Four algorithms:
//  - depthwise (one input channel per group): one contiguous multiply-add per tap over a padded,
//    phase-split copy of each plane;
//  - 1x1, stride 1, no padding: a plain GEMM of the weights with the image (no copy at all);
//  - 3x3 stride 1 with constant weights, when the cost rule in winograd.hpp says so: Winograd;
//  - anything else: GEMM whose B operand is read through an im2col view of the image, packed
//    block by block, so the im2col matrix is never materialised.
// Constant weights are packed once, per group, when the plan is compiled.
//
// An activation a pointwise convolution passes to a depthwise one may stay in blocks of 8
// channels (NCHW8c, [C/8][H][W][8]; the op record's ints[13] and ints[14] flag a blocked input
// and output): the depthwise kernel computes in that layout anyway, so it skips its transpose on
// the way in. The pointwise convolution writes it with the pixels as GEMM rows, a register tile's
// 16 columns being two blocks' rows.
#include <emmintrin.h>

#include <algorithm>
#include <vector>

#include "depthwise_taps.hpp"
#include "elementwise.hpp"
#include "gemm.hpp"
#include "plan.hpp"
#include "winograd.hpp"

namespace walle {

namespace {

struct ConvShape {
  int64_t n, c, h, w, o, cg, og, kh, kw, oh, ow, groups;
  int64_t sh, sw, pt, pl, pb, pr, dh, dw;
};

// Depthwise planes are computed from a zero-padded copy of the input plane split by phase:
// padded pixel (Y, X) is stored in sub-plane [Y % sh][X % sw] at (Y / sh, X / sw). Every tap then
// reads one sub-plane at a fixed offset, with the same row pitch as a row buffer of the output,
// so each tap is ONE contiguous multiply-add over the whole plane (long, vectorised loops, no
// bounds checks, strided convolutions like stride 1); the valid columns are copied out at the
// end. Pad copy and row buffer live in the worker's scratch.
struct DepthwiseLayout {
  int64_t sub_rows = 0, pitch = 0;  // rows and columns of each sub-plane
  int64_t sh = 1, sw = 1;
  static DepthwiseLayout of(const ConvShape& s) {
    const int64_t rows = (s.oh - 1) * s.sh + (s.kh - 1) * s.dh + 1;
    const int64_t cols = (s.ow - 1) * s.sw + (s.kw - 1) * s.dw + 1;
    return {(rows + s.sh - 1) / s.sh, (cols + s.sw - 1) / s.sw, s.sh, s.sw};
  }
  int64_t sub_plane() const { return sub_rows * pitch; }
  // The last tap's run may read up to one pitch past its sub-plane (columns that are dropped).
  int64_t pad_floats() const { return sh * sw * sub_plane() + pitch; }
  // pad copy, then (64-byte aligned) the row buffer, then the tap pointers
  int64_t rows_offset() const { return (pad_floats() + 15) / 16 * 16; }
  int64_t srcs_offset(int64_t oh) const { return rows_offset() + (oh * pitch + 15) / 16 * 16; }
  size_t bytes(int64_t oh, int64_t taps) const {
    return static_cast<size_t>(srcs_offset(oh)) * sizeof(float) + static_cast<size_t>(taps) * sizeof(float*) + 64;
  }
};

// even[t] = src[2t] and odd[t] = src[2t+1] for the first n elements of src. SSE2 (the baseline)
// shuffles four of each per step: one sequential pass instead of two strided ones.
void split_even_odd(const float* src, int64_t n, float* even, float* odd) {
  int64_t t = 0;
  for (; 2 * t + 8 <= n; t += 4) {
    const __m128 a = _mm_loadu_ps(src + 2 * t), b = _mm_loadu_ps(src + 2 * t + 4);
    _mm_storeu_ps(even + t, _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm_storeu_ps(odd + t, _mm_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int64_t i = 2 * t; i < n; ++i) (i & 1 ? odd : even)[i >> 1] = src[i];
}

void depthwise_pad(const ConvShape& s, const DepthwiseLayout& l, const float* in, float* pad) {
  std::fill(pad, pad + l.pad_floats(), 0.f);
  const int64_t rows = l.sub_rows * l.sh, cols = l.pitch * l.sw;
  // input columns that land inside the padded extent (the conv may not read the last ones)
  const int64_t x_end = std::max<int64_t>(0, std::min(s.w, cols - s.pl));
  for (int64_t iy = 0; iy < s.h && iy + s.pt < rows; ++iy) {
    const int64_t Y = iy + s.pt;
    float* dst_row = pad + (Y % l.sh) * l.sw * l.sub_plane() + (Y / l.sh) * l.pitch;
    const float* src = in + iy * s.w;
    if (l.sw == 1) {
      std::copy_n(src, x_end, dst_row + s.pl);
      continue;
    }
    if (l.sw == 2) {
      split_even_odd(src, x_end, dst_row + (s.pl & 1) * l.sub_plane() + (s.pl >> 1),
                     dst_row + ((s.pl + 1) & 1) * l.sub_plane() + ((s.pl + 1) >> 1));
      continue;
    }
    // column phase f holds X = q * sw + f, i.e. input columns ix = X - pl in [0, x_end)
    for (int64_t f = 0; f < l.sw; ++f) {
      const int64_t first = s.pl - f <= 0 ? 0 : (s.pl - f + l.sw - 1) / l.sw;  // first q with ix >= 0
      float* dst = dst_row + f * l.sub_plane();
      for (int64_t q = first, ix = q * l.sw + f - s.pl; q < l.pitch && ix < x_end; ++q, ix += l.sw) dst[q] = src[ix];
    }
  }
}

// out = sum over taps of w[i, j] * (padded input shifted by the tap); rows is oh x pitch scratch,
// srcs room for kh * kw pointers.
void depthwise_plane(const ConvShape& s, const DepthwiseLayout& l, DepthwiseTapsFn taps_fn, const float* pad,
                     const float* wt, const float** srcs, float* rows, float* out) {
  for (int64_t i = 0; i < s.kh; ++i) {
    const int64_t Y0 = i * s.dh;
    for (int64_t j = 0; j < s.kw; ++j) {
      const int64_t X0 = j * s.dw;
      srcs[i * s.kw + j] =
          pad + ((Y0 % l.sh) * l.sw + X0 % l.sw) * l.sub_plane() + (Y0 / l.sh) * l.pitch + X0 / l.sw;
    }
  }
  taps_fn(srcs, wt, s.kh * s.kw, rows, s.oh * l.pitch);
  for (int64_t oy = 0; oy < s.oh; ++oy) std::copy_n(rows + oy * l.pitch, s.ow, out + oy * s.ow);
}

}  // namespace

void depthwise_taps_portable(const float* const* src, const float* w, int64_t taps, float* rows, int64_t n) {
  constexpr int64_t kBlock = 64;  // a block of accumulators the compiler keeps in vector registers
  for (int64_t e0 = 0; e0 < n; e0 += kBlock) {
    const int64_t m = std::min(kBlock, n - e0);
    float acc[kBlock] = {};
    for (int64_t t = 0; t < taps; ++t) {
      const float wv = w[t];
      const float* p = src[t] + e0;
      for (int64_t k = 0; k < m; ++k) acc[k] += wv * p[k];
    }
    std::copy_n(acc, m, rows + e0);
  }
}

namespace {

// Depthwise convolutions go eight channels at a time on AVX2 while the interleaved copy of eight
// input planes stays within this many floats (1 MiB: 112x112 planes, as in mobilenet's first
// layers, fit).
constexpr int64_t kDepthwiseBlockFloats = int64_t(256) << 10;

// Largest shared workspace the cost rule may choose Winograd for (a forced tile ignores it).
constexpr size_t kMaxWinogradWorkspace = size_t(64) << 20;

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
    // One output channel per input channel goes eight channels at a time (AVX2): one 8-lane
    // multiply-add per tap and pixel, with no per-plane set-up and no row tails.
    channel_blocks_ = depthwise_ && s_.og == 1 && s_.c >= 8 && blk_.isa != Isa::kPortable &&
                      depthwise_block_scratch_floats(s_.oh, s_.ow, s_.kh, s_.kw, s_.sh, s_.sw, s_.dh, s_.dw) <=
                          kDepthwiseBlockFloats;
    if (blk_.isa == Isa::kAvx512) taps_fn_ = depthwise_taps_avx512;
    else if (blk_.isa == Isa::kAvx2) taps_fn_ = depthwise_taps_avx2;
    direct_1x1_ = s_.kh == 1 && s_.kw == 1 && s_.sh == 1 && s_.sw == 1 && s_.pt == 0 && s_.pl == 0 &&
                  s_.pb == 0 && s_.pr == 0;
    gemm_k_ = s_.cg * s_.kh * s_.kw;
    im2col_ = Im2col{s_.cg, s_.h, s_.w, s_.kh, s_.kw, s_.sh, s_.sw, s_.dh, s_.dw, s_.pt, s_.pl, s_.oh, s_.ow};
    // Stride-2 windows of 2x2 taps or more: the image is split into its padded phases once per
    // run (the depthwise layout), so im2col copies contiguous runs instead of picking every
    // other element and testing each run against the edges.
    phased_ = !depthwise_ && g == 1 && s_.sh == 2 && s_.sw == 2 && s_.dh == 1 && s_.dw == 1 && s_.kh >= 2 &&
              s_.kw >= 2;
    if (phased_) {
      phase_layout_ = DepthwiseLayout::of(s_);
      im2col_.phased = true;
      im2col_.phase_channel = phase_layout_.pad_floats();
      im2col_.phase_plane = phase_layout_.sub_plane();
      im2col_.phase_pitch = phase_layout_.pitch;
    }
    // ints[12], when present: the algorithm the caller chose: a Winograd tile (2, 4, 6), a GEMM
    // (0; its orientation by the rule below) or a GEMM with the pixels as rows (1); -1: the
    // native rules decide
    const int64_t policy = ctx.rec().ints.size() > 12 ? ctx.int_at(12) : -1;
    in_blocked_ = ctx.rec().ints.size() > 13 && ctx.int_at(13) != 0;
    out_blocked_ = ctx.rec().ints.size() > 14 && ctx.int_at(14) != 0;
    if (in_blocked_ || out_blocked_) {
      // depthwise: in and out (AVX2, channels a multiple of 8); pointwise: in or out
      const bool depthwise_blocks = depthwise_ && s_.og == 1 && blk_.isa != Isa::kPortable && s_.c % 8 == 0 &&
                                    !(out_blocked_ && has_residual);
      // (a pointwise one's residual has its output's layout; a blocked one needs a blocked input)
      const bool pointwise_blocks = direct_1x1_ && g == 1 && ctx.constant_bytes(1) != nullptr &&
                                    (!in_blocked_ || (s_.c % 8 == 0 && blk_.kernel.a_blocked)) &&
                                    (!out_blocked_ || (s_.o % 8 == 0 && (!has_residual || in_blocked_)));
      ctx.check(depthwise_blocks || pointwise_blocks,
                "8-channel blocks need a depthwise convolution (AVX2, channels a multiple of 8, no residual with a "
                "blocked output) or a pointwise one with constant weights (channels a multiple of 8 where blocked, "
                "a residual with a blocked output only with a blocked input)");
      if (depthwise_) channel_blocks_ = true;  // the layout the eight-channel kernel works in
    }
    ctx.check(policy >= -1 && policy <= 6 && policy != 3 && policy != 5,
              "convolution policy must be -1, 0 (GEMM), 1 (GEMM, pixels as rows), 2, 4 or 6 (Winograd tiles)");
    const bool rows_forced = policy == 1;
    ctx.check(!rows_forced || (!depthwise_ && g == 1 && ctx.constant_bytes(1) != nullptr),
              "a GEMM with the pixels as rows needs one group and constant weights");
    const bool winograd_shape = s_.kh == 3 && s_.kw == 3 && s_.sh == 1 && s_.sw == 1 && s_.dh == 1 && s_.dw == 1 &&
                                g == 1 && ctx.constant_bytes(1) != nullptr;
    if (winograd_shape && policy != 0 && !rows_forced) {
      const WinogradShape ws{s_.c, s_.h, s_.w, s_.o, s_.oh, s_.ow, s_.pt, s_.pl};
      int tile = policy > 0 ? static_cast<int>(policy) : choose_winograd_tile(ws, blk_.kernel.nr);
      // the transformed image is (tile+2)^2/tile^2 times the input and output: keep it bounded
      if (policy < 0 && tile && winograd_workspace_bytes(tile, ws, blk_.kernel.nr) > kMaxWinogradWorkspace) tile = 0;
      if (tile) {
        AlignedBuffer weights;
        if (!ctx.packed_buffer(weights, winograd_weight_bytes(tile, ws, blk_.kernel.mr))) {
          transform_winograd_weights(tile, ws, ctx.constant_bytes(1), blk_.kernel.mr, weights.as<float>());
        }
        winograd_ = std::make_unique<WinogradConv>(tile, ws, std::move(weights), blk_.kernel.mr, blk_.kernel.nr);
        ctx.release_constant(1);
      }
    }
    if (!depthwise_ && !winograd_) {
      const int mr = blk_.kernel.mr, nr = blk_.kernel.nr;
      // The GEMM may run with the pixels as its rows (C = im2col^T W^T, stored transposed, MC
      // rows at a time) when that wastes at least 4 % less of the register tiles: 7x7 maps
      // (49 pixels) fill 54 rows of 6-row tiles but 64 columns of 16-column ones, 14x14 maps 198
      // and 208 (ResNet-50's 1x1 convolutions there: 5-8 % less time, in one process). Few
      // output channels keep the usual orientation, whose activations a 1x1 then reads in place.
      const int64_t pixels = s_.oh * s_.ow;
      auto padded = [](int64_t v, int64_t t) { return (v + t - 1) / t * t; };
      pixel_rows_ = g == 1 && s_.o > 64 && ctx.constant_bytes(1) != nullptr &&
                    25 * padded(pixels, mr) * padded(s_.o, nr) < 24 * padded(s_.o, mr) * padded(pixels, nr);
      // a blocked input or output is only read or written with the pixels as rows (any number)
      if (in_blocked_ || out_blocked_ || rows_forced) pixel_rows_ = true;
      // Stride-2 windows with the pixels as rows: the kernel reads A straight from the
      // phase-split image (MicroKernel::a_gathered) instead of a packed transposed im2col matrix,
      // 1.8 MB for ResNet's 256 channels at 14x14 (that layer: 12-17 % less time). Where the
      // tiles fill alike both ways (28x28 outputs) which orientation is faster depends on the
      // CPU and the tile: conv_search times it and passes policy 1 where the pixels as rows win.
      gathered_ = pixel_rows_ && phased_ && !in_blocked_ && !out_blocked_ && blk_.kernel.a_gathered != nullptr;
      if (gathered_) {
        tap_offsets_ = phase_tap_offsets();
        for (int64_t p = 0; p < pixels; ++p) pixel_offsets_.push_back((p / s_.ow) * im2col_.phase_pitch + p % s_.ow);
      }
      if (pixel_rows_ && ctx.constant_bytes(1) != nullptr) {
        // W^T as the constant B operand: element (k, j) is W[j, k]
        packed_stride_ = static_cast<int64_t>(packed_b_floats(gemm_k_, s_.o, nr));
        if (!ctx.packed_buffer(packed_, static_cast<size_t>(packed_stride_) * sizeof(float))) {
          const auto* w = static_cast<const float*>(ctx.constant_input(1));
          pack_b_full(MatView{w, 1, gemm_k_}, gemm_k_, s_.o, nr, packed_.as<float>());
        }
        ctx.release_constant(1);
      } else if (ctx.constant_bytes(1) != nullptr) {
        // Stride-2 convolutions of few input channels (network stems: K = 27 or 147) read their
        // taps straight from the phase-split image, where 16 consecutive output pixels of one tap
        // are one run: packing the im2col matrix cost a third of such a convolution, each packed
        // element feeding only O multiply-adds.
        direct_taps_ = phased_ && s_.c <= 4 && gemm_k_ <= blk_.kc && blk_.kernel.gathered != nullptr;
        if (direct_taps_) tap_offsets_ = phase_tap_offsets();
        // weights of group gi: rows [gi*og, (gi+1)*og) of the [O, cg*kh*kw] matrix
        packed_stride_ = static_cast<int64_t>(packed_a_floats(s_.og, gemm_k_, mr));
        if (!ctx.packed_buffer(packed_, static_cast<size_t>(g * packed_stride_) * sizeof(float))) {
          const auto* w = static_cast<const float*>(ctx.constant_input(1));
          for (int64_t gi = 0; gi < g; ++gi) {
            MatView v{w + gi * s_.og * gemm_k_, gemm_k_, 1};
            pack_a_full(v, s_.og, gemm_k_, mr, packed_.as<float>() + gi * packed_stride_);
          }
        }
        ctx.release_constant(1);
      }
    }
    x_ = ctx.input_id(0);
    w_ = ctx.input_id(1);
    y_ = ctx.output_id(0);
  }

  size_t scratch_bytes() const override {
    if (depthwise_) {
      size_t bytes = DepthwiseLayout::of(s_).bytes(s_.oh, s_.kh * s_.kw);
      if (channel_blocks_) {
        const int64_t floats =
            depthwise_block_scratch_floats(s_.oh, s_.ow, s_.kh, s_.kw, s_.sh, s_.sw, s_.dh, s_.dw);
        bytes = std::max(bytes, static_cast<size_t>(floats) * sizeof(float) + 64);
      }
      return bytes;
    }
    return std::max(blk_.scratch_bytes(), winograd_ ? winograd_->scratch_bytes() : size_t(0));
  }
  size_t workspace_bytes() const override {
    if (winograd_) return winograd_->workspace_bytes();
    size_t floats = pixel_panels_offset();
    if (pixel_rows_ && !out_blocked_ && !in_blocked_ && !gathered_) {
      floats += packed_a_floats(s_.oh * s_.ow, gemm_k_, blk_.kernel.mr);
    }
    if (direct_taps_) floats += 16;  // a row's last tile reads up to 16 floats on
    return floats * sizeof(float);
  }
  // Where the packed transposed im2col starts in the workspace: after the phase-split image,
  // on a 64-byte boundary.
  size_t pixel_panels_offset() const {
    return phased_ ? static_cast<size_t>(s_.c * phase_layout_.pad_floats() + 15) / 16 * 16 : 0;
  }

  void run(const RunContext& ctx) const override {
    const float* x = static_cast<const float*>(ctx.ptrs[x_]);
    const float* w = static_cast<const float*>(ctx.ptrs[w_]);
    const float* bias = bias_ >= 0 ? static_cast<const float*>(ctx.ptrs[bias_]) : nullptr;
    const float* res = residual_ >= 0 ? static_cast<const float*>(ctx.ptrs[residual_]) : nullptr;
    float* y = static_cast<float*>(ctx.ptrs[y_]);
    if (depthwise_) return run_depthwise(ctx, x, w, bias, res, y);
    const int64_t plane_in = s_.h * s_.w, plane_out = s_.oh * s_.ow;
    if (winograd_) {
      for (int64_t n = 0; n < s_.n; ++n) {
        const int64_t out_off = n * s_.o * plane_out;
        winograd_->run(blk_, x + n * s_.c * plane_in, y + out_off, bias, res ? res + out_off : nullptr, act_,
                       ctx.pool, ctx.scratch, ctx.workspace, ctx.cancel);
      }
      return;
    }
    if (direct_taps_) {
      for (int64_t n = 0; n < s_.n; ++n) {
        split_phases(ctx, x + n * s_.c * plane_in);
        if (is_cancelled(ctx.cancel)) return;
        run_direct_taps(ctx, bias, res ? res + n * s_.o * plane_out : nullptr, y + n * s_.o * plane_out);
      }
      return;
    }
    if (out_blocked_) {
      // C^T [pixels x O] = X^T [pixels x C] * W^T [C x O] stored as 8-channel blocks (any number
      // of pixels), X^T read from its blocks in place or packed block by block by the GEMM; a
      // residual in blocks like the output
      auto problem = [&](int64_t n) {
        GemmProblem p;
        if (in_blocked_) {
          p.a.view.p = x + n * s_.c * plane_in;
          p.a.block = 8 * plane_in;
        } else {
          p.a.view = MatView{x + n * s_.c * plane_in, 1, plane_in};
        }
        p.b.packed = packed_.as<float>();
        p.b.weights = true;
        p.c = y + n * s_.o * plane_out;
        p.c_block = 8 * plane_out;
        if (bias) p.epilogue.bias = MatView{bias, 0, 1};
        if (res) p.epilogue.residual.p = res + n * s_.o * plane_out;
        p.epilogue.act = act_;
        return p;
      };
      gemm(blk_, plane_out, s_.o, gemm_k_, s_.n, problem, ctx.pool, ctx.scratch, ctx.cancel);
      return;
    }
    if (in_blocked_) {
      // X^T read from the blocks in place
      auto problem = [&](int64_t n) {
        GemmProblem p = pixel_rows_problem(n, bias, res, y);
        p.a.view.p = x + n * s_.c * plane_in;
        p.a.block = 8 * plane_in;
        return p;
      };
      gemm(blk_, plane_out, s_.o, gemm_k_, s_.n, problem, ctx.pool, ctx.scratch, ctx.cancel);
      return;
    }
    if (gathered_) {
      // one image per problem, its taps read from the phase-split copy in the workspace
      for (int64_t n = 0; n < s_.n; ++n) {
        split_phases(ctx, x + n * s_.c * plane_in);
        if (is_cancelled(ctx.cancel)) return;
        auto problem = [&](int64_t) {
          GemmProblem p = pixel_rows_problem(n, bias, res, y);
          p.a.view.p = ctx.workspace;
          p.a.row_offsets = pixel_offsets_.data();
          p.a.k_offsets = tap_offsets_.data();
          return p;
        };
        gemm(blk_, plane_out, s_.o, gemm_k_, 1, problem, ctx.pool, ctx.scratch, ctx.cancel);
      }
      return;
    }
    if (pixel_rows_) {
      // one image per problem, X^T (or its im2col matrix) packed below
      auto problem = [&](int64_t n) {
        GemmProblem p = pixel_rows_problem(n, bias, res, y);
        p.a.packed = ctx.workspace + pixel_panels_offset();
        return p;
      };
      // The A operand (the image, or its im2col matrix, transposed) is packed once per image
      // into the workspace, one row panel per task: every column block of the GEMM reads all of it.
      const int mr = blk_.kernel.mr;
      float* panels = ctx.workspace + pixel_panels_offset();
      for (int64_t n = 0; n < s_.n; ++n) {
        const float* image = x + n * s_.c * plane_in;
        if (phased_) split_phases(ctx, image);
        if (direct_1x1_) {
          pack_a_panels(MatView{image, 1, plane_in}, plane_out, gemm_k_, mr, panels, ctx.pool);
        } else {
          ctx.pool.parallel_for((plane_out + mr - 1) / mr, [&](int64_t t, int) {
            pack_im2col_full(im2col_, phased_ ? ctx.workspace : image, gemm_k_, t * mr,
                             std::min<int64_t>(mr, plane_out - t * mr), mr, panels);
          });
        }
        if (is_cancelled(ctx.cancel)) return;
        gemm(blk_, plane_out, s_.o, gemm_k_, 1, [&](int64_t) { return problem(n); }, ctx.pool, ctx.scratch,
             ctx.cancel);
      }
      return;
    }
    auto problem = [&](int64_t bi) {
      const int64_t n = bi / s_.groups, gi = bi % s_.groups;
      GemmProblem p;
      if (packed_.data()) p.a.packed = packed_.as<float>() + gi * packed_stride_;
      else p.a.view = MatView{w + gi * s_.og * gemm_k_, gemm_k_, 1};
      const float* image = phased_ ? ctx.workspace : x + (n * s_.c + gi * s_.cg) * plane_in;
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
    if (!phased_) {
      gemm(blk_, s_.og, plane_out, gemm_k_, s_.n * s_.groups, problem, ctx.pool, ctx.scratch, ctx.cancel);
      return;
    }
    // one image at a time through the workspace (phased_ implies a single group)
    for (int64_t n = 0; n < s_.n; ++n) {
      split_phases(ctx, x + n * s_.c * plane_in);
      if (is_cancelled(ctx.cancel)) return;
      gemm(blk_, s_.og, plane_out, gemm_k_, 1, [&](int64_t) { return problem(n); }, ctx.pool, ctx.scratch,
           ctx.cancel);
    }
  }

 private:
  // Tap k = (c, kh, kw)'s offset in the phase-split image: output pixel (oy, ox) reads it at
  // oy * pitch + ox from there.
  std::vector<int64_t> phase_tap_offsets() const {
    std::vector<int64_t> offsets;
    for (int64_t k = 0; k < gemm_k_; ++k) {
      const int64_t c = k / (s_.kh * s_.kw), kh = (k / s_.kw) % s_.kh, kw = k % s_.kw;
      offsets.push_back(c * im2col_.phase_channel + ((kh & 1) * 2 + (kw & 1)) * im2col_.phase_plane +
                        (kh >> 1) * im2col_.phase_pitch + (kw >> 1));
    }
    return offsets;
  }

  // The padded, phase-split copy of one image that a phased im2col reads, into the workspace.
  void split_phases(const RunContext& ctx, const float* image) const {
    const int64_t plane_in = s_.h * s_.w;
    ctx.pool.parallel_for(s_.c, [&](int64_t c, int) {
      depthwise_pad(s_, phase_layout_, image + c * plane_in, ctx.workspace + c * phase_layout_.pad_floats());
    });
  }

  // C^T [pixels x O] = X^T [pixels x C] * W^T [C x O] for image n, stored transposed into y's
  // channel planes with bias, residual and activation: all but the A operand.
  GemmProblem pixel_rows_problem(int64_t n, const float* bias, const float* res, float* y) const {
    const int64_t plane_out = s_.oh * s_.ow;
    GemmProblem p;
    p.b.packed = packed_.as<float>();
    p.b.weights = true;
    p.c = y + n * s_.o * plane_out;
    p.ldc = plane_out;
    p.c_transposed = true;
    if (bias) p.epilogue.bias = MatView{bias, 0, 1};
    if (res) p.epilogue.residual = MatView{res + n * s_.o * plane_out, 1, plane_out};
    p.epilogue.act = act_;
    return p;
  }

  // One image of a direct-taps convolution (see the build) from the phase-split image in the
  // workspace: tiles of MR channels x NR pixels, each finished with the bias, residual and
  // activation as it is stored (those the kernel cannot apply, right after).
  void run_direct_taps(const RunContext& ctx, const float* bias, const float* res, float* y) const {
    const int mr = blk_.kernel.mr, nr = blk_.kernel.nr;
    const int64_t plane_out = s_.oh * s_.ow;
    Epilogue ep;
    if (bias) ep.bias = MatView{bias, 1, 0};
    if (res) ep.residual = MatView{res, plane_out, 1};
    ep.act = act_;
    const bool has_epilogue = bias || res || act_.fn != UnaryFn::kIdentity;
    const bool fusable = tile_act(act_) >= 0;
    // A task is a band of output rows, computed one register tile of channels at a time over the
    // whole band, so each tile writes its few channel planes in runs of kTapBandRows rows. Tiles
    // of all channels side by side would write every plane 64 bytes at a time, more concurrent
    // streams than the hardware prefetchers follow (measured: SqueezeNet's stem, 64 planes of
    // 111x111, 1.02 ms that way against 0.71 ms; MobileNetV2's 0.46 against 0.39 ms). The taps,
    // re-read per tile, stay in L1/L2.
    constexpr int64_t kTapBandRows = 8;
    ctx.pool.parallel_for((s_.oh + kTapBandRows - 1) / kTapBandRows, [&](int64_t t, int worker) {
      if (is_cancelled(ctx.cancel)) return;
      float* edge = ctx.scratch(worker);
      const int64_t oy_end = std::min(s_.oh, (t + 1) * kTapBandRows);
      for (int64_t o0 = 0; o0 < s_.o; o0 += mr) {
        const int rows = static_cast<int>(std::min<int64_t>(mr, s_.o - o0));
        const float* a = packed_.as<float>() + o0 * gemm_k_;
        for (int64_t oy = t * kTapBandRows; oy < oy_end; ++oy) {
          const float* taps = ctx.workspace + oy * phase_layout_.pitch;  // tap offsets are from here
          for (int64_t ox0 = 0; ox0 < s_.ow; ox0 += nr) {
            const int64_t cols = std::min<int64_t>(nr, s_.ow - ox0), j0 = oy * s_.ow + ox0;
            float* c = y + o0 * plane_out + j0;
            if (cols == nr && fusable) {
              const TileEpilogue te = row_tile_epilogue(ep, o0, j0);
              blk_.kernel.gathered(rows, gemm_k_, a, taps + ox0, tap_offsets_.data(), c, plane_out,
                                   has_epilogue ? &te : nullptr);
              continue;
            }
            blk_.kernel.gathered(rows, gemm_k_, a, taps + ox0, tap_offsets_.data(), edge, nr, nullptr);
            for (int i = 0; i < rows; ++i) std::copy_n(edge + i * nr, cols, c + i * plane_out);
            if (has_epilogue) apply_epilogue(ep, blk_.isa, c, plane_out, o0, rows, j0, cols);
          }
        }
      }
    });
  }

  void run_depthwise(const RunContext& ctx, const float* x, const float* w, const float* bias, const float* res,
                     float* y) const {
    const int64_t mult = s_.og;  // output channels per input channel
    const int64_t plane_in = s_.h * s_.w, plane_out = s_.oh * s_.ow;
    const DepthwiseLayout layout = DepthwiseLayout::of(s_);
    const int64_t blocks = channel_blocks_ ? s_.c / 8 : 0;  // leading channels taken 8 at a time
    if (blocks > 0) {
      const int fused = tile_act(act_);  // what the block applies itself (-1: left to a pass after it)
      ctx.pool.parallel_for(s_.n * blocks, [&](int64_t t, int worker) {
        if (is_cancelled(ctx.cancel)) return;
        const int64_t n = t / blocks, c0 = (t % blocks) * 8;
        DepthwiseBlock b{};
        b.x = x + (n * s_.c + c0) * plane_in;
        b.y = y + (n * s_.o + c0) * plane_out;
        b.w = w + c0 * s_.kh * s_.kw;
        b.bias = bias ? bias + c0 : nullptr;
        b.residual = res ? res + (n * s_.o + c0) * plane_out : nullptr;
        b.h = s_.h, b.w_in = s_.w, b.oh = s_.oh, b.ow = s_.ow, b.kh = s_.kh, b.kw = s_.kw;
        b.sh = s_.sh, b.sw = s_.sw, b.dh = s_.dh, b.dw = s_.dw, b.pt = s_.pt, b.pl = s_.pl;
        b.act = fused < 0 ? 0 : fused;
        b.x_blocked = in_blocked_;
        b.y_blocked = out_blocked_;
        b.lo = act_.alpha;
        b.hi = act_.beta;
        b.scratch = ctx.scratch(worker);
        depthwise_block8_avx2(b);
        if (fused < 0) {  // the activation the block does not apply, over the finished planes
          Epilogue ep;
          ep.act = act_;
          for (int64_t l = 0; l < 8; ++l) apply_epilogue(ep, blk_.isa, b.y + l * plane_out, plane_out, 0, 1, 0, plane_out);
        }
      });
    }
    const int64_t first = blocks * 8;  // the channels left for the per-plane path
    if (first == s_.o) return;
    ctx.pool.parallel_for(s_.n * (s_.o - first), [&](int64_t task, int worker) {
      const int64_t t = (task / (s_.o - first)) * s_.o + first + task % (s_.o - first);
      if (is_cancelled(ctx.cancel)) return;
      const int64_t n = t / s_.o, o = t % s_.o, c = o / mult;
      float* out = y + t * plane_out;
      float* pad = ctx.scratch(worker);
      float* rows = pad + layout.rows_offset();
      const float** srcs = reinterpret_cast<const float**>(pad + layout.srcs_offset(s_.oh));
      depthwise_pad(s_, layout, x + (n * s_.c + c) * plane_in, pad);
      depthwise_plane(s_, layout, taps_fn_, pad, w + o * s_.kh * s_.kw, srcs, rows, out);
      Epilogue ep;
      if (bias) ep.bias = MatView{bias + o, 0, 0};
      if (res) ep.residual = MatView{res + t * plane_out, 0, 1};
      ep.act = act_;
      apply_epilogue(ep, blk_.isa, out, plane_out, 0, 1, 0, plane_out);
    });
  }

  GemmBlocking blk_;
  ConvShape s_{};
  Act act_;
  bool depthwise_ = false, direct_1x1_ = false;
  bool pixel_rows_ = false;  // a GEMM with the pixels as rows (see build)
  bool channel_blocks_ = false;  // depthwise eight channels at a time (depthwise_block8_avx2)
  bool in_blocked_ = false, out_blocked_ = false;  // NCHW8c input / output (see the top)
  int64_t gemm_k_ = 0;
  Im2col im2col_;
  bool phased_ = false;  // im2col reads a phase-split copy of the image (im2col_.phased)
  bool direct_taps_ = false;  // the kernel reads the taps from the phase-split image (see the build)
  bool gathered_ = false;     // the GEMM reads A from the phase-split image (see the build)
  std::vector<int64_t> tap_offsets_;  // tap k's offset in the phase-split image
  std::vector<int64_t> pixel_offsets_;  // output pixel p's offset in a phase of the image (gathered_)
  DepthwiseLayout phase_layout_{};
  AlignedBuffer packed_;
  int64_t packed_stride_ = 0;
  std::unique_ptr<WinogradConv> winograd_;
  DepthwiseTapsFn taps_fn_ = depthwise_taps_portable;
  int x_ = -1, w_ = -1, bias_ = -1, residual_ = -1, y_ = -1;
};

}  // namespace

std::unique_ptr<OpKernel> build_conv2d(const BuildContext& ctx) { return std::make_unique<Conv2DKernel>(ctx); }

}  // namespace walle

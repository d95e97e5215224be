#include "gemm.hpp"

#include <emmintrin.h>

#include <algorithm>
#include <cstring>

#include "elementwise.hpp"
#include "epilogue_simd.hpp"

namespace walle {

MicroKernel micro_kernel(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return micro_kernel_avx512();
    case Isa::kAvx2: return micro_kernel_avx2();
    default: return micro_kernel_portable();
  }
}

// KC x NR floats of B (16 KiB) plus a few A rows fit L1; an MC x KC block of A (120 KiB) sits
// in L2 while all the B panels of the tile stream past it.
GemmBlocking::GemmBlocking(Isa isa) : isa(isa), kernel(micro_kernel(isa)) {
  kc = 256;
  mc = kernel.mr * std::max<int64_t>(1, 120 / kernel.mr);
  nc = kernel.nr * 8;
}

size_t GemmBlocking::scratch_bytes() const {
  return static_cast<size_t>(mc * kc + kc * nc + kernel.mr * kernel.nr + mc * nc) * sizeof(float) + 4 * 64;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

size_t packed_a_floats(int64_t m, int64_t k, int mr) {
  return static_cast<size_t>(ceil_div(m, mr) * mr * k);
}
size_t packed_b_floats(int64_t k, int64_t n, int nr) {
  return static_cast<size_t>(ceil_div(n, nr) * nr * k);
}

// The whole MR-row panels of rows [i0, i0+rows) of an A whose rows are adjacent in memory (a
// transposed view, e.g. an NCHW image with the pixels as rows): each k's run of those rows is read
// once, front to back, and dealt out to the panels, rather than revisited MR floats per panel
// (strided reads the prefetchers follow poorly: mobilenet_v2's packing took about 15 % less).
// Returns the rows packed.
template <int MR>
static int64_t deal_whole_panels(const MatView& a, int64_t i0, int64_t rows, int64_t k0, int64_t kc, float* dst) {
  const int64_t whole = rows / MR * MR;
  for (int64_t k = 0; k < kc; ++k) {
    const float* src = a.p + i0 + (k0 + k) * a.cs;
    float* out = dst + k * MR;
    for (int64_t q = 0; q < whole; q += MR, out += MR * kc) std::memcpy(out, src + q, MR * sizeof(float));
  }
  return whole;
}

// Rows [i0, i0+rows) x k-range [k0, k0+kc) of A into panels [panel][k][mr].
static void pack_a_block(const MatView& a, int64_t i0, int64_t rows, int64_t k0, int64_t kc, int mr,
                         float* dst) {
  int64_t p = 0;  // the first row not packed yet
  if (a.rs == 1 && mr == 6) p = deal_whole_panels<6>(a, i0, rows, k0, kc, dst);  // AVX2's tile
  if (a.rs == 1 && mr == 8) p = deal_whole_panels<8>(a, i0, rows, k0, kc, dst);  // AVX-512's
  for (; p < rows; p += mr) {
    int64_t valid = std::min<int64_t>(mr, rows - p);
    float* panel = dst + p * kc;
    // written in order, read from `valid` row streams
    const float* src = a.p + (i0 + p) * a.rs + k0 * a.cs;
    for (int64_t k = 0; k < kc; ++k) {
      float* out = panel + k * mr;
      const float* col = src + k * a.cs;
      for (int64_t i = 0; i < valid; ++i) out[i] = col[i * a.rs];
      for (int64_t i = valid; i < mr; ++i) out[i] = 0.f;
    }
  }
}

// k-range [k0, k0+kc) x cols [j0, j0+cols) of B into panels [panel][k][nr].
static void pack_b_block(const MatView& b, int64_t k0, int64_t kc, int64_t j0, int64_t cols, int nr,
                         float* dst) {
  for (int64_t q = 0; q < cols; q += nr) {
    int64_t valid = std::min<int64_t>(nr, cols - q);
    float* panel = dst + q * kc;
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = b.p + (k0 + k) * b.rs + (j0 + q) * b.cs;
      float* out = panel + k * nr;
      if (b.cs == 1 && valid == 16) {
        std::memcpy(out, src, 16 * sizeof(float));  // constant size: inlined, no call per row
      } else if (b.cs == 1) {
        std::memcpy(out, src, static_cast<size_t>(valid) * sizeof(float));
      } else {
        for (int64_t j = 0; j < valid; ++j) out[j] = src[j * b.cs];
      }
      for (int64_t j = valid; j < nr; ++j) out[j] = 0.f;
    }
  }
}

// o[t] = src[2t] for t in [lo, hi): four at a time with one SSE2 (baseline) shuffle of two loads.
// A step reads src[2t .. 2t+7]; t + 5 <= hi keeps that within src[2hi-2], the last element used.
static void copy_even(const float* src, int64_t lo, int64_t hi, float* o) {
  int64_t t = lo;
  for (; t + 5 <= hi; t += 4) {
    const __m128 a = _mm_loadu_ps(src + 2 * t), b = _mm_loadu_ps(src + 2 * t + 4);
    _mm_storeu_ps(o + t, _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
  }
  for (; t < hi; ++t) o[t] = src[2 * t];
}

// The same block read through an im2col view of an image. Within one row k = (c, kh, kw) the
// columns of one output row oy read one input row at ix = ox * sw + shift, so each run is a
// zero-padded (strided) copy with bounds worked out once per run instead of once per element.
static void pack_im2col_block(const Im2col& g, const float* image, int64_t k0, int64_t kc, int64_t j0, int64_t cols,
                              int nr, float* dst) {
  const int64_t taps = g.KH * g.KW;
  for (int64_t q = 0; q < cols; q += nr) {
    const int64_t valid = std::min<int64_t>(nr, cols - q);
    float* panel = dst + q * kc;
    const int64_t oy0 = (j0 + q) / g.OW, ox0 = (j0 + q) % g.OW;
    // row k0 + k = (c, kh, kw), stepped without a division per row
    int64_t c = k0 / taps, kh = (k0 % taps) / g.KW, kw = k0 % g.KW;
    for (int64_t k = 0; k < kc; ++k, ++kw) {
      if (kw == g.KW) {
        kw = 0;
        if (++kh == g.KH) {
          kh = 0;
          ++c;
        }
      }
      float* out = panel + k * nr;
      if (g.phased) {
        // tap (kh, kw) of output (oy, ox) is padded pixel (2 oy + kh, 2 ox + kw)
        const float* phase = image + c * g.phase_channel + ((kh & 1) * 2 + (kw & 1)) * g.phase_plane +
                             (kh >> 1) * g.phase_pitch + (kw >> 1);
        for (int64_t j = 0, oy = oy0, ox = ox0; j < valid; ++oy, ox = 0) {
          const int64_t run = std::min(valid - j, g.OW - ox);
          std::memcpy(out + j, phase + oy * g.phase_pitch + ox, static_cast<size_t>(run) * sizeof(float));
          j += run;
        }
        for (int64_t t = valid; t < nr; ++t) out[t] = 0.f;
        continue;
      }
      const float* plane = image + c * g.H * g.W;
      const int64_t shift = kw * g.dw - g.pl;
      int64_t j = 0, oy = oy0, ox = ox0;
      while (j < valid) {
        const int64_t run = std::min(valid - j, g.OW - ox);
        const int64_t iy = oy * g.sh - g.pt + kh * g.dh;
        float* o = out + j;
        if (iy < 0 || iy >= g.H) {
          std::fill(o, o + run, 0.f);
        } else {
          const float* src = plane + iy * g.W;
          const int64_t ix0 = ox * g.sw + shift;  // ix of the run's first column
          // columns t in [lo, hi) of the run read inside the row
          int64_t lo, hi;
          if (g.sw == 1) {  // the common cases without an integer division
            lo = ix0 >= 0 ? 0 : -ix0;
            hi = ix0 > g.W - 1 ? 0 : std::min(run, g.W - ix0);
          } else if (g.sw == 2) {
            lo = ix0 >= 0 ? 0 : (-ix0 + 1) >> 1;
            hi = ix0 > g.W - 1 ? 0 : std::min(run, ((g.W - 1 - ix0) >> 1) + 1);
          } else {
            lo = ix0 >= 0 ? 0 : (-ix0 + g.sw - 1) / g.sw;
            hi = ix0 > g.W - 1 ? 0 : std::min(run, (g.W - 1 - ix0) / g.sw + 1);
          }
          lo = std::min(lo, run);
          hi = std::max(hi, lo);
          std::fill(o, o + lo, 0.f);
          if (g.sw == 1) {
            std::memcpy(o + lo, src + ix0 + lo, static_cast<size_t>(hi - lo) * sizeof(float));
          } else if (g.sw == 2) {
            copy_even(src + ix0, lo, hi, o);
          } else {
            for (int64_t t = lo; t < hi; ++t) o[t] = src[ix0 + t * g.sw];
          }
          std::fill(o + hi, o + run, 0.f);
        }
        j += run;
        ox = 0;
        ++oy;
      }
      for (int64_t t = valid; t < nr; ++t) out[t] = 0.f;
    }
  }
}

void pack_a_full(const MatView& a, int64_t m, int64_t k, int mr, float* dst) {
  pack_a_block(a, 0, m, 0, k, mr, dst);
}

void pack_a_panels(const MatView& a, int64_t m, int64_t k, int mr, float* dst, ThreadPool& pool) {
  pool.parallel_for(ceil_div(m, mr), [&](int64_t t, int) {
    const int64_t i0 = t * mr;
    pack_a_block(a, i0, std::min<int64_t>(mr, m - i0), 0, k, mr, dst + i0 * k);
  });
}

void pack_im2col_full(const Im2col& g, const float* image, int64_t k, int64_t j0, int64_t cols, int width,
                      float* dst) {
  pack_im2col_block(g, image, 0, k, j0, cols, width, dst + (j0 / width) * k * width);
}

void pack_b_full(const MatView& b, int64_t k, int64_t n, int nr, float* dst) {
  pack_b_block(b, 0, k, 0, n, nr, dst);
}

void apply_epilogue(const Epilogue& ep, Isa isa, float* c, int64_t ldc, int64_t i0, int64_t rows, int64_t j0,
                    int64_t cols) {
  for (int64_t i = 0; i < rows; ++i) {
    float* row = c + i * ldc;
    const float* b = ep.bias.p ? ep.bias.p + (i0 + i) * ep.bias.rs + j0 * ep.bias.cs : nullptr;
    const float* r = ep.residual.p ? ep.residual.p + (i0 + i) * ep.residual.rs + j0 * ep.residual.cs : nullptr;
    if (isa != Isa::kPortable && (!r || ep.residual.cs == 1) &&
        epilogue_row_avx2(row, cols, b, ep.bias.cs, r, ep.act)) {
      continue;
    }
    if (b) {
      if (ep.bias.cs == 0) {
        for (int64_t j = 0; j < cols; ++j) row[j] += b[0];
      } else {
        for (int64_t j = 0; j < cols; ++j) row[j] += b[j * ep.bias.cs];
      }
    }
    if (r) {
      for (int64_t j = 0; j < cols; ++j) row[j] += r[j * ep.residual.cs];
    }
    if (ep.act.fn != UnaryFn::kIdentity) unary_f32(ep.act, row, row, cols, isa);
  }
}

int tile_act(const Act& act) {
  switch (act.fn) {
    case UnaryFn::kIdentity: return 0;
    case UnaryFn::kRelu: return 1;
    case UnaryFn::kClip: return 2;
    default: return -1;
  }
}

TileEpilogue row_tile_epilogue(const Epilogue& ep, int64_t i, int64_t j) {
  TileEpilogue te;
  if (ep.bias.p) te.bias = ep.bias.p + i;
  if (ep.residual.p) te.residual = ep.residual.p + i * ep.residual.rs + j;
  te.ldr = ep.residual.rs;
  te.act = tile_act(ep.act);
  te.lo = ep.act.alpha;
  te.hi = ep.act.beta;
  return te;
}

// Largest m for which a row-major B is read in place rather than packed (see gemm()).
constexpr int64_t kInPlaceRows = 64;

// The epilogue of C^T applied to C: bias and residual read with their strides swapped.
static Epilogue transposed(const Epilogue& ep) {
  Epilogue t = ep;
  t.bias = MatView{ep.bias.p, ep.bias.cs, ep.bias.rs};
  t.residual = MatView{ep.residual.p, ep.residual.cs, ep.residual.rs};
  return t;
}

static float* align64(unsigned char* p) {
  auto v = reinterpret_cast<uintptr_t>(p);
  return reinterpret_cast<float*>((v + 63) & ~static_cast<uintptr_t>(63));
}

void gemm(const GemmBlocking& blk, int64_t m, int64_t n, int64_t k, int64_t batch,
          FunctionRef<GemmProblem(int64_t)> problem, ThreadPool& pool, FunctionRef<float*(int)> scratch,
          const CancelFlag* cancel) {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  const GemmProblem first = problem(0);
  require(!first.a.block || ((first.c_transposed || first.c_block) && k % 8 == 0 && blk.kernel.a_blocked),
          "a GEMM reading a blocked A has a transposed or blocked C and a multiple of 8 as K");
  require(!first.c_block || !first.epilogue.residual.p || first.a.block,
          "a GEMM with a blocked C takes a residual only with a blocked A");
  require(first.c_block == 0 || n % 8 == 0, "a GEMM with a blocked C has a multiple of 8 columns");
  require(!first.a.row_offsets || (first.a.k_offsets && first.c_transposed && blk.kernel.a_gathered),
          "a GEMM reading A from an image has its taps, a transposed C and a kernel for it");
  const int mr = blk.kernel.mr, nr = blk.kernel.nr;
  const int64_t nt = ceil_div(n, blk.nc);
  // A task owns one column block and a range of rows. Each B block is packed once per task and
  // reused by all of the task's rows, so rows are split only as far as the workers need work
  // (about two tasks per worker, for balance), and as far as a transposed C's staging buffer
  // (MC rows) requires.
  const int64_t panels = ceil_div(m, mr);
  const int64_t want = pool.threads() > 1 ? 2 * pool.threads() : 1;
  int64_t splits = batch * nt >= want ? 1 : std::min(panels, ceil_div(want, batch * nt));
  if (first.c_transposed) splits = std::max(splits, ceil_div(panels, blk.mc / mr));
  const int64_t rows_per_task = ceil_div(panels, splits) * mr;
  const int64_t ms = ceil_div(m, rows_per_task);
  pool.parallel_for(batch * nt * ms, [&](int64_t task, int worker) {
    if (is_cancelled(cancel)) return;
    const int64_t bi = task / (nt * ms), rem = task % (nt * ms);
    const int64_t j0 = (rem / ms) * blk.nc, i_begin = (rem % ms) * rows_per_task;
    const int64_t i_end = std::min(m, i_begin + rows_per_task);
    const int64_t nc = std::min(blk.nc, n - j0);
    const GemmProblem pr = problem(bi);
    const Epilogue& ep = pr.epilogue;
    const bool has_epilogue = ep.bias.p || ep.residual.p || ep.act.fn != UnaryFn::kIdentity;
    // Epilogues the kernel can apply to its tiles as it stores them (one pass over C fewer):
    // a bias per row, a residual with unit column stride, and relu or clip.
    const int act_code = tile_act(ep.act);  // -1: one no kernel applies
    const bool fusable = has_epilogue && blk.kernel.fused && !pr.c_transposed && !pr.c_block && act_code >= 0 &&
                         (!ep.bias.p || (ep.bias.cs == 0 && ep.bias.rs == 1)) && (!ep.residual.p || ep.residual.cs == 1);
    unsigned char* base = reinterpret_cast<unsigned char*>(scratch(worker));
    float* a_buf = align64(base);
    float* b_buf = align64(reinterpret_cast<unsigned char*>(a_buf + blk.mc * blk.kc));
    float* edge = align64(reinterpret_cast<unsigned char*>(b_buf + blk.kc * blk.nc));
    // A transposed C is built in `stage` ([row][nc], whole register tiles, rows up to mc), then
    // finished and scattered to C once, after the last k block.
    float* stage = align64(reinterpret_cast<unsigned char*>(edge + mr * nr));
    const int64_t stage_ld = blk.nc;
    // A row-major B with few rows of A to reuse it is read in place: packing it would cost more
    // than the few row panels that read each strip gain from a packed one.
    const bool b_in_place = !pr.b.packed && !pr.b.im2col && pr.b.view.cs == 1 && m <= kInPlaceRows;
    for (int64_t pc = 0; pc == 0 || pc < k; pc += blk.kc) {
      const int64_t kc = std::min(blk.kc, k - pc);
      const bool accumulate = pc > 0;
      const bool fuse = fusable && pc + kc >= k;  // the last k block stores final values
      const bool fuse_blocked = pr.c_block && has_epilogue && pc + kc >= k;
      const float* bp;
      int64_t b_stride;  // floats between consecutive NR-column panels
      int64_t ldb = nr;  // floats between consecutive k rows of a panel
      if (pr.b.packed) {
        bp = pr.b.packed + (j0 / nr) * k * nr + pc * nr;
        b_stride = k * nr;
      } else if (b_in_place) {
        bp = pr.b.view.p + pc * pr.b.view.rs + j0;
        b_stride = nr;
        ldb = pr.b.view.rs;
        const int64_t full = nc / nr * nr;
        // the last, partial panel is packed (zero padded): reading it in place would run past B
        if (full < nc) pack_b_block(pr.b.view, pc, kc, j0 + full, nc - full, nr, b_buf);
      } else {
        if (pr.b.im2col) pack_im2col_block(*pr.b.im2col, pr.b.view.p, pc, kc, j0, nc, nr, b_buf);
        else pack_b_block(pr.b.view, pc, kc, j0, nc, nr, b_buf);
        bp = b_buf;
        b_stride = kc * nr;
      }
      for (int64_t i0 = i_begin; i0 < i_end; i0 += blk.mc) {
        const int64_t mc = std::min(blk.mc, i_end - i0);
        const float* ap;
        int64_t a_stride;  // floats between consecutive MR-row panels
        if (pr.a.packed) {
          ap = pr.a.packed + (i0 / mr) * k * mr + pc * mr;
          a_stride = k * mr;
        } else if (pr.a.row_offsets) {  // read from the image by the kernel, row by row
          ap = nullptr;
          a_stride = 0;
        } else if (pr.a.block) {  // read in place by the kernel, MR pixels of 8 floats per panel
          ap = pr.a.view.p + (pc / 8) * pr.a.block + i0 * 8;
          a_stride = mr * 8;
        } else {
          pack_a_block(pr.a.view, i0, mc, pc, kc, mr, a_buf);
          ap = a_buf;
          a_stride = kc * mr;
        }
        // one row of A (its panel's first) against the block's first `panels` B panels, several
        // at a time, into c (whole panels' width each)
        auto row_against_panels = [&](const float* a_panel, int64_t panels, float* c) {
          for (int64_t p = 0; p < panels; p += MicroKernel::kRowPanels) {
            const int count = static_cast<int>(std::min<int64_t>(MicroKernel::kRowPanels, panels - p));
            blk.kernel.row_panels(count, kc, a_panel, bp + p * b_stride, ldb, b_stride, c + p * nr, accumulate);
          }
        };
        int64_t j_done = 0;  // columns [0, j_done) of the block are done for this k block
        if (mc == 1 && blk.kernel.row_panels && !pr.c_transposed && !pr.c_block && !fuse) {
          // A GEMV: the whole B panels; a partial last one goes the usual way
          row_against_panels(ap, nc / nr, pr.c + i0 * pr.ldc + j0);
          j_done = nc / nr * nr;
        }
        // A transposed C's last row panel holding a single row (49 pixels) is a GEMV over the
        // block's panels, done after them; the stage has room for whole tiles.
        const int64_t single = pr.c_transposed && !pr.a.block && !pr.a.row_offsets && pr.b.packed &&
                                       blk.kernel.row_panels && mc % mr == 1
                                   ? mc - 1
                                   : -1;
        const int64_t share = ceil_div(kc, ceil_div(mc, mr));  // next B panel rows fetched per tile
        // panel indices are counted, not divided out: a division per tile showed in profiles
        for (int64_t jr = j_done, jp = j_done / nr; jr < nc; jr += nr, ++jp) {
          const int64_t cols = std::min<int64_t>(nr, nc - jr);
          const bool packed_edge = b_in_place && cols < nr;
          const float* b_panel = packed_edge ? b_buf : bp + jp * b_stride;
          const int64_t b_ld = packed_edge ? nr : ldb;
          // Each tile of this column fetches its share of the next packed B panel's rows ahead of
          // use. Weights (the pixels as rows) come from memory and are fetched into L2 only: into
          // L1 they evicted the panels in use, and the L1 prefetcher follows a panel's rows from
          // L2 (ResNet-50's and MobileNetV2's 7x7 layers took 8-13 % less). Panels just written
          // (a Winograd transform's) are in L2 already and are fetched into L1.
          const float* next_b = pr.b.packed && jr + nr < nc ? bp + (jp + 1) * b_stride : nullptr;
          const bool to_l2 = pr.b.weights;
          for (int64_t ir = 0, ip = 0; ir < mc; ir += mr, ++ip) {
            if (next_b) {
              for (int64_t kk = ip * share, e = std::min(kc, kk + share); kk < e; ++kk) {
                for (int q = 0; q < nr; q += 16) {  // each 64-byte line of the row
                  const char* line = reinterpret_cast<const char*>(next_b + kk * nr + q);
                  if (to_l2) _mm_prefetch(line, _MM_HINT_T1);
                  else _mm_prefetch(line, _MM_HINT_T0);
                }
              }
            }
            if (ir == single) continue;
            const int64_t rows = std::min<int64_t>(mr, mc - ir);
            float* c = pr.c + (i0 + ir) * pr.ldc + j0 + jr;
            const float* a_panel = ap + ip * a_stride;
            // what the next tile reads from packed weights, which stream from memory: the next
            // row panel of A (the next column panel of B is fetched above)
            const float* next = nullptr;
            int64_t next_ld = 0;
            if (ir + mr < mc && pr.a.packed) next = a_panel + a_stride, next_ld = mr;
            if (pr.c_block) {
              auto group = [&](int64_t i, int64_t q) {
                return pr.c + ((j0 + jr + q) >> 3) * pr.c_block + (i0 + ir + i) * 8;
              };
              // a residual has C's layout (blocked A only)
              const float* residual = ep.residual.p ? ep.residual.p + (group(0, 0) - pr.c) : nullptr;
              if (rows == mr && cols == nr && (pr.a.block || blk.kernel.blocked) && (!fuse_blocked || act_code >= 0)) {
                TileEpilogue te;  // its bias per column
                if (ep.bias.p) te.bias = ep.bias.p + j0 + jr;
                te.residual = residual;
                te.ldr = 8;
                te.residual_second = pr.c_block;
                te.act = act_code;
                te.lo = ep.act.alpha;
                te.hi = ep.act.beta;
                if (pr.a.block) {
                  blk.kernel.a_blocked(mr, kc, a_panel, pr.a.block, b_panel, b_ld, group(0, 0), 8, pr.c_block,
                                       accumulate, fuse_blocked ? &te : nullptr);
                } else {
                  blk.kernel.blocked(kc, a_panel, b_panel, b_ld, group(0, 0), pr.c_block, accumulate, next, next_ld,
                                     fuse_blocked ? &te : nullptr);
                }
                continue;
              }
              // through the edge buffer: row i's 8-column groups go to their blocks
              if (accumulate) {
                for (int64_t i = 0; i < rows; ++i)
                  for (int64_t q = 0; q < cols; q += 8) std::memcpy(edge + i * nr + q, group(i, q), 8 * sizeof(float));
              }
              if (pr.a.block) {
                blk.kernel.a_blocked(static_cast<int>(rows), kc, a_panel, pr.a.block, b_panel, b_ld, edge, nr, 8,
                                     accumulate, nullptr);
              } else {
                blk.kernel.fn(kc, a_panel, b_panel, b_ld, edge, nr, accumulate, next, next_ld);
              }
              if (fuse_blocked && residual) {
                // bias, then the residual read through C's blocks, then the activation: the order above
                Epilogue bias_only, act_only;
                bias_only.bias = ep.bias;
                act_only.act = ep.act;
                apply_epilogue(bias_only, blk.isa, edge, nr, i0 + ir, rows, j0 + jr, cols);
                for (int64_t i = 0; i < rows; ++i)
                  for (int64_t q = 0; q < cols; ++q)
                    edge[i * nr + q] += residual[(q >> 3) * pr.c_block + i * 8 + (q & 7)];
                apply_epilogue(act_only, blk.isa, edge, nr, i0 + ir, rows, j0 + jr, cols);
              } else if (fuse_blocked) {
                apply_epilogue(ep, blk.isa, edge, nr, i0 + ir, rows, j0 + jr, cols);
              }
              for (int64_t i = 0; i < rows; ++i)
                for (int64_t q = 0; q < cols; q += 8) std::memcpy(group(i, q), edge + i * nr + q, 8 * sizeof(float));
            } else if (pr.a.block) {
              blk.kernel.a_blocked(static_cast<int>(rows), kc, a_panel, pr.a.block, b_panel, b_ld,
                                   stage + (i0 - i_begin + ir) * stage_ld + jr, stage_ld, 8, accumulate, nullptr);
            } else if (pr.c_transposed) {
              // a last, partial row panel computes its own rows only (49 pixels: 1 of 6)
              float* s = stage + (i0 - i_begin + ir) * stage_ld + jr;
              if (pr.a.row_offsets) {
                blk.kernel.a_gathered(static_cast<int>(rows), kc, pr.a.view.p, pr.a.row_offsets + i0 + ir,
                                      pr.a.k_offsets + pc, b_panel, b_ld, s, stage_ld, accumulate);
              } else if (rows < mr && blk.kernel.rows) {
                blk.kernel.rows(static_cast<int>(rows), kc, a_panel, b_panel, b_ld, s, stage_ld, accumulate, next,
                                next_ld, nullptr);
              } else {
                blk.kernel.fn(kc, a_panel, b_panel, b_ld, s, stage_ld, accumulate, next, next_ld);
              }
            } else if (rows == mr && cols == nr) {
              if (fuse && ir + mr < mc) {
                // the next tile's C rows and residual rows: mr channel planes, one line or two
                // each, which no hardware prefetcher follows (resnet50 -6 % at 1 and 2 threads)
                const int64_t next_rows = std::min<int64_t>(mr, mc - ir - mr);
                auto fetch_rows = [&](const float* p, int64_t ld) {
                  for (int64_t i = 0; i < next_rows; ++i) {
                    _mm_prefetch(reinterpret_cast<const char*>(p + i * ld), _MM_HINT_T0);
                    _mm_prefetch(reinterpret_cast<const char*>(p + i * ld + nr - 1), _MM_HINT_T0);
                  }
                };
                fetch_rows(c + mr * pr.ldc, pr.ldc);
                if (ep.residual.p) {
                  fetch_rows(ep.residual.p + (i0 + ir + mr) * ep.residual.rs + (j0 + jr) * ep.residual.cs,
                             ep.residual.rs);
                }
              }
              if (fuse) {
                blk.kernel.fused(kc, a_panel, b_panel, b_ld, c, pr.ldc, accumulate, next, next_ld,
                                 row_tile_epilogue(ep, i0 + ir, j0 + jr));
              } else {
                blk.kernel.fn(kc, a_panel, b_panel, b_ld, c, pr.ldc, accumulate, next, next_ld);
              }
            } else if (cols == nr && blk.kernel.rows) {
              const TileEpilogue te = fuse ? row_tile_epilogue(ep, i0 + ir, j0 + jr) : TileEpilogue{};
              blk.kernel.rows(static_cast<int>(rows), kc, a_panel, b_panel, b_ld, c, pr.ldc, accumulate, next,
                              next_ld, fuse ? &te : nullptr);
            } else {
              // edge tile: compute the full register tile into a buffer, copy the valid part
              if (accumulate) {
                for (int64_t i = 0; i < rows; ++i) std::memcpy(edge + i * nr, c + i * pr.ldc, cols * sizeof(float));
              }
              blk.kernel.fn(kc, a_panel, b_panel, b_ld, edge, nr, accumulate, next, next_ld);
              for (int64_t i = 0; i < rows; ++i) std::memcpy(c + i * pr.ldc, edge + i * nr, cols * sizeof(float));
              if (fuse) apply_epilogue(ep, blk.isa, c, pr.ldc, i0 + ir, rows, j0 + jr, cols);
            }
          }
        }
        if (single >= 0) {
          float* row = stage + (i0 - i_begin + single) * stage_ld;
          row_against_panels(ap + (single / mr) * a_stride, ceil_div(nc, nr), row);
        }
      }
    }
    // Epilogues the kernel could not fuse: bias, residual and activation over the task's block
    // while it is still in L2.
    if (pr.c_transposed) {
      // stored as C's channel rows and finished there, where the bias is one value per row and
      // the residual runs along it; the same arithmetic as on the stage
      const int64_t rows = i_end - i_begin;
      float* c = pr.c + j0 * pr.ldc + i_begin;
      int64_t finished = 0;  // channels [0, finished) of the block have had their epilogue
      if (blk.isa != Isa::kPortable) {
        // the vector store finishes bias per channel and residual runs along the pixels only
        const bool vector_finish = (!ep.bias.p || ep.bias.cs == 1) && (!ep.residual.p || ep.residual.rs == 1);
        const Epilogue& fin = vector_finish ? ep : Epilogue{};
        const float* bias = fin.bias.p ? fin.bias.p + j0 : nullptr;
        const float* res = fin.residual.p ? fin.residual.p + j0 * fin.residual.cs + i_begin : nullptr;
        const int64_t done = transpose_finish_avx2(stage, stage_ld, rows, nc, c, pr.ldc, bias, res, fin.residual.cs,
                                                   fin.act);
        finished = vector_finish ? done : 0;
      } else {
        for (int64_t q = 0; q < nc; ++q)
          for (int64_t r = 0; r < rows; ++r) c[q * pr.ldc + r] = stage[r * stage_ld + q];
      }
      if (has_epilogue && finished < nc) {
        apply_epilogue(transposed(ep), blk.isa, c + finished * pr.ldc, pr.ldc, j0 + finished, nc - finished,
                       i_begin, rows);
      }
    } else if (has_epilogue && !fusable && !pr.c_block) {
      apply_epilogue(ep, blk.isa, pr.c + i_begin * pr.ldc + j0, pr.ldc, i_begin, i_end - i_begin, j0, nc);
    }
  });
}

}  // namespace walle

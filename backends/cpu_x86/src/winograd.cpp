#include "winograd.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "elementwise.hpp"
#include "winograd_matrices.hpp"
#include "winograd_tiles.hpp"

namespace walle {

namespace {

// See choose_winograd_tile.
constexpr int64_t kTransformWeight = 4;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Input channels transformed together: plain loops over this many lanes, which the compiler
// turns into vector code (the scalar form was a quarter of a resnet18 load).
constexpr int kWeightLanes = 8;

// U = G g G^T for every (o, c), in the GEMM's packed A layout of each of the T*T positions:
// position p's [O x C] matrix in panels of mr rows, [panel][c][row in panel], zero rows padding
// the last panel. One row panel is transformed at a time, kWeightLanes channels per step, into
// a [position][c][row] block; each position's share then goes out as one contiguous run. (Written
// straight to the T*T destinations, every step touched T*T pages of fresh memory: most of a
// model's load time.)
template <int M>
void transform_weights(const WinogradShape& s, const unsigned char* w, int mr, int64_t packed_stride, float* packed) {
  using X = WinogradMatrices<M>;
  constexpr int T = X::T;
  constexpr int L = kWeightLanes;
  const int64_t panel_floats = s.c * mr;
  std::vector<float> block(static_cast<size_t>(T * T * panel_floats));
  for (int64_t o0 = 0; o0 < s.o; o0 += mr) {
    const int64_t rows = std::min<int64_t>(mr, s.o - o0);
    std::fill(block.begin(), block.end(), 0.f);  // the rows past O stay zero
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c0 = 0; c0 < s.c; c0 += L) {
        const int64_t lanes = std::min<int64_t>(L, s.c - c0);
        const unsigned char* wo = w + ((o0 + r) * s.c + c0) * 9 * sizeof(float);
        float g[9][L];
        for (int64_t l = 0; l < lanes; ++l) {
          float taps[9];
          std::memcpy(taps, wo + l * 9 * sizeof(float), sizeof(taps));
          for (int k = 0; k < 9; ++k) g[k][l] = taps[k];
        }
        for (int64_t l = lanes; l < L; ++l) {
          for (int k = 0; k < 9; ++k) g[k][l] = 0.f;
        }
        float gt[T][3][L];  // G g
        for (int i = 0; i < T; ++i) {
          for (int j = 0; j < 3; ++j) {
            for (int l = 0; l < L; ++l) {
              gt[i][j][l] = X::G[i][0] * g[j][l] + X::G[i][1] * g[3 + j][l] + X::G[i][2] * g[6 + j][l];
            }
          }
        }
        for (int i = 0; i < T; ++i) {
          for (int j = 0; j < T; ++j) {
            float u[L];
            for (int l = 0; l < L; ++l) {
              u[l] = gt[i][0][l] * X::G[j][0] + gt[i][1][l] * X::G[j][1] + gt[i][2][l] * X::G[j][2];
            }
            float* out = block.data() + (i * T + j) * panel_floats + c0 * mr + r;
            for (int64_t l = 0; l < lanes; ++l) out[l * mr] = u[l];
          }
        }
      }
    }
    for (int p = 0; p < T * T; ++p) {
      std::copy_n(block.data() + p * panel_floats, panel_floats, packed + p * packed_stride + o0 * s.c);
    }
  }
}

template <int M>
int64_t transform_macs_per_tile(int64_t c, int64_t o) {
  constexpr int T = M + 2;
  return c * 2 * T * T * T + o * (M * T * T + M * M * T);
}

}  // namespace

int choose_winograd_tile(const WinogradShape& s, int nr) {
  if (s.c < 8 || s.o < 8) return 0;  // tiny channel counts: the transforms dominate
  const int64_t direct = 9 * s.c * s.o * s.oh * s.ow;
  int best = 0;
  int64_t best_cost = direct;
  for (int m : {2, 4, 6}) {
    const int64_t tiles = ceil_div(s.oh, m) * ceil_div(s.ow, m);
    const int64_t columns = ceil_div(tiles, nr) * nr;
    const int64_t t = m + 2;
    const int64_t transforms = m == 2   ? transform_macs_per_tile<2>(s.c, s.o)
                               : m == 4 ? transform_macs_per_tile<4>(s.c, s.o)
                                        : transform_macs_per_tile<6>(s.c, s.o);
    const int64_t cost = t * t * s.c * s.o * columns + kTransformWeight * tiles * transforms;
    if (cost < best_cost) {
      best = m;
      best_cost = cost;
    }
  }
  return best;
}

size_t winograd_weight_bytes(int m, const WinogradShape& s, int mr) {
  return static_cast<size_t>((m + 2) * (m + 2)) * packed_a_floats(s.o, s.c, mr) * sizeof(float);
}

void transform_winograd_weights(int m, const WinogradShape& s, const void* weights, int mr, float* dst) {
  require(m == 2 || m == 4 || m == 6, "Winograd tile must be 2, 4 or 6");
  const auto packed_stride = static_cast<int64_t>(packed_a_floats(s.o, s.c, mr));
  const auto* bytes = static_cast<const unsigned char*>(weights);
  if (m == 2) transform_weights<2>(s, bytes, mr, packed_stride, dst);
  else if (m == 4) transform_weights<4>(s, bytes, mr, packed_stride, dst);
  else transform_weights<6>(s, bytes, mr, packed_stride, dst);
}

WinogradConv::WinogradConv(int m, const WinogradShape& s, AlignedBuffer weights, int mr, int nr)
    : m_(m), t_(m + 2), nr_(nr), s_(s), weights_(std::move(weights)) {
  require(m == 2 || m == 4 || m == 6, "Winograd tile must be 2, 4 or 6");
  require(nr % kWinogradLanes == 0, "Winograd needs GEMM column panels of whole lane blocks");
  require(weights_.size() == winograd_weight_bytes(m, s, mr), "Winograd weights of the wrong size");
  tiles_y_ = ceil_div(s.oh, m);
  tiles_x_ = ceil_div(s.ow, m);
  tiles_ = tiles_y_ * tiles_x_;
  packed_stride_ = static_cast<int64_t>(packed_a_floats(s.o, s.c, mr));
}

size_t WinogradConv::scratch_bytes() const {
  return static_cast<size_t>(winograd_portable::padded_plane_floats(m_, tiles_y_, tiles_x_)) * sizeof(float);
}

int64_t position_floats(int64_t c, int64_t tiles, int nr) {
  constexpr int64_t kLineFloats = 16;
  const int64_t lines = ceil_div(c * ceil_div(tiles, nr) * nr, kLineFloats);
  return (lines | 1) * kLineFloats;
}

size_t winograd_workspace_bytes(int m, const WinogradShape& s, int nr) {
  const int64_t t = m + 2, tiles = ceil_div(s.oh, m) * ceil_div(s.ow, m);
  // + slack for the output transform's reads past the last tile (winograd_tiles.inc)
  return static_cast<size_t>(t * t * (position_floats(s.c, tiles, nr) + s.o * tiles) + kWinogradLanes) * sizeof(float);
}

void WinogradConv::run(const GemmBlocking& blk, const float* x, float* y, const float* bias, const float* residual,
                       const Act& act, ThreadPool& pool, FunctionRef<float*(int)> scratch, float* workspace,
                       const CancelFlag* cancel) const {
  const int64_t positions = t_ * t_;
  const int64_t position_stride = position_floats(s_.c, tiles_, nr_);
  float* v = workspace;                                // [T*T][tiles / nr][C][nr]
  // [O][T*T][tiles]: the T*T values an output channel's tiles transform back from lie together
  float* mm = workspace + positions * position_stride;
  const int64_t plane_in = s_.h * s_.w, plane_out = s_.oh * s_.ow;
  const bool wide = blk.isa != Isa::kPortable;  // AVX2 and AVX-512 plans: the AVX2 transforms
  pool.parallel_for(s_.c, [&](int64_t c, int worker) {
    if (is_cancelled(cancel)) return;
    float* pad = scratch(worker);
    if (wide) winograd_avx2::input_tiles(m_, s_, tiles_y_, tiles_x_, x + c * plane_in, c, nr_, pad, v);
    else winograd_portable::input_tiles(m_, s_, tiles_y_, tiles_x_, x + c * plane_in, c, nr_, pad, v);
  });
  auto problem = [&](int64_t p) {
    GemmProblem g;
    g.a.packed = weights_.as<float>() + p * packed_stride_;
    g.b.packed = v + p * position_stride;
    g.c = mm + p * tiles_;
    g.ldc = positions * tiles_;
    return g;
  };
  gemm(blk, s_.o, tiles_, s_.c, positions, problem, pool, scratch, cancel);
  pool.parallel_for(s_.o, [&](int64_t o, int) {
    if (is_cancelled(cancel)) return;
    float* out = y + o * plane_out;
    if (wide) winograd_avx2::output_tiles(m_, s_, tiles_y_, tiles_x_, mm, o, out);
    else winograd_portable::output_tiles(m_, s_, tiles_y_, tiles_x_, mm, o, out);
    Epilogue ep;
    if (bias) ep.bias = MatView{bias + o, 0, 0};
    if (residual) ep.residual = MatView{residual + o * plane_out, 0, 1};
    ep.act = act;
    if (ep.bias.p || ep.residual.p || act.fn != UnaryFn::kIdentity) {
      apply_epilogue(ep, blk.isa, out, plane_out, 0, 1, 0, plane_out);
    }
  });
}

}  // namespace walle

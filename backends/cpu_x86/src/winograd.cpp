#include "winograd.hpp"

#include <algorithm>
#include <vector>

#include "elementwise.hpp"

namespace walle {

namespace {

// Transform matrices of F(2,3) and F(4,3) with interpolation points 0, +-1 (and +-2, inf), as
// derived by Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016).
template <int M>
struct Transform;

template <>
struct Transform<2> {
  static constexpr int T = 4;
  static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr float G[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
  static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};

template <>
struct Transform<4> {
  static constexpr int T = 6;
  static constexpr float BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                     {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr float G[6][3] = {{1.f / 4, 0, 0},
                                    {-1.f / 6, -1.f / 6, -1.f / 6},
                                    {-1.f / 6, 1.f / 6, -1.f / 6},
                                    {1.f / 24, 1.f / 12, 1.f / 6},
                                    {1.f / 24, -1.f / 12, 1.f / 6},
                                    {0, 0, 1}};
  static constexpr float AT[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};

// Tiles transformed together, one per vector lane, so the transforms vectorise across tiles.
constexpr int kLanes = 8;
// See choose_winograd_tile.
constexpr int64_t kTransformWeight = 4;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// U = G g G^T for every (o, c), scattered to position-major [T*T][O][C].
template <int M>
void transform_weights(const WinogradShape& s, const float* w, float* u) {
  using X = Transform<M>;
  constexpr int T = X::T;
  for (int64_t o = 0; o < s.o; ++o) {
    for (int64_t c = 0; c < s.c; ++c) {
      const float* g = w + (o * s.c + c) * 9;
      float gt[T][3];  // G g
      for (int i = 0; i < T; ++i) {
        for (int j = 0; j < 3; ++j) gt[i][j] = X::G[i][0] * g[j] + X::G[i][1] * g[3 + j] + X::G[i][2] * g[6 + j];
      }
      for (int i = 0; i < T; ++i) {
        for (int j = 0; j < T; ++j) {
          const float v = gt[i][0] * X::G[j][0] + gt[i][1] * X::G[j][1] + gt[i][2] * X::G[j][2];
          u[((i * T + j) * s.o + o) * s.c + c] = v;
        }
      }
    }
  }
}

// Rows and columns of the zero-bordered copy of one input plane that the input transform reads:
// every tile of every lane block lies inside it, so the transform needs no bounds checks.
struct PaddedPlane {
  int64_t rows, cols;
  static PaddedPlane of(int m, int64_t tiles_y, int64_t tiles_x) {
    const int64_t blocks = (tiles_x + kLanes - 1) / kLanes;
    return {tiles_y * m + 2, blocks * kLanes * m + 2};
  }
};

// V[p][c][tile] = (B^T d B)[p] for the input tiles of channel c; pad is PaddedPlane-sized scratch.
template <int M>
void transform_input(const WinogradShape& s, int64_t tiles_y, int64_t tiles_x, const float* plane, int64_t c,
                     float* pad, float* v) {
  using X = Transform<M>;
  constexpr int T = X::T;
  const int64_t tiles = tiles_y * tiles_x;
  const PaddedPlane pp = PaddedPlane::of(M, tiles_y, tiles_x);
  std::fill(pad, pad + pp.rows * pp.cols, 0.f);
  const int64_t copy_rows = std::min(s.h, pp.rows - s.pt), copy_cols = std::min(s.w, pp.cols - s.pl);
  for (int64_t y = 0; y < copy_rows; ++y) {
    std::copy_n(plane + y * s.w, copy_cols, pad + (y + s.pt) * pp.cols + s.pl);
  }
  for (int64_t ty = 0; ty < tiles_y; ++ty) {
    for (int64_t tx0 = 0; tx0 < tiles_x; tx0 += kLanes) {
      const int64_t lanes = std::min<int64_t>(kLanes, tiles_x - tx0);
      float d[T][T][kLanes];
      const float* corner = pad + ty * M * pp.cols + tx0 * M;
      for (int i = 0; i < T; ++i) {
        for (int j = 0; j < T; ++j) {
          for (int l = 0; l < kLanes; ++l) d[i][j][l] = corner[i * pp.cols + l * M + j];
        }
      }
      float bd[T][T][kLanes];  // B^T d
#pragma GCC unroll 6
      for (int i = 0; i < T; ++i) {
#pragma GCC unroll 6
        for (int j = 0; j < T; ++j) {
          for (int l = 0; l < kLanes; ++l) {
            float acc = 0.f;
#pragma GCC unroll 6
            for (int k = 0; k < T; ++k) acc += X::BT[i][k] * d[k][j][l];
            bd[i][j][l] = acc;
          }
        }
      }
      float* dst = v + c * tiles + ty * tiles_x + tx0;
#pragma GCC unroll 6
      for (int i = 0; i < T; ++i) {
#pragma GCC unroll 6
        for (int j = 0; j < T; ++j) {
          float out[kLanes];
          for (int l = 0; l < kLanes; ++l) {
            float acc = 0.f;
#pragma GCC unroll 6
            for (int k = 0; k < T; ++k) acc += bd[i][k][l] * X::BT[j][k];
            out[l] = acc;
          }
          float* p = dst + (i * T + j) * s.c * tiles;
          for (int64_t l = 0; l < lanes; ++l) p[l] = out[l];
        }
      }
    }
  }
}

// y[o] = A^T M A over the tiles of output channel o, clipped at the image's edges.
template <int M>
void transform_output(const WinogradShape& s, int64_t tiles_y, int64_t tiles_x, const float* mm, int64_t o,
                      float* y) {
  using X = Transform<M>;
  constexpr int T = X::T;
  const int64_t tiles = tiles_y * tiles_x;
  for (int64_t ty = 0; ty < tiles_y; ++ty) {
    for (int64_t tx0 = 0; tx0 < tiles_x; tx0 += kLanes) {
      const int64_t lanes = std::min<int64_t>(kLanes, tiles_x - tx0);
      float in[T][T][kLanes];
      const float* src = mm + o * tiles + ty * tiles_x + tx0;
      for (int i = 0; i < T; ++i) {
        for (int j = 0; j < T; ++j) {
          const float* p = src + (i * T + j) * s.o * tiles;
          for (int l = 0; l < kLanes; ++l) in[i][j][l] = l < lanes ? p[l] : 0.f;
        }
      }
      float am[M][T][kLanes];  // A^T M
#pragma GCC unroll 6
      for (int i = 0; i < M; ++i) {
#pragma GCC unroll 6
        for (int j = 0; j < T; ++j) {
          for (int l = 0; l < kLanes; ++l) {
            float acc = 0.f;
#pragma GCC unroll 6
            for (int k = 0; k < T; ++k) acc += X::AT[i][k] * in[k][j][l];
            am[i][j][l] = acc;
          }
        }
      }
      for (int i = 0; i < M; ++i) {
        const int64_t oy = ty * M + i;
        if (oy >= s.oh) break;
        float* row = y + oy * s.ow;
        for (int j = 0; j < M; ++j) {
          float out[kLanes];
          for (int l = 0; l < kLanes; ++l) {
            float acc = 0.f;
#pragma GCC unroll 6
            for (int k = 0; k < T; ++k) acc += am[i][k][l] * X::AT[j][k];
            out[l] = acc;
          }
          for (int64_t l = 0; l < lanes; ++l) {
            const int64_t ox = (tx0 + l) * M + j;
            if (ox < s.ow) row[ox] = out[l];
          }
        }
      }
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
  for (int m : {2, 4}) {
    const int64_t tiles = ceil_div(s.oh, m) * ceil_div(s.ow, m);
    const int64_t columns = ceil_div(tiles, nr) * nr;
    const int64_t t = m + 2;
    const int64_t transforms = m == 2 ? transform_macs_per_tile<2>(s.c, s.o) : transform_macs_per_tile<4>(s.c, s.o);
    const int64_t cost = t * t * s.c * s.o * columns + kTransformWeight * tiles * transforms;
    if (cost < best_cost) {
      best = m;
      best_cost = cost;
    }
  }
  return best;
}

WinogradConv::WinogradConv(int m, const WinogradShape& s, const float* weights, int mr)
    : m_(m), t_(m + 2), s_(s) {
  require(m == 2 || m == 4, "Winograd tile must be 2 or 4");
  tiles_y_ = ceil_div(s.oh, m);
  tiles_x_ = ceil_div(s.ow, m);
  tiles_ = tiles_y_ * tiles_x_;
  const int64_t positions = t_ * t_;
  std::vector<float> u(static_cast<size_t>(positions * s.o * s.c));
  if (m == 2) transform_weights<2>(s, weights, u.data());
  else transform_weights<4>(s, weights, u.data());
  packed_stride_ = static_cast<int64_t>(packed_a_floats(s.o, s.c, mr));
  weights_.resize(static_cast<size_t>(positions * packed_stride_) * sizeof(float));
  for (int64_t p = 0; p < positions; ++p) {
    AlignedBuffer one = pack_a_full(MatView{u.data() + p * s.o * s.c, s.c, 1}, s.o, s.c, mr);
    std::copy_n(one.as<float>(), packed_stride_, weights_.as<float>() + p * packed_stride_);
  }
}

size_t WinogradConv::scratch_bytes() const {
  const PaddedPlane pp = PaddedPlane::of(m_, tiles_y_, tiles_x_);
  return static_cast<size_t>(pp.rows * pp.cols) * sizeof(float);
}

size_t winograd_workspace_bytes(int m, const WinogradShape& s) {
  const int64_t t = m + 2, tiles = ceil_div(s.oh, m) * ceil_div(s.ow, m);
  return static_cast<size_t>(t * t * (s.c + s.o) * tiles) * sizeof(float);
}

void WinogradConv::run(const GemmBlocking& blk, const float* x, float* y, const float* bias, const float* residual,
                       const Act& act, ThreadPool& pool, FunctionRef<float*(int)> scratch, float* workspace) const {
  const int64_t positions = t_ * t_;
  float* v = workspace;                          // [T*T][C][tiles]
  float* mm = workspace + positions * s_.c * tiles_;  // [T*T][O][tiles]
  const int64_t plane_in = s_.h * s_.w, plane_out = s_.oh * s_.ow;
  pool.parallel_for(s_.c, [&](int64_t c, int worker) {
    float* pad = scratch(worker);
    if (m_ == 2) transform_input<2>(s_, tiles_y_, tiles_x_, x + c * plane_in, c, pad, v);
    else transform_input<4>(s_, tiles_y_, tiles_x_, x + c * plane_in, c, pad, v);
  });
  auto problem = [&](int64_t p) {
    GemmProblem g;
    g.a.packed = weights_.as<float>() + p * packed_stride_;
    g.b.view = MatView{v + p * s_.c * tiles_, tiles_, 1};
    g.c = mm + p * s_.o * tiles_;
    g.ldc = tiles_;
    return g;
  };
  gemm(blk, s_.o, tiles_, s_.c, positions, problem, pool, scratch);
  pool.parallel_for(s_.o, [&](int64_t o, int) {
    float* out = y + o * plane_out;
    if (m_ == 2) transform_output<2>(s_, tiles_y_, tiles_x_, mm, o, out);
    else transform_output<4>(s_, tiles_y_, tiles_x_, mm, o, out);
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

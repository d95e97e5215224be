// Native kernel tests, run by ctest when built with -DWALLE_BUILD_TESTS=ON: the packed GEMM of
// every ISA this CPU has (prepacked, strided and im2col operands, edge tiles, several k-blocks,
// epilogue) and the thread pool, each against naive loops in double precision.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "gemm.hpp"
#include "threadpool.hpp"

using namespace walle;

namespace {

int failures = 0;

void expect_close(const std::vector<float>& got, const std::vector<double>& want, const char* what) {
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::fabs(got[i] - want[i]) > 1e-4 * (1.0 + std::fabs(want[i]))) {
      std::printf("FAIL %s: element %zu is %g, expected %g\n", what, i, got[i], want[i]);
      ++failures;
      return;
    }
  }
}

std::vector<float> random_vector(size_t n, std::mt19937& gen) {
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// C = relu(A * B^T + bias[row]) with A [m, k] row-major and B given as [n, k] (a transposed view).
void test_gemm(Isa isa, int64_t m, int64_t n, int64_t k, bool prepack_a, ThreadPool& pool, std::mt19937& gen) {
  GemmBlocking blk(isa);
  std::vector<float> a = random_vector(m * k, gen), b = random_vector(n * k, gen), bias = random_vector(m, gen);
  std::vector<double> want(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = bias[i];
      for (int64_t p = 0; p < k; ++p) acc += double(a[i * k + p]) * b[j * k + p];
      want[i * n + j] = acc > 0 ? acc : 0;
    }
  }
  AlignedBuffer packed;
  if (prepack_a) {
    packed.resize(packed_a_floats(m, k, blk.kernel.mr) * sizeof(float));
    pack_a_full(MatView{a.data(), k, 1}, m, k, blk.kernel.mr, packed.as<float>());
  }
  std::vector<float> c(m * n, -1.f);
  AlignedBuffer scratch(blk.scratch_bytes() * pool.threads() + 64);
  auto problem = [&](int64_t) {
    GemmProblem p;
    if (prepack_a) p.a.packed = packed.as<float>();
    else p.a.view = MatView{a.data(), k, 1};
    p.b.view = MatView{b.data(), 1, k};
    p.c = c.data();
    p.ldc = n;
    p.epilogue.bias = MatView{bias.data(), 1, 0};
    p.epilogue.act.fn = UnaryFn::kRelu;
    return p;
  };
  auto scratch_of = [&](int w) {
    auto p = reinterpret_cast<uintptr_t>(scratch.data() + blk.scratch_bytes() * w);
    return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
  };
  gemm(blk, m, n, k, 1, problem, pool, scratch_of);
  char what[96];
  std::snprintf(what, sizeof what, "gemm %s %ldx%ldx%ld%s", isa_name(isa), long(m), long(n), long(k),
                prepack_a ? " prepacked" : "");
  expect_close(c, want, what);
}

// A 3x3 convolution with stride 2 and padding through the im2col operand.
void test_im2col(Isa isa, ThreadPool& pool, std::mt19937& gen) {
  GemmBlocking blk(isa);
  const int64_t C = 3, H = 9, W = 7, O = 5, KH = 3, KW = 3, S = 2, P = 1;
  const int64_t OH = (H + 2 * P - KH) / S + 1, OW = (W + 2 * P - KW) / S + 1;
  std::vector<float> x = random_vector(C * H * W, gen), w = random_vector(O * C * KH * KW, gen);
  std::vector<double> want(O * OH * OW, 0.0);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t oy = 0; oy < OH; ++oy)
      for (int64_t ox = 0; ox < OW; ++ox)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < KH; ++i)
            for (int64_t j = 0; j < KW; ++j) {
              const int64_t iy = oy * S - P + i, ix = ox * S - P + j;
              if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                want[(o * OH + oy) * OW + ox] += double(w[((o * C + c) * KH + i) * KW + j]) * x[(c * H + iy) * W + ix];
            }
  Im2col geom{C, H, W, KH, KW, S, S, 1, 1, P, P, OH, OW};
  std::vector<float> y(O * OH * OW);
  AlignedBuffer scratch(blk.scratch_bytes() * pool.threads() + 64);
  auto problem = [&](int64_t) {
    GemmProblem p;
    p.a.view = MatView{w.data(), C * KH * KW, 1};
    p.b.im2col = &geom;
    p.b.view.p = x.data();
    p.c = y.data();
    p.ldc = OH * OW;
    return p;
  };
  auto scratch_of = [&](int wk) {
    auto p = reinterpret_cast<uintptr_t>(scratch.data() + blk.scratch_bytes() * wk);
    return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
  };
  gemm(blk, O, OH * OW, C * KH * KW, 1, problem, pool, scratch_of);
  expect_close(y, want, "im2col conv");
}

void test_thread_pool() {
  ThreadPool pool(3);
  std::vector<int> hits(1000, 0);
  for (int round = 0; round < 20; ++round) {
    pool.parallel_for(1000, [&](int64_t i, int worker) {
      if (worker < 0 || worker >= 3) hits[i] = -1000;
      hits[i] += 1;
    });
  }
  for (int h : hits) {
    if (h != 20) {
      std::printf("FAIL thread pool: a task ran %d times instead of 20\n", h);
      ++failures;
      return;
    }
  }
  bool caught = false;
  try {
    pool.parallel_for(10, [](int64_t i, int) {
      if (i == 7) throw Error("task failed");
    });
  } catch (const Error&) {
    caught = true;
  }
  if (!caught) {
    std::printf("FAIL thread pool: a task's exception was not rethrown\n");
    ++failures;
  }
}

}  // namespace

int main() {
  std::mt19937 gen(1234);
  test_thread_pool();
  for (int level = 0; level <= static_cast<int>(best_isa()); ++level) {
    const Isa isa = static_cast<Isa>(level);
    for (int threads : {1, 2}) {
      ThreadPool pool(threads);
      for (bool prepack : {false, true}) {
        test_gemm(isa, 1, 1, 1, prepack, pool, gen);
        test_gemm(isa, 13, 37, 5, prepack, pool, gen);
        test_gemm(isa, 130, 300, 520, prepack, pool, gen);
        test_gemm(isa, 7, 9, 0, prepack, pool, gen);
      }
      test_im2col(isa, pool, gen);
    }
  }
  std::printf("%s\n", failures ? "native kernel tests FAILED" : "native kernel tests passed");
  return failures ? 1 : 0;
}

// AVX2 + FMA exp, sigmoid, tanh and erf (see transcendental.hpp for their accuracy). Compiled
// with -mavx2 -mfma; only called when the plan's instruction set is AVX2 or better.
//
// exp: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two so n ln2 is exact), e^r by its degree-7
// Taylor polynomial (remainder below 6e-9 relative), then the scaling by 2^n done as two
// multiplications by 2^(n/2), so results that overflow or fall into the subnormal range are
// rounded once, correctly, with no special case.
#include "transcendental.hpp"

#include <immintrin.h>

namespace walle {

namespace {

inline __m256 abs8(__m256 x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), x); }
inline __m256 sign8(__m256 x) { return _mm256_and_ps(_mm256_set1_ps(-0.f), x); }
inline __m256 nan_back(__m256 y, __m256 x) { return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q)); }

// sum of c[k] r^k for k < N, by Horner (c[0] first)
template <int N>
inline __m256 horner(__m256 r, const float (&c)[N]) {
  __m256 p = _mm256_set1_ps(c[N - 1]);
  for (int k = N - 2; k >= 0; --k) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c[k]));
  return p;
}

constexpr float kExpTaylor[8] = {1.f, 1.f, 1.f / 2, 1.f / 6, 1.f / 24, 1.f / 120, 1.f / 720, 1.f / 5040};

// e^x for finite or infinite x; a NaN lane comes out as some number (callers put NaN back).
inline __m256 exp8(__m256 x) {
  // beyond these e^x is +inf or rounds to 0 anyway; clamping keeps n in [-150, 129]
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-104.f)), _mm256_set1_ps(89.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // n * 355/512: exact
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  const __m256 p = horner(r, kExpTaylor);
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i half = _mm256_srai_epi32(ni, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

// e^u - 1 for 0 <= u < 0.625: its degree-9 Taylor polynomial (remainder below 1e-8 relative).
inline __m256 expm1_small8(__m256 u) {
  static constexpr float c[9] = {1.f,           1.f / 2,        1.f / 6,         1.f / 24,       1.f / 120,
                                 1.f / 720,     1.f / 5040,     1.f / 40320,     1.f / 362880};
  return _mm256_mul_ps(u, horner(u, c));
}

inline __m256 sigmoid8(__m256 x) {
  // e = e^-|x| never overflows; 1 / (1 + e) for x >= 0, e / (1 + e) below, which keeps full
  // relative accuracy where the result is tiny
  const __m256 e = exp8(_mm256_or_ps(abs8(x), _mm256_set1_ps(-0.f)));
  const __m256 d = _mm256_add_ps(_mm256_set1_ps(1.f), e);
  const __m256 num = _mm256_blendv_ps(_mm256_set1_ps(1.f), e, x);  // sign bit of x selects e
  return nan_back(_mm256_div_ps(num, d), x);
}

inline __m256 tanh8(__m256 x) {
  // tanh|x| = e / (e + 2) with e = e^(2|x|) - 1; tanh(20) rounds to 1 already
  const __m256 u = _mm256_min_ps(_mm256_add_ps(abs8(x), abs8(x)), _mm256_set1_ps(40.f));
  const __m256 small = _mm256_cmp_ps(u, _mm256_set1_ps(0.625f), _CMP_LT_OQ);
  const __m256 e = _mm256_blendv_ps(_mm256_sub_ps(exp8(u), _mm256_set1_ps(1.f)), expm1_small8(u), small);
  const __m256 t = _mm256_div_ps(e, _mm256_add_ps(e, _mm256_set1_ps(2.f)));
  return nan_back(_mm256_or_ps(t, sign8(x)), x);
}

inline __m256 erf8(__m256 x) {
  const __m256 a = abs8(x);
  // |x| < 1: x * 2/sqrt(pi) * sum of (-1)^k x^2k / (k! (2k + 1)), k < 12 (the next term is below
  // 2e-9 there)
  static constexpr float series[12] = {1.f,           -1.f / 3,          1.f / 10,          -1.f / 42,
                                       1.f / 216,     -1.f / 1320,       1.f / 9360,        -1.f / 75600,
                                       1.f / 685440,  -1.f / 6894720,    1.f / 76204800,    -1.f / 918086400};
  const __m256 z = _mm256_mul_ps(x, x);
  const __m256 near = _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.12837917f)), horner(z, series));
  // above: 1 - t (a1 + a2 t + ... + a5 t^4) e^(-x^2), t = 1 / (1 + p |x|)
  static constexpr float as[5] = {0.254829592f, -0.284496736f, 1.421413741f, -1.453152027f, 1.061405429f};
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, _mm256_set1_ps(1.f)));
  const __m256 tail = _mm256_mul_ps(_mm256_mul_ps(t, horner(t, as)), exp8(_mm256_sub_ps(_mm256_setzero_ps(), z)));
  const __m256 far = _mm256_or_ps(_mm256_sub_ps(_mm256_set1_ps(1.f), tail), sign8(x));
  return nan_back(_mm256_blendv_ps(far, near, _mm256_cmp_ps(a, _mm256_set1_ps(1.f), _CMP_LT_OQ)), x);
}

template <class F>
void map8(const float* x, float* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, f(_mm256_loadu_ps(x + i)));
  if (i < n) {  // the tail through a zero-padded block
    alignas(32) float block[8] = {};
    for (int64_t j = i; j < n; ++j) block[j - i] = x[j];
    _mm256_store_ps(block, f(_mm256_load_ps(block)));
    for (int64_t j = i; j < n; ++j) y[j] = block[j - i];
  }
}

}  // namespace

bool transcendental_avx2(UnaryFn fn, const float* x, float* y, int64_t n) {
  switch (fn) {
    case UnaryFn::kExp: map8(x, y, n, [](__m256 v) { return nan_back(exp8(v), v); }); return true;
    case UnaryFn::kSigmoid: map8(x, y, n, sigmoid8); return true;
    case UnaryFn::kTanh: map8(x, y, n, tanh8); return true;
    case UnaryFn::kErf: map8(x, y, n, erf8); return true;
    default: return false;
  }
}

}  // namespace walle

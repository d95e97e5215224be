// OpenCL C kernels of the Walle opencl backend. The loader prepends the function codes
// (U_*, B_*, R_* #defines, generated from walle_core.ops) and the FOR_EACH_* lists of the
// functions the backend claims, so both sides share one source of truth.
// Shapes arrive as int tables ("params") uploaded once at compile time; every index a model can
// influence at run time (GATHER indices) is checked here and reported through an error flag.

#define MAX_RANK 8

// ---------------------------------------------------------------- helpers

// Offsets of flat output element i in up to three broadcast operands.
// p = [rank, shape[rank], strides0[rank], strides1[rank], strides2[rank]]
inline int3 broadcast_offsets(__global const int* p, int nops, int i) {
  const int rank = p[0];
  int3 off = (int3)(0, 0, 0);
  for (int d = rank - 1; d >= 0; --d) {
    const int c = i % p[1 + d];
    i /= p[1 + d];
    off.x += c * p[1 + rank + d];
    if (nops > 1) off.y += c * p[1 + 2 * rank + d];
    if (nops > 2) off.z += c * p[1 + 3 * rank + d];
  }
  return off;
}

inline float apply_unary(int fn, float x, float alpha, float beta) {
  switch (fn) {
    case U_IDENTITY: return x;
    case U_NEG: return -x;
    case U_ABS: return fabs(x);
    case U_SIGN: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x);
    case U_EXP: return exp(x);
    case U_LOG: return log(x);
    case U_SQRT: return sqrt(x);
    case U_RSQRT: return 1.0f / sqrt(x);
    case U_RECIPROCAL: return 1.0f / x;
    case U_FLOOR: return floor(x);
    case U_CEIL: return ceil(x);
    case U_ROUND: return rint(x);  // round half to even in the default rounding mode
    case U_SIN: return sin(x);
    case U_COS: return cos(x);
    case U_TAN: return tan(x);
    case U_ASIN: return asin(x);
    case U_ACOS: return acos(x);
    case U_ATAN: return atan(x);
    case U_SINH: return sinh(x);
    case U_COSH: return cosh(x);
    case U_ASINH: return asinh(x);
    case U_ACOSH: return acosh(x);
    case U_ATANH: return atanh(x);
    case U_TANH: return tanh(x);
    case U_ERF: return erf(x);
    case U_RELU: return fmax(x, 0.0f);
    case U_LEAKY_RELU: return x >= 0.0f ? x : alpha * x;
    case U_CLIP: return fmin(fmax(x, alpha), beta);
    case U_SIGMOID: return 1.0f / (1.0f + exp(-x));
    case U_HARD_SIGMOID: return clamp(alpha * x + beta, 0.0f, 1.0f);
    case U_HARD_SWISH: return x * clamp(x / 6.0f + 0.5f, 0.0f, 1.0f);
    case U_ELU: return x > 0.0f ? x : alpha * (exp(x) - 1.0f);
    case U_SOFTPLUS: return x > 20.0f ? x : log1p(exp(x));  // exp overflows long before the result does
    default: return NAN;
  }
}

inline float apply_binary(int fn, float a, float b) {
  switch (fn) {
    case B_ADD: return a + b;
    case B_SUB: return a - b;
    case B_MUL: return a * b;
    case B_DIV: return a / b;
    case B_POW: return pow(a, b);
    case B_MAX: return (isnan(a) || isnan(b)) ? NAN : fmax(a, b);
    case B_MIN: return (isnan(a) || isnan(b)) ? NAN : fmin(a, b);
    case B_FMOD: return fmod(a, b);
    case B_MOD: {  // sign of the divisor, as Python's %
      float r = fmod(a, b);
      if (r != 0.0f && ((r < 0.0f) != (b < 0.0f))) r += b;
      return r;
    }
    default: return NAN;
  }
}

inline uchar apply_compare(int fn, float a, float b) {
  switch (fn) {
    case B_EQ: return a == b;
    case B_NE: return a != b;
    case B_LT: return a < b;
    case B_LE: return a <= b;
    case B_GT: return a > b;
    case B_GE: return a >= b;
    default: return 0;
  }
}

// ---------------------------------------------------------------- data movement

// One RASTER region. p = [rank, size[rank], src_strides[rank], dst_strides[rank]]
#define DEFINE_RASTER(NAME, T)                                                                   \
  __kernel void raster_##NAME(__global const T* src, __global T* dst, __global const int* p,     \
                              int src_offset, int dst_offset, int total) {                       \
    int i = get_global_id(0);                                                                    \
    if (i >= total) return;                                                                      \
    const int rank = p[0];                                                                       \
    int s = src_offset, t = dst_offset;                                                          \
    for (int d = rank - 1; d >= 0; --d) {                                                        \
      const int c = i % p[1 + d];                                                                \
      i /= p[1 + d];                                                                             \
      s += c * p[1 + rank + d];                                                                  \
      t += c * p[1 + 2 * rank + d];                                                              \
    }                                                                                            \
    dst[t] = src[s];                                                                             \
  }                                                                                              \
  __kernel void fill_##NAME(__global T* dst, long bits, int n) {                                 \
    const int i = get_global_id(0);                                                              \
    if (i < n) dst[i] = (T)bits;                                                                 \
  }                                                                                              \
  __kernel void select_##NAME(__global const uchar* cond, __global const T* a, __global const T* b, \
                              __global T* y, __global const int* p, int n) {                     \
    const int i = get_global_id(0);                                                              \
    if (i >= n) return;                                                                          \
    const int3 o = broadcast_offsets(p, 3, i);                                                   \
    y[i] = cond[o.x] ? a[o.y] : b[o.z];                                                          \
  }

DEFINE_RASTER(b8, uchar)
DEFINE_RASTER(b16, ushort)
DEFINE_RASTER(b32, uint)
DEFINE_RASTER(b64, ulong)

// Duplicate a buffer (a segment output listed twice, or an input/constant returned as output).
__kernel void copy_bytes(__global const uchar* src, __global uchar* dst, int n) {
  const int i = get_global_id(0);
  if (i < n) dst[i] = src[i];
}

// ---------------------------------------------------------------- elementwise

// Elementwise kernels are instantiated per function (FOR_EACH_* lists come from the loader), so the
// function is a compile-time constant and the compiler vectorises the body instead of branching
// on every element.
#define DEFINE_UNARY(NAME)                                                                       \
  __kernel void unary_##NAME(__global const float* x, __global float* y, float alpha, float beta, int n) { \
    const int i = get_global_id(0);                                                              \
    if (i < n) y[i] = apply_unary(U_##NAME, x[i], alpha, beta);                                  \
  }
FOR_EACH_UNARY(DEFINE_UNARY)

#define DEFINE_BINARY(NAME)                                                                      \
  __kernel void binary_##NAME(__global const float* a, __global const float* b, __global float* y, \
                              __global const int* p, int n) {                                    \
    const int i = get_global_id(0);                                                              \
    if (i >= n) return;                                                                          \
    const int3 o = broadcast_offsets(p, 2, i);                                                   \
    y[i] = apply_binary(B_##NAME, a[o.x], b[o.y]);                                               \
  }
FOR_EACH_BINARY(DEFINE_BINARY)

#define DEFINE_COMPARE(NAME)                                                                     \
  __kernel void compare_##NAME(__global const float* a, __global const float* b, __global uchar* y, \
                               __global const int* p, int n) {                                   \
    const int i = get_global_id(0);                                                              \
    if (i >= n) return;                                                                          \
    const int3 o = broadcast_offsets(p, 2, i);                                                   \
    y[i] = apply_compare(B_##NAME, a[o.x], b[o.y]);                                              \
  }
FOR_EACH_COMPARE(DEFINE_COMPARE)

// Integer arithmetic follows the reference backend (NumPy with guards): +, -, * wrap around
// (computed unsigned, where overflow is defined); DIV truncates toward zero; MOD takes the sign of
// the divisor and FMOD that of the dividend; a zero divisor gives 0 (no trap, unlike x86 idiv); POW
// with a negative exponent truncates 1 / a^|b| toward zero; shifts by a count outside [0, bits)
// give what shifting one bit at a time would (0, or -1 for SHR of a negative value).
#define DEFINE_INT_BINARY_FN(TN, T, U, BITS)                                                     \
  inline T ibinary_##TN(int fn, T a, T b) {                                                      \
    switch (fn) {                                                                                \
      case B_ADD: return (T)((U)a + (U)b);                                                       \
      case B_SUB: return (T)((U)a - (U)b);                                                       \
      case B_MUL: return (T)((U)a * (U)b);                                                       \
      case B_DIV:                                                                                \
        if (b == 0) return 0;                                                                    \
        if (b == -1) return (T)((U)0 - (U)a); /* the one quotient that overflows */              \
        return a / b;                                                                            \
      case B_MOD: {                                                                              \
        if (b == 0 || b == -1) return 0;                                                         \
        T r = a % b;                                                                             \
        if (r != 0 && ((r < 0) != (b < 0))) r += b;                                              \
        return r;                                                                                \
      }                                                                                          \
      case B_FMOD: return (b == 0 || b == -1) ? 0 : a % b;                                       \
      case B_POW: {                                                                              \
        if (b < 0) return a == 1 ? 1 : (a == -1 ? ((b & 1) ? -1 : 1) : 0);                      \
        U acc = 1, base = (U)a;                                                                  \
        for (T e = b; e > 0; e >>= 1) {                                                          \
          if (e & 1) acc *= base;                                                                \
          base *= base;                                                                          \
        }                                                                                        \
        return (T)acc;                                                                           \
      }                                                                                          \
      case B_MAX: return a > b ? a : b;                                                          \
      case B_MIN: return a < b ? a : b;                                                          \
      case B_BIT_AND: return a & b;                                                              \
      case B_BIT_OR: return a | b;                                                               \
      case B_BIT_XOR: return a ^ b;                                                              \
      case B_SHL: return (b < 0 || b >= BITS) ? 0 : (T)((U)a << b);                             \
      case B_SHR: return (b < 0 || b >= BITS) ? (a < 0 ? -1 : 0) : a >> b;                      \
      default: return 0;                                                                         \
    }                                                                                            \
  }
DEFINE_INT_BINARY_FN(i32, int, uint, 32)
DEFINE_INT_BINARY_FN(i64, long, ulong, 64)

#define DEFINE_INT_BINARY(TN, T, NAME)                                                           \
  __kernel void binary_##TN##_##NAME(__global const T* a, __global const T* b, __global T* y,    \
                                     __global const int* p, int n) {                             \
    const int i = get_global_id(0);                                                              \
    if (i >= n) return;                                                                          \
    const int3 o = broadcast_offsets(p, 2, i);                                                   \
    y[i] = ibinary_##TN(B_##NAME, a[o.x], b[o.y]);                                               \
  }
#define DEFINE_INT_BINARY_i32(NAME) DEFINE_INT_BINARY(i32, int, NAME)
#define DEFINE_INT_BINARY_i64(NAME) DEFINE_INT_BINARY(i64, long, NAME)
FOR_EACH_INT_BINARY(DEFINE_INT_BINARY_i32)
FOR_EACH_INT_BINARY(DEFINE_INT_BINARY_i64)

// Comparisons of integers and bools (float32 has the compare_<fn> kernels above).
#define DEFINE_TYPED_COMPARE(TN, T, NAME)                                                        \
  __kernel void compare_##TN##_##NAME(__global const T* a, __global const T* b, __global uchar* y, \
                                      __global const int* p, int n) {                            \
    const int i = get_global_id(0);                                                              \
    if (i >= n) return;                                                                          \
    const int3 o = broadcast_offsets(p, 2, i);                                                   \
    const T x = a[o.x], z = b[o.y];                                                              \
    y[i] = B_##NAME == B_EQ ? x == z : B_##NAME == B_NE ? x != z : B_##NAME == B_LT ? x < z     \
         : B_##NAME == B_LE ? x <= z : B_##NAME == B_GT ? x > z : x >= z;                        \
  }
#define DEFINE_COMPARE_i32(NAME) DEFINE_TYPED_COMPARE(i32, int, NAME)
#define DEFINE_COMPARE_i64(NAME) DEFINE_TYPED_COMPARE(i64, long, NAME)
#define DEFINE_COMPARE_b8(NAME) DEFINE_TYPED_COMPARE(b8, uchar, NAME)
FOR_EACH_COMPARE(DEFINE_COMPARE_i32)
FOR_EACH_COMPARE(DEFINE_COMPARE_i64)
FOR_EACH_COMPARE(DEFINE_COMPARE_b8)

// Logic on bools (any non-zero byte is true).
#define DEFINE_LOGIC(NAME, EXPR)                                                                 \
  __kernel void logic_##NAME(__global const uchar* a, __global const uchar* b, __global uchar* y, \
                             __global const int* p, int n) {                                     \
    const int i = get_global_id(0);                                                              \
    if (i >= n) return;                                                                          \
    const int3 o = broadcast_offsets(p, 2, i);                                                   \
    const bool x = a[o.x] != 0, z = b[o.y] != 0;                                                 \
    y[i] = (EXPR);                                                                               \
  }
DEFINE_LOGIC(AND, x && z)
DEFINE_LOGIC(OR, x || z)
DEFINE_LOGIC(XOR, x != z)

__kernel void unary_bool_NOT(__global const uchar* x, __global uchar* y, int n) {
  const int i = get_global_id(0);
  if (i < n) y[i] = x[i] == 0;
}

// CAST between float32 / int32 / int64 / bool. Float to int truncates toward zero as C does;
// anything to bool is "!= 0".
#define DEFINE_CAST(SN, ST, DN, DT)                                                              \
  __kernel void cast_##SN##_##DN(__global const ST* x, __global DT* y, int n) {                  \
    const int i = get_global_id(0);                                                              \
    if (i < n) y[i] = (DT)x[i];                                                                  \
  }
#define DEFINE_CAST_TO_BOOL(SN, ST)                                                              \
  __kernel void cast_##SN##_bool(__global const ST* x, __global uchar* y, int n) {               \
    const int i = get_global_id(0);                                                              \
    if (i < n) y[i] = x[i] != (ST)0;                                                             \
  }
#define DEFINE_CASTS_FROM(SN, ST)                                                                \
  DEFINE_CAST(SN, ST, float32, float)                                                            \
  DEFINE_CAST(SN, ST, int32, int)                                                                \
  DEFINE_CAST(SN, ST, int64, long)                                                               \
  DEFINE_CAST_TO_BOOL(SN, ST)

DEFINE_CASTS_FROM(float32, float)
DEFINE_CASTS_FROM(int32, int)
DEFINE_CASTS_FROM(int64, long)
DEFINE_CASTS_FROM(bool, uchar)

// ---------------------------------------------------------------- reductions

// One work-item per output element, a serial loop over the reduced elements.
// p = [nk, nr, count, kept_shape[nk], kept_strides[nk], red_shape[nr], red_strides[nr]]
__kernel void reduce_f32(__global const float* x, __global float* y, __global const int* p, int fn, int n) {
  int o = get_global_id(0);
  if (o >= n) return;
  const int nk = p[0], nr = p[1], count = p[2];
  __global const int* ks = p + 3;
  __global const int* kst = ks + nk;
  __global const int* rs = kst + nk;
  __global const int* rst = rs + nr;
  int base = 0, rem = o;
  for (int d = nk - 1; d >= 0; --d) {
    base += (rem % ks[d]) * kst[d];
    rem /= ks[d];
  }
  float acc = (fn == R_MAX) ? -INFINITY : (fn == R_MIN) ? INFINITY : (fn == R_PROD) ? 1.0f : 0.0f;
  for (int j = 0; j < count; ++j) {
    int off = base, r = j;
    for (int d = nr - 1; d >= 0; --d) {
      off += (r % rs[d]) * rst[d];
      r /= rs[d];
    }
    const float v = x[off];
    if (fn == R_MAX) acc = (isnan(v) || isnan(acc)) ? NAN : fmax(acc, v);
    else if (fn == R_MIN) acc = (isnan(v) || isnan(acc)) ? NAN : fmin(acc, v);
    else if (fn == R_PROD) acc *= v;
    else acc += v;
  }
  if (fn == R_MEAN) acc /= (float)count;
  y[o] = acc;
}

// ARG_REDUCE, CUMULATIVE and TOPK see the input as [outer, dim, inner] and give one work-item to
// each (outer, inner) line; lines are short in practice and this needs no local memory.

// Index (int64) of the largest / smallest element of a line. A NaN wins, as in NumPy; ties go to
// the first index, or the last with select_last.
__kernel void arg_reduce_f32(__global const float* x, __global long* y, int dim, int inner, int largest,
                             int select_last, int n) {
  const int i = get_global_id(0);
  if (i >= n) return;
  __global const float* line = x + (i / inner) * dim * inner + i % inner;
  float best = line[0];
  int at = 0;
  for (int j = 1; j < dim; ++j) {
    const float v = line[j * inner];
    if (isnan(best)) break;
    const bool better = isnan(v) || (largest ? v > best : v < best) || (select_last && v == best);
    if (better) {
      best = v;
      at = j;
    }
  }
  y[i] = at;
}

// Running sum of a line, optionally exclusive (each element sees only its predecessors) and/or
// reversed (accumulating from the end).
__kernel void cumulative_f32(__global const float* x, __global float* y, int dim, int inner, int exclusive,
                             int reverse, int n) {
  const int i = get_global_id(0);
  if (i >= n) return;
  const int base = (i / inner) * dim * inner + i % inner;
  float acc = 0.0f;
  for (int t = 0; t < dim; ++t) {
    const int at = base + (reverse ? dim - 1 - t : t) * inner;
    const float v = x[at];
    if (exclusive) {
      y[at] = acc;
      acc += v;
    } else {
      acc += v;
      y[at] = acc;
    }
  }
}

// True when (va, ia) comes before (vb, ib) in TopK order: better value first, ties by lower index.
inline bool topk_before(float va, int ia, float vb, int ib, int largest) {
  if (va == vb) return ia < ib;
  return largest ? va > vb : va < vb;
}

// The k first elements of a line in TopK order, by repeated selection: the j-th pick is the first
// element (in that order) after the (j-1)-th, so no scratch memory is needed. O(k * dim) per line.
__kernel void topk_f32(__global const float* x, __global float* values, __global long* indices, int dim,
                       int inner, int k, int largest, int n) {
  const int i = get_global_id(0);
  if (i >= n) return;
  const int o = i / inner, r = i % inner;
  __global const float* line = x + o * dim * inner + r;
  float prev_v = 0.0f;
  int prev_i = -1;
  for (int j = 0; j < k; ++j) {
    int pick = -1;
    float pick_v = 0.0f;
    for (int t = 0; t < dim; ++t) {
      const float v = line[t * inner];
      if (prev_i >= 0 && !topk_before(prev_v, prev_i, v, t, largest)) continue;
      if (pick < 0 || topk_before(v, t, pick_v, pick, largest)) {
        pick = t;
        pick_v = v;
      }
    }
    values[(o * k + j) * inner + r] = pick_v;
    indices[(o * k + j) * inner + r] = pick;
    prev_v = pick_v;
    prev_i = pick;
  }
}

// ---------------------------------------------------------------- dense

#define TILE 16

// Batched C = act(A B + bias), tiled through local memory. Work: (ceil16(N), ceil16(M), batch).
// offs = [a_off[batch], b_off[batch], bias_off[batch]]; element strides say how A[m,k], B[k,n] and
// bias[m,n] are addressed, which covers transposes and broadcasting without copies.
__kernel __attribute__((reqd_work_group_size(TILE, TILE, 1)))
void matmul_f32(__global const float* A, __global const float* B, __global const float* bias,
                __global float* C, __global const int* offs, int M, int N, int K, int batch,
                int sam, int sak, int sbk, int sbn, int has_bias, int bsm, int bsn,
                int act, float alpha, float beta) {
  __local float As[TILE][TILE];
  __local float Bs[TILE][TILE];
  const int n = get_global_id(0), m = get_global_id(1), z = get_global_id(2);
  const int ln = get_local_id(0), lm = get_local_id(1);
  const int aoff = offs[z], boff = offs[batch + z];
  float acc = 0.0f;
  for (int k0 = 0; k0 < K; k0 += TILE) {
    const int ka = k0 + ln, kb = k0 + lm;
    As[lm][ln] = (m < M && ka < K) ? A[aoff + m * sam + ka * sak] : 0.0f;
    Bs[lm][ln] = (kb < K && n < N) ? B[boff + kb * sbk + n * sbn] : 0.0f;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = 0; k < TILE; ++k) acc = fma(As[lm][k], Bs[k][ln], acc);
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  if (m >= M || n >= N) return;
  if (has_bias) acc += bias[offs[2 * batch + z] + m * bsm + n * bsn];
  C[(z * M + m) * N + n] = apply_unary(act, acc, alpha, beta);
}

// Direct convolution, one work-item per output element (n, o, oy, ox) over a flat range.
// p = [N, C, H, W, O, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, groups, has_bias, has_residual, act]
__kernel void conv2d_f32(__global const float* x, __global const float* w, __global const float* bias,
                         __global const float* res, __global float* y, __global const int* p,
                         float alpha, float beta, int total) {
  const int i = get_global_id(0);
  if (i >= total) return;
  const int C = p[1], H = p[2], W = p[3], O = p[4], OH = p[5], OW = p[6], KH = p[7], KW = p[8];
  const int SH = p[9], SW = p[10], PT = p[11], PL = p[12], DH = p[13], DW = p[14], G = p[15];
  const int ox = i % OW, oy = (i / OW) % OH, o = (i / (OW * OH)) % O, nb = i / (OW * OH * O);
  const int cg = C / G, og = O / G, g = o / og;
  float acc = 0.0f;
  for (int c = 0; c < cg; ++c) {
    __global const float* xc = x + ((nb * C + g * cg + c) * H) * W;
    __global const float* wc = w + ((o * cg + c) * KH) * KW;
    for (int ky = 0; ky < KH; ++ky) {
      const int iy = oy * SH - PT + ky * DH;
      if (iy < 0 || iy >= H) continue;
      for (int kx = 0; kx < KW; ++kx) {
        const int ix = ox * SW - PL + kx * DW;
        if (ix >= 0 && ix < W) acc = fma(xc[iy * W + ix], wc[ky * KW + kx], acc);
      }
    }
  }
  if (p[16]) acc += bias[o];
  if (p[17]) acc += res[i];
  y[i] = apply_unary(p[18], acc, alpha, beta);
}

// p = [H, W, OH, OW, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, is_avg, count_include_pad]
__kernel void pool2d_f32(__global const float* x, __global float* y, __global const int* p, int total) {
  const int i = get_global_id(0);
  if (i >= total) return;
  const int H = p[0], W = p[1], OH = p[2], OW = p[3], KH = p[4], KW = p[5];
  const int SH = p[6], SW = p[7], PT = p[8], PL = p[9], PB = p[10], PR = p[11], DH = p[12], DW = p[13];
  const int is_avg = p[14], include_pad = p[15];
  const int ox = i % OW, oy = (i / OW) % OH, nc = i / (OW * OH);
  __global const float* xc = x + nc * H * W;
  float acc = is_avg ? 0.0f : -INFINITY;
  int count = 0, padded = 0;
  for (int ky = 0; ky < KH; ++ky) {
    const int iy = oy * SH - PT + ky * DH;
    for (int kx = 0; kx < KW; ++kx) {
      const int ix = ox * SW - PL + kx * DW;
      if (iy < -PT || iy >= H + PB || ix < -PL || ix >= W + PR) continue;  // outside even the padding
      ++padded;
      if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
      const float v = xc[iy * W + ix];
      if (is_avg) acc += v;
      else acc = (isnan(v) || isnan(acc)) ? NAN : fmax(acc, v);
      ++count;
    }
  }
  if (is_avg) acc /= (float)(include_pad ? padded : count);
  y[i] = acc;
}

// ---------------------------------------------------------------- indexing

// out[o, j, r] = data[o, idx[j] (negative from the end), r]; a bad index sets *flag and writes 0.
#define DEFINE_GATHER(NAME, T, IN, IT)                                                           \
  __kernel void gather_##NAME##_##IN(__global const T* data, __global const IT* idx, __global T* y, \
                                     __global int* flag, int axis_dim, int n_idx, int inner,     \
                                     int total, int launch) {                                   \
    const int i = get_global_id(0);                                                              \
    if (i >= total) return;                                                                      \
    const int r = i % inner, j = (i / inner) % n_idx, o = i / (inner * n_idx);                   \
    long k = (long)idx[j];                                                                       \
    if (k < 0) k += axis_dim;                                                                    \
    if (k < 0 || k >= axis_dim) {                                                                \
      *flag = launch;                                                                            \
      y[i] = (T)0;                                                                               \
      return;                                                                                    \
    }                                                                                            \
    y[i] = data[((long)o * axis_dim + k) * inner + r];                                           \
  }
DEFINE_GATHER(b8, uchar, int32, int)
DEFINE_GATHER(b8, uchar, int64, long)
DEFINE_GATHER(b16, ushort, int32, int)
DEFINE_GATHER(b16, ushort, int64, long)
DEFINE_GATHER(b32, uint, int32, int)
DEFINE_GATHER(b32, uint, int64, long)
DEFINE_GATHER(b64, ulong, int32, int)
DEFINE_GATHER(b64, ulong, int64, long)

// SCATTER after the data has been copied to y: one work-item per inner element walks the updates
// in order, so duplicate rows combine exactly as a serial loop would. A bad index sets *flag.
#define DEFINE_SCATTER(TN, T)                                                                    \
  __kernel void scatter_##TN(__global const long* idx, __global const T* upd, __global T* y,     \
                             __global int* flag, int rows, int n_idx, int inner, int fn,         \
                             int launch) {                                                       \
    const int r = get_global_id(0);                                                              \
    if (r >= inner) return;                                                                      \
    for (int j = 0; j < n_idx; ++j) {                                                            \
      long k = idx[j];                                                                           \
      if (k < 0) k += rows;                                                                      \
      if (k < 0 || k >= rows) {                                                                  \
        *flag = launch;                                                                          \
        return;                                                                                  \
      }                                                                                          \
      __global T* dst = y + k * inner + r;                                                       \
      const T u = upd[(long)j * inner + r];                                                      \
      if (fn == B_ADD) *dst = *dst + u;                                                          \
      else if (fn == B_MUL) *dst = *dst * u;                                                     \
      else if (fn == B_MAX) *dst = *dst > u ? *dst : u;                                          \
      else if (fn == B_MIN) *dst = *dst < u ? *dst : u;                                          \
      else *dst = u;                                                                             \
    }                                                                                            \
  }
DEFINE_SCATTER(f32, float)
DEFINE_SCATTER(i32, int)
DEFINE_SCATTER(i64, long)

// OpenCL C kernels of the Walle opencl backend. The loader prepends the function codes
// (U_*, B_*, R_* #defines, generated from walle_core.ops) and the FOR_EACH_* lists of the
// functions the backend claims, so both sides share one source of truth; it then appends
// kernels_float.cl once per float storage type (float32, float16).
// Shapes arrive as int tables ("params") uploaded once at compile time; every index a model can
// influence at run time (GATHER indices) is checked here and reported through an error flag.

#define MAX_RANK 8
#define TILE 16  // matmul tile edge; must match TILE in lowering.py

// ---------------------------------------------------------------- float storage types

// Token pasting that expands its arguments first (CAT(unary_, FN) -> unary_f32).
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
// Name of a float kernel for the storage type FN being instantiated: KERNEL(reduce) -> reduce_f16.
#define KERNEL(base) CAT(base##_, FN)

// float32: plain loads and stores.
#define FT_f32 float
#define LD_f32(p, i) ((p)[i])
#define ST_f32(p, i, v) ((p)[i] = (v))
#define RND_f32(v) (v)

// float16 storage without cl_khr_fp16: half may only be pointed to, and vload_half /
// vstore_half_rte (OpenCL 1.2 core) convert to and from float; _rte rounds to nearest even, as
// NumPy and ONNX do, and keeps subnormals, infinities and NaN.
#define FT_f16 half
#define LD_f16(p, i) vload_half((i), (p))
#define ST_f16(p, i, v) vstore_half_rte((v), (i), (p))
#define RND_f16(v) round_to_half(v)

// v rounded to the nearest float16, as a float (the round trip goes through private memory).
inline float round_to_half(float v) {
  ushort bits;
  vstore_half_rte(v, 0, (__private half*)&bits);
  return vload_half(0, (__private const half*)&bits);
}

#define FT CAT(FT_, FN)
#define LD(p, i) CAT(LD_, FN)(p, i)
#define ST(p, i, v) CAT(ST_, FN)(p, i, v)
#define RND(v) CAT(RND_, FN)(v)

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
    // fmax / fmin / clamp return the other operand for a NaN; NumPy (and ONNX) keep the NaN
    case U_RELU: return isnan(x) ? x : fmax(x, 0.0f);
    case U_LEAKY_RELU: return x >= 0.0f ? x : alpha * x;
    case U_CLIP: return isnan(x) ? x : fmin(fmax(x, alpha), beta);
    case U_SIGMOID: return 1.0f / (1.0f + exp(-x));
    case U_HARD_SIGMOID: return isnan(x) ? x : clamp(alpha * x + beta, 0.0f, 1.0f);
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

// True when (va, ia) comes before (vb, ib) in TopK order: better value first, ties by lower index.
inline bool topk_before(float va, int ia, float vb, int ib, int largest) {
  if (va == vb) return ia < ib;
  return largest ? va > vb : va < vb;
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

// CAST between float32 / float16 / int32 / int64 / bool. Float to int truncates toward zero as C
// does; anything to bool is "!= 0"; to float16 goes through float and rounds to nearest even (exact
// for every int below 2^24, and anything at or above 65520 is infinite in float16 anyway).
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
#define DEFINE_CAST_TO_HALF(SN, ST)                                                              \
  __kernel void cast_##SN##_float16(__global const ST* x, __global half* y, int n) {             \
    const int i = get_global_id(0);                                                              \
    if (i < n) vstore_half_rte((float)x[i], i, y);                                               \
  }
#define DEFINE_CAST_FROM_HALF(DN, DT)                                                            \
  __kernel void cast_float16_##DN(__global const half* x, __global DT* y, int n) {               \
    const int i = get_global_id(0);                                                              \
    if (i < n) y[i] = (DT)vload_half(i, x);                                                      \
  }
#define DEFINE_CASTS_FROM(SN, ST)                                                                \
  DEFINE_CAST(SN, ST, float32, float)                                                            \
  DEFINE_CAST(SN, ST, int32, int)                                                                \
  DEFINE_CAST(SN, ST, int64, long)                                                               \
  DEFINE_CAST_TO_BOOL(SN, ST)                                                                    \
  DEFINE_CAST_TO_HALF(SN, ST)

DEFINE_CASTS_FROM(float32, float)
DEFINE_CASTS_FROM(int32, int)
DEFINE_CASTS_FROM(int64, long)
DEFINE_CASTS_FROM(bool, uchar)
DEFINE_CAST_FROM_HALF(float32, float)
DEFINE_CAST_FROM_HALF(int32, int)
DEFINE_CAST_FROM_HALF(int64, long)

__kernel void cast_float16_bool(__global const half* x, __global uchar* y, int n) {
  const int i = get_global_id(0);
  if (i < n) y[i] = vload_half(i, x) != 0.0f;  // NaN is true, as in NumPy
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

// Integer SCATTER (float is in kernels_float.cl), after the data has been copied to y: one
// work-item per inner element walks the updates in order, so duplicate rows combine exactly as a
// serial loop would. A bad index sets *flag.
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
DEFINE_SCATTER(i32, int)
DEFINE_SCATTER(i64, long)

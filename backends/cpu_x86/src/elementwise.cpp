#include "elementwise.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "transcendental.hpp"

namespace walle {

namespace {

// Elements per parallel task: large enough that scheduling costs are noise (~10 us of work).
constexpr int64_t kChunk = 1 << 15;

int64_t chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

template <class F>
void map_f32(const float* x, float* y, int64_t n, F f) {
  for (int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
}

}  // namespace

Broadcast Broadcast::make(const Shape& out, const std::vector<Shape>& ins) {
  require(static_cast<int>(ins.size()) <= kMaxBroadcastInputs, "too many broadcast inputs");
  require(out.size() <= static_cast<size_t>(kMaxRank), "rank exceeds 8");
  Broadcast g;
  g.inputs = static_cast<int>(ins.size());
  const int rank = static_cast<int>(out.size());
  // full-rank strides first, then merge
  int64_t st[kMaxBroadcastInputs][kMaxRank] = {};
  for (int i = 0; i < g.inputs; ++i) {
    const Shape& s = ins[i];
    require(s.size() <= out.size(), "input rank exceeds output rank");
    int64_t stride = 1;
    for (int d = rank - 1, e = static_cast<int>(s.size()) - 1; e >= 0; --d, --e) {
      require(s[e] == out[d] || s[e] == 1, "input shape does not broadcast to the output");
      st[i][d] = (s[e] == 1 && out[d] != 1) ? 0 : stride;
      stride *= s[e];
    }
  }
  g.total = numel(out);
  g.rank = 0;
  for (int d = 0; d < rank; ++d) {
    if (out[d] == 1) continue;  // size-1 dims contribute nothing to any offset
    bool merge = g.rank > 0;
    for (int i = 0; i < g.inputs && merge; ++i) merge = st[i][d] * out[d] == g.strides[i][g.rank - 1] ||
                                                        (st[i][d] == 0 && g.strides[i][g.rank - 1] == 0);
    if (merge) {
      g.shape[g.rank - 1] *= out[d];
      for (int i = 0; i < g.inputs; ++i) g.strides[i][g.rank - 1] = st[i][d];
    } else {
      g.shape[g.rank] = out[d];
      for (int i = 0; i < g.inputs; ++i) g.strides[i][g.rank] = st[i][d];
      ++g.rank;
    }
  }
  if (g.rank == 0) {
    g.rank = 1;
    g.shape[0] = 1;
    for (int i = 0; i < g.inputs; ++i) g.strides[i][0] = 0;
  }
  return g;
}

// ----------------------------------------------------------------------------------- unary

void unary_f32(const Act& act, const float* x, float* y, int64_t n, Isa isa) {
  if (isa != Isa::kPortable && transcendental_avx2(act.fn, x, y, n)) return;
  const float alpha = act.alpha, beta = act.beta;
  switch (act.fn) {
    case UnaryFn::kIdentity: if (x != y) std::memmove(y, x, n * sizeof(float)); return;
    case UnaryFn::kNeg: return map_f32(x, y, n, [](float v) { return -v; });
    case UnaryFn::kAbs: return map_f32(x, y, n, [](float v) { return std::fabs(v); });
    case UnaryFn::kSign:
      return map_f32(x, y, n, [](float v) { return v > 0.f ? 1.f : (v < 0.f ? -1.f : v); });
    case UnaryFn::kExp: return map_f32(x, y, n, [](float v) { return std::exp(v); });
    case UnaryFn::kLog: return map_f32(x, y, n, [](float v) { return std::log(v); });
    case UnaryFn::kSqrt: return map_f32(x, y, n, [](float v) { return std::sqrt(v); });
    case UnaryFn::kRsqrt: return map_f32(x, y, n, [](float v) { return 1.f / std::sqrt(v); });
    case UnaryFn::kReciprocal: return map_f32(x, y, n, [](float v) { return 1.f / v; });
    case UnaryFn::kFloor: return map_f32(x, y, n, [](float v) { return std::floor(v); });
    case UnaryFn::kCeil: return map_f32(x, y, n, [](float v) { return std::ceil(v); });
    // nearbyint rounds in the default mode, round-half-to-even, as ONNX Round requires
    case UnaryFn::kRound: return map_f32(x, y, n, [](float v) { return std::nearbyint(v); });
    case UnaryFn::kSin: return map_f32(x, y, n, [](float v) { return std::sin(v); });
    case UnaryFn::kCos: return map_f32(x, y, n, [](float v) { return std::cos(v); });
    case UnaryFn::kTan: return map_f32(x, y, n, [](float v) { return std::tan(v); });
    case UnaryFn::kAsin: return map_f32(x, y, n, [](float v) { return std::asin(v); });
    case UnaryFn::kAcos: return map_f32(x, y, n, [](float v) { return std::acos(v); });
    case UnaryFn::kAtan: return map_f32(x, y, n, [](float v) { return std::atan(v); });
    case UnaryFn::kSinh: return map_f32(x, y, n, [](float v) { return std::sinh(v); });
    case UnaryFn::kCosh: return map_f32(x, y, n, [](float v) { return std::cosh(v); });
    case UnaryFn::kAsinh: return map_f32(x, y, n, [](float v) { return std::asinh(v); });
    case UnaryFn::kAcosh: return map_f32(x, y, n, [](float v) { return std::acosh(v); });
    case UnaryFn::kAtanh: return map_f32(x, y, n, [](float v) { return std::atanh(v); });
    case UnaryFn::kTanh: return map_f32(x, y, n, [](float v) { return std::tanh(v); });
    case UnaryFn::kErf: return map_f32(x, y, n, [](float v) { return std::erf(v); });
    // `v < 0 ? 0 : v` rather than max(v, 0): NaN must propagate as in NumPy
    case UnaryFn::kRelu: return map_f32(x, y, n, [](float v) { return v < 0.f ? 0.f : v; });
    case UnaryFn::kLeakyRelu: return map_f32(x, y, n, [=](float v) { return v >= 0.f ? v : alpha * v; });
    case UnaryFn::kClip: return map_f32(x, y, n, [=](float v) { return std::min(std::max(v, alpha), beta); });
    // e^v / (1 + e^v) below 0, so results too small for 1 / (1 + e^-v) (an overflowed e^-v) keep
    // their value
    case UnaryFn::kSigmoid:
      return map_f32(x, y, n, [](float v) {
        const float e = std::exp(-std::fabs(v));
        return (v < 0.f ? e : 1.f) / (1.f + e);
      });
    case UnaryFn::kHardSigmoid:
      return map_f32(x, y, n, [=](float v) { return std::min(std::max(alpha * v + beta, 0.f), 1.f); });
    case UnaryFn::kHardSwish:
      return map_f32(x, y, n, [](float v) { return v * std::min(std::max(v / 6.f + 0.5f, 0.f), 1.f); });
    case UnaryFn::kElu: return map_f32(x, y, n, [=](float v) { return v > 0.f ? v : alpha * std::expm1(v); });
    // log(1 + exp(v)) without overflow for large v
    case UnaryFn::kSoftplus:
      return map_f32(x, y, n, [](float v) { return std::max(v, 0.f) + std::log1p(std::exp(-std::fabs(v))); });
    default: throw Error("unary function not implemented for float32");
  }
}

bool unary_supported(UnaryFn fn, DType dtype) {
  if (fn == UnaryFn::kNot) return dtype == DType::kBool;
  return dtype == DType::kF32 && static_cast<int>(fn) >= 0 && fn < UnaryFn::kCount;
}

void unary_op(const Act& act, DType dtype, const void* x, void* y, int64_t n, Isa isa, ThreadPool& pool) {
  if (act.fn == UnaryFn::kNot) {
    const auto* xb = static_cast<const uint8_t*>(x);
    auto* yb = static_cast<uint8_t*>(y);
    for (int64_t i = 0; i < n; ++i) yb[i] = xb[i] ? 0 : 1;
    return;
  }
  require(dtype == DType::kF32, "unary: only float32 is supported");
  const auto* xf = static_cast<const float*>(x);
  auto* yf = static_cast<float*>(y);
  pool.parallel_for(chunks(n), [&](int64_t t, int) {
    int64_t begin = t * kChunk;
    unary_f32(act, xf + begin, yf + begin, std::min(kChunk, n - begin), isa);
  });
}

// ---------------------------------------------------------------------------------- binary

namespace {

template <class T, class Y, class F>
void binary_walk(const Broadcast& g, const T* a, const T* b, Y* y, ThreadPool& pool, F f) {
  pool.parallel_for(chunks(g.total), [&](int64_t t, int) {
    int64_t begin = t * kChunk, end = std::min(g.total, begin + kChunk);
    g.walk(begin, end, [&](int64_t yo, const int64_t* off, int64_t n, const int64_t* inner) {
      const T* pa = a + off[0];
      const T* pb = b + off[1];
      Y* py = y + yo;
      if (inner[0] && inner[1]) {
        for (int64_t i = 0; i < n; ++i) py[i] = f(pa[i], pb[i]);
      } else if (inner[0]) {
        const T vb = *pb;
        for (int64_t i = 0; i < n; ++i) py[i] = f(pa[i], vb);
      } else if (inner[1]) {
        const T va = *pa;
        for (int64_t i = 0; i < n; ++i) py[i] = f(va, pb[i]);
      } else {
        const Y v = f(*pa, *pb);
        for (int64_t i = 0; i < n; ++i) py[i] = v;
      }
    });
  });
}

template <class T>
bool compare(BinaryFn fn, const Broadcast& g, const T* a, const T* b, uint8_t* y, ThreadPool& pool) {
  switch (fn) {
    case BinaryFn::kEq: binary_walk(g, a, b, y, pool, [](T p, T q) -> uint8_t { return p == q; }); return true;
    case BinaryFn::kNe: binary_walk(g, a, b, y, pool, [](T p, T q) -> uint8_t { return p != q; }); return true;
    case BinaryFn::kLt: binary_walk(g, a, b, y, pool, [](T p, T q) -> uint8_t { return p < q; }); return true;
    case BinaryFn::kLe: binary_walk(g, a, b, y, pool, [](T p, T q) -> uint8_t { return p <= q; }); return true;
    case BinaryFn::kGt: binary_walk(g, a, b, y, pool, [](T p, T q) -> uint8_t { return p > q; }); return true;
    case BinaryFn::kGe: binary_walk(g, a, b, y, pool, [](T p, T q) -> uint8_t { return p >= q; }); return true;
    default: return false;
  }
}

void binary_f32(BinaryFn fn, const Broadcast& g, const float* a, const float* b, void* out, ThreadPool& pool) {
  if (compare(fn, g, a, b, static_cast<uint8_t*>(out), pool)) return;
  float* y = static_cast<float*>(out);
  switch (fn) {
    case BinaryFn::kAdd: return binary_walk(g, a, b, y, pool, [](float p, float q) { return p + q; });
    case BinaryFn::kSub: return binary_walk(g, a, b, y, pool, [](float p, float q) { return p - q; });
    case BinaryFn::kMul: return binary_walk(g, a, b, y, pool, [](float p, float q) { return p * q; });
    case BinaryFn::kDiv: return binary_walk(g, a, b, y, pool, [](float p, float q) { return p / q; });
    case BinaryFn::kPow: return binary_walk(g, a, b, y, pool, [](float p, float q) { return std::pow(p, q); });
    // NaN in either operand propagates, as np.maximum / np.minimum
    case BinaryFn::kMax:
      return binary_walk(g, a, b, y, pool, [](float p, float q) { return (p > q || p != p) ? p : q; });
    case BinaryFn::kMin:
      return binary_walk(g, a, b, y, pool, [](float p, float q) { return (p < q || p != p) ? p : q; });
    // the remainder takes the divisor's sign (np.mod)
    case BinaryFn::kMod:
      return binary_walk(g, a, b, y, pool, [](float p, float q) {
        float r = std::fmod(p, q);
        if (r != 0.f) return ((r < 0.f) != (q < 0.f)) ? r + q : r;
        return std::copysign(0.f, q);
      });
    case BinaryFn::kFmod: return binary_walk(g, a, b, y, pool, [](float p, float q) { return std::fmod(p, q); });
    default: throw Error("binary function not implemented for float32");
  }
}

// Integer arithmetic wraps (computed unsigned); division by zero gives 0 like the reference
// backend; INT_MIN / -1 wraps instead of trapping.
template <class T>
void binary_int(BinaryFn fn, const Broadcast& g, const T* a, const T* b, void* out, ThreadPool& pool) {
  using U = std::make_unsigned_t<T>;
  constexpr int64_t kBits = sizeof(T) * 8;
  if (compare(fn, g, a, b, static_cast<uint8_t*>(out), pool)) return;
  T* y = static_cast<T*>(out);
  switch (fn) {
    case BinaryFn::kAdd:
      return binary_walk(g, a, b, y, pool, [](T p, T q) { return static_cast<T>(static_cast<U>(p) + static_cast<U>(q)); });
    case BinaryFn::kSub:
      return binary_walk(g, a, b, y, pool, [](T p, T q) { return static_cast<T>(static_cast<U>(p) - static_cast<U>(q)); });
    case BinaryFn::kMul:
      return binary_walk(g, a, b, y, pool, [](T p, T q) { return static_cast<T>(static_cast<U>(p) * static_cast<U>(q)); });
    case BinaryFn::kDiv:  // truncation toward zero
      return binary_walk(g, a, b, y, pool, [](T p, T q) -> T {
        if (q == 0) return 0;
        if (q == -1) return static_cast<T>(U(0) - static_cast<U>(p));
        return p / q;
      });
    case BinaryFn::kMod:  // sign of the divisor
      return binary_walk(g, a, b, y, pool, [](T p, T q) -> T {
        if (q == 0 || q == -1) return 0;
        T r = p % q;
        return (r != 0 && ((r < 0) != (q < 0))) ? static_cast<T>(r + q) : r;
      });
    case BinaryFn::kFmod:  // sign of the dividend
      return binary_walk(g, a, b, y, pool, [](T p, T q) -> T { return (q == 0 || q == -1) ? 0 : p % q; });
    case BinaryFn::kMax: return binary_walk(g, a, b, y, pool, [](T p, T q) { return p > q ? p : q; });
    case BinaryFn::kMin: return binary_walk(g, a, b, y, pool, [](T p, T q) { return p < q ? p : q; });
    case BinaryFn::kBitAnd: return binary_walk(g, a, b, y, pool, [](T p, T q) -> T { return p & q; });
    case BinaryFn::kBitOr: return binary_walk(g, a, b, y, pool, [](T p, T q) -> T { return p | q; });
    case BinaryFn::kBitXor: return binary_walk(g, a, b, y, pool, [](T p, T q) -> T { return p ^ q; });
    // shifts by negative or >= width amounts give 0 (or -1 for an arithmetic right shift of a
    // negative value), as NumPy defines them
    case BinaryFn::kShl:
      return binary_walk(g, a, b, y, pool, [](T p, T q) -> T {
        return (q >= 0 && q < kBits) ? static_cast<T>(static_cast<U>(p) << q) : 0;
      });
    case BinaryFn::kShr:
      return binary_walk(g, a, b, y, pool, [](T p, T q) -> T {
        return (q >= 0 && q < kBits) ? static_cast<T>(p >> q) : static_cast<T>(p < 0 ? -1 : 0);
      });
    default: throw Error("binary function not implemented for integers");
  }
}

void binary_bool(BinaryFn fn, const Broadcast& g, const uint8_t* a, const uint8_t* b, uint8_t* y,
                 ThreadPool& pool) {
  switch (fn) {
    case BinaryFn::kAnd: return binary_walk(g, a, b, y, pool, [](uint8_t p, uint8_t q) -> uint8_t { return p && q; });
    case BinaryFn::kOr: return binary_walk(g, a, b, y, pool, [](uint8_t p, uint8_t q) -> uint8_t { return p || q; });
    case BinaryFn::kXor:
      return binary_walk(g, a, b, y, pool, [](uint8_t p, uint8_t q) -> uint8_t { return (p != 0) != (q != 0); });
    case BinaryFn::kEq:
      return binary_walk(g, a, b, y, pool, [](uint8_t p, uint8_t q) -> uint8_t { return (p != 0) == (q != 0); });
    case BinaryFn::kNe:
      return binary_walk(g, a, b, y, pool, [](uint8_t p, uint8_t q) -> uint8_t { return (p != 0) != (q != 0); });
    default: throw Error("binary function not implemented for bool");
  }
}

bool is_comparison(BinaryFn fn) { return fn >= BinaryFn::kEq && fn <= BinaryFn::kGe; }

}  // namespace

bool binary_supported(BinaryFn fn, DType dtype) {
  switch (dtype) {
    case DType::kF32: return fn <= BinaryFn::kFmod || is_comparison(fn);
    case DType::kI32:
    case DType::kI64: return fn != BinaryFn::kPow && fn != BinaryFn::kAnd && fn != BinaryFn::kOr &&
                             fn != BinaryFn::kXor && fn < BinaryFn::kCount;
    case DType::kBool: return fn == BinaryFn::kAnd || fn == BinaryFn::kOr || fn == BinaryFn::kXor ||
                              fn == BinaryFn::kEq || fn == BinaryFn::kNe;
    default: return false;
  }
}

void binary_op(BinaryFn fn, DType dtype, const Broadcast& g, const void* a, const void* b, void* y,
               ThreadPool& pool) {
  require(binary_supported(fn, dtype), "binary: function/dtype combination not supported");
  switch (dtype) {
    case DType::kF32:
      return binary_f32(fn, g, static_cast<const float*>(a), static_cast<const float*>(b), y, pool);
    case DType::kI32:
      return binary_int(fn, g, static_cast<const int32_t*>(a), static_cast<const int32_t*>(b), y, pool);
    case DType::kI64:
      return binary_int(fn, g, static_cast<const int64_t*>(a), static_cast<const int64_t*>(b), y, pool);
    default:
      return binary_bool(fn, g, static_cast<const uint8_t*>(a), static_cast<const uint8_t*>(b),
                         static_cast<uint8_t*>(y), pool);
  }
}

// ---------------------------------------------------------------------------------- select

namespace {

template <class T>
void select_typed(const Broadcast& g, const uint8_t* c, const T* a, const T* b, T* y, ThreadPool& pool) {
  pool.parallel_for(chunks(g.total), [&](int64_t t, int) {
    int64_t begin = t * kChunk, end = std::min(g.total, begin + kChunk);
    g.walk(begin, end, [&](int64_t yo, const int64_t* off, int64_t n, const int64_t* inner) {
      const uint8_t* pc = c + off[0];
      const T* pa = a + off[1];
      const T* pb = b + off[2];
      T* py = y + yo;
      for (int64_t i = 0; i < n; ++i) py[i] = pc[i * inner[0]] ? pa[i * inner[1]] : pb[i * inner[2]];
    });
  });
}

}  // namespace

void select_op(int itemsize, const Broadcast& g, const uint8_t* cond, const void* a, const void* b, void* y,
               ThreadPool& pool) {
  switch (itemsize) {
    case 1: return select_typed(g, cond, static_cast<const uint8_t*>(a), static_cast<const uint8_t*>(b),
                                static_cast<uint8_t*>(y), pool);
    case 2: return select_typed(g, cond, static_cast<const uint16_t*>(a), static_cast<const uint16_t*>(b),
                                static_cast<uint16_t*>(y), pool);
    case 4: return select_typed(g, cond, static_cast<const uint32_t*>(a), static_cast<const uint32_t*>(b),
                                static_cast<uint32_t*>(y), pool);
    case 8: return select_typed(g, cond, static_cast<const uint64_t*>(a), static_cast<const uint64_t*>(b),
                                static_cast<uint64_t*>(y), pool);
    default: throw Error("select: element size must be 1, 2, 4 or 8 bytes");
  }
}

// ------------------------------------------------------------------------------------ cast

namespace {

// Float to integer without undefined behaviour: NaN and out-of-range values give the minimum
// value, which is what x86's truncating conversion (and so NumPy on x86) produces.
template <class I>
I float_to_int(float v) {
  constexpr double lo = static_cast<double>(std::numeric_limits<I>::min());
  constexpr double hi = -lo;  // 2^(bits-1), exclusive
  return (v >= lo && v < hi) ? static_cast<I>(v) : std::numeric_limits<I>::min();
}

template <class From, class To>
To convert(From v) {
  if constexpr (std::is_same_v<To, bool>) {
    return v != From(0);
  } else if constexpr (std::is_floating_point_v<From> && std::is_integral_v<To>) {
    if constexpr (sizeof(To) >= 4) return float_to_int<To>(v);
    else return static_cast<To>(float_to_int<int32_t>(v));  // NumPy converts via int32, then wraps
  } else {
    return static_cast<To>(v);  // integer narrowing wraps (two's complement)
  }
}

template <class From, class To>
void cast_typed(const void* x, void* y, int64_t n) {
  To* dst = static_cast<To*>(y);
  if constexpr (std::is_same_v<From, bool>) {  // read bytes: any non-zero byte is true
    const uint8_t* src = static_cast<const uint8_t*>(x);
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<To>(src[i] != 0);
  } else {
    const From* src = static_cast<const From*>(x);
    for (int64_t i = 0; i < n; ++i) dst[i] = convert<From, To>(src[i]);
  }
}

template <class From>
void cast_from(DType to, const void* x, void* y, int64_t n) {
  switch (to) {
    case DType::kF32: return cast_typed<From, float>(x, y, n);
    case DType::kI32: return cast_typed<From, int32_t>(x, y, n);
    case DType::kI64: return cast_typed<From, int64_t>(x, y, n);
    case DType::kBool: return cast_typed<From, bool>(x, y, n);
    case DType::kU8: return cast_typed<From, uint8_t>(x, y, n);
    case DType::kI8: return cast_typed<From, int8_t>(x, y, n);
    default: throw Error("cast: unsupported target dtype");
  }
}

}  // namespace

bool cast_supported(DType from, DType to) { return from != DType::kOpaque && to != DType::kOpaque; }

void cast_op(DType from, DType to, const void* x, void* y, int64_t n) {
  switch (from) {
    case DType::kF32: return cast_from<float>(to, x, y, n);
    case DType::kI32: return cast_from<int32_t>(to, x, y, n);
    case DType::kI64: return cast_from<int64_t>(to, x, y, n);
    case DType::kBool: return cast_from<bool>(to, x, y, n);
    case DType::kU8: return cast_from<uint8_t>(to, x, y, n);
    case DType::kI8: return cast_from<int8_t>(to, x, y, n);
    default: throw Error("cast: unsupported source dtype");
  }
}

}  // namespace walle

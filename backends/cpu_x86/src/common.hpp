// Shared vocabulary of the cpu_x86 kernels: dtype and function codes, shapes, errors and a
// non-allocating callable reference. The code lists are exported to Python (bindings.cpp), which
// builds its encoding from them, so the two sides cannot drift apart silently.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace walle {

constexpr int kMaxRank = 8;

// Dtypes the kernels compute on. Any other dtype travels as kOpaque with its element size and is
// only moved (raster, gather, scatter-assign, select).
enum class DType : int { kF32 = 0, kI32, kI64, kBool, kU8, kI8, kOpaque };
inline const std::vector<std::string>& dtype_names() {
  static const std::vector<std::string> names = {"float32", "int32", "int64", "bool", "uint8", "int8"};
  return names;
}

// Same order as walle_core.ops.UnaryFn.
enum class UnaryFn : int {
  kIdentity, kNeg, kAbs, kSign, kExp, kLog, kSqrt, kRsqrt, kReciprocal, kFloor, kCeil, kRound,
  kSin, kCos, kTan, kAsin, kAcos, kAtan, kSinh, kCosh, kAsinh, kAcosh, kAtanh, kTanh, kErf, kNot,
  kRelu, kLeakyRelu, kClip, kSigmoid, kHardSigmoid, kHardSwish, kElu, kSoftplus, kCount
};
const std::vector<std::string>& unary_fn_names();

// Same order as walle_core.ops.BinaryFn.
enum class BinaryFn : int {
  kAdd, kSub, kMul, kDiv, kPow, kMax, kMin, kMod, kFmod, kEq, kNe, kLt, kLe, kGt, kGe, kAnd, kOr,
  kXor, kBitAnd, kBitOr, kBitXor, kShl, kShr, kCount
};
const std::vector<std::string>& binary_fn_names();

enum class ReduceFn : int { kSum, kMean, kMax, kMin, kProd, kCount };
const std::vector<std::string>& reduce_fn_names();

// Same order as walle_core.ops.Op.
enum class OpCode : int {
  kRaster, kUnary, kBinary, kSelect, kCast, kReduce, kArgReduce, kCumulative, kTopK, kMatMul,
  kConv2D, kPool2D, kGather, kScatter, kCount
};
const std::vector<std::string>& op_names();

// A user-caused failure (bad model, bad input). Bound to Python as ValueError.
class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& msg) : std::invalid_argument("[cpu_x86] " + msg) {}
};

// A run-time index out of range (gather/scatter). Bound to Python as IndexError.
class IndexError : public std::out_of_range {
 public:
  explicit IndexError(const std::string& msg) : std::out_of_range("[cpu_x86] " + msg) {}
};

// The caller's cancel flag was raised while a plan ran. Bound to Python as walle_cpu_x86's Cancelled.
class Cancelled : public std::runtime_error {
 public:
  explicit Cancelled(const std::string& msg) : std::runtime_error("[cpu_x86] " + msg) {}
};

// Set by another thread to stop a run; kernels poll it between blocks of work (relaxed loads:
// stopping a little later is fine, stopping never is not).
using CancelFlag = std::atomic<bool>;

inline bool is_cancelled(const CancelFlag* flag) { return flag && flag->load(std::memory_order_relaxed); }

inline void require(bool ok, const std::string& msg) {
  if (!ok) throw Error(msg);
}

using Shape = std::vector<int64_t>;

inline int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// Row-major element strides of a shape.
inline Shape row_strides(const Shape& s) {
  Shape st(s.size(), 1);
  for (int i = static_cast<int>(s.size()) - 2; i >= 0; --i) st[i] = st[i + 1] * s[i + 1];
  return st;
}

// A fused activation (any float UnaryFn) with its parameters.
struct Act {
  UnaryFn fn = UnaryFn::kIdentity;
  float alpha = 0.f;
  float beta = 0.f;
};

// A non-owning reference to a callable: lets kernels hand loop bodies to the thread pool without
// the heap allocation std::function may perform.
template <class Sig>
class FunctionRef;
template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, FunctionRef>>>
  FunctionRef(F&& f)  // NOLINT: implicit by design, like std::function
      : obj_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* o, Args... args) -> R { return (*static_cast<std::remove_reference_t<F>*>(o))(args...); }) {}
  R operator()(Args... args) const { return call_(obj_, args...); }

 private:
  void* obj_;
  R (*call_)(void*, Args...);
};

// The allocator behind AlignedBuffer (aligned.cpp): 64-byte aligned blocks; `bytes` is a
// multiple of 64. Blocks of kMappedBlockBytes or more come straight from the OS and go back to
// it when released: the C library would keep large freed blocks in its heap once its own
// threshold for that has grown, so weights packed one after another would leave their
// temporaries behind as resident memory.
constexpr size_t kMappedBlockBytes = size_t(1) << 20;
void* allocate_aligned(size_t bytes);
void release_aligned(void* p, size_t bytes) noexcept;

// Releases an AlignedBuffer block of `bytes` bytes; a borrowed block is left alone.
struct AlignedFree {
  size_t bytes = 0;
  bool owned = true;
  void operator()(unsigned char* p) const {
    if (owned) release_aligned(p, bytes);
  }
};

// 64-byte aligned, uninitialised storage (one cache line, one AVX-512 register).
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes) { resize(bytes); }
  void resize(size_t bytes) {
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = rounded ? allocate_aligned(rounded) : nullptr;
    data_ = std::unique_ptr<unsigned char, AlignedFree>(static_cast<unsigned char*>(p), AlignedFree{rounded});
    size_ = bytes;
  }
  // Views `bytes` bytes someone else owns and keeps alive for as long as this buffer (a saved
  // plan's packed weights, mapped read-only: a kernel must not write to such a buffer).
  void borrow(const unsigned char* p, size_t bytes) {
    data_ = std::unique_ptr<unsigned char, AlignedFree>(const_cast<unsigned char*>(p), AlignedFree{0, false});
    size_ = bytes;
  }
  unsigned char* data() const { return data_.get(); }
  size_t size() const { return size_; }
  template <class T>
  T* as() const { return reinterpret_cast<T*>(data_.get()); }

 private:
  std::unique_ptr<unsigned char, AlignedFree> data_;
  size_t size_ = 0;
};

}  // namespace walle

// A compiled segment: the tensor table, one kernel per op (weights already packed), and a pool
// of arenas so that concurrent runs never share intermediate memory and a warm plan allocates
// nothing per run.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"
#include "gemm.hpp"
#include "isa.hpp"
#include "threadpool.hpp"

namespace walle {

enum class TensorKind : int { kInput = 0, kOutput = 1, kArena = 2, kConstant = 3 };

struct TensorInfo {
  DType dtype = DType::kOpaque;
  int itemsize = 0;
  Shape shape;
  int64_t numel = 0;
  int64_t nbytes = 0;
  TensorKind kind = TensorKind::kArena;
  // input slot, output slot, constant index or arena byte offset, by kind
  int64_t where = 0;
  // An arena tensor its producer writes straight into its part of another arena tensor (a
  // concatenation's input, whose copy is left out): that tensor's id, else -1. The two share
  // bytes on purpose; validate_tables checks the part lies inside.
  int whole = -1;
};

// One op as encoded by the Python lowering: tensor ids and flat attribute vectors.
struct OpRecord {
  OpCode op = OpCode::kRaster;
  int index = 0;      // position in the segment, for messages
  std::string label;  // what the op was lowered from, for messages
  std::vector<int> inputs;
  std::vector<int> outputs;
  std::vector<int64_t> ints;
  std::vector<double> floats;
};

// What a kernel sees while it runs.
struct RunContext {
  void* const* ptrs;  // storage of every tensor, by id
  ThreadPool& pool;
  FunctionRef<float*(int)> scratch;  // this run's per-worker scratch
  // this op's workspace_bytes(), shared by all workers, 64-byte aligned; it may lie over bytes of
  // tensors no longer alive, so it starts with whatever they held
  float* workspace = nullptr;
  const CancelFlag* cancel = nullptr;  // when set, kernels skip their remaining blocks of work
};

class OpKernel {
 public:
  virtual ~OpKernel() = default;
  virtual void run(const RunContext& ctx) const = 0;
  // Per-worker scratch the kernel needs during run.
  virtual size_t scratch_bytes() const { return 0; }
  // One buffer per run shared by all workers, for intermediates a kernel builds cooperatively
  // (e.g. Winograd's transformed tiles); it is reused by every op, so it costs only the maximum.
  virtual size_t workspace_bytes() const { return 0; }
};

// A constant as the caller holds it. `reclaimable`: the bytes lie in a read-only shared mapping
// of a file, so their pages can be dropped after use and read back from the file if needed.
struct ConstantSource {
  const void* data;
  int64_t nbytes;
  bool reclaimable;
};

// One buffer a kernel derived from its constants at build time (packed or transformed weights),
// 64-byte aligned: as a saved plan provides it to the next one, or as a plan built it.
struct PackedSlot {
  const unsigned char* data = nullptr;
  size_t bytes = 0;
};

// One op's packed buffers, in the order its kernel asks for them (BuildContext::packed_buffer).
struct OpPacking {
  std::vector<PackedSlot> saved;  // from a saved plan: taken instead of packing afresh
  std::vector<PackedSlot> built;  // what this plan's kernel packed itself
  size_t taken = 0;               // slots asked for so far
};

// What a kernel builder sees: the record, the tensor table and the constants, with checked access.
class BuildContext {
 public:
  // released: tensor ids of constant inputs this op will not read at run time (release_constant)
  BuildContext(const OpRecord& rec, const std::vector<TensorInfo>& tensors,
               const std::vector<ConstantSource>& constants, const GemmBlocking& gemm, std::vector<int>& released,
               OpPacking& packing)
      : rec_(rec), tensors_(tensors), constants_(constants), gemm_(gemm), released_(released), packing_(packing) {}

  const OpRecord& rec() const { return rec_; }
  const GemmBlocking& gemm() const { return gemm_; }
  size_t num_inputs() const { return rec_.inputs.size(); }
  size_t num_outputs() const { return rec_.outputs.size(); }
  int input_id(size_t i) const;
  int output_id(size_t i) const;
  const TensorInfo& input(size_t i) const { return tensors_[input_id(i)]; }
  const TensorInfo& output(size_t i) const { return tensors_[output_id(i)]; }
  // Data of input i if it is a constant (known at compile time), else nullptr. Valid only while
  // the kernel is built: it is the caller's buffer, or an aligned copy of it when the caller's
  // buffer is not aligned to its element size (weights viewed straight out of a mapped model
  // file sit at any byte offset; kernels read them as typed pointers). A mapped original is let
  // go as soon as it is copied, so the copy does not add to the load's peak memory.
  const void* constant_input(size_t i) const;
  // Input i's bytes as the caller holds them, at any alignment (nullptr unless a constant), for
  // kernels that read them byte-wise (memcpy): no aligned copy is made.
  const void* constant_bytes(size_t i) const;
  // The kernel has taken what it needs from constant input i (e.g. packed it) and will not read
  // it at run time; a constant no op reads is then not kept by the plan (its pointer is null).
  void release_constant(size_t i) const;
  // Storage for the kernel's next buffer derived from its constants, of `bytes` bytes. Returns
  // true when `buf` now views that buffer as a saved plan built it (read-only: the kernel then
  // neither packs nor reads the constants it came from), false when `buf` is fresh memory for
  // the kernel to fill. A saved buffer of another size is an error.
  bool packed_buffer(AlignedBuffer& buf, size_t bytes) const;
  int64_t int_at(size_t i) const;
  double float_at(size_t i) const;
  // "op 3 (conv2d ...)": prefix of every message about this op.
  std::string where() const;
  // Throws Error(where() + ": " + msg) unless ok.
  void check(bool ok, const std::string& msg) const;
  void expect_arity(size_t lo, size_t hi, size_t outputs) const;

 private:
  const OpRecord& rec_;
  const std::vector<TensorInfo>& tensors_;
  const std::vector<ConstantSource>& constants_;
  const GemmBlocking& gemm_;
  std::vector<int>& released_;
  OpPacking& packing_;
  mutable std::vector<AlignedBuffer> aligned_copies_;  // this op's copies of misaligned constants
};

std::unique_ptr<OpKernel> build_kernel(const BuildContext& ctx);  // dispatch on the op code
std::unique_ptr<OpKernel> build_matmul(const BuildContext& ctx);
std::unique_ptr<OpKernel> build_conv2d(const BuildContext& ctx);
std::unique_ptr<OpKernel> build_gather(const BuildContext& ctx);
std::unique_ptr<OpKernel> build_scatter(const BuildContext& ctx);

// One run's memory: intermediates, per-worker scratch, and the pointer of every tensor.
struct Arena {
  AlignedBuffer memory;
  std::vector<void*> ptrs;
  std::vector<void*> outputs;  // the caller's output buffers, by slot
};

class Plan;

// Exclusive use of one arena for one run; returns it to the plan's free list when destroyed.
class ArenaLease {
 public:
  ArenaLease(const Plan& plan, std::unique_ptr<Arena> arena) : plan_(&plan), arena_(std::move(arena)) {}
  ArenaLease(ArenaLease&&) = default;
  ~ArenaLease();
  // Bind the caller's buffers; sizes are checked against the tensor table.
  void set_input(size_t slot, const void* data, int64_t nbytes);
  void set_output(size_t slot, void* data, int64_t nbytes);
  Arena& arena() { return *arena_; }

 private:
  const Plan* plan_;
  std::unique_ptr<Arena> arena_;
};


class Plan {
 public:
  // constants: the caller's buffers, alive for the constructor; kernels pack what they need and
  // only the constants still read at run time are copied into plan-owned aligned memory.
  // saved: per op, empty or the packed buffers an earlier plan of the same op built (see
  // packed()), which the caller keeps alive and unchanged for the plan's lifetime; an op given
  // saved buffers must ask for exactly those.
  Plan(std::vector<TensorInfo> tensors, const std::vector<ConstantSource>& constants,
       std::vector<int> inputs, std::vector<int> outputs, std::vector<OpRecord> ops, int64_t arena_bytes,
       Isa isa, std::shared_ptr<ThreadPool> pool, std::vector<std::vector<PackedSlot>> saved = {});

  ArenaLease acquire() const;
  // Runs every op; the lease must have all inputs and outputs bound. Call without the GIL.
  // Throws Cancelled, before the next op, once *cancel is raised (kernels in flight cut short).
  void execute(ArenaLease& lease, const CancelFlag* cancel = nullptr) const;

  Isa isa() const { return isa_; }
  size_t num_inputs() const { return inputs_.size(); }
  size_t num_outputs() const { return outputs_.size(); }
  int64_t arena_bytes() const { return arena_bytes_; }
  size_t scratch_bytes_per_worker() const { return scratch_per_worker_; }
  // The largest workspace one op needs (0: no op needs one).
  size_t workspace_bytes() const { return workspace_bytes_; }
  // Bytes of an arena's memory before the per-worker scratch: its tensors, and the ops'
  // workspaces where they do not fit between the tensors alive during the op (place_workspaces).
  size_t memory_bytes() const { return scratch_offset_; }
  // Bytes of constants the plan keeps for run time (packed copies not included).
  size_t constant_bytes() const {
    size_t total = 0;
    for (const auto& c : constants_) total += c.size();
    return total;
  }
  size_t arenas_created() const;
  // Per op, the buffers its kernel packed itself (none for an op given saved ones), for the
  // caller to save and give to a later plan of the same op. Valid while the plan lives.
  std::vector<std::vector<PackedSlot>> packed() const;
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  // Per-op timing: while enabled, execute() adds each kernel's wall time to that op's total.
  // Off by default because reading the clock around every op costs a little on tiny ops.
  void set_profiling(bool on) const { profiling_.store(on, std::memory_order_relaxed); }
  bool profiling() const { return profiling_.load(std::memory_order_relaxed); }
  struct OpTime {
    int index;
    std::string label;
    int64_t total_ns;
    int64_t runs;
  };
  std::vector<OpTime> profile() const;
  void reset_profile() const;

 private:
  friend class ArenaLease;
  // Checks the tables; returns each tensor's first and last op step (-1 where none).
  std::vector<std::pair<int, int>> validate_tables() const;
  void place_workspaces(std::vector<std::pair<int, int>> life);
  void release(std::unique_ptr<Arena> arena) const;

  std::vector<TensorInfo> tensors_;
  std::vector<AlignedBuffer> constants_;  // empty for constants every reader released
  std::vector<int64_t> constant_sizes_;
  std::vector<int> inputs_;
  std::vector<int> outputs_;
  std::vector<OpRecord> records_;
  std::vector<std::unique_ptr<OpKernel>> kernels_;
  std::vector<OpPacking> packing_;  // per op
  int64_t arena_bytes_;
  Isa isa_;
  GemmBlocking gemm_;
  std::shared_ptr<ThreadPool> pool_;
  size_t scratch_per_worker_ = 0;
  size_t workspace_bytes_ = 0;
  std::vector<size_t> workspace_at_;  // per op
  size_t scratch_offset_ = 0;         // where the per-worker scratch starts, after arena and workspaces
  mutable std::mutex free_mutex_;
  mutable std::vector<std::unique_ptr<Arena>> free_;
  mutable size_t created_ = 0;
  mutable std::atomic<bool> profiling_{false};
  // one counter pair per op; atomics because concurrent runs may share the plan
  std::unique_ptr<std::atomic<int64_t>[]> op_ns_;
  std::unique_ptr<std::atomic<int64_t>[]> op_runs_;
};

}  // namespace walle

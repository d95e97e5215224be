#include "plan.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>

#if defined(__linux__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace walle {

// ------------------------------------------------------------------------- BuildContext

std::string BuildContext::where() const {
  const int code = static_cast<int>(rec_.op);
  const std::string name = (code >= 0 && code < static_cast<int>(op_names().size())) ? op_names()[code] : "?";
  return "op " + std::to_string(rec_.index) + " (" + (rec_.label.empty() ? name : rec_.label) + ")";
}

void BuildContext::check(bool ok, const std::string& msg) const {
  if (!ok) throw Error(where() + ": " + msg);
}

void BuildContext::expect_arity(size_t lo, size_t hi, size_t outputs) const {
  check(rec_.inputs.size() >= lo && rec_.inputs.size() <= hi,
        "takes " + std::to_string(lo) + ".." + std::to_string(hi) + " inputs, got " +
            std::to_string(rec_.inputs.size()));
  check(rec_.outputs.size() == outputs, "takes " + std::to_string(outputs) + " outputs, got " +
                                            std::to_string(rec_.outputs.size()));
}

int BuildContext::input_id(size_t i) const {
  check(i < rec_.inputs.size(), "missing input " + std::to_string(i));
  return rec_.inputs[i];
}

int BuildContext::output_id(size_t i) const {
  check(i < rec_.outputs.size(), "missing output " + std::to_string(i));
  return rec_.outputs[i];
}

namespace {

// Lets the kernel drop the pages wholly inside [data, data + nbytes) of a read-only shared file
// mapping: the memory stops counting for this process and reads fault the bytes back in from
// the file. A hint only: where it is unsupported nothing happens.
void drop_mapped_pages(const void* data, int64_t nbytes) {
#if defined(__linux__) || defined(__APPLE__)
  static_assert(sizeof(uintptr_t) >= sizeof(void*), "pointer width");
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  if (page == 0 || nbytes <= 0) return;
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + page - 1) / page * page;
  const uintptr_t last = (begin + static_cast<uintptr_t>(nbytes)) / page * page;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
#else
  (void)data;
  (void)nbytes;
#endif
}

}  // namespace

const void* BuildContext::constant_input(size_t i) const {
  const TensorInfo& t = input(i);
  if (t.kind != TensorKind::kConstant) return nullptr;
  const ConstantSource& source = constants_[static_cast<size_t>(t.where)];
  if (reinterpret_cast<uintptr_t>(source.data) % static_cast<uintptr_t>(t.itemsize) == 0) return source.data;
  AlignedBuffer& copy = aligned_copies_.emplace_back(static_cast<size_t>(t.nbytes));
  std::memcpy(copy.data(), source.data, static_cast<size_t>(t.nbytes));
  if (source.reclaimable) drop_mapped_pages(source.data, t.nbytes);
  return copy.data();
}

const void* BuildContext::constant_bytes(size_t i) const {
  const TensorInfo& t = input(i);
  return t.kind == TensorKind::kConstant ? constants_[static_cast<size_t>(t.where)].data : nullptr;
}

void BuildContext::release_constant(size_t i) const {
  if (input(i).kind == TensorKind::kConstant) released_.push_back(input_id(i));
}

bool BuildContext::packed_buffer(AlignedBuffer& buf, size_t bytes) const {
  const size_t slot = packing_.taken++;
  if (slot < packing_.saved.size()) {
    const PackedSlot& saved = packing_.saved[slot];
    check(saved.bytes == bytes, "saved packed buffer " + std::to_string(slot) + " has " +
                                    std::to_string(saved.bytes) + " bytes, the kernel needs " + std::to_string(bytes));
    buf.borrow(bytes ? saved.data : nullptr, bytes);
    return true;
  }
  check(packing_.saved.empty(), "asks for more packed buffers than the " + std::to_string(packing_.saved.size()) +
                                    " saved for it");
  buf.resize(bytes);
  packing_.built.push_back(PackedSlot{buf.data(), bytes});
  return false;
}

int64_t BuildContext::int_at(size_t i) const {
  check(i < rec_.ints.size(), "integer attribute " + std::to_string(i) + " missing");
  return rec_.ints[i];
}

double BuildContext::float_at(size_t i) const {
  check(i < rec_.floats.size(), "float attribute " + std::to_string(i) + " missing");
  return rec_.floats[i];
}

// ----------------------------------------------------------------------------- ArenaLease

ArenaLease::~ArenaLease() {
  if (arena_) plan_->release(std::move(arena_));
}

void ArenaLease::set_input(size_t slot, const void* data, int64_t nbytes) {
  require(slot < plan_->inputs_.size(), "input slot out of range");
  const TensorInfo& t = plan_->tensors_[plan_->inputs_[slot]];
  require(nbytes == t.nbytes, "input " + std::to_string(slot) + " has " + std::to_string(nbytes) +
                                  " bytes, expected " + std::to_string(t.nbytes));
  arena_->ptrs[plan_->inputs_[slot]] = const_cast<void*>(data);  // inputs are only ever read
}

void ArenaLease::set_output(size_t slot, void* data, int64_t nbytes) {
  require(slot < plan_->outputs_.size(), "output slot out of range");
  const int id = plan_->outputs_[slot];
  const TensorInfo& t = plan_->tensors_[id];
  require(nbytes == t.nbytes, "output " + std::to_string(slot) + " has " + std::to_string(nbytes) +
                                  " bytes, expected " + std::to_string(t.nbytes));
  arena_->outputs[slot] = data;
  if (t.kind == TensorKind::kOutput && t.where == static_cast<int64_t>(slot)) arena_->ptrs[id] = data;
}

// ----------------------------------------------------------------------------------- Plan

namespace {

constexpr int64_t kMaxElements = int64_t(1) << 40;

bool valid_itemsize(int s) { return s == 1 || s == 2 || s == 4 || s == 8; }

}  // namespace

Plan::Plan(std::vector<TensorInfo> tensors, const std::vector<ConstantSource>& constants,
           std::vector<int> inputs, std::vector<int> outputs, std::vector<OpRecord> ops, int64_t arena_bytes,
           Isa isa, std::shared_ptr<ThreadPool> pool, std::vector<std::vector<PackedSlot>> saved)
    : tensors_(std::move(tensors)),
      inputs_(std::move(inputs)),
      outputs_(std::move(outputs)),
      records_(std::move(ops)),
      arena_bytes_(arena_bytes),
      isa_(isa),
      gemm_(isa),
      pool_(std::move(pool)) {
  require(pool_ != nullptr, "plan needs a thread pool");
  require(arena_bytes_ >= 0 && arena_bytes_ <= kMaxElements * 8, "arena size out of range");
  for (auto& t : tensors_) {
    require(t.shape.size() <= static_cast<size_t>(kMaxRank), "tensor rank exceeds 8");
    require(valid_itemsize(t.itemsize), "tensor element size must be 1, 2, 4 or 8 bytes");
    int64_t n = 1;
    for (int64_t d : t.shape) {
      require(d >= 0, "negative tensor dimension");
      require(d == 0 || n <= kMaxElements / d, "tensor too large");
      n *= d;
    }
    t.numel = n;
    t.nbytes = n * t.itemsize;
  }
  // Kernels are built from the caller's buffers (alive for the whole constructor); afterwards
  // only the constants some op still reads at run time, or that are outputs, are copied in.
  for (const ConstantSource& c : constants) {
    require(c.nbytes >= 0 && (c.data != nullptr || c.nbytes == 0), "bad constant buffer");
    constant_sizes_.push_back(c.nbytes);
  }
  auto lifetimes = validate_tables();
  require(saved.empty() || saved.size() == records_.size(), "saved packed buffers: one list per op expected");
  packing_.resize(records_.size());
  for (size_t i = 0; i < saved.size(); ++i) {
    for (const PackedSlot& slot : saved[i]) {
      require(slot.bytes == 0 || (slot.data != nullptr && reinterpret_cast<uintptr_t>(slot.data) % 64 == 0),
              "saved packed buffers must be 64-byte aligned");
    }
    packing_[i].saved = std::move(saved[i]);
  }
  std::vector<int64_t> reads(tensors_.size(), 0);  // run-time readers of each constant tensor
  for (const OpRecord& rec : records_) {
    for (int id : rec.inputs) ++reads[static_cast<size_t>(id)];
  }
  for (int id : outputs_) ++reads[static_cast<size_t>(id)];
  // ops still to be built that read each constant: a mapped one is let go after its last
  const auto to_build = std::make_unique<std::atomic<int64_t>[]>(constants.size());
  for (const OpRecord& rec : records_)
    for (int id : rec.inputs)
      if (tensors_[id].kind == TensorKind::kConstant) ++to_build[static_cast<size_t>(tensors_[id].where)];
  // The kernels are built on the pool (packing weights is most of a load), each with its own
  // list of released constants; the first error is rethrown once all have stopped.
  kernels_.resize(records_.size());
  std::vector<std::vector<int>> released(records_.size());
  pool_->parallel_for(static_cast<int64_t>(records_.size()), [&](int64_t i, int) {
    const OpRecord& rec = records_[static_cast<size_t>(i)];
    OpPacking& packing = packing_[static_cast<size_t>(i)];
    BuildContext ctx(rec, tensors_, constants, gemm_, released[static_cast<size_t>(i)], packing);
    kernels_[static_cast<size_t>(i)] = build_kernel(ctx);
    ctx.check(packing.saved.empty() || packing.taken == packing.saved.size(),
              "was given " + std::to_string(packing.saved.size()) + " saved packed buffers and used " +
                  std::to_string(packing.taken));
    for (int id : rec.inputs) {
      if (tensors_[id].kind != TensorKind::kConstant) continue;
      const auto c = static_cast<size_t>(tensors_[id].where);
      if (--to_build[c] == 0 && constants[c].reclaimable) drop_mapped_pages(constants[c].data, constants[c].nbytes);
    }
  });
  for (size_t i = 0; i < kernels_.size(); ++i) {
    scratch_per_worker_ = std::max(scratch_per_worker_, kernels_[i]->scratch_bytes());
    workspace_bytes_ = std::max(workspace_bytes_, kernels_[i]->workspace_bytes());
    for (int id : released[i]) --reads[static_cast<size_t>(id)];
  }
  std::vector<bool> kept(constants.size(), false);
  for (size_t id = 0; id < tensors_.size(); ++id) {
    const TensorInfo& t = tensors_[id];
    if (t.kind == TensorKind::kConstant && reads[id] > 0) kept[static_cast<size_t>(t.where)] = true;
  }
  constants_.resize(constants.size());
  for (size_t c = 0; c < constants.size(); ++c) {
    if (!kept[c] || constant_sizes_[c] == 0) continue;
    constants_[c].resize(static_cast<size_t>(constant_sizes_[c]));
    std::memcpy(constants_[c].data(), constants[c].data, static_cast<size_t>(constant_sizes_[c]));
  }
  scratch_per_worker_ = (scratch_per_worker_ + 127) / 64 * 64;  // aligned, with slack
  workspace_bytes_ = (workspace_bytes_ + 63) / 64 * 64;
  place_workspaces(std::move(lifetimes));
  op_ns_ = std::make_unique<std::atomic<int64_t>[]>(kernels_.size());
  op_runs_ = std::make_unique<std::atomic<int64_t>[]>(kernels_.size());
  reset_profile();
}

std::vector<std::vector<PackedSlot>> Plan::packed() const {
  std::vector<std::vector<PackedSlot>> out;
  for (const OpPacking& p : packing_) out.push_back(p.built);
  return out;
}

std::vector<Plan::OpTime> Plan::profile() const {
  std::vector<OpTime> out;
  for (size_t i = 0; i < kernels_.size(); ++i) {
    out.push_back(OpTime{records_[i].index, records_[i].label, op_ns_[i].load(), op_runs_[i].load()});
  }
  return out;
}

void Plan::reset_profile() const {
  for (size_t i = 0; i < kernels_.size(); ++i) {
    op_ns_[i].store(0);
    op_runs_[i].store(0);
  }
}

std::vector<std::pair<int, int>> Plan::validate_tables() const {
  const int n = static_cast<int>(tensors_.size());
  auto in_range = [&](int id) { return id >= 0 && id < n; };
  for (size_t s = 0; s < inputs_.size(); ++s) {
    require(in_range(inputs_[s]), "input tensor id out of range");
    const TensorInfo& t = tensors_[inputs_[s]];
    require(t.kind == TensorKind::kInput && t.where == static_cast<int64_t>(s), "input table inconsistent");
  }
  for (size_t s = 0; s < outputs_.size(); ++s) require(in_range(outputs_[s]), "output tensor id out of range");
  std::vector<int> first(n, -1), last(n, -1);
  std::vector<bool> ready(n, false);
  for (int id = 0; id < n; ++id) {
    const TensorInfo& t = tensors_[id];
    switch (t.kind) {
      case TensorKind::kInput:
        require(t.where >= 0 && t.where < static_cast<int64_t>(inputs_.size()) && inputs_[t.where] == id,
                "tensor " + std::to_string(id) + ": input slot inconsistent");
        ready[id] = true;
        break;
      case TensorKind::kConstant:
        require(t.where >= 0 && t.where < static_cast<int64_t>(constant_sizes_.size()),
                "tensor " + std::to_string(id) + ": constant index out of range");
        require(constant_sizes_[t.where] == t.nbytes,
                "tensor " + std::to_string(id) + ": constant size does not match its type");
        ready[id] = true;
        break;
      case TensorKind::kOutput:
        require(t.where >= 0 && t.where < static_cast<int64_t>(outputs_.size()) && outputs_[t.where] == id,
                "tensor " + std::to_string(id) + ": output slot inconsistent");
        break;
      case TensorKind::kArena:
        require(t.where >= 0 && t.where % 64 == 0 && t.where + t.nbytes <= arena_bytes_,
                "tensor " + std::to_string(id) + ": arena range outside the arena");
        break;
      default: throw Error("tensor " + std::to_string(id) + ": unknown kind");
    }
  }
  // A part lies inside its whole, both in the arena, and following wholes ends (no cycle).
  auto inside = [&](int part, int whole) {
    const TensorInfo &p = tensors_[part], &w = tensors_[whole];
    return w.where <= p.where && p.where + p.nbytes <= w.where + w.nbytes;
  };
  for (int id = 0; id < n; ++id) {
    const int whole = tensors_[id].whole;
    if (whole < 0) continue;
    require(whole < n && whole != id && tensors_[id].kind == TensorKind::kArena &&
                tensors_[whole].kind == TensorKind::kArena && inside(id, whole),
            "tensor " + std::to_string(id) + ": not an arena range inside the arena tensor it is part of");
    int steps = 0;
    for (int w = whole; w >= 0; w = tensors_[w].whole) require(w < n && ++steps <= n, "parts form a cycle");
  }
  // whether a is b or lies inside it, through its wholes
  auto within = [&](int a, int b) {
    for (int w = a; w >= 0; w = tensors_[w].whole) {
      if (w == b) return true;
    }
    return false;
  };
  for (size_t step = 0; step < records_.size(); ++step) {
    const OpRecord& rec = records_[step];
    const std::string where = "op " + std::to_string(rec.index);
    require(static_cast<int>(rec.op) >= 0 && rec.op < OpCode::kCount, where + ": unknown op code");
    for (int id : rec.inputs) {
      require(in_range(id), where + ": input tensor id out of range");
      require(ready[id], where + ": reads tensor " + std::to_string(id) + " before it is produced");
      last[id] = static_cast<int>(step);
    }
    for (int id : rec.outputs) {
      require(in_range(id), where + ": output tensor id out of range");
      const TensorKind k = tensors_[id].kind;
      require(k == TensorKind::kOutput || k == TensorKind::kArena, where + ": writes an input or a constant");
      require(!ready[id], where + ": tensor " + std::to_string(id) + " is produced twice");
      ready[id] = true;
      first[id] = last[id] = static_cast<int>(step);
    }
  }
  for (int id : outputs_) require(ready[id], "segment output " + std::to_string(id) + " is never produced");
  // Arena tensors alive at the same time must not share bytes (this also keeps every op's
  // inputs and outputs apart).
  std::vector<int> placed;
  for (int id = 0; id < n; ++id) {
    if (tensors_[id].kind == TensorKind::kArena && first[id] >= 0) placed.push_back(id);
  }
  for (size_t i = 0; i < placed.size(); ++i) {
    for (size_t j = i + 1; j < placed.size(); ++j) {
      const TensorInfo& a = tensors_[placed[i]];
      const TensorInfo& b = tensors_[placed[j]];
      const bool live_together = !(last[placed[i]] < first[placed[j]] || last[placed[j]] < first[placed[i]]);
      const bool overlap = a.nbytes && b.nbytes && a.where < b.where + b.nbytes && b.where < a.where + a.nbytes &&
                           !within(placed[i], placed[j]) && !within(placed[j], placed[i]);
      require(!(live_together && overlap), "arena plan overlaps live tensors " + std::to_string(placed[i]) +
                                               " and " + std::to_string(placed[j]));
    }
  }
  std::vector<std::pair<int, int>> life(static_cast<size_t>(n));
  for (int id = 0; id < n; ++id) life[static_cast<size_t>(id)] = {first[id], last[id]};
  return life;
}

namespace {

size_t align64(size_t bytes) { return (bytes + 63) / 64 * 64; }

}  // namespace

// Each op's workspace goes to the lowest offset where it shares no bytes with a tensor alive
// during that op, past the arena only where nothing fits. It then mostly lies over activations
// that ops shortly before it wrote and read, still in cache; a workspace of its own after the
// arena was memory untouched since the previous run, and the first Winograd convolution of a
// stage took 20-27 % longer than the next one of the same shape (squeezenet1_1, resnet18).
void Plan::place_workspaces(std::vector<std::pair<int, int>> life) {
  // a whole's bytes hold its parts from the step each is written (validate_tables: no cycles)
  auto cover = [&](int id, int step) {
    auto& [first, last] = life[static_cast<size_t>(id)];
    first = first < 0 ? step : std::min(first, step);
    last = std::max(last, step);
  };
  for (int id = 0; id < static_cast<int>(tensors_.size()); ++id) {
    const auto [first, last] = life[static_cast<size_t>(id)];
    if (first < 0) continue;
    for (int w = tensors_[id].whole; w >= 0; w = tensors_[w].whole) {
      cover(w, first);
      cover(w, last);
    }
  }
  workspace_at_.assign(kernels_.size(), 0);
  size_t end = align64(static_cast<size_t>(arena_bytes_));
  std::vector<std::pair<size_t, size_t>> busy;  // byte ranges of the tensors alive during the op
  for (size_t i = 0; i < kernels_.size(); ++i) {
    const size_t bytes = align64(kernels_[i]->workspace_bytes());
    if (bytes == 0) continue;
    const int step = static_cast<int>(i);
    busy.clear();
    for (size_t id = 0; id < tensors_.size(); ++id) {
      const auto [first, last] = life[id];
      const bool in_arena = tensors_[id].kind == TensorKind::kArena && tensors_[id].nbytes > 0;
      if (in_arena && first >= 0 && first <= step && step <= last) {
        const auto at = static_cast<size_t>(tensors_[id].where);
        busy.emplace_back(at, at + static_cast<size_t>(tensors_[id].nbytes));
      }
    }
    std::sort(busy.begin(), busy.end());
    size_t at = 0;  // ranges may nest (parts inside wholes): at only moves forward
    for (const auto& [b, e] : busy) {
      if (at + bytes <= b) break;
      at = std::max(at, align64(e));
    }
    workspace_at_[i] = at;
    end = std::max(end, at + bytes);
  }
  scratch_offset_ = end;
}

ArenaLease Plan::acquire() const {
  {
    std::lock_guard<std::mutex> lock(free_mutex_);
    if (!free_.empty()) {
      auto arena = std::move(free_.back());
      free_.pop_back();
      return ArenaLease(*this, std::move(arena));
    }
    ++created_;
  }
  auto arena = std::make_unique<Arena>();
  const size_t workers = static_cast<size_t>(pool_->threads());
  // layout: arena tensors, with the ops' workspaces over them or past them | per-worker scratch
  arena->memory.resize(scratch_offset_ + scratch_per_worker_ * workers);
  arena->ptrs.assign(tensors_.size(), nullptr);
  arena->outputs.assign(outputs_.size(), nullptr);
  for (size_t id = 0; id < tensors_.size(); ++id) {
    const TensorInfo& t = tensors_[id];
    if (t.kind == TensorKind::kArena) arena->ptrs[id] = arena->memory.data() + t.where;
    if (t.kind == TensorKind::kConstant) arena->ptrs[id] = constants_[t.where].data();
  }
  return ArenaLease(*this, std::move(arena));
}

void Plan::release(std::unique_ptr<Arena> arena) const {
  std::lock_guard<std::mutex> lock(free_mutex_);
  free_.push_back(std::move(arena));
}

size_t Plan::arenas_created() const {
  std::lock_guard<std::mutex> lock(free_mutex_);
  return created_;
}

void Plan::execute(ArenaLease& lease, const CancelFlag* cancel) const {
  Arena& arena = lease.arena();
  for (int id : inputs_) require(arena.ptrs[id] != nullptr || tensors_[id].nbytes == 0, "input not bound");
  for (size_t s = 0; s < outputs_.size(); ++s) {
    require(arena.outputs[s] != nullptr || tensors_[outputs_[s]].nbytes == 0, "output not bound");
  }
  unsigned char* scratch_base = arena.memory.data() + scratch_offset_;
  const size_t per_worker = scratch_per_worker_;
  auto scratch = [&](int worker) {
    auto p = reinterpret_cast<uintptr_t>(scratch_base + per_worker * static_cast<size_t>(worker));
    return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
  };
  RunContext ctx{arena.ptrs.data(), *pool_, scratch, nullptr, cancel};
  // each op's workspace where place_workspaces put it
  auto workspace = [&](size_t i) { return reinterpret_cast<float*>(arena.memory.data() + workspace_at_[i]); };
  auto check = [&](size_t i) {
    if (is_cancelled(cancel)) {
      throw Cancelled("run cancelled after " + std::to_string(i) + " of " + std::to_string(kernels_.size()) + " ops");
    }
  };
  if (profiling()) {
    for (size_t i = 0; i < kernels_.size(); ++i) {
      check(i);
      ctx.workspace = workspace(i);
      const auto t0 = std::chrono::steady_clock::now();
      kernels_[i]->run(ctx);
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0);
      op_ns_[i].fetch_add(ns.count(), std::memory_order_relaxed);
      op_runs_[i].fetch_add(1, std::memory_order_relaxed);
    }
  } else {
    for (size_t i = 0; i < kernels_.size(); ++i) {
      check(i);
      ctx.workspace = workspace(i);
      kernels_[i]->run(ctx);
    }
  }
  check(kernels_.size());  // a kernel cut short left garbage: never hand it out
  // Outputs not written in place: inputs or constants passed through, and repeated outputs.
  for (size_t s = 0; s < outputs_.size(); ++s) {
    const int id = outputs_[s];
    const TensorInfo& t = tensors_[id];
    const bool in_place = t.kind == TensorKind::kOutput && t.where == static_cast<int64_t>(s);
    if (!in_place && t.nbytes) std::memcpy(arena.outputs[s], arena.ptrs[id], static_cast<size_t>(t.nbytes));
  }
}

}  // namespace walle

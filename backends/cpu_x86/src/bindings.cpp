// The Python face of the backend: code tables, the thread pool and the compiled Plan. Only plain
// buffers cross this boundary (NumPy arrays viewed as bytes); validation errors surface as
// ValueError, run-time index errors as IndexError (nanobind's std exception translation).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <thread>

#include "isa.hpp"
#include "plan.hpp"
#include "winograd.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace walle {

namespace {

using InBytes = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutBytes = nb::ndarray<uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// (dtype code, itemsize, shape, kind, where)
using TensorTuple = std::tuple<int, int, std::vector<int64_t>, int, int64_t>;
// (op code, index, label, inputs, outputs, int attributes, float attributes)
using OpTuple = std::tuple<int, int, std::string, std::vector<int>, std::vector<int>, std::vector<int64_t>,
                           std::vector<double>>;

// Decodes the Python tables, then builds the plan in place (into nanobind's storage) without the GIL.
void init_plan(Plan* self, const std::vector<TensorTuple>& tensors, const std::vector<InBytes>& constants,
                                std::vector<int> inputs, std::vector<int> outputs, const std::vector<OpTuple>& ops,
                                int64_t arena_bytes, const std::string& isa, std::shared_ptr<ThreadPool> pool,
                                const std::vector<bool>& reclaimable, const std::vector<std::pair<int, int>>& parts,
                                const std::vector<std::vector<InBytes>>& saved) {
  std::vector<TensorInfo> table;
  for (const auto& [dtype, itemsize, shape, kind, where] : tensors) {
    require(dtype >= 0 && dtype <= static_cast<int>(DType::kOpaque), "unknown dtype code");
    require(kind >= 0 && kind <= static_cast<int>(TensorKind::kConstant), "unknown tensor kind");
    TensorInfo t;
    t.dtype = static_cast<DType>(dtype);
    t.itemsize = itemsize;
    t.shape = shape;
    t.kind = static_cast<TensorKind>(kind);
    t.where = where;
    table.push_back(std::move(t));
  }
  for (const auto& [part, whole] : parts) {
    require(part >= 0 && part < static_cast<int>(table.size()) && whole >= 0 && whole < static_cast<int>(table.size()),
            "parts: tensor id out of range");
    require(table[part].whole < 0, "parts: tensor " + std::to_string(part) + " is listed twice");
    table[part].whole = whole;
  }
  std::vector<OpRecord> records;
  for (const auto& [op, index, label, ins, outs, ints, floats] : ops) {
    require(op >= 0 && op < static_cast<int>(OpCode::kCount), "unknown op code");
    records.push_back(OpRecord{static_cast<OpCode>(op), index, label, ins, outs, ints, floats});
  }
  require(reclaimable.empty() || reclaimable.size() == constants.size(),
          "reclaimable: one flag per constant expected");
  std::vector<ConstantSource> blobs;
  for (size_t c = 0; c < constants.size(); ++c)
    blobs.push_back(ConstantSource{constants[c].data(), static_cast<int64_t>(constants[c].shape(0)),
                                   !reclaimable.empty() && reclaimable[c]});
  require(saved.empty() || saved.size() == records.size(), "saved: one list of packed buffers per op expected");
  std::vector<std::vector<PackedSlot>> slots(saved.size());
  for (size_t i = 0; i < saved.size(); ++i)
    for (const InBytes& b : saved[i]) slots[i].push_back(PackedSlot{b.data(), static_cast<size_t>(b.shape(0))});
  const Isa chosen = choose_isa(isa);
  // packing weights can take a while; the constants stay alive through the Python arguments
  nb::gil_scoped_release release;
  new (self) Plan(std::move(table), blobs, std::move(inputs), std::move(outputs), std::move(records), arena_bytes,
                  chosen, std::move(pool), std::move(slots));
}

// Per op position and slot, a read-only view of each buffer the plan packed itself; each view
// keeps the plan alive.
nb::list packed_views(nb::handle self) {
  const Plan& plan = nb::cast<const Plan&>(self);
  nb::list out;
  const std::vector<std::vector<PackedSlot>> all = plan.packed();
  for (size_t i = 0; i < all.size(); ++i) {
    for (size_t s = 0; s < all[i].size(); ++s) {
      const size_t shape[1] = {all[i][s].bytes};
      out.append(nb::make_tuple(i, s, nb::ndarray<nb::numpy, const uint8_t, nb::ndim<1>>(all[i][s].data, 1, shape, self)));
    }
  }
  return out;
}

// A cancel flag Python can hold and raise from any thread (see CancelFlag in common.hpp).
struct PyCancelFlag {
  CancelFlag raised{false};
};

void run_plan(const Plan& plan, const nb::list& inputs, const nb::list& outputs, const PyCancelFlag* cancel) {
  require(nb::len(inputs) == plan.num_inputs(), "expected " + std::to_string(plan.num_inputs()) + " inputs, got " +
                                                    std::to_string(nb::len(inputs)));
  require(nb::len(outputs) == plan.num_outputs(), "expected " + std::to_string(plan.num_outputs()) +
                                                      " output buffers, got " + std::to_string(nb::len(outputs)));
  ArenaLease lease = plan.acquire();
  for (size_t i = 0; i < plan.num_inputs(); ++i) {
    InBytes a;
    require(nb::try_cast(inputs[i], a), "input " + std::to_string(i) + " is not a contiguous byte view");
    lease.set_input(i, a.data(), static_cast<int64_t>(a.shape(0)));
  }
  for (size_t i = 0; i < plan.num_outputs(); ++i) {
    OutBytes a;
    require(nb::try_cast(outputs[i], a), "output " + std::to_string(i) + " is not a writable contiguous byte view");
    lease.set_output(i, a.data(), static_cast<int64_t>(a.shape(0)));
  }
  // the arrays stay referenced by the argument lists, so their memory outlives the call
  nb::gil_scoped_release release;
  plan.execute(lease, cancel ? &cancel->raised : nullptr);
}

}  // namespace

}  // namespace walle

NB_MODULE(_ext, m) {
  using namespace walle;
  m.doc() = "Native kernels of the Walle cpu_x86 backend (private: use walle_cpu_x86).";

  m.def("best_isa", [] { return std::string(isa_name(best_isa())); }, "Best instruction set this CPU supports.");
  m.def(
      "micro_kernel",
      [](const std::string& isa) {
        const MicroKernel k = micro_kernel(choose_isa(isa));
        return std::make_pair(k.mr, k.nr);
      },
      "isa"_a, "(mr, nr) of the GEMM micro-kernel plans use for this ISA request ('' = best).");
  m.def(
      "winograd_workspace_bytes",
      [](int m, int64_t c, int64_t h, int64_t w, int64_t o, int64_t oh, int64_t ow, int nr) {
        require((m == 2 || m == 4 || m == 6) && c > 0 && h > 0 && w > 0 && o > 0 && oh > 0 && ow > 0 && nr > 0,
                "winograd_workspace_bytes: tile 2, 4 or 6 and positive sizes expected");
        return winograd_workspace_bytes(m, WinogradShape{c, h, w, o, oh, ow, 0, 0}, nr);
      },
      "m"_a, "c"_a, "h"_a, "w"_a, "o"_a, "oh"_a, "ow"_a, "nr"_a,
      "Bytes of the shared workspace a Winograd F(m,3) convolution of this shape takes, with GEMM column "
      "panels of nr columns (pads do not change it).");
  m.def("hardware_threads", [] { return static_cast<int>(std::thread::hardware_concurrency()); });
  m.def("dtype_names", &dtype_names, "Dtypes the kernels compute on, by code (others are opaque).");
  m.def("opaque_dtype_code", [] { return static_cast<int>(DType::kOpaque); });
  m.def("unary_fns", &unary_fn_names);
  m.def("binary_fns", &binary_fn_names);
  m.def("reduce_fns", &reduce_fn_names);
  m.def("op_names", &op_names);
  m.def("tensor_kinds", [] { return std::vector<std::string>{"input", "output", "arena", "constant"}; });

  nb::exception<Cancelled>(m, "Cancelled");
  nb::class_<PyCancelFlag>(m, "CancelFlag", "Raised from any thread to stop the runs it was passed to.")
      .def(nb::init<>())
      .def("set", [](PyCancelFlag& f) { f.raised.store(true, std::memory_order_relaxed); })
      .def_prop_ro("is_set", [](const PyCancelFlag& f) { return f.raised.load(std::memory_order_relaxed); });

  nb::class_<ThreadPool>(m, "ThreadPool", "Worker threads shared by the plans of one backend instance.")
      .def("__init__", [](ThreadPool* self, int threads) { new (self) ThreadPool(threads); }, "threads"_a)
      .def_prop_ro("threads", &ThreadPool::threads);

  nb::class_<Plan>(m, "Plan", "A compiled segment; run() is thread-safe.")
      .def("__init__", &init_plan, "tensors"_a, "constants"_a, "inputs"_a, "outputs"_a, "ops"_a, "arena_bytes"_a, "isa"_a, "pool"_a,
           "reclaimable"_a = std::vector<bool>(), "parts"_a = std::vector<std::pair<int, int>>(),
           "saved"_a = std::vector<std::vector<InBytes>>(), nb::keep_alive<1, 12>(),
           "reclaimable[i]: constant i is a view of a read-only shared file mapping, whose pages may be "
           "dropped once every op that reads it is built. parts: (part, whole) pairs of arena tensors, the "
           "part written in place inside the whole (a concatenation's input). saved: empty, or per op the "
           "buffers packed() gave for the same op of an earlier plan (64-byte aligned, unchanged while this "
           "plan lives: kept alive with it); the op's kernel reads them instead of packing its weights.")
      .def("run", &run_plan, "inputs"_a, "outputs"_a, "cancel"_a.none() = nb::none(),
           "Run with inputs/outputs given as uint8 views of C-contiguous arrays (GIL released); raises "
           "Cancelled once the optional CancelFlag is set.")
      .def_prop_ro("isa", [](const Plan& p) { return std::string(isa_name(p.isa())); })
      .def_prop_ro("arena_bytes", &Plan::arena_bytes)
      .def_prop_ro("scratch_bytes_per_worker", &Plan::scratch_bytes_per_worker)
      .def_prop_ro("workspace_bytes", &Plan::workspace_bytes)
      .def_prop_ro("memory_bytes", &Plan::memory_bytes,
                   "Bytes of an arena's tensors and the ops' workspaces (per-worker scratch not counted).")
      .def_prop_ro("constant_bytes", &Plan::constant_bytes)
      .def_prop_ro("arenas_created", &Plan::arenas_created)
      .def_prop_ro("num_inputs", &Plan::num_inputs)
      .def_prop_ro("num_outputs", &Plan::num_outputs)
      .def_prop_rw("profiling", &Plan::profiling, [](Plan& p, bool on) { p.set_profiling(on); },
                   "Whether run() times every op (see profile()).")
      .def(
          "profile",
          [](const Plan& p) {
            std::vector<std::tuple<int, std::string, int64_t, int64_t>> rows;
            for (const auto& t : p.profile()) rows.emplace_back(t.index, t.label, t.total_ns, t.runs);
            return rows;
          },
          "Per op: (index, label, total nanoseconds, timed runs) since the last reset_profile().")
      .def("reset_profile", &Plan::reset_profile)
      .def("packed", &packed_views,
           "(op position, slot, read-only uint8 view) of every buffer a kernel packed from its constants, "
           "to give a later plan of the same op as `saved`.");
}

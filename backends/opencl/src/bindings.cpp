// Python bindings of the OpenCL runtime (module walle_opencl._ext). Every call that waits on the
// device or the compiler releases the GIL; arguments are converted before it is released.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <tuple>

#include "runtime.hpp"

namespace nb = nanobind;
using namespace walle_opencl;

using Bytes = nb::ndarray<std::uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using ConstBytes = nb::ndarray<const std::uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using ArgTuple = std::tuple<int, std::int64_t, double>;
using LaunchTuple = std::tuple<std::string, std::vector<ArgTuple>, std::vector<std::int64_t>,
                               std::vector<std::int64_t>, std::string>;

namespace {

std::vector<LaunchSpec> to_specs(const std::vector<LaunchTuple>& launches) {
  std::vector<LaunchSpec> specs;
  specs.reserve(launches.size());
  for (const LaunchTuple& t : launches) {
    LaunchSpec spec{std::get<0>(t), {}, std::get<2>(t), std::get<3>(t), std::get<4>(t)};
    for (const ArgTuple& a : std::get<1>(t)) {
      const int kind = std::get<0>(a);
      if (kind < 0 || kind > 3) throw std::invalid_argument("[opencl] " + spec.label + ": unknown argument kind");
      spec.args.push_back({static_cast<ArgKind>(kind), std::get<1>(a), std::get<2>(a)});
    }
    specs.push_back(std::move(spec));
  }
  return specs;
}

}  // namespace

NB_MODULE(_ext, m) {
  m.doc() = "OpenCL runtime of the Walle opencl backend (private; use walle_opencl)";

  m.def("probe", [] {
    Probe p = probe();
    return std::make_tuple(p.available, p.reason, p.device, p.has_fp16);
  }, nb::call_guard<nb::gil_scoped_release>(),
        "(available, reason, device, has_fp16): whether an OpenCL device exists (and reports\n"
        "cl_khr_fp16), without creating a context.");

  nb::class_<Buffer>(m, "Buffer")
      .def_prop_ro("nbytes", &Buffer::nbytes);

  nb::class_<Program>(m, "Program")
      .def_prop_ro("from_binary", &Program::from_binary)
      .def("binary", [](const Program& p) {
        std::string bin = p.binary();
        return nb::bytes(bin.data(), bin.size());
      });

  nb::class_<Context>(m, "Context")
      .def(nb::init<>(), nb::call_guard<nb::gil_scoped_release>())
      .def_prop_ro("device_name", &Context::device_name)
      .def_prop_ro("driver_version", &Context::driver_version)
      .def_prop_ro("platform_name", &Context::platform_name)
      .def_prop_ro("correctly_rounded_divide_sqrt", &Context::correctly_rounded_divide_sqrt)
      .def_prop_ro("has_fp16", &Context::has_fp16)
      .def("alloc", &Context::alloc, nb::arg("nbytes"), nb::call_guard<nb::gil_scoped_release>())
      .def("write", [](const Context& c, const Buffer& b, ConstBytes data) {
        const std::uint8_t* ptr = data.data();
        const std::size_t n = data.shape(0);
        nb::gil_scoped_release release;
        c.write(b, ptr, n);
      }, nb::arg("buffer"), nb::arg("data"))
      .def("read", [](const Context& c, const Buffer& b, Bytes out) {
        std::uint8_t* ptr = out.data();
        const std::size_t n = out.shape(0);
        nb::gil_scoped_release release;
        c.read(b, ptr, n);
      }, nb::arg("buffer"), nb::arg("out"))
      .def("build", [](const Context& c, const std::string& source, const std::string& options, nb::bytes binary) {
        std::string bin(binary.c_str(), binary.size());
        nb::gil_scoped_release release;
        return c.build(source, options, bin);
      }, nb::arg("source"), nb::arg("options"), nb::arg("binary"));

  nb::class_<Plan>(m, "Plan")
      .def("__init__", [](Plan* self, const Context& c, const Program& p, const std::vector<LaunchTuple>& launches,
                          int n_slots, int flag_slot) {
        std::vector<LaunchSpec> specs = to_specs(launches);
        nb::gil_scoped_release release;
        new (self) Plan(c, p, std::move(specs), n_slots, flag_slot);
      }, nb::arg("context"), nb::arg("program"), nb::arg("launches"), nb::arg("n_slots"), nb::arg("flag_slot"))
      .def("run", &Plan::run, nb::arg("slots"), nb::call_guard<nb::gil_scoped_release>())
      .def("__len__", &Plan::size);
}

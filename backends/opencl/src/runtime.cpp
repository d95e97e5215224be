// OpenCL runtime glue: discovery, buffers, program builds and plan execution.
#include "runtime.hpp"

#include <stdexcept>
#include <utility>

namespace walle_opencl {
namespace {

[[noreturn]] void fail(const std::string& what, cl_int err) {
  throw std::runtime_error("[opencl] " + what + " failed (OpenCL error " + std::to_string(err) + ")");
}

void check(cl_int err, const char* what) {
  if (err != CL_SUCCESS) fail(what, err);
}

std::string device_string(cl_device_id device, cl_device_info param) {
  std::size_t size = 0;
  if (clGetDeviceInfo(device, param, 0, nullptr, &size) != CL_SUCCESS || size == 0) return "";
  std::string out(size, '\0');
  clGetDeviceInfo(device, param, size, out.data(), nullptr);
  while (!out.empty() && out.back() == '\0') out.pop_back();
  return out;
}

std::string platform_string(cl_platform_id platform, cl_platform_info param) {
  std::size_t size = 0;
  if (clGetPlatformInfo(platform, param, 0, nullptr, &size) != CL_SUCCESS || size == 0) return "";
  std::string out(size, '\0');
  clGetPlatformInfo(platform, param, size, out.data(), nullptr);
  while (!out.empty() && out.back() == '\0') out.pop_back();
  return out;
}

bool reports_fp16(cl_device_id device) {
  // Extensions are a space-separated list; match whole names only.
  const std::string list = " " + device_string(device, CL_DEVICE_EXTENSIONS) + " ";
  return list.find(" cl_khr_fp16 ") != std::string::npos;
}

struct Choice {
  cl_platform_id platform = nullptr;
  cl_device_id device = nullptr;
  std::string reason;
};

// A GPU if any platform has one (that is what the backend is for), else the first device.
Choice choose_device() {
  cl_uint n_platforms = 0;
  cl_int err = clGetPlatformIDs(0, nullptr, &n_platforms);
  if (err != CL_SUCCESS || n_platforms == 0) return {nullptr, nullptr, "no OpenCL platform found"};
  std::vector<cl_platform_id> platforms(n_platforms);
  check(clGetPlatformIDs(n_platforms, platforms.data(), nullptr), "clGetPlatformIDs");
  for (cl_device_type type : {cl_device_type(CL_DEVICE_TYPE_GPU), cl_device_type(CL_DEVICE_TYPE_ALL)}) {
    for (cl_platform_id platform : platforms) {
      cl_device_id device = nullptr;
      cl_uint n = 0;
      if (clGetDeviceIDs(platform, type, 1, &device, &n) == CL_SUCCESS && n > 0) return {platform, device, ""};
    }
  }
  return {nullptr, nullptr, "OpenCL platform found, but it has no device"};
}

}  // namespace

Probe probe() {
  Probe out;
  try {
    Choice c = choose_device();
    if (c.device == nullptr) {
      out.reason = c.reason;
      return out;
    }
    out.available = true;
    out.has_fp16 = reports_fp16(c.device);
    out.device = device_string(c.device, CL_DEVICE_NAME) + " (" + platform_string(c.platform, CL_PLATFORM_NAME) +
                 ", driver " + device_string(c.device, CL_DRIVER_VERSION) + ")";
  } catch (const std::exception& exc) {
    out.available = false;
    out.reason = exc.what();
  }
  return out;
}

Buffer::~Buffer() {
  if (mem_ != nullptr) clReleaseMemObject(mem_);
}

Program::~Program() {
  if (program_ != nullptr) clReleaseProgram(program_);
}

std::string Program::binary() const {
  std::size_t size = 0;
  check(clGetProgramInfo(program_, CL_PROGRAM_BINARY_SIZES, sizeof(size), &size, nullptr), "program binary size");
  std::string out(size, '\0');
  unsigned char* ptr = reinterpret_cast<unsigned char*>(out.data());
  check(clGetProgramInfo(program_, CL_PROGRAM_BINARIES, sizeof(ptr), &ptr, nullptr), "program binary");
  return out;
}

Context::Context() {
  Choice c = choose_device();
  if (c.device == nullptr) throw std::runtime_error("[opencl] " + c.reason);
  device_ = c.device;
  cl_int err = CL_SUCCESS;
  context_ = clCreateContext(nullptr, 1, &device_, nullptr, nullptr, &err);
  check(err, "clCreateContext");
  // In-order queue: consecutive kernels see each other's results without events.
  queue_ = clCreateCommandQueue(context_, device_, 0, &err);
  if (err != CL_SUCCESS) {
    clReleaseContext(context_);
    fail("clCreateCommandQueue", err);
  }
  device_name_ = device_string(device_, CL_DEVICE_NAME);
  driver_version_ = device_string(device_, CL_DRIVER_VERSION);
  platform_name_ = platform_string(c.platform, CL_PLATFORM_NAME);
  cl_device_fp_config fp = 0;
  clGetDeviceInfo(device_, CL_DEVICE_SINGLE_FP_CONFIG, sizeof(fp), &fp, nullptr);
  correct_div_sqrt_ = (fp & CL_FP_CORRECTLY_ROUNDED_DIVIDE_SQRT) != 0;
  has_fp16_ = reports_fp16(device_);
}

Context::~Context() {
  if (queue_ != nullptr) {
    clFinish(queue_);
    clReleaseCommandQueue(queue_);
  }
  if (context_ != nullptr) clReleaseContext(context_);
}

std::unique_ptr<Buffer> Context::alloc(std::size_t nbytes) const {
  cl_int err = CL_SUCCESS;
  // OpenCL has no empty buffers; an empty tensor still gets one byte nobody reads.
  cl_mem mem = clCreateBuffer(context_, CL_MEM_READ_WRITE, nbytes == 0 ? 1 : nbytes, nullptr, &err);
  if (err != CL_SUCCESS) fail("allocating " + std::to_string(nbytes) + " device bytes", err);
  return std::make_unique<Buffer>(mem, nbytes);
}

void Context::write(const Buffer& buffer, const std::uint8_t* data, std::size_t nbytes) const {
  if (nbytes != buffer.nbytes())
    throw std::invalid_argument("[opencl] upload of " + std::to_string(nbytes) + " bytes into a buffer of " +
                                std::to_string(buffer.nbytes()));
  if (nbytes == 0) return;
  check(clEnqueueWriteBuffer(queue_, buffer.mem(), CL_TRUE, 0, nbytes, data, 0, nullptr, nullptr), "upload");
}

void Context::read(const Buffer& buffer, std::uint8_t* data, std::size_t nbytes) const {
  if (nbytes != buffer.nbytes())
    throw std::invalid_argument("[opencl] download of " + std::to_string(nbytes) + " bytes from a buffer of " +
                                std::to_string(buffer.nbytes()));
  if (nbytes == 0) return;
  check(clEnqueueReadBuffer(queue_, buffer.mem(), CL_TRUE, 0, nbytes, data, 0, nullptr, nullptr), "download");
}

std::unique_ptr<Program> Context::build(const std::string& source, const std::string& options,
                                        const std::string& binary) const {
  cl_int err = CL_SUCCESS;
  if (!binary.empty()) {
    const std::size_t size = binary.size();
    const unsigned char* ptr = reinterpret_cast<const unsigned char*>(binary.data());
    cl_int status = CL_SUCCESS;
    cl_program program = clCreateProgramWithBinary(context_, 1, &device_, &size, &ptr, &status, &err);
    if (err == CL_SUCCESS && status == CL_SUCCESS &&
        clBuildProgram(program, 1, &device_, options.c_str(), nullptr, nullptr) == CL_SUCCESS)
      return std::make_unique<Program>(program, true);
    // A stale or foreign binary is not an error: rebuild from source below.
    if (program != nullptr) clReleaseProgram(program);
  }
  const char* text = source.c_str();
  const std::size_t length = source.size();
  cl_program program = clCreateProgramWithSource(context_, 1, &text, &length, &err);
  check(err, "clCreateProgramWithSource");
  err = clBuildProgram(program, 1, &device_, options.c_str(), nullptr, nullptr);
  if (err != CL_SUCCESS) {
    std::size_t size = 0;
    clGetProgramBuildInfo(program, device_, CL_PROGRAM_BUILD_LOG, 0, nullptr, &size);
    std::string log(size, '\0');
    clGetProgramBuildInfo(program, device_, CL_PROGRAM_BUILD_LOG, size, log.data(), nullptr);
    clReleaseProgram(program);
    throw std::runtime_error("[opencl] kernel build failed (OpenCL error " + std::to_string(err) + "):\n" + log);
  }
  return std::make_unique<Program>(program, false);
}

Plan::Plan(const Context& context, const Program& program, std::vector<LaunchSpec> launches, int n_slots,
           int flag_slot)
    : queue_(context.queue()), n_slots_(n_slots), flag_slot_(flag_slot) {
  if (n_slots < 0 || flag_slot < -1 || flag_slot >= n_slots)
    throw std::invalid_argument("[opencl] plan: bad slot count or flag slot");
  clRetainCommandQueue(queue_);
  try {
    for (LaunchSpec& spec : launches) {
      if (spec.global.empty() || spec.global.size() > 3 ||
          (!spec.local.empty() && spec.local.size() != spec.global.size()))
        throw std::invalid_argument("[opencl] " + spec.label + ": bad work size");
      for (std::int64_t g : spec.global)
        if (g <= 0) throw std::invalid_argument("[opencl] " + spec.label + ": empty global work size");
      for (const Arg& arg : spec.args)
        if (arg.kind == ArgKind::Slot && (arg.ivalue < 0 || arg.ivalue >= n_slots))
          throw std::invalid_argument("[opencl] " + spec.label + ": buffer slot out of range");
      cl_int err = CL_SUCCESS;
      cl_kernel kernel = clCreateKernel(program.get(), spec.kernel.c_str(), &err);
      if (err != CL_SUCCESS) fail(spec.label + ": kernel '" + spec.kernel + "' lookup", err);
      launches_.push_back({kernel, std::move(spec)});
    }
  } catch (...) {
    for (Launch& l : launches_) clReleaseKernel(l.kernel);
    clReleaseCommandQueue(queue_);
    throw;
  }
}

Plan::~Plan() {
  for (Launch& l : launches_) clReleaseKernel(l.kernel);
  clReleaseCommandQueue(queue_);
}

void Plan::run(const std::vector<Buffer*>& slots) {
  if (static_cast<int>(slots.size()) != n_slots_)
    throw std::invalid_argument("[opencl] plan expects " + std::to_string(n_slots_) + " buffers, got " +
                                std::to_string(slots.size()));
  for (const Buffer* b : slots)
    if (b == nullptr) throw std::invalid_argument("[opencl] plan given a missing buffer");
  std::lock_guard<std::mutex> lock(mutex_);
  if (flag_slot_ >= 0) {
    // A fill copies its pattern when enqueued, so the host value need not outlive the call.
    const cl_int zero = 0;
    check(clEnqueueFillBuffer(queue_, slots[flag_slot_]->mem(), &zero, sizeof(zero), 0, sizeof(zero), 0, nullptr,
                              nullptr),
          "clearing the error flag");
  }
  for (Launch& l : launches_) {
    for (std::size_t i = 0; i < l.spec.args.size(); ++i) {
      const Arg& a = l.spec.args[i];
      const cl_uint index = static_cast<cl_uint>(i);
      cl_int err = CL_SUCCESS;
      if (a.kind == ArgKind::Slot) {
        cl_mem mem = slots[a.ivalue]->mem();
        err = clSetKernelArg(l.kernel, index, sizeof(mem), &mem);
      } else if (a.kind == ArgKind::Int32) {
        cl_int v = static_cast<cl_int>(a.ivalue);
        err = clSetKernelArg(l.kernel, index, sizeof(v), &v);
      } else if (a.kind == ArgKind::Int64) {
        cl_long v = static_cast<cl_long>(a.ivalue);
        err = clSetKernelArg(l.kernel, index, sizeof(v), &v);
      } else {
        cl_float v = static_cast<cl_float>(a.fvalue);
        err = clSetKernelArg(l.kernel, index, sizeof(v), &v);
      }
      if (err != CL_SUCCESS) fail(l.spec.label + ": argument " + std::to_string(i) + " of " + l.spec.kernel, err);
    }
    std::size_t global[3] = {1, 1, 1}, local[3] = {1, 1, 1};
    const cl_uint dims = static_cast<cl_uint>(l.spec.global.size());
    for (cl_uint d = 0; d < dims; ++d) {
      global[d] = static_cast<std::size_t>(l.spec.global[d]);
      if (!l.spec.local.empty()) local[d] = static_cast<std::size_t>(l.spec.local[d]);
    }
    cl_int err = clEnqueueNDRangeKernel(queue_, l.kernel, dims, nullptr, global,
                                        l.spec.local.empty() ? nullptr : local, 0, nullptr, nullptr);
    if (err != CL_SUCCESS) fail(l.spec.label + ": launching " + l.spec.kernel, err);
  }
  // The only synchronisation of the segment.
  if (flag_slot_ >= 0) {
    cl_int flag = 0;
    check(clEnqueueReadBuffer(queue_, slots[flag_slot_]->mem(), CL_TRUE, 0, sizeof(flag), &flag, 0, nullptr,
                              nullptr),
          "reading the error flag");
    if (flag > 0 && flag <= static_cast<cl_int>(launches_.size()))
      throw std::out_of_range("[opencl] " + launches_[flag - 1].spec.label + ": index out of range");
  } else {
    check(clFinish(queue_), "clFinish");
  }
}

}  // namespace walle_opencl

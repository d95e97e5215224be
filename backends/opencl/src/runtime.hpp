// OpenCL runtime objects of the backend: the device context with its in-order queue, device
// buffers, compiled programs, and a Plan (the launch list of one compiled segment).
// Nothing here touches Python; bindings.cpp releases the GIL around every blocking call.
#pragma once

#include <CL/cl.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace walle_opencl {

// Platform/device discovery without side effects: {available, reason, device description}.
struct Probe {
  bool available = false;
  std::string reason;
  std::string device;
  bool has_fp16 = false;  // the device reports cl_khr_fp16
};
Probe probe();

class Buffer {
 public:
  Buffer(cl_mem mem, std::size_t nbytes) : mem_(mem), nbytes_(nbytes) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();
  cl_mem mem() const { return mem_; }
  std::size_t nbytes() const { return nbytes_; }

 private:
  cl_mem mem_;
  std::size_t nbytes_;
};

class Program {
 public:
  Program(cl_program program, bool from_binary) : program_(program), from_binary_(from_binary) {}
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;
  ~Program();
  cl_program get() const { return program_; }
  bool from_binary() const { return from_binary_; }
  std::string binary() const;

 private:
  cl_program program_;
  bool from_binary_;
};

// One device, its context and one in-order queue. Every plan of the process enqueues here.
class Context {
 public:
  Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context();

  std::unique_ptr<Buffer> alloc(std::size_t nbytes) const;
  void write(const Buffer& buffer, const std::uint8_t* data, std::size_t nbytes) const;
  void read(const Buffer& buffer, std::uint8_t* data, std::size_t nbytes) const;
  // Builds from ``binary`` when it is non-empty and the driver accepts it, else from ``source``.
  std::unique_ptr<Program> build(const std::string& source, const std::string& options,
                                 const std::string& binary) const;

  cl_command_queue queue() const { return queue_; }
  const std::string& device_name() const { return device_name_; }
  const std::string& driver_version() const { return driver_version_; }
  const std::string& platform_name() const { return platform_name_; }
  bool correctly_rounded_divide_sqrt() const { return correct_div_sqrt_; }
  // Whether the device reports cl_khr_fp16 (half arithmetic). float16 *storage* (vload_half /
  // vstore_half) is OpenCL 1.2 core and works without it.
  bool has_fp16() const { return has_fp16_; }

 private:
  cl_device_id device_ = nullptr;
  cl_context context_ = nullptr;
  cl_command_queue queue_ = nullptr;
  std::string device_name_, driver_version_, platform_name_;
  bool correct_div_sqrt_ = false;
  bool has_fp16_ = false;
};

// One kernel argument: a buffer slot of the plan, or a scalar.
enum class ArgKind : int { Slot = 0, Int32 = 1, Int64 = 2, Float32 = 3 };
struct Arg {
  ArgKind kind;
  std::int64_t ivalue;
  double fvalue;
};

struct LaunchSpec {
  std::string kernel;
  std::vector<Arg> args;
  std::vector<std::int64_t> global;  // 1 to 3 dimensions
  std::vector<std::int64_t> local;   // empty: the driver chooses
  std::string label;                  // names the node in error messages
};

// A compiled segment: kernels in order on the context's queue, one synchronisation at the end.
// ``flag_slot`` (or -1) is an int32 buffer kernels set to launch index + 1 on a bad index.
class Plan {
 public:
  Plan(const Context& context, const Program& program, std::vector<LaunchSpec> launches, int n_slots,
       int flag_slot);
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan();
  void run(const std::vector<Buffer*>& slots);
  std::size_t size() const { return launches_.size(); }

 private:
  struct Launch {
    cl_kernel kernel;
    LaunchSpec spec;
  };
  cl_command_queue queue_;
  std::vector<Launch> launches_;
  int n_slots_;
  int flag_slot_;
  std::mutex mutex_;  // kernel arguments are per-kernel state: one run at a time per plan
};

}  // namespace walle_opencl

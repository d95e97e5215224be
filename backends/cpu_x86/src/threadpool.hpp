// The backend's own worker pool. After a loop a worker polls for the next one for a while
// (consecutive ops of one run start their loops microseconds apart, a serial op may sit between
// two loops), then sleeps on a condition variable: an idle pool uses no CPU. The caller polls the
// same way for the end of its loop. Polling first spins (kSpinMicros), then yields the core
// between checks (up to kPollMicros), so a thread of another task that is ready to run gets the
// core while the pool waits. Sleeping inside a run is what this avoids: on a virtual machine an
// idle vCPU is descheduled by the host, and waking it took about a millisecond here (SqueezeNet
// at 2 threads: runs with one sleep took 5.4 ms, runs without 4.4).
// One parallel loop runs at a time; a second concurrent caller (another Python thread running an
// executable, or a nested loop) simply runs its loop inline, which can neither deadlock nor
// oversubscribe the cores.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "common.hpp"

namespace walle {

class ThreadPool {
 public:
  // body(task, worker): worker is in [0, threads()) and is unique among concurrently running
  // bodies of one loop, so it can index per-worker scratch memory.
  using Body = FunctionRef<void(int64_t, int)>;

  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return threads_; }

  // How long a worker polls for the next loop, and the caller for the end of its loop, before
  // sleeping: spinning for the first kSpinMicros, yielding the core between checks after that.
  static constexpr int kSpinMicros = 200;
  static constexpr int kPollMicros = 2000;

  // Runs body for every task in [0, n); returns when all are done. Rethrows the first exception
  // a task threw.
  void parallel_for(int64_t n, Body body);

 private:
  struct Job {
    Body* body = nullptr;
    int64_t n = 0;
    std::atomic<int64_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
  };

  void worker_main(int worker);
  void drain(Job& job, int worker);

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex busy_;  // held by the one caller whose loop uses the workers
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  Job* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};  // written under mutex_; polled without it while spinning
  // workers that joined the current job and have not left it: changed under mutex_, also read
  // without it by the caller polling for the end of its loop
  std::atomic<int> inside_{0};
  bool stop_ = false;
};

}  // namespace walle

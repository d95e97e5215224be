#include "threadpool.hpp"

#include <emmintrin.h>

#include <chrono>
#include <thread>

namespace walle {

namespace {

// Polls until done() or kPollMicros have passed, whichever comes first: spinning for the first
// kSpinMicros, then yielding the core between checks.
template <class Done>
void poll_for(Done done) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto spin_until = start + std::chrono::microseconds(ThreadPool::kSpinMicros);
  const auto poll_until = start + std::chrono::microseconds(ThreadPool::kPollMicros);
  for (int i = 0; !done(); ++i) {
    _mm_pause();
    if ((i & 63) == 63 && Clock::now() >= spin_until) break;
  }
  while (!done()) {
    if (Clock::now() >= poll_until) return;
    std::this_thread::yield();
  }
}

}  // namespace

ThreadPool::ThreadPool(int threads) : threads_(threads < 1 ? 1 : threads) {
  for (int w = 1; w < threads_; ++w) workers_.emplace_back([this, w] { worker_main(w); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::drain(Job& job, int worker) {
  for (;;) {
    int64_t task = job.next.fetch_add(1, std::memory_order_relaxed);
    if (task >= job.n) return;
    try {
      (*job.body)(task, worker);
    } catch (...) {
      std::lock_guard<std::mutex> lock(job.error_mutex);
      if (!job.error) job.error = std::current_exception();
      job.next.store(job.n, std::memory_order_relaxed);  // stop handing out work
    }
  }
}

void ThreadPool::worker_main(int worker) {
  uint64_t seen = 0;
  for (;;) {
    // Poll for the next loop before paying for a sleep and a wake-up.
    poll_for([&] { return generation_.load(std::memory_order_acquire) != seen; });
    Job* job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
      if (!job) continue;  // woke after the caller already finished the loop alone
      ++inside_;
    }
    drain(*job, worker);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--inside_ == 0) done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, Body body) {
  if (n <= 0) return;
  std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
  if (threads_ == 1 || n == 1 || !busy.owns_lock()) {
    for (int64_t i = 0; i < n; ++i) body(i, 0);
    return;
  }
  Job job;
  job.body = &body;
  job.n = n;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &job;
    ++generation_;
  }
  wake_.notify_all();
  drain(job, 0);
  // Every task is claimed once drain returns; wait only for workers still running one. A worker
  // that has not woken up yet (the machine is busy) is not waited for: it finds no job. Their
  // last tasks end within a task's length of ours, so poll before sleeping: a sleep and
  // wake-up cost more than a small op's whole loop on a virtual machine.
  poll_for([&] { return inside_.load(std::memory_order_acquire) == 0; });
  {
    std::unique_lock<std::mutex> lock(mutex_);  // inside_ is rechecked under the lock workers join under
    done_.wait(lock, [&] { return inside_.load(std::memory_order_relaxed) == 0; });
    job_ = nullptr;
  }
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace walle

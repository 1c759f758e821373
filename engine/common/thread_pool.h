// A small fixed-size pool for data-parallel loops (the CPU scorer's widening and epilogue passes).
// The calling thread takes part, so a pool of N threads starts N - 1 workers. Workers block on a
// condition variable between jobs (no spinning, so they never compete with BLAS threads).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace scanserve {

class ThreadPool {
 public:
  // num_threads counts the caller; values < 1 mean 1. See DefaultThreadCount().
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // fn(begin, end, thread_index) for consecutive chunks of at most `grain` indices covering [0, n),
  // handed out dynamically; returns when every chunk is done. thread_index is in [0, num_threads()),
  // 0 being the caller, and no two concurrent calls of fn share one (use it to pick scratch).
  // Jobs from different calling threads are serialised. fn must not throw and must not call
  // ParallelFor on the same pool.
  void ParallelFor(int64_t n, int64_t grain,
                   const std::function<void(int64_t begin, int64_t end, int thread_index)>& fn);

  // std::thread::hardware_concurrency(), at least 1.
  static int DefaultThreadCount();

 private:
  void WorkerLoop(int thread_index);
  // Runs chunks of the current job until none is left.
  void RunChunks(int thread_index);

  std::vector<std::thread> workers_;

  std::mutex job_mu_;  // held by the caller for a whole job: serialises ParallelFor calls

  std::mutex mu_;  // guards the fields below
  std::condition_variable work_cv_;  // workers wait here for a new generation or stop_
  std::condition_variable done_cv_;  // the caller waits here for pending_ == 0
  uint64_t generation_ = 0;          // bumped once per job
  int pending_ = 0;                  // workers yet to finish the current generation
  bool stop_ = false;

  // The current job; written by the caller under mu_ before the generation bump.
  const std::function<void(int64_t, int64_t, int)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t grain_ = 1;
  std::atomic<int64_t> next_{0};  // next unclaimed index
};

}  // namespace scanserve

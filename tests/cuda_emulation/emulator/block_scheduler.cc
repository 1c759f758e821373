// CUDA emulation (tests only): a grid runs block after block on the host thread that runs its
// stream's queued work (streams.h); a
// block's threads are fibers (ucontext) that run until they reach a barrier, a warp operation or
// their end. Between those points a fiber runs alone, so a missing barrier shows as a wrong value
// when the order of the fibers changes: SCANSERVE_CUDA_EMULATION_ORDER=reverse runs them last to
// first. What the hardware leaves undefined stops the process with a message: divergent
// __syncthreads, a warp operation whose mask names an exited or absent lane, lanes of one mask at
// different operations, a block that can no longer make progress.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "scanserve_emu/faults.h"
#include "scanserve_emu/kernel_language.h"
#include "scanserve_emu/launch.h"
#include "streams.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SCANSERVE_EMU_ASAN 1
#endif

// A switch costs a few instructions on x86-64 (callee-saved registers, the stack pointer and the
// floating-point control words), where swapcontext makes a signal-mask system call each time: a
// launch of millions of threads switches twice per thread at least.
#if defined(__x86_64__)
#define SCANSERVE_EMU_FAST_SWITCH 1
extern "C" void scanserve_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl scanserve_emu_switch
  .type scanserve_emu_switch, @function
scanserve_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size scanserve_emu_switch, .-scanserve_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
#endif

namespace scanserve_emu {

// runtime_api.cc: launch validation and the sticky launch error.
cudaError_t ValidateLaunch(const LaunchConfig& config);
void SetLaunchError(cudaError_t error);

namespace {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kEntryFramesBytes = 16 * 1024;

enum class FiberState { kReady, kAtBarrier, kAtWarpOp, kDone };
enum class WarpOpKind { kSync, kShuffleXor, kCollective };

const char* WarpOpName(WarpOpKind kind) {
  switch (kind) {
    case WarpOpKind::kSync:
      return "__syncwarp";
    case WarpOpKind::kShuffleXor:
      return "__shfl_xor_sync";
    case WarpOpKind::kCollective:
      return "a warp-collective (wmma) operation";
  }
  return "?";
}

struct WarpOp {
  WarpOpKind kind = WarpOpKind::kSync;
  unsigned mask = 0;
  int line = 0;
  uint64_t in = 0, out = 0;
  int lane_mask = 0;
  void (*resolve)(void* const*, unsigned) = nullptr;
  void* lane_data = nullptr;
};

// A fiber stack with a guard page below it: an overflow faults instead of corrupting.
struct Stack {
  char* base = nullptr;  // the guard page
  char* bottom = nullptr;
  size_t size = 0;
};

Stack NewStack() {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "CUDA emulation: cannot map a fiber stack\n");
    std::abort();
  }
  mprotect(p, page, PROT_NONE);
  return Stack{static_cast<char*>(p), static_cast<char*>(p) + page, kStackBytes};
}

// An asynchronous copy not yet landed; group -1 until committed.
struct PendingCopy {
  void* dst = nullptr;
  const void* src = nullptr;
  size_t size = 0, zfill = 0;
  int64_t group = -1;
};

struct Fiber {
#ifdef SCANSERVE_EMU_FAST_SWITCH
  void* sp = nullptr;
#else
  ucontext_t context;
#endif
  Stack stack;
  uint3 thread_idx{0, 0, 0};
  int linear = 0;
  FiberState state = FiberState::kReady;
  int barrier_line = 0;
  WarpOp op;
  std::vector<PendingCopy> copies;
  int64_t groups_committed = 0;
#ifdef SCANSERVE_EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

struct BlockRun {
  const LaunchConfig* config = nullptr;
  const std::function<void()>* body = nullptr;
  uint3 block_idx{0, 0, 0};
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
#ifdef SCANSERVE_EMU_FAST_SWITCH
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler;
#endif
  void* dynamic_shared = nullptr;
#ifdef SCANSERVE_EMU_ASAN
  const void* host_stack_bottom = nullptr;
  size_t host_stack_size = 0;
  void* scheduler_fake_stack = nullptr;
#endif
};

thread_local BlockRun* g_run = nullptr;
// A host thread's fiber stacks, reused launch after launch and unmapped when the thread exits:
// servers launch from threads that come and go (gRPC's), and each stack is two mappings, so
// leaked ones would reach the kernel's map limit (vm.max_map_count) after a few dozen threads.
struct StackPool {
  std::vector<Stack> stacks;
  ~StackPool() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    for (const Stack& s : stacks) munmap(s.base, s.size + page);
  }
};
thread_local StackPool g_stacks;

[[noreturn]] void Fail(const std::string& what) {
  const BlockRun* run = g_run;
  if (run != nullptr) {
    std::fprintf(stderr, "CUDA emulation: kernel %s, block (%u,%u,%u) of (%u,%u,%u), %u threads: %s\n",
                 run->config->name, run->block_idx.x, run->block_idx.y, run->block_idx.z,
                 run->config->grid.x, run->config->grid.y, run->config->grid.z,
                 run->config->block.x * run->config->block.y * run->config->block.z, what.c_str());
  } else {
    std::fprintf(stderr, "CUDA emulation: %s\n", what.c_str());
  }
  std::abort();
}

BlockRun& Run() {
  if (g_run == nullptr || g_run->current == nullptr) {
    Fail("a device built-in was used outside a kernel");
  }
  return *g_run;
}

// Fiber -> scheduler.
void Yield() {
  BlockRun& run = Run();
  Fiber* self = run.current;
#ifdef SCANSERVE_EMU_ASAN
  __sanitizer_start_switch_fiber(self->state == FiberState::kDone ? nullptr : &self->fake_stack,
                                 run.host_stack_bottom, run.host_stack_size);
#endif
#ifdef SCANSERVE_EMU_FAST_SWITCH
  scanserve_emu_switch(&self->sp, run.scheduler_sp);
#else
  swapcontext(&self->context, &run.scheduler);
#endif
#ifdef SCANSERVE_EMU_ASAN
  __sanitizer_finish_switch_fiber(self->fake_stack, nullptr, nullptr);
#endif
}

void FiberEntry() {
#ifdef SCANSERVE_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_run->host_stack_bottom, &g_run->host_stack_size);
#endif
  (*g_run->body)();
  g_run->current->state = FiberState::kDone;
  Yield();
  Fail("a finished fiber was resumed");
}

// Scheduler -> fiber, until it blocks or ends.
void Resume(BlockRun& run, Fiber& f) {
  run.current = &f;
#ifdef SCANSERVE_EMU_ASAN
  __sanitizer_start_switch_fiber(&run.scheduler_fake_stack, f.stack.bottom, f.stack.size);
#endif
#ifdef SCANSERVE_EMU_FAST_SWITCH
  scanserve_emu_switch(&run.scheduler_sp, f.sp);
#else
  swapcontext(&run.scheduler, &f.context);
#endif
#ifdef SCANSERVE_EMU_ASAN
  __sanitizer_finish_switch_fiber(run.scheduler_fake_stack, nullptr, nullptr);
#endif
  run.current = nullptr;
}

std::string Describe(const Fiber& f) {
  char buf[128];
  switch (f.state) {
    case FiberState::kReady:
      return "ready";
    case FiberState::kDone:
      return "exited";
    case FiberState::kAtBarrier:
      std::snprintf(buf, sizeof(buf), "at __syncthreads (line %d)", f.barrier_line);
      return buf;
    case FiberState::kAtWarpOp:
      std::snprintf(buf, sizeof(buf), "at %s (line %d, mask %08x)", WarpOpName(f.op.kind),
                    f.op.line, f.op.mask);
      return buf;
  }
  return "?";
}

// Completes the warp operations whose lanes have all arrived. Returns whether any did.
bool ResolveWarpOps(BlockRun& run) {
  bool resolved = false;
  const int n = static_cast<int>(run.fibers.size());
  for (int warp_begin = 0; warp_begin < n; warp_begin += kWarp) {
    Fiber* lanes[kWarp] = {};
    for (int l = 0; l < kWarp && warp_begin + l < n; ++l) lanes[l] = &run.fibers[warp_begin + l];
    for (int l = 0; l < kWarp; ++l) {
      if (lanes[l] == nullptr || lanes[l]->state != FiberState::kAtWarpOp) continue;
      const WarpOp& op = lanes[l]->op;
      bool all_arrived = true;
      for (int m = 0; m < kWarp; ++m) {
        if ((op.mask >> m & 1u) == 0) continue;
        const Fiber* other = lanes[m];
        if (other == nullptr) {
          Fail("lane " + std::to_string(l) + " of warp " + std::to_string(warp_begin / kWarp) +
               " waits " + Describe(*lanes[l]) + " on lane " + std::to_string(m) +
               ", which the block does not have");
        }
        if (other->state == FiberState::kDone) {
          Fail("lane " + std::to_string(l) + " of warp " + std::to_string(warp_begin / kWarp) +
               " waits " + Describe(*lanes[l]) + " on lane " + std::to_string(m) +
               ", which has exited");
        }
        if (other->state != FiberState::kAtWarpOp) {
          all_arrived = false;
          continue;
        }
        const bool same = other->op.kind == op.kind && other->op.mask == op.mask &&
                          (op.kind == WarpOpKind::kSync || other->op.line == op.line) &&
                          other->op.resolve == op.resolve;
        if (!same) {
          Fail("lanes " + std::to_string(l) + " and " + std::to_string(m) + " of warp " +
               std::to_string(warp_begin / kWarp) + " meet at different warp operations: " +
               Describe(*lanes[l]) + " and " + Describe(*other));
        }
      }
      if (!all_arrived) continue;
      if (op.kind == WarpOpKind::kShuffleXor) {
        for (int m = 0; m < kWarp; ++m) {
          if ((op.mask >> m & 1u) == 0) continue;
          const int src = m ^ lanes[m]->op.lane_mask;
          if (src >= kWarp || (op.mask >> src & 1u) == 0) {
            Fail("__shfl_xor_sync (line " + std::to_string(op.line) + "): lane " +
                 std::to_string(m) + " reads lane " + std::to_string(src) +
                 ", which is not in the mask");
          }
          lanes[m]->op.out = lanes[src]->op.in;
        }
      } else if (op.kind == WarpOpKind::kCollective) {
        void* data[kWarp] = {};
        for (int m = 0; m < kWarp; ++m) {
          if (op.mask >> m & 1u) data[m] = lanes[m]->op.lane_data;
        }
        op.resolve(data, op.mask);
      }
      const unsigned mask = op.mask;
      for (int m = 0; m < kWarp; ++m) {
        if (mask >> m & 1u) lanes[m]->state = FiberState::kReady;
      }
      resolved = true;
    }
  }
  return resolved;
}

// Releases __syncthreads once every live thread waits there. Returns whether it did.
bool ReleaseBarrier(BlockRun& run) {
  const Fiber* first = nullptr;
  for (const Fiber& f : run.fibers) {
    if (f.state == FiberState::kDone) continue;
    if (f.state != FiberState::kAtBarrier) return false;
    if (first == nullptr) {
      first = &f;
    } else if (f.barrier_line != first->barrier_line) {
      Fail("divergent __syncthreads: thread " + std::to_string(first->linear) + " " +
           Describe(*first) + ", thread " + std::to_string(f.linear) + " " + Describe(f));
    }
  }
  if (first == nullptr) return false;
  for (Fiber& f : run.fibers) {
    if (f.state == FiberState::kAtBarrier) f.state = FiberState::kReady;
  }
  return true;
}

[[noreturn]] void Deadlock(const BlockRun& run) {
  std::string states;
  for (const Fiber& f : run.fibers) {
    if (f.state == FiberState::kDone) continue;
    states += "\n  thread " + std::to_string(f.linear) + ": " + Describe(f);
    if (states.size() > 4000) {
      states += "\n  ...";
      break;
    }
  }
  Fail("no thread can make progress:" + states);
}

void RunBlock(BlockRun& run) {
  for (Fiber& f : run.fibers) {
    f.state = FiberState::kReady;
    f.copies.clear();
    f.groups_committed = 0;
#ifdef SCANSERVE_EMU_ASAN
    // A finished fiber's kernel frames have returned, but FiberEntry's and Yield's never do: clear
    // their redzones at the top of the stack before it is reused.
    ASAN_UNPOISON_MEMORY_REGION(f.stack.bottom + f.stack.size - kEntryFramesBytes, kEntryFramesBytes);
#endif
#ifdef SCANSERVE_EMU_FAST_SWITCH
    // The frame scanserve_emu_switch pops: control words, six registers, then FiberEntry as the
    // return address, entered with the stack aligned as after a call.
    auto* top = reinterpret_cast<uint64_t*>(f.stack.bottom + f.stack.size);
    uint64_t* sp = top - 9;
    const uint32_t mxcsr = 0x1f80;
    const uint16_t fpu_control = 0x037f;
    std::memcpy(sp, &mxcsr, sizeof(mxcsr));
    std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpu_control, sizeof(fpu_control));
    for (int r = 1; r <= 6; ++r) sp[r] = 0;
    sp[7] = reinterpret_cast<uint64_t>(&FiberEntry);
    sp[8] = 0;  // FiberEntry's return address: it never returns
    f.sp = sp;
#else
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.bottom;
    f.context.uc_stack.ss_size = f.stack.size;
    f.context.uc_link = nullptr;
    makecontext(&f.context, &FiberEntry, 0);
#endif
  }
  const int n = static_cast<int>(run.fibers.size());
  const bool reverse = ReverseOrder();
  while (true) {
    for (int k = 0; k < n; ++k) {
      Fiber& f = run.fibers[reverse ? n - 1 - k : k];
      if (f.state == FiberState::kReady) Resume(run, f);
    }
    bool all_done = true;
    for (const Fiber& f : run.fibers) all_done = all_done && f.state == FiberState::kDone;
    if (all_done) {
      for (const Fiber& f : run.fibers) {
        if (!f.copies.empty()) {
          Fail("thread " + std::to_string(f.linear) + " exited with " +
               std::to_string(f.copies.size()) +
               " asynchronous copies it never waited for (__pipeline_wait_prior)");
        }
      }
      return;
    }
    if (ResolveWarpOps(run)) continue;
    if (ReleaseBarrier(run)) continue;
    Deadlock(run);
  }
}

}  // namespace

const uint3& ThreadIdx() { return Run().current->thread_idx; }
const uint3& BlockIdx() { return Run().block_idx; }
const dim3& BlockDim() { return Run().config->block; }
const dim3& GridDim() { return Run().config->grid; }
void* DynamicShared() { return Run().dynamic_shared; }

void SyncThreads(int line) {
  Fiber* self = Run().current;
  self->state = FiberState::kAtBarrier;
  self->barrier_line = line;
  Yield();
}

namespace {
uint64_t WaitWarpOp(const WarpOp& op) {
  Fiber* self = Run().current;
  const int lane = self->linear % kWarp;
  if ((op.mask >> lane & 1u) == 0) {
    Fail("thread " + std::to_string(self->linear) + " calls " + WarpOpName(op.kind) +
         " (line " + std::to_string(op.line) + ") with a mask that leaves out its own lane");
  }
  self->op = op;
  self->state = FiberState::kAtWarpOp;
  Yield();
  return self->op.out;
}
}  // namespace

void SyncWarp(unsigned mask, int line) {
  WarpOp op;
  op.kind = WarpOpKind::kSync;
  op.mask = mask;
  op.line = line;
  WaitWarpOp(op);
}

uint64_t ShuffleXor(unsigned mask, uint64_t bits, int lane_mask, int width, int line) {
  if (width != kWarp) Fail("__shfl_xor_sync with a width other than 32 is not emulated");
  WarpOp op;
  op.kind = WarpOpKind::kShuffleXor;
  op.mask = mask;
  op.line = line;
  op.in = bits;
  op.lane_mask = lane_mask;
  return WaitWarpOp(op);
}

void WarpCollective(unsigned mask, int line, void (*resolve)(void* const*, unsigned),
                    void* lane_data) {
  WarpOp op;
  op.kind = WarpOpKind::kCollective;
  op.mask = mask;
  op.line = line;
  op.resolve = resolve;
  op.lane_data = lane_data;
  WaitWarpOp(op);
}

namespace {
void Land(const PendingCopy& c) {
  std::memcpy(c.dst, c.src, c.size - c.zfill);
  std::memset(static_cast<char*>(c.dst) + (c.size - c.zfill), 0, c.zfill);
}
}  // namespace

void AsyncCopy(void* dst_shared, const void* src_global, size_t size, size_t zfill) {
  BlockRun& run = Run();
  if (size != 4 && size != 8 && size != 16) {
    Fail("__pipeline_memcpy_async of " + std::to_string(size) + " bytes (4, 8 or 16)");
  }
  if (zfill > size) Fail("__pipeline_memcpy_async zero-fills more than it copies");
  const auto dst = reinterpret_cast<uintptr_t>(dst_shared);
  const auto shared = reinterpret_cast<uintptr_t>(run.dynamic_shared);
  if (run.dynamic_shared == nullptr || dst < shared ||
      dst + size > shared + run.config->shared_bytes) {
    Fail("__pipeline_memcpy_async into memory that is not the launch's dynamic shared memory");
  }
  if (dst % size != 0 || reinterpret_cast<uintptr_t>(src_global) % size != 0) {
    Fail("__pipeline_memcpy_async of " + std::to_string(size) + " bytes, not aligned to its size");
  }
  const PendingCopy copy{dst_shared, src_global, size, zfill, -1};
  if (ReverseOrder()) {
    Land(copy);  // as early as it may land
    return;
  }
  run.current->copies.push_back(copy);
}

void AsyncCommit() {
  Fiber* self = Run().current;
  for (PendingCopy& c : self->copies) {
    if (c.group < 0) c.group = self->groups_committed;
  }
  ++self->groups_committed;
}

void AsyncWaitPrior(size_t prior) {
  Fiber* self = Run().current;
  const int64_t newest_kept = self->groups_committed - static_cast<int64_t>(prior);
  size_t kept = 0;  // in place, in issue order: a wait per k step and thread
  for (const PendingCopy& c : self->copies) {
    if (c.group >= 0 && c.group < newest_kept) {
      Land(c);
    } else {
      self->copies[kept++] = c;
    }
  }
  self->copies.resize(kept);
}

namespace {

// Every block of the grid, one after another, on the host thread that runs the stream's work.
void RunGridNow(const LaunchConfig& config, const std::function<void()>& thread_body) {
  if (g_run != nullptr) Fail("a kernel launched another kernel (not emulated)");
  const int threads = static_cast<int>(config.block.x * config.block.y * config.block.z);
  BlockRun run;
  run.config = &config;
  run.body = &thread_body;
  run.fibers.resize(static_cast<size_t>(threads));
  while (g_stacks.stacks.size() < run.fibers.size()) g_stacks.stacks.push_back(NewStack());
  for (int t = 0; t < threads; ++t) {
    Fiber& f = run.fibers[static_cast<size_t>(t)];
    f.stack = g_stacks.stacks[static_cast<size_t>(t)];
    f.linear = t;
    f.thread_idx = uint3{t % config.block.x, (t / config.block.x) % config.block.y,
                         t / (config.block.x * config.block.y)};
  }
  // Dynamic shared memory: its exact size (so AddressSanitizer sees overruns), filled with a NaN
  // pattern each block, as uninitialised shared memory holds whatever the last block left.
  std::vector<unsigned char> shared;
  void* shared_ptr = nullptr;
  if (config.shared_bytes > 0) {
    if (posix_memalign(&shared_ptr, 128, config.shared_bytes) != 0) Fail("no host memory");
  }
  run.dynamic_shared = shared_ptr;
  g_run = &run;
  for (unsigned z = 0; z < config.grid.z; ++z) {
    for (unsigned y = 0; y < config.grid.y; ++y) {
      for (unsigned x = 0; x < config.grid.x; ++x) {
        run.block_idx = uint3{x, y, z};
        if (shared_ptr != nullptr) std::memset(shared_ptr, 0xff, config.shared_bytes);
        RunBlock(run);
      }
    }
  }
  g_run = nullptr;
  std::free(shared_ptr);
}

}  // namespace

void EnqueueGrid(const LaunchConfig& config, std::function<void()> thread_body) {
  const cudaError_t error = ValidateLaunch(config);
  if (error != cudaSuccess) {
    SetLaunchError(error);
    return;
  }
  if (ShouldFail(FaultPoint::kLaunch)) {
    SetLaunchError(cudaErrorLaunchOutOfResources);
    return;
  }
  Enqueue(config.stream, [config, body = std::move(thread_body)] { RunGridNow(config, body); });
}

}  // namespace scanserve_emu

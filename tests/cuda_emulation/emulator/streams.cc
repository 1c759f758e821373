// CUDA emulation (tests only): deferred stream execution; see streams.h.
#include "streams.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <set>
#include <string>
#include <utility>

namespace {

struct Pending {
  enum class Kind { kRun, kRecord, kWait };
  Kind kind = Kind::kRun;
  uint64_t seq = 0;  // issue order over all streams
  std::function<void()> run;
  CUevent_st* event = nullptr;  // kRecord, kWait
  uint64_t generation = 0;      // kRecord: the record's number; kWait: the record awaited
};

}  // namespace

struct CUstream_st {
  unsigned flags = 0;
  std::deque<Pending> queue;
  uint64_t done_seq = 0;  // seq of the last operation that ran (streams run in order)
};
struct CUevent_st {
  unsigned flags = 0;
  uint64_t recorded = 0;   // records issued
  uint64_t completed = 0;  // the latest record that has run
};

namespace scanserve_emu {
namespace {

struct Scheduler {
  std::mutex mu;      // the queues, streams and events
  std::mutex run_mu;  // one host thread runs device work at a time
  std::set<CUstream_st*> streams;
  std::set<CUevent_st*> events;
  uint64_t next_seq = 0;
};
Scheduler& Get() {
  static Scheduler* scheduler = new Scheduler;
  return *scheduler;
}

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "CUDA emulation: %s\n", what.c_str());
  std::abort();
}

bool Runnable(const Pending& p) {
  return p.kind != Pending::Kind::kWait || p.event->completed >= p.generation;
}

// Runs queued work until done() holds (checked under mu). The caller holds run_mu.
template <typename Done>
void DrainLocked(Scheduler& s, Done done) {
  const bool newest_first = ReverseOrder();
  while (true) {
    Pending op;
    CUstream_st* from = nullptr;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      if (done()) return;
      for (CUstream_st* st : s.streams) {
        if (st->queue.empty() || !Runnable(st->queue.front())) continue;
        if (from == nullptr || (newest_first ? st->queue.front().seq > from->queue.front().seq
                                             : st->queue.front().seq < from->queue.front().seq)) {
          from = st;
        }
      }
      if (from == nullptr) {
        Fail("stream deadlock: every stream with queued work waits on an event whose record "
             "cannot run");
      }
      op = std::move(from->queue.front());
      from->queue.pop_front();
      if (op.kind != Pending::Kind::kRun) {
        if (op.kind == Pending::Kind::kRecord) {
          op.event->completed = std::max(op.event->completed, op.generation);
        }
        from->done_seq = op.seq;
        continue;
      }
    }
    op.run();
    std::lock_guard<std::mutex> lock(s.mu);
    from->done_seq = op.seq;  // `from` lives: destroying it drains under run_mu first
  }
}

bool AllEmpty(const Scheduler& s) {
  for (const CUstream_st* st : s.streams) {
    if (!st->queue.empty()) return false;
  }
  return true;
}

// Queues p on stream (not nullptr) and returns its seq.
uint64_t Push(Scheduler& s, cudaStream_t stream, Pending p) {
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.streams.count(stream) == 0) Fail("work queued on a destroyed or unknown stream");
  p.seq = ++s.next_seq;
  const uint64_t seq = p.seq;
  stream->queue.push_back(std::move(p));
  return seq;
}

}  // namespace

bool ReverseOrder() {
  static const bool reverse = [] {
    const char* v = std::getenv("SCANSERVE_CUDA_EMULATION_ORDER");
    return v != nullptr && std::strcmp(v, "reverse") == 0;
  }();
  return reverse;
}

bool StreamExists(cudaStream_t stream) {
  if (stream == nullptr) return true;
  Scheduler& s = Get();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.streams.count(stream) > 0;
}

bool EventExists(cudaEvent_t event) {
  Scheduler& s = Get();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.events.count(event) > 0;
}

void Enqueue(cudaStream_t stream, std::function<void()> op) {
  Scheduler& s = Get();
  if (stream == nullptr) {
    std::lock_guard<std::mutex> run(s.run_mu);
    DrainLocked(s, [&] { return AllEmpty(s); });
    op();
    return;
  }
  Pending p;
  p.run = std::move(op);
  Push(s, stream, std::move(p));
}

void EnqueueAndWait(cudaStream_t stream, std::function<void()> op) {
  Scheduler& s = Get();
  if (stream == nullptr) {
    Enqueue(stream, std::move(op));
    return;
  }
  Pending p;
  p.run = std::move(op);
  const uint64_t seq = Push(s, stream, std::move(p));
  std::lock_guard<std::mutex> run(s.run_mu);
  DrainLocked(s, [&] { return stream->done_seq >= seq; });
}

cudaStream_t CreateStream(unsigned flags) {
  auto* stream = new CUstream_st;
  stream->flags = flags;
  Scheduler& s = Get();
  std::lock_guard<std::mutex> lock(s.mu);
  s.streams.insert(stream);
  return stream;
}

void DestroyStream(cudaStream_t stream) {
  SynchronizeStream(stream);
  Scheduler& s = Get();
  std::lock_guard<std::mutex> run(s.run_mu);
  std::lock_guard<std::mutex> lock(s.mu);
  s.streams.erase(stream);
  delete stream;
}

cudaEvent_t CreateEvent(unsigned flags) {
  auto* event = new CUevent_st;
  event->flags = flags;
  Scheduler& s = Get();
  std::lock_guard<std::mutex> lock(s.mu);
  s.events.insert(event);
  return event;
}

void DestroyEvent(cudaEvent_t event) {
  // Queued records and waits name the event: let them run first.
  SynchronizeDevice();
  Scheduler& s = Get();
  std::lock_guard<std::mutex> run(s.run_mu);
  std::lock_guard<std::mutex> lock(s.mu);
  s.events.erase(event);
  delete event;
}

void RecordEvent(cudaEvent_t event, cudaStream_t stream) {
  Scheduler& s = Get();
  if (stream == nullptr) {
    std::lock_guard<std::mutex> run(s.run_mu);
    DrainLocked(s, [&] { return AllEmpty(s); });
    std::lock_guard<std::mutex> lock(s.mu);
    event->completed = ++event->recorded;
    return;
  }
  Pending p;
  p.kind = Pending::Kind::kRecord;
  p.event = event;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    p.generation = ++event->recorded;
  }
  Push(s, stream, std::move(p));
}

void WaitEvent(cudaStream_t stream, cudaEvent_t event) {
  Scheduler& s = Get();
  Pending p;
  p.kind = Pending::Kind::kWait;
  p.event = event;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    p.generation = event->recorded;
    if (event->completed >= p.generation) return;  // nothing to wait for
  }
  if (stream == nullptr) {
    SynchronizeEvent(event);
    return;
  }
  Push(s, stream, std::move(p));
}

void SynchronizeStream(cudaStream_t stream) {
  if (stream == nullptr) {
    SynchronizeDevice();
    return;
  }
  Scheduler& s = Get();
  std::lock_guard<std::mutex> run(s.run_mu);
  DrainLocked(s, [&] { return stream->queue.empty(); });
}

void SynchronizeEvent(cudaEvent_t event) {
  Scheduler& s = Get();
  uint64_t target = 0;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    target = event->recorded;
  }
  std::lock_guard<std::mutex> run(s.run_mu);
  DrainLocked(s, [&] { return event->completed >= target; });
}

void SynchronizeDevice() {
  Scheduler& s = Get();
  std::lock_guard<std::mutex> run(s.run_mu);
  DrainLocked(s, [&] { return AllEmpty(s); });
}

}  // namespace scanserve_emu

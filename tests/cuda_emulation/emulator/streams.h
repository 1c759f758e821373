// CUDA emulation (tests only): streams and events. Work enqueued on a stream does not run when it
// is enqueued: it waits in the stream's queue until the host synchronises on something that needs
// it (a stream, an event, the device, a copy into pageable memory, the legacy default stream).
// Then queued work runs in an order the hardware could have chosen: each stream in its own order,
// a cudaStreamWaitEvent holding its stream until the event's record has run, and otherwise, among
// the streams, oldest first or (SCANSERVE_CUDA_EMULATION_ORDER=reverse) newest first. So a missing
// event dependency between two streams, or a host buffer reused before the copy reading it ran,
// shows as a wrong result in one order or the other.
#pragma once

#include <cstdint>
#include <functional>

#include "cuda_runtime_api.h"

namespace scanserve_emu {

// SCANSERVE_CUDA_EMULATION_ORDER=reverse: a block's threads last to first, streams newest first.
bool ReverseOrder();

bool StreamExists(cudaStream_t stream);  // nullptr, the legacy default stream, always exists
bool EventExists(cudaEvent_t event);

// Queues `op` on `stream`. On the legacy default stream (nullptr) it runs now, after all queued
// work, as that stream waits for every blocking stream (and the emulation for all of them).
void Enqueue(cudaStream_t stream, std::function<void()> op);
// Queues `op` and returns once it (and so everything before it on `stream`) has run: the
// runtime's copies into pageable host memory return only once complete.
void EnqueueAndWait(cudaStream_t stream, std::function<void()> op);

cudaStream_t CreateStream(unsigned flags);
// Runs what the stream still has queued (the runtime defers the release until it has), then
// destroys it.
void DestroyStream(cudaStream_t stream);
cudaEvent_t CreateEvent(unsigned flags);
void DestroyEvent(cudaEvent_t event);

void RecordEvent(cudaEvent_t event, cudaStream_t stream);
// Later work on `stream` waits until the event's most recent record (as of this call) has run.
void WaitEvent(cudaStream_t stream, cudaEvent_t event);

// Run queued work until the stream is empty / the event's latest record has run / every stream
// is empty.
void SynchronizeStream(cudaStream_t stream);
void SynchronizeEvent(cudaEvent_t event);
void SynchronizeDevice();

}  // namespace scanserve_emu

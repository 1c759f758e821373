// CUDA emulation (tests only): the asynchronous global -> shared copies of cuda_pipeline.h
// (cp.async). A copy lands as late as the hardware may let it, at the __pipeline_wait_prior that
// covers it, or, in the reverse thread order, as early, when it is issued; so a read before the
// wait shows in one order and a refill of a stage other threads still read shows in the other
// (block_scheduler.cc).
#pragma once

#include <cstddef>

#include "scanserve_emu/kernel_language.h"

inline void __pipeline_memcpy_async(void* dst_shared, const void* src_global, size_t size_and_align,
                                    size_t zfill = 0) {
  scanserve_emu::AsyncCopy(dst_shared, src_global, size_and_align, zfill);
}
inline void __pipeline_commit() { scanserve_emu::AsyncCommit(); }
inline void __pipeline_wait_prior(size_t prior) { scanserve_emu::AsyncWaitPrior(prior); }

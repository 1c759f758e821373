// CUDA emulation (tests only): the runtime API plus the kernel language, so that a .cu file whose
// launches tests/cuda_emulation/rewrite_launches.cmake has rewritten compiles as C++ and runs on
// the CPU.
#pragma once

#include "cuda_runtime_api.h"
#include "scanserve_emu/kernel_language.h"
#include "scanserve_emu/launch.h"

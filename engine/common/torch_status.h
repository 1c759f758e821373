// LibTorch reports errors by throwing (c10::Error, or a std::exception from below it); the engine
// boundary speaks absl::Status. Include only from the .cc files that use LibTorch: this header
// includes c10, whose macros must not reach the engine's public headers.
#pragma once

#include <exception>
#include <string>

#include <c10/util/Exception.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace scanserve {

// The status of an exception LibTorch threw during `what` (e.g. "encoding captions"):
// RESOURCE_EXHAUSTED when an allocation failed (CUDA or CPU memory: the caller may retry later or
// with less), INTERNAL otherwise. The message is "<what>: <LibTorch's message>", without the C++
// backtrace c10::Error appends.
inline absl::Status TorchErrorStatus(absl::string_view what, const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  const std::string message = c10_error != nullptr ? c10_error->what_without_backtrace() : e.what();
  // LibTorch 2.x throws OutOfMemoryError for CPU and CUDA allocations; 1.13 a plain c10::Error
  // for the CPU ("DefaultCPUAllocator: can't allocate memory").
  bool out_of_memory = dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr;
  for (const char* words : {"out of memory", "not enough memory", "can't allocate memory"}) {
    out_of_memory = out_of_memory || message.find(words) != std::string::npos;
  }
  if (out_of_memory) return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory: ", message));
  return absl::InternalError(absl::StrCat(what, ": ", message));
}

// fn() (returning absl::Status or absl::StatusOr<T>), with what it throws as TorchErrorStatus.
template <typename Fn>
auto CatchTorch(absl::string_view what, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return TorchErrorStatus(what, e);
  }
}

}  // namespace scanserve

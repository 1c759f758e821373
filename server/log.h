// Minimal logging for the server process: one line per event on stderr, with a UTC timestamp and a
// level. (Debian's Abseil predates absl/log.) Thread-safe: each line is written with one call.
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace scanserve {

enum class LogLevel { kInfo, kWarning, kError };

void Log(LogLevel level, absl::string_view message);

}  // namespace scanserve

// A stack trace on stderr when the process dies of a fatal signal (SIGSEGV, SIGBUS, SIGILL,
// SIGFPE, SIGABRT: a failed assertion inside a library, such as Debian's RocksDB, which is built
// with its assertions on), in the log's format, before the process dies of the signal as it would
// have (exit status, core dump).
#pragma once

#include <chrono>

#include "server/log.h"

namespace scanserve {

// Call once, early in main.
void InstallCrashReport();

// The format of the report's lines (text until set).
void SetCrashReportFormat(LogFormat format);

// One line of the report, newline included, written into `out` (`size` bytes, at least 128)
// without allocating, as a signal handler must: "F <time> scanserve: <message>" or
// {"time":...,"level":"fatal","source":"crash","msg":...} with the message escaped and cut to fit.
// Returns its length.
int FormatCrashLine(LogFormat format, const char* message, std::chrono::system_clock::time_point now,
                    char* out, int size);

}  // namespace scanserve

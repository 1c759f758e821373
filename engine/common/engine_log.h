// The engine's own messages (a store reopened after an I/O error, a scorer out of sync): to stderr
// by default, or to a sink the embedding program installs, such as the server's log, so that they
// carry its timestamps and, in JSON mode, parse like every other line.
#pragma once

#include <string_view>

namespace scanserve {

enum class EngineLogLevel { kInfo, kWarning, kError };

// Receives each message, without a trailing newline; it may be called from any thread.
using EngineLogSink = void (*)(EngineLogLevel level, std::string_view message);

// Installs `sink` (nullptr: stderr again). Install it before the engine runs.
void SetEngineLogSink(EngineLogSink sink);

void EngineLog(EngineLogLevel level, std::string_view message);

}  // namespace scanserve

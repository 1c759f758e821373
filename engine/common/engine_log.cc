#include "engine/common/engine_log.h"

#include <atomic>
#include <cstdio>
#include <string>

namespace scanserve {
namespace {

std::atomic<EngineLogSink> g_sink{nullptr};

}  // namespace

void SetEngineLogSink(EngineLogSink sink) { g_sink = sink; }

void EngineLog(EngineLogLevel level, std::string_view message) {
  if (EngineLogSink sink = g_sink.load()) {
    sink(level, message);
    return;
  }
  std::string line(message);
  line.push_back('\n');
  std::fwrite(line.data(), 1, line.size(), stderr);  // one call: lines of threads do not interleave
}

}  // namespace scanserve

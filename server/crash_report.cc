#include "server/crash_report.h"

#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>

namespace scanserve {
namespace {

std::atomic<int> g_format{static_cast<int>(LogFormat::kText)};

constexpr int kFatalSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

// A fixed-capacity string in static storage: the handler may not allocate.
class LineBuffer {
 public:
  LineBuffer(char* data, int capacity) : data_(data), capacity_(capacity) {}
  void Add(const char* s) {
    while (*s != '\0' && size_ < capacity_) data_[size_++] = *s++;
  }
  void Add(char c) {
    if (size_ < capacity_) data_[size_++] = c;
  }
  void AddDecimal(uint64_t v, int min_digits) {
    char digits[24];
    int n = 0;
    do {
      digits[n++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v != 0 || n < min_digits);
    while (n > 0) Add(digits[--n]);
  }
  void AddHex(uintptr_t v) {
    static constexpr char kHex[] = "0123456789abcdef";
    char digits[2 * sizeof(v)];
    int n = 0;
    do {
      digits[n++] = kHex[v & 15];
      v >>= 4;
    } while (v != 0);
    Add("0x");
    while (n > 0) Add(digits[--n]);
  }
  int size() const { return size_; }
  int capacity() const { return capacity_; }

 private:
  char* data_;
  int capacity_;
  int size_ = 0;
};

// 2026-11-30T19:24:33.630Z, as the log writes it, from the civil calendar (no gmtime: not
// async-signal-safe).
void AddTimestamp(LineBuffer* line, std::chrono::system_clock::time_point now) {
  const int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  int64_t days = ms / 86400000;
  int64_t rest = ms % 86400000;
  if (rest < 0) {
    rest += 86400000;
    --days;
  }
  // Howard Hinnant's days_from_civil, inverted.
  const int64_t z = days + 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const int64_t doe = z - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const int64_t mp = (5 * doy + 2) / 153;
  const int64_t day = doy - (153 * mp + 2) / 5 + 1;
  const int64_t month = mp < 10 ? mp + 3 : mp - 9;
  const int64_t year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  line->AddDecimal(static_cast<uint64_t>(year), 4);
  line->Add('-');
  line->AddDecimal(static_cast<uint64_t>(month), 2);
  line->Add('-');
  line->AddDecimal(static_cast<uint64_t>(day), 2);
  line->Add('T');
  line->AddDecimal(static_cast<uint64_t>(rest / 3600000), 2);
  line->Add(':');
  line->AddDecimal(static_cast<uint64_t>(rest / 60000 % 60), 2);
  line->Add(':');
  line->AddDecimal(static_cast<uint64_t>(rest / 1000 % 60), 2);
  line->Add('.');
  line->AddDecimal(static_cast<uint64_t>(rest % 1000), 3);
  line->Add('Z');
}

void WriteAll(const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = write(STDERR_FILENO, data, size);
    if (n <= 0) return;
    data += n;
    size -= static_cast<size_t>(n);
  }
}

void WriteCrashLine(const char* message) {
  static char line[2048];
  const int n = FormatCrashLine(static_cast<LogFormat>(g_format.load()), message, std::chrono::system_clock::now(),
                                line, sizeof(line));
  WriteAll(line, static_cast<size_t>(n));
}

const char* FatalSignalName(int signal) {
  switch (signal) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGILL: return "SIGILL";
    case SIGFPE: return "SIGFPE";
    case SIGABRT: return "SIGABRT";
    default: return "a fatal signal";
  }
}

std::atomic<bool> g_reporting{false};

extern "C" void OnFatalSignal(int signal) {
  // A second fault while reporting (or in another thread) only waits for the default action.
  if (!g_reporting.exchange(true)) {
    static char message[1024];
    LineBuffer text(message, sizeof(message) - 1);
    text.Add("crash: ");
    text.Add(FatalSignalName(signal));
    text.Add(" in process ");
    text.AddDecimal(static_cast<uint64_t>(getpid()), 1);
    text.Add("; stack (demangle with c++filt):");
    message[text.size()] = '\0';
    WriteCrashLine(message);

    static void* frames[64];
    const int depth = backtrace(frames, 64);
    for (int i = 1; i < depth; ++i) {  // frame 0 is this handler
      LineBuffer frame(message, sizeof(message) - 1);
      frame.Add("  #");
      frame.AddDecimal(static_cast<uint64_t>(i - 1), 1);
      frame.Add(' ');
      frame.AddHex(reinterpret_cast<uintptr_t>(frames[i]));
      Dl_info info;
      if (dladdr(frames[i], &info) != 0 && info.dli_fname != nullptr) {
        frame.Add(' ');
        const char* base = std::strrchr(info.dli_fname, '/');
        frame.Add(base != nullptr ? base + 1 : info.dli_fname);
        if (info.dli_sname != nullptr) {
          frame.Add(' ');
          frame.Add(info.dli_sname);
          frame.Add("+");
          frame.AddHex(reinterpret_cast<uintptr_t>(frames[i]) - reinterpret_cast<uintptr_t>(info.dli_saddr));
        } else {
          frame.Add("+");
          frame.AddHex(reinterpret_cast<uintptr_t>(frames[i]) - reinterpret_cast<uintptr_t>(info.dli_fbase));
        }
      }
      message[frame.size()] = '\0';
      WriteCrashLine(message);
    }
  }
  // SA_RESETHAND restored the default action: returning re-runs the faulting instruction, and
  // raising covers a signal that was sent (abort(), kill).
  raise(signal);
}

}  // namespace

int FormatCrashLine(LogFormat format, const char* message, std::chrono::system_clock::time_point now,
                    char* out, int size) {
  LineBuffer line(out, size - 3);  // room for the closing "}\n" or "\n"
  if (format == LogFormat::kText) {
    line.Add("F ");
    AddTimestamp(&line, now);
    line.Add(" scanserve: ");
    line.Add(message);
  } else {
    static constexpr char kHex[] = "0123456789abcdef";
    line.Add("{\"time\":\"");
    AddTimestamp(&line, now);
    line.Add("\",\"level\":\"fatal\",\"source\":\"crash\",\"msg\":\"");
    const int limit = line.capacity() - 7;  // one escape and the closing quote always fit
    for (const char* p = message; *p != '\0' && line.size() < limit; ++p) {
      const unsigned char c = static_cast<unsigned char>(*p);
      if (c == '"' || c == '\\') {
        line.Add('\\');
        line.Add(static_cast<char>(c));
      } else if (c < 0x20 || c == 0x7f) {
        line.Add("\\u00");
        line.Add(kHex[c >> 4]);
        line.Add(kHex[c & 15]);
      } else if (c >= 0x80) {
        line.Add('?');  // stack frames are ASCII; checking UTF-8 here is not worth its risk
      } else {
        line.Add(static_cast<char>(c));
      }
    }
    line.Add('"');
  }
  int n = line.size();
  if (format == LogFormat::kJson) out[n++] = '}';
  out[n++] = '\n';
  return n;
}

void InstallCrashReport() {
  // backtrace() loads libgcc's unwinder on first use, which allocates: not in the handler.
  void* warm[1];
  (void)backtrace(warm, 1);
  // Its own stack, so that a stack overflow can still be reported.
  static char alternate_stack[64 * 1024];
  stack_t stack{};
  stack.ss_sp = alternate_stack;
  stack.ss_size = sizeof(alternate_stack);
  sigaltstack(&stack, nullptr);
  struct sigaction action {};
  action.sa_handler = OnFatalSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND | SA_ONSTACK;
  for (int signal : kFatalSignals) sigaction(signal, &action, nullptr);
}

void SetCrashReportFormat(LogFormat format) { g_format.store(static_cast<int>(format)); }

}  // namespace scanserve

// scanserve: the gRPC server. Flags only; everything else is RunServer's.
#include <cstdio>
#include <string>

#include "engine/common/openblas_core.h"
#include "server/config.h"
#include "server/crash_report.h"
#include "server/run_server.h"

#ifndef SCANSERVE_VERSION
#define SCANSERVE_VERSION "0.0.0"
#endif

int main(int argc, char** argv) {
  scanserve::ReexecWithBetterOpenBlasCore(argv);
  scanserve::InstallCrashReport();
  scanserve::InstallTerminationHandlers();
  absl::StatusOr<scanserve::CommandLine> command_line = scanserve::ParseCommandLine(argc, argv);
  if (!command_line.ok()) {
    std::fprintf(stderr, "scanserve: %s\nRun scanserve --help for the flags.\n",
                 std::string(command_line.status().message()).c_str());
    return 2;
  }
  if (command_line->help) {
    std::fputs(scanserve::Usage("scanserve").c_str(), stdout);
    return 0;
  }
  command_line->config.server.version = SCANSERVE_VERSION;
  return scanserve::RunServer(command_line->config);
}

// RunServer: the scanserve process from a parsed configuration to exit: loads the engine, starts the
// Server, waits for SIGTERM/SIGINT, stops gracefully. Returns the process exit code (0 after a clean
// shutdown, 1 when start-up fails). A second signal during shutdown exits at once.
#pragma once

#include "server/config.h"

namespace scanserve {

// Routes SIGTERM and SIGINT to RunServer (through a self-pipe). Call first thing in main(). A signal
// during start-up (model and store loading) exits at once; once serving, the first one shuts down
// gracefully and a second one exits at once.
void InstallTerminationHandlers();

int RunServer(const ServerConfig& config);

}  // namespace scanserve

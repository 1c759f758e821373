// ServerConfig: everything `scanserve` is started with, from defaults that run out of the box, then
// an optional config file (--config FILE), then command-line flags, which win.
//
// The config file holds `key = value` lines whose keys are the long flag names without "--"
// (`listen = 0.0.0.0:50051`, `model = /models/f30k_t2i`); '#' starts a comment; blank lines are
// ignored; `model` may repeat. Any `--model` flag replaces the file's model list.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/detector/region_detector.h"
#include "engine/retrieval/retrieval_engine.h"
#include "server/log.h"
#include "server/server.h"

namespace scanserve {

struct ServerConfig {
  ServerOptions server;
  RetrievalEngineOptions engine;
  // The region detector for image bytes; detector.detector_dir empty = none (image bytes are then
  // FAILED_PRECONDITION). Its max_image_bytes follows server.detection.max_image_bytes.
  DetectorOptions detector;
  std::string config_file;         // where the file settings came from, if any
  bool storage_given = false;      // --storage (or the file's) was set; else it follows the backend
  double shutdown_grace_s = 10.0;  // Stop()'s deadline after SIGTERM/SIGINT
  double shutdown_delay_s = 0.0;   // before it: health NOT_SERVING, calls still served (Drain())
  LogFormat log_format = LogFormat::kText;  // stderr lines: text, or one JSON object each
};

struct CommandLine {
  ServerConfig config;
  bool help = false;
};

// The defaults (ServerOptions' and RetrievalEngineOptions' own, plus ./scanserve-data).
ServerConfig DefaultServerConfig();

// Parses argv (argv[0] is the program). INVALID_ARGUMENT names the flag or file line at fault; a
// missing config or token file is NOT_FOUND. Without --help, at least one model is required; with a
// detector, --max-message-bytes must leave room for one image of --max-image-bytes.
absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv);

// Applies one `key = value` setting (a flag without "--"), as the file and the flags do.
absl::Status ApplySetting(const std::string& key, const std::string& value, ServerConfig* config);

// `--help` text: every flag with its argument, meaning and default.
std::string Usage(const std::string& program);

// Multi-line description of the effective configuration for the start-up log (no secrets).
std::string DescribeConfig(const ServerConfig& config);

}  // namespace scanserve

// `scanctl import`: streams an IngestSource through ScanService.Ingest with a bounded window of
// unacknowledged items, shows progress, and keeps a checkpoint so that an interrupted run resumes.
//
// Checkpoint: a small JSON file {"source": <identity>, "total": N, "acked_through": i} rewritten
// (atomically) about once a second and at the end. acked_through is the index of the last item the
// server answered (the stream answers in order), whatever the answer; a rerun skips items up to it.
// Failed items are listed on stderr and counted (exit code 1); rerun with --restart to resend
// everything (upserts are idempotent, so resending is always safe). A checkpoint written for a
// different input is refused unless --restart. A stream the connection's end cut short is reopened
// where it stopped, and so is one whose item the server could not store for now (UNAVAILABLE: its
// store reopening after an I/O error), from that item (ImportOptions::max_reconnects).
#pragma once

#include <cstdint>
#include <string>

#include "client/connection.h"
#include "client/ingest_source.h"

namespace scanserve {
namespace cli {

struct ImportOptions {
  std::string checkpoint_path;  // empty = no checkpoint
  bool restart = false;         // ignore (and overwrite) an existing checkpoint
  int window = 256;             // most items sent and not yet acknowledged
  bool progress = true;
  bool json = false;            // summary as JSON on stdout
  int max_failures_shown = 20;
  // An Ingest stream that ends UNAVAILABLE, RESOURCE_EXHAUSTED or ABORTED (the server restarting,
  // a rolling update, the server's --max-connection-age-s), or answers an item UNAVAILABLE, is
  // reopened, its unanswered items resent (upserts are idempotent): at most this many times in a
  // row without an answer between them (backoff 0.25 s doubling to 8 s: ~30 s for 8).
  int max_reconnects = 8;
};

// Returns the process exit code (0 all acked OK; 1 some failed or the RPC failed; 2 bad input or
// checkpoint; 4 server unavailable).
int RunImport(Connection& connection, IngestSource& source, const ImportOptions& options);

}  // namespace cli
}  // namespace scanserve

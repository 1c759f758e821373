// `scanctl copy`: moves what one server stores into another, which encodes it again with its own
// models. That is how a collection moves to retrained weights (or another ensemble) without running
// the detector again: images go with the input region features the source kept
// (`scanserve --region-features keep`), their boxes, labels, collection and metadata; captions with
// their text.
//
// Ids are read by pages in byte order (ListItems), the items in batches (GetItems with
// include_region_features) and upserted into the target (idempotent). A checkpoint of the last id
// copied per kind resumes an interrupted copy after it. Calls that fail for now (UNAVAILABLE,
// RESOURCE_EXHAUSTED, ABORTED, DEADLINE_EXCEEDED, and items the target answers UNAVAILABLE) are
// retried with a backoff.
//
// Writes the source takes meanwhile are caught up from its change log (ListChanges): the copy
// notes the source's last change sequence before reading anything, and once every id is copied it
// applies the changes after it (each changed item is read and upserted, or deleted from the target
// when the source no longer has it), so the target ends equal to the source as of the end. Rerun
// with the same checkpoint, it catches up again; with `follow` it keeps doing so until SIGINT or
// SIGTERM, so that writes can go on while clients move to the target.
#pragma once

#include <string>

#include "client/connection.h"

namespace scanserve {
namespace cli {

struct CopyOptions {
  std::string collection;       // empty: every collection
  bool images = true;
  bool captions = true;
  int image_batch = 16;         // images per read and upsert (at most 32: up to a MiB each)
  int caption_batch = 256;
  std::string checkpoint_path;  // empty: no checkpoint
  bool restart = false;         // ignore (and overwrite) an existing checkpoint
  bool progress = true;
  bool json = false;            // summary as JSON on stdout
  int max_failures_shown = 20;
  // Retries of one call in a row (backoff 0.25 s doubling to 8 s: ~30 s for 8); unbounded once a
  // follow is catching up.
  int max_retries = 8;
  bool follow = false;          // keep applying the source's changes until SIGINT / SIGTERM
  double poll_interval_s = 1;   // with follow: how often the change log is read once caught up
};

// Returns the exit code: 0 everything copied; 1 an item failed, an image had no stored region
// features, or a call kept failing; 2 bad options or checkpoint; 4 a server unavailable.
int RunCopy(Connection& source, Connection& target, const CopyOptions& options);

}  // namespace cli
}  // namespace scanserve

// ItemChange: one write to one stored item, as the store's change log keeps it, so that a copy of
// the collection (scanctl copy, a follower) can catch up with the writes made while it ran.
//
// The log records which item changed, not how: a reader syncs the item's current state (present:
// upsert it; absent: delete it). Applying the changes after sequence S, in order, to a copy taken
// at any time after S was the last sequence therefore converges on the source, whatever writes
// raced with the copy.
#pragma once

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace scanserve {

struct ItemChange {
  // Increases with every logged write, in commit order; gaps are allowed (a failed write uses its
  // numbers up).
  uint64_t sequence = 0;
  bool is_caption = false;  // else an image
  bool deleted = false;     // a delete; else a put (insert, replace, metadata update)
  int64_t unix_micros = 0;  // when it was written
  std::string id;
};

// A change log's identity: 32 random hex digits, made with the log (a new store) and given anew to
// every snapshot of it, so that a reader can tell a restored snapshot (or a store made again),
// whose sequences repeat numbers the original already used, from the log it was reading.
inline std::string NewChangeLogId() {
  std::random_device entropy;
  std::string id;
  for (int i = 0; i < 4; ++i) {
    char word[9];
    std::snprintf(word, sizeof(word), "%08x", static_cast<unsigned>(entropy()));
    id += word;
  }
  return id;
}

// Changes after a sequence, oldest first.
struct ItemChangePage {
  std::vector<ItemChange> changes;
  // The newest logged change's sequence when the page was read (0 = none yet); every write after
  // it gets a larger one. A page shorter than asked for reached it.
  uint64_t last_sequence = 0;
  std::string log_id;  // NewChangeLogId: the same for every page of one log
};

}  // namespace scanserve

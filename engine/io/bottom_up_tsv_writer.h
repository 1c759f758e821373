// Writes bottom-up-attention TSV lines in either layout that BottomUpTsvReader reads (see
// bottom_up_tsv.h): generate_tsv's 6 columns or LXMERT's 10. Arrays are base64 of little-endian
// float32 (boxes, features, confidences) or int64 (object / attribute ids), as the originals wrote.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/io/bottom_up_tsv.h"

namespace scanserve {

// One line, '\n'-terminated. INVALID_ARGUMENT when the record is inconsistent (boxes or features
// rows != num_boxes, boxes not 4 wide, an id containing a tab or newline, or for LXMERT id/conf
// vectors of the wrong length).
absl::StatusOr<std::string> FormatBottomUpTsvLine(const BottomUpRecord& record, BottomUpLayout layout);

}  // namespace scanserve

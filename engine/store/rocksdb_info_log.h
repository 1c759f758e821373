// RocksDB's info log (the LOG file in the store's directory), written with plain appends whose
// failures are ignored.
//
// RocksDB's own logger writes through a WritableFileWriter. Once one of its writes fails (a full
// disk), the next log line trips an assertion in that writer, and Debian's RocksDB is built with
// its assertions on: RocksDB's recovery thread logs "Cannot clear hard error" every 5 s while the
// disk is full, so a full disk killed the server (SIGABRT). A lost log line is harmless.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace rocksdb {
class Logger;
}

namespace scanserve {

// Appends to `directory`/LOG; past `max_bytes` it becomes LOG.old (replacing the previous one) and
// a new LOG starts, so the two stay under 2 * max_bytes. Never fails: where the file cannot be
// opened, lines are dropped until a rotation opens it again.
std::shared_ptr<rocksdb::Logger> OpenStoreInfoLog(const std::string& directory, int64_t max_bytes);

}  // namespace scanserve

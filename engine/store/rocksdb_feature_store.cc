// RocksDB stays inside this file.
#include "engine/store/rocksdb_feature_store.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <utility>
#include <vector>

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/status.h>
#include <rocksdb/table.h>
#include <rocksdb/transaction_log.h>
#include <rocksdb/utilities/checkpoint.h>
#include <rocksdb/write_batch.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/common/engine_log.h"
#include "engine/common/new_directory.h"
#include "engine/common/status_macros.h"
#include "engine/store/change_log_retention.h"
#include "engine/store/record_codec.h"
#include "engine/store/rocksdb_info_log.h"

namespace scanserve {
namespace {

constexpr char kImagesFamily[] = "images";
constexpr char kCaptionsFamily[] = "captions";
constexpr char kMetaFamily[] = "meta";
// Images' input region features (--region-features keep), apart from their records: loading and
// searching scan the image family only.
constexpr char kImageRegionsFamily[] = "image_regions";
// The change log (item_change.h): key = the sequence, 8 bytes big-endian (so byte order is
// sequence order), value = a change record. The meta entry holds the last trimmed sequence, in
// the same encoding, so that a log trimmed empty still refuses readers behind it.
constexpr char kChangesFamily[] = "changes";
constexpr char kChangesTrimmedThroughKey[] = "change_log_trimmed_through";
constexpr char kChangeLogIdKey[] = "change_log_id";
// A trim deletes at most this many changes per write, so that one write never pays for a backlog
// (a retention lowered after months): the rest goes with the next writes.
constexpr int kMaxTrimmedPerWrite = 100000;

// The one conversion of RocksDB statuses (style-anchors: at the engine edge). `context` says what
// was being done, e.g. "writing 3 images to /data/store".
absl::Status FromRocksDb(const rocksdb::Status& s, absl::string_view context) {
  if (s.ok()) return absl::OkStatus();
  const std::string message = absl::StrCat(context, ": RocksDB: ", s.ToString());
  switch (s.code()) {
    case rocksdb::Status::kNotFound:
      return absl::NotFoundError(message);
    case rocksdb::Status::kCorruption:
      return absl::DataLossError(message);
    case rocksdb::Status::kNotSupported:
      return absl::UnimplementedError(message);
    case rocksdb::Status::kInvalidArgument:
      return absl::InvalidArgumentError(message);
    case rocksdb::Status::kIOError:
      if (s.IsNoSpace()) return absl::ResourceExhaustedError(message);
      // Includes "lock held by another process": retrying later (or elsewhere) can succeed.
      return absl::UnavailableError(message);
    case rocksdb::Status::kMergeInProgress:
    case rocksdb::Status::kIncomplete:
    case rocksdb::Status::kShutdownInProgress:
    case rocksdb::Status::kBusy:
    case rocksdb::Status::kTryAgain:
      return absl::UnavailableError(message);
    case rocksdb::Status::kTimedOut:
      return absl::DeadlineExceededError(message);
    case rocksdb::Status::kAborted:
      return absl::AbortedError(message);
    case rocksdb::Status::kExpired:
    case rocksdb::Status::kColumnFamilyDropped:
      return absl::FailedPreconditionError(message);
    case rocksdb::Status::kCompactionTooLarge:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

std::string Quoted(absl::string_view id) { return absl::StrCat("'", absl::CEscape(id), "'"); }

// Opening replays the write-ahead log into new table and blob files. On a full disk RocksDB says
// only "No space left on device" about some file (before the store had its own info logger,
// rocksdb_info_log.h, it aborted there instead). So the space is checked first, to say how much is
// needed: the log's size, and a margin for the manifest, options and info log files.
constexpr int64_t kOpenMarginBytes = int64_t{1} << 20;

// RocksDB's info log: LOG and LOG.old, each at most this size.
constexpr int64_t kInfoLogMaxBytes = int64_t{16} << 20;

// Reopening after an I/O error that stopped writes: retried after 0.5 s, doubling up to 30 s.
constexpr std::chrono::milliseconds kFirstReopenBackoff{500};
constexpr std::chrono::milliseconds kMaxReopenBackoff{30000};

// Bytes free to the store on the file system holding `path`; none when it cannot tell (an error,
// or a file system reporting no capacity at all, as some FUSE ones do).
std::optional<int64_t> FreeBytes(const std::string& path) {
  std::error_code ec;
  const std::filesystem::space_info space = std::filesystem::space(path, ec);
  if (ec || space.capacity == 0) return std::nullopt;
  return static_cast<int64_t>(space.available);
}

absl::Status CheckSpaceToOpen(const std::string& path) {
  namespace fs = std::filesystem;
  const std::optional<int64_t> available = FreeBytes(path);
  if (!available.has_value()) return absl::OkStatus();  // RocksDB will say
  std::error_code ec;
  int64_t wal_bytes = 0;
  for (const fs::directory_entry& entry : fs::directory_iterator(path, ec)) {
    std::error_code size_error;
    const uintmax_t size = entry.file_size(size_error);
    if (!size_error && entry.path().extension() == ".log") wal_bytes += static_cast<int64_t>(size);
  }
  const int64_t needed = wal_bytes + kOpenMarginBytes;
  if (*available >= needed) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "opening the feature store in ", path, " needs about ", needed >> 10,
      " KiB free on its file system (its write-ahead log of ", wal_bytes >> 10,
      " KiB is replayed into new files), and ", *available >> 10, " KiB are free: free some space"));
}

rocksdb::Slice ToSlice(const std::string& s) { return rocksdb::Slice(s.data(), s.size()); }

std::string ChangeKey(uint64_t sequence) {
  std::string key(8, '\0');
  for (int i = 7; i >= 0; --i, sequence >>= 8) key[i] = static_cast<char>(sequence & 0xff);
  return key;
}

absl::StatusOr<uint64_t> SequenceOfChangeKey(const rocksdb::Slice& key) {
  if (key.size() != 8) {
    return absl::DataLossError(absl::StrCat("the change log holds a key of ", key.size(),
                                            " bytes; its keys are 8-byte sequences"));
  }
  uint64_t sequence = 0;
  for (size_t i = 0; i < 8; ++i) sequence = (sequence << 8) | static_cast<uint8_t>(key[i]);
  return sequence;
}

}  // namespace

struct RocksDbFeatureStore::Impl {
  std::string path;
  rocksdb::DBOptions db_options;
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;  // every family the database has

  // Shared by every operation, exclusive for Close and reopening: guards db (null once closed, or
  // while a reopen after an I/O error has not succeeded yet), the handles and closed.
  mutable std::shared_mutex mu;
  bool closed = false;
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;  // owned; destroyed in Close
  rocksdb::ColumnFamilyHandle* images = nullptr;
  rocksdb::ColumnFamilyHandle* captions = nullptr;
  rocksdb::ColumnFamilyHandle* meta = nullptr;
  rocksdb::ColumnFamilyHandle* image_regions = nullptr;
  rocksdb::ColumnFamilyHandle* changes = nullptr;
  // Whether image_regions may hold anything: until then a write of an image without features
  // need not delete its (absent) ones, so stores that never keep features get no tombstones.
  std::atomic<bool> regions_present{false};

  // Selects one of the handles above; read only under mu (Close clears them).
  using Family = rocksdb::ColumnFamilyHandle* Impl::*;

  // The change log. change_mu serialises the writes that log changes, so that sequence order is
  // commit order (the engine serialises its writers anyway); taken after mu. last_sequence is the
  // last number handed out (a failed write uses its numbers up); readers see changes up to
  // committed_sequence, which only writes that succeeded (and reopens, whose replay may commit a
  // write that failed) advance. trimmed_through rises before the write that trims.
  std::mutex change_mu;
  std::atomic<uint64_t> last_sequence{0};
  std::atomic<uint64_t> committed_sequence{0};
  std::atomic<uint64_t> trimmed_through{0};
  std::optional<ChangeLogRetention> change_retention;  // guarded by change_mu; set by Open
  std::string change_log_id;  // read (or made) by every open; the same across reopens

  std::atomic<int64_t> synced_writes{0};
  std::atomic<int64_t> sync_write_nanos{0};
  std::atomic<int64_t> failed_writes{0};

  // Writes stopped by an I/O error that RocksDB does not recover from by itself (a failed write
  // or sync of its log): it then refuses every write until the database is reopened. Guarded by
  // recovery_mu, taken after mu; writes_stopped mirrors !stopped_by.ok() for a lock-free check.
  std::mutex recovery_mu;
  absl::Status stopped_by;
  std::chrono::steady_clock::time_point next_reopen;
  std::chrono::milliseconds reopen_backoff{0};
  std::atomic<bool> writes_stopped{false};
  std::atomic<int64_t> reopens{0};

  absl::Status CheckOpen() const {
    if (closed) return absl::FailedPreconditionError("the RocksDB feature store is closed");
    if (db == nullptr) {
      return absl::UnavailableError(absl::StrCat(
          "the feature store in ", path, " is being reopened after an I/O error; not open yet"));
    }
    return absl::OkStatus();
  }

  // Opens the database into db and the family handles. Caller holds mu exclusively (or is Open).
  absl::Status OpenDb() {
    std::vector<rocksdb::ColumnFamilyHandle*> opened;
    rocksdb::DB* raw = nullptr;
    SCANSERVE_RETURN_IF_ERROR(
        FromRocksDb(rocksdb::DB::Open(db_options, path, descriptors, &opened, &raw),
                    absl::StrCat("opening the feature store in ", path)));
    db.reset(raw);
    handles = std::move(opened);
    for (size_t i = 0; i < descriptors.size(); ++i) {
      if (descriptors[i].name == kImagesFamily) images = handles[i];
      if (descriptors[i].name == kCaptionsFamily) captions = handles[i];
      if (descriptors[i].name == kMetaFamily) meta = handles[i];
      if (descriptors[i].name == kImageRegionsFamily) image_regions = handles[i];
      if (descriptors[i].name == kChangesFamily) changes = handles[i];
    }
    SCANSERVE_CHECK(images != nullptr && captions != nullptr && meta != nullptr &&
                    image_regions != nullptr && changes != nullptr);
    std::unique_ptr<rocksdb::Iterator> any(db->NewIterator(rocksdb::ReadOptions(), image_regions));
    any->SeekToFirst();
    if (any->Valid() || !any->status().ok()) regions_present = true;
    return LoadChangeLogState();
  }

  // The change log's id and sequences after an open: what the log and its trim mark hold (a
  // reopen's replay may have committed a write that had failed). A store without an id gets one.
  absl::Status LoadChangeLogState() {
    std::string id;
    const rocksdb::Status got_id = db->Get(rocksdb::ReadOptions(), meta, kChangeLogIdKey, &id);
    if (got_id.IsNotFound()) {
      id = NewChangeLogId();
      rocksdb::WriteOptions sync;
      sync.sync = true;
      SCANSERVE_RETURN_IF_ERROR(FromRocksDb(db->Put(sync, meta, kChangeLogIdKey, id),
                                            "writing the change log's id"));
    } else {
      SCANSERVE_RETURN_IF_ERROR(FromRocksDb(got_id, "reading the change log's id"));
    }
    change_log_id = id;
    uint64_t last = 0;
    std::string trimmed;
    const rocksdb::Status got =
        db->Get(rocksdb::ReadOptions(), meta, kChangesTrimmedThroughKey, &trimmed);
    if (!got.IsNotFound()) {
      SCANSERVE_RETURN_IF_ERROR(FromRocksDb(got, "reading the change log's trim mark"));
      SCANSERVE_ASSIGN_OR_RETURN(last, SequenceOfChangeKey(trimmed));
      trimmed_through = std::max(trimmed_through.load(), last);
    }
    std::unique_ptr<rocksdb::Iterator> newest(db->NewIterator(rocksdb::ReadOptions(), changes));
    newest->SeekToLast();
    if (newest->Valid()) {
      SCANSERVE_ASSIGN_OR_RETURN(const uint64_t sequence, SequenceOfChangeKey(newest->key()));
      last = std::max(last, sequence);
    }
    SCANSERVE_RETURN_IF_ERROR(FromRocksDb(newest->status(), "reading the change log"));
    last_sequence = std::max(last_sequence.load(), last);
    committed_sequence = std::max(committed_sequence.load(), last);
    return absl::OkStatus();
  }

  // Releases the handles and the database. Caller holds mu exclusively.
  absl::Status CloseDb() {
    if (db == nullptr) return absl::OkStatus();
    absl::Status status;
    for (rocksdb::ColumnFamilyHandle* handle : handles) {
      const absl::Status destroyed = FromRocksDb(db->DestroyColumnFamilyHandle(handle),
                                                 absl::StrCat("closing the feature store in ", path));
      if (status.ok()) status = destroyed;
    }
    handles.clear();
    images = captions = meta = image_regions = changes = nullptr;
    // Every acked write is already in the fsync'd log; Close only releases files and the lock.
    const absl::Status closed_db =
        FromRocksDb(db->Close(), absl::StrCat("closing the feature store in ", path));
    if (status.ok()) status = closed_db;
    db.reset();
    return status;
  }

  // After a failed write: whether RocksDB has stopped writing until a reopen. Retryable errors
  // resume here, and a full disk is RocksDB's own to recover from (it does, once space is back).
  void NoteFailedWrite(const rocksdb::Status& s, const absl::Status& failure) {
    if (!s.IsIOError() || s.IsNoSpace()) return;
    const rocksdb::Status resumed = db->Resume();
    if (resumed.ok() || resumed.IsBusy()) return;  // Busy: RocksDB's own recovery is under way
    std::lock_guard<std::mutex> recovery(recovery_mu);
    if (!stopped_by.ok()) return;
    stopped_by = failure;
    next_reopen = std::chrono::steady_clock::now();  // the next write tries at once
    reopen_backoff = kFirstReopenBackoff;
    writes_stopped = true;
    EngineLog(EngineLogLevel::kError,
              absl::StrCat("RocksDbFeatureStore: writes to ", path, " stopped after an I/O error (",
                           failure.message(), "); they are refused until the store is reopened, "
                           "which is tried again, with a backoff, until it succeeds"));
  }

  // Reopens the database when writes stopped (see NoteFailedWrite); attempts are spaced by a
  // doubling backoff while the reopen keeps failing. Writes call it first; so may a caller that
  // polls (the server's health poll, through the engine).
  absl::Status RecoverWrites() {
    if (!writes_stopped.load()) return absl::OkStatus();
    std::unique_lock<std::shared_mutex> lock(mu);
    if (closed) return absl::FailedPreconditionError("the RocksDB feature store is closed");
    std::lock_guard<std::mutex> recovery(recovery_mu);
    if (stopped_by.ok()) return absl::OkStatus();  // another writer reopened it meanwhile
    const auto now = std::chrono::steady_clock::now();
    // Why writes are refused, for the callers refused.
    const std::string stopped = absl::StrCat(
        "the feature store stopped taking writes after an I/O error (", stopped_by.message(), ")");
    if (now < next_reopen) {
      return absl::UnavailableError(absl::StrCat(
          stopped, "; reopening it failed, next try in ",
          std::chrono::duration_cast<std::chrono::milliseconds>(next_reopen - now).count(),
          " ms"));
    }
    const absl::Status closed_db = CloseDb();
    if (!closed_db.ok()) {
      EngineLog(EngineLogLevel::kInfo, absl::StrCat("RocksDbFeatureStore: closing ", path,
                                                    " to reopen it: ", closed_db.ToString()));
    }
    const absl::Status opened = OpenDb();
    if (!opened.ok()) {
      next_reopen = now + reopen_backoff;
      reopen_backoff = std::min(2 * reopen_backoff, kMaxReopenBackoff);
      EngineLog(EngineLogLevel::kError,
                absl::StrCat("RocksDbFeatureStore: reopening ", path, " failed (next try in ",
                             (next_reopen - now) / std::chrono::milliseconds(1),
                             " ms): ", opened.ToString()));
      return absl::UnavailableError(
          absl::StrCat(stopped, "; reopening it failed: ", opened.message()));
    }
    EngineLog(EngineLogLevel::kInfo, absl::StrCat("RocksDbFeatureStore: reopened ", path,
                                                  " after the I/O error; writes resume"));
    stopped_by = absl::OkStatus();
    writes_stopped = false;
    ++reopens;
    return absl::OkStatus();
  }

  // One durable batch: WAL fsync'd before returning.
  absl::Status WriteSynced(rocksdb::WriteBatch* batch, absl::string_view context) {
    rocksdb::WriteOptions write_options;
    write_options.sync = true;
    const auto start = std::chrono::steady_clock::now();
    const rocksdb::Status s = db->Write(write_options, batch);
    sync_write_nanos += std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::steady_clock::now() - start)
                            .count();
    ++synced_writes;
    if (s.ok()) return absl::OkStatus();
    ++failed_writes;
    const absl::Status failure = FromRocksDb(s, context);
    NoteFailedWrite(s, failure);
    return failure;
  }

  // WriteSynced with one change logged per id in the same batch, and the log trimmed when due.
  // Caller holds mu (shared).
  absl::Status WriteLogged(rocksdb::WriteBatch* batch, absl::Span<const std::string> ids,
                           bool is_caption, bool deleted, absl::string_view context) {
    std::lock_guard<std::mutex> log(change_mu);
    const int64_t now = UnixMicrosNow();
    uint64_t sequence = last_sequence.load();
    for (const std::string& id : ids) {
      SCANSERVE_ASSIGN_OR_RETURN(
          std::string value,
          EncodeChangeRecord(
              {.is_caption = is_caption, .deleted = deleted, .unix_micros = now, .id = id}));
      SCANSERVE_RETURN_IF_ERROR(FromRocksDb(batch->Put(changes, ChangeKey(++sequence), value),
                                            absl::StrCat("logging the change of ", Quoted(id))));
    }
    if (const std::optional<int64_t> cutoff = change_retention->TrimCutoff(now)) {
      const absl::Status trimmed = AddTrim(batch, *cutoff);
      // The write matters more than the trim, which the next one tries again.
      if (!trimmed.ok()) {
        EngineLog(EngineLogLevel::kError,
                  absl::StrCat("RocksDbFeatureStore: trimming the change log of ", path, ": ",
                               trimmed.ToString()));
      }
    }
    const absl::Status written = WriteSynced(batch, context);
    last_sequence = sequence;
    if (written.ok()) committed_sequence = sequence;
    return written;
  }

  // Adds to `batch` the deletion of the changes written before `cutoff` (unix micros) and the
  // new trim mark. Caller holds change_mu.
  absl::Status AddTrim(rocksdb::WriteBatch* batch, int64_t cutoff) {
    uint64_t through = trimmed_through.load();
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), changes));
    int seen = 0;
    for (it->Seek(ChangeKey(through + 1)); it->Valid() && seen < kMaxTrimmedPerWrite;
         it->Next(), ++seen) {
      SCANSERVE_ASSIGN_OR_RETURN(const uint64_t sequence, SequenceOfChangeKey(it->key()));
      SCANSERVE_ASSIGN_OR_RETURN(const ItemChange change,
                                 DecodeChangeRecord(sequence, it->value().ToString()));
      if (change.unix_micros >= cutoff) break;
      through = sequence;
    }
    SCANSERVE_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading the change log to trim it"));
    if (through == trimmed_through.load()) return absl::OkStatus();
    const std::string mark = ChangeKey(through);
    SCANSERVE_RETURN_IF_ERROR(FromRocksDb(
        batch->DeleteRange(changes, ChangeKey(0), ChangeKey(through + 1)), "trimming the change log"));
    SCANSERVE_RETURN_IF_ERROR(
        FromRocksDb(batch->Put(meta, kChangesTrimmedThroughKey, mark), "trimming the change log"));
    // Before the write: a reader that raced with it checks the mark after reading (ListChanges).
    trimmed_through = through;
    return absl::OkStatus();
  }

  // `also(record, batch)` adds what else the record's write needs to the same atomic batch.
  template <typename Record, typename Encode, typename Also>
  absl::Status Put(Family which, absl::Span<const Record> records, Encode encode,
                   absl::string_view kind, Also also) {
    if (records.empty()) return absl::OkStatus();
    SCANSERVE_RETURN_IF_ERROR(RecoverWrites());
    std::shared_lock<std::shared_mutex> lock(mu);
    SCANSERVE_RETURN_IF_ERROR(CheckOpen());
    rocksdb::ColumnFamilyHandle* family = this->*which;
    rocksdb::WriteBatch batch;
    std::vector<std::string> ids;
    ids.reserve(records.size());
    for (const Record& record : records) {
      SCANSERVE_ASSIGN_OR_RETURN(std::string value, encode(record));
      SCANSERVE_RETURN_IF_ERROR(
          FromRocksDb(batch.Put(family, ToSlice(record.id), ToSlice(value)),
                      absl::StrCat("batching ", kind, " ", Quoted(record.id))));
      SCANSERVE_RETURN_IF_ERROR(also(record, &batch));
      ids.push_back(record.id);
    }
    return WriteLogged(&batch, ids, /*is_caption=*/which == &Impl::captions, /*deleted=*/false,
                       absl::StrCat("writing ", records.size(), " ", kind, "(s)"));
  }

  // Deletes `ids` from every family in `which`, in one atomic batch.
  absl::Status Delete(std::initializer_list<Family> which, absl::Span<const std::string> ids,
                      absl::string_view kind) {
    if (ids.empty()) return absl::OkStatus();
    SCANSERVE_RETURN_IF_ERROR(RecoverWrites());
    std::shared_lock<std::shared_mutex> lock(mu);
    SCANSERVE_RETURN_IF_ERROR(CheckOpen());
    rocksdb::WriteBatch batch;
    for (const Family family : which) {
      for (const std::string& id : ids) {
        SCANSERVE_RETURN_IF_ERROR(
            FromRocksDb(batch.Delete(this->*family, ToSlice(id)),
                        absl::StrCat("batching the delete of ", kind, " ", Quoted(id))));
      }
    }
    return WriteLogged(&batch, ids, /*is_caption=*/*which.begin() == &Impl::captions,
                       /*deleted=*/true, absl::StrCat("deleting ", ids.size(), " ", kind, "(s)"));
  }

  template <typename Record, typename Decode>
  absl::StatusOr<std::vector<std::optional<Record>>> Get(Family which,
                                                         absl::Span<const std::string> ids,
                                                         Decode decode,
                                                         absl::string_view kind) const {
    std::vector<std::optional<Record>> out(ids.size());
    if (ids.empty()) return out;
    std::shared_lock<std::shared_mutex> lock(mu);
    SCANSERVE_RETURN_IF_ERROR(CheckOpen());
    rocksdb::ColumnFamilyHandle* family = this->*which;
    std::vector<rocksdb::ColumnFamilyHandle*> families(ids.size(), family);
    std::vector<rocksdb::Slice> keys;
    keys.reserve(ids.size());
    for (const std::string& id : ids) keys.push_back(ToSlice(id));
    std::vector<std::string> values;
    const std::vector<rocksdb::Status> statuses =
        db->MultiGet(rocksdb::ReadOptions(), families, keys, &values);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (statuses[i].IsNotFound()) continue;
      SCANSERVE_RETURN_IF_ERROR(
          FromRocksDb(statuses[i], absl::StrCat("reading ", kind, " ", Quoted(ids[i]))));
      SCANSERVE_ASSIGN_OR_RETURN(out[i], decode(ids[i], values[i]));
    }
    return out;
  }

  template <typename Record, typename Decode>
  absl::Status Scan(Family which, Decode decode, absl::string_view kind,
                    const std::function<absl::Status(Record&)>& visit) const {
    std::shared_lock<std::shared_mutex> lock(mu);
    SCANSERVE_RETURN_IF_ERROR(CheckOpen());
    rocksdb::ColumnFamilyHandle* family = this->*which;
    rocksdb::ReadOptions read_options;
    read_options.fill_cache = false;  // a one-off full pass must not evict the hot blocks
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(read_options, family));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      SCANSERVE_ASSIGN_OR_RETURN(Record record,
                                 decode(it->key().ToString(), it->value().ToString()));
      SCANSERVE_RETURN_IF_ERROR(visit(record));
    }
    return FromRocksDb(it->status(), absl::StrCat("scanning the stored ", kind, "s"));
  }

  absl::Status PutRaw(Family which, const std::string& key, const std::string& value,
                      absl::string_view context) {
    SCANSERVE_RETURN_IF_ERROR(RecoverWrites());
    std::shared_lock<std::shared_mutex> lock(mu);
    SCANSERVE_RETURN_IF_ERROR(CheckOpen());
    rocksdb::ColumnFamilyHandle* family = this->*which;
    rocksdb::WriteBatch batch;
    SCANSERVE_RETURN_IF_ERROR(
        FromRocksDb(batch.Put(family, ToSlice(key), ToSlice(value)), context));
    return WriteSynced(&batch, context);
  }
};

RocksDbFeatureStore::RocksDbFeatureStore(std::string path, std::unique_ptr<Impl> impl)
    : path_(std::move(path)), impl_(std::move(impl)) {}

RocksDbFeatureStore::~RocksDbFeatureStore() {
  const absl::Status closed = Close();
  if (!closed.ok())
    EngineLog(EngineLogLevel::kError,
              absl::StrCat("RocksDbFeatureStore: closing ", path_, ": ", closed.ToString()));
}

absl::StatusOr<std::unique_ptr<RocksDbFeatureStore>> RocksDbFeatureStore::Open(
    const std::string& path, const RocksDbFeatureStoreOptions& options) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool exists = fs::exists(fs::path(path) / "CURRENT", ec);
  if (!exists && !options.create_if_missing) {
    return absl::NotFoundError(absl::StrCat("no feature store in ", path));
  }
  if (!exists) {
    fs::create_directories(path, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("cannot create the feature store directory ", path, ": ", ec.message()));
    }
  }

  SCANSERVE_RETURN_IF_ERROR(CheckSpaceToOpen(path));

  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->change_retention.emplace(options.change_log_retention_s);
  rocksdb::DBOptions& db_options = impl->db_options;
  db_options.create_if_missing = options.create_if_missing;
  db_options.create_missing_column_families = true;
  db_options.paranoid_checks = true;
  db_options.info_log = OpenStoreInfoLog(path, kInfoLogMaxBytes);

  rocksdb::BlockBasedTableOptions table_options;
  table_options.block_cache = rocksdb::NewLRUCache(static_cast<size_t>(options.block_cache_bytes));
  rocksdb::ColumnFamilyOptions meta_options;
  meta_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table_options));
  rocksdb::ColumnFamilyOptions item_options = meta_options;
  if (options.min_blob_bytes >= 0) {
    item_options.enable_blob_files = true;
    item_options.min_blob_size = static_cast<uint64_t>(options.min_blob_bytes);
    item_options.enable_blob_garbage_collection = true;  // reclaims replaced and deleted items
  }

  // Open every family the database has (a newer scanserve may have added some), ours included.
  std::vector<std::string> names;
  if (exists) {
    SCANSERVE_RETURN_IF_ERROR(FromRocksDb(rocksdb::DB::ListColumnFamilies(db_options, path, &names),
                                          absl::StrCat("listing the column families of ", path)));
  }
  for (const char* ours : {rocksdb::kDefaultColumnFamilyName.c_str(), kImagesFamily,
                           kCaptionsFamily, kMetaFamily, kImageRegionsFamily, kChangesFamily}) {
    if (std::find(names.begin(), names.end(), ours) == names.end()) names.push_back(ours);
  }
  for (const std::string& name : names) {
    const bool items =
        name == kImagesFamily || name == kCaptionsFamily || name == kImageRegionsFamily;
    impl->descriptors.emplace_back(name, items ? item_options : meta_options);
  }
  SCANSERVE_RETURN_IF_ERROR(impl->OpenDb());
  return std::unique_ptr<RocksDbFeatureStore>(new RocksDbFeatureStore(path, std::move(impl)));
}

absl::Status RocksDbFeatureStore::PutImages(absl::Span<const StoredImage> images) {
  Impl& impl = *impl_;
  // Called under the Put's lock, with the handles valid.
  const auto regions = [&impl](const StoredImage& image, rocksdb::WriteBatch* batch) -> absl::Status {
    const rocksdb::Slice key = ToSlice(image.id);
    if (!image.region_features.data.empty()) {
      impl.regions_present = true;
      SCANSERVE_ASSIGN_OR_RETURN(std::string value,
                                 EncodeRegionFeaturesRecord(image.id, image.region_features));
      return FromRocksDb(batch->Put(impl.image_regions, key, ToSlice(value)),
                         absl::StrCat("batching the region features of ", Quoted(image.id)));
    }
    // The stored ones stay; or there are none anywhere.
    if (image.has_region_features || !impl.regions_present.load()) return absl::OkStatus();
    return FromRocksDb(batch->Delete(impl.image_regions, key),
                       absl::StrCat("batching the region features of ", Quoted(image.id)));
  };
  return impl.Put(&Impl::images, images, EncodeImageRecord, "image", regions);
}

absl::Status RocksDbFeatureStore::PutCaptions(absl::Span<const StoredCaption> captions) {
  const auto nothing = [](const StoredCaption&, rocksdb::WriteBatch*) -> absl::Status {
    return absl::OkStatus();
  };
  return impl_->Put(&Impl::captions, captions, EncodeCaptionRecord, "caption", nothing);
}

absl::Status RocksDbFeatureStore::DeleteImages(absl::Span<const std::string> ids) {
  if (!impl_->regions_present.load()) return impl_->Delete({&Impl::images}, ids, "image");
  return impl_->Delete({&Impl::images, &Impl::image_regions}, ids, "image");
}

absl::Status RocksDbFeatureStore::DeleteCaptions(absl::Span<const std::string> ids) {
  return impl_->Delete({&Impl::captions}, ids, "caption");
}

absl::StatusOr<std::vector<std::optional<StoredImage>>> RocksDbFeatureStore::GetImages(
    absl::Span<const std::string> ids) const {
  return impl_->Get<StoredImage>(&Impl::images, ids, DecodeImageRecord, "image");
}

absl::StatusOr<std::vector<std::optional<StoredCaption>>> RocksDbFeatureStore::GetCaptions(
    absl::Span<const std::string> ids) const {
  return impl_->Get<StoredCaption>(&Impl::captions, ids, DecodeCaptionRecord, "caption");
}

absl::StatusOr<std::vector<std::optional<FloatMatrix>>>
RocksDbFeatureStore::GetImageRegionFeatures(absl::Span<const std::string> ids) const {
  return impl_->Get<FloatMatrix>(&Impl::image_regions, ids, DecodeRegionFeaturesRecord,
                                 "the region features of image");
}

absl::Status RocksDbFeatureStore::ScanImages(
    const std::function<absl::Status(StoredImage&)>& visit) const {
  return impl_->Scan<StoredImage>(&Impl::images, DecodeImageRecord, "image", visit);
}

absl::Status RocksDbFeatureStore::ScanCaptions(
    const std::function<absl::Status(StoredCaption&)>& visit) const {
  return impl_->Scan<StoredCaption>(&Impl::captions, DecodeCaptionRecord, "caption", visit);
}

absl::StatusOr<ItemChangePage> RocksDbFeatureStore::ListChanges(uint64_t after,
                                                               int64_t max_changes) const {
  if (max_changes < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_changes is ", max_changes, "; at least 1"));
  }
  Impl& impl = *impl_;
  std::shared_lock<std::shared_mutex> lock(impl.mu);
  SCANSERVE_RETURN_IF_ERROR(impl.CheckOpen());
  if (after < impl.trimmed_through.load()) return ChangesTrimmedError(after, impl.trimmed_through);
  ItemChangePage page;
  page.last_sequence = impl.committed_sequence.load();
  page.log_id = impl.change_log_id;
  if (after > page.last_sequence) return ChangesAheadError(after, page.last_sequence);
  if (after == page.last_sequence) return page;
  std::unique_ptr<rocksdb::Iterator> it(impl.db->NewIterator(rocksdb::ReadOptions(), impl.changes));
  for (it->Seek(ChangeKey(after + 1));
       it->Valid() && static_cast<int64_t>(page.changes.size()) < max_changes; it->Next()) {
    SCANSERVE_ASSIGN_OR_RETURN(const uint64_t sequence, SequenceOfChangeKey(it->key()));
    if (sequence > page.last_sequence) break;
    SCANSERVE_ASSIGN_OR_RETURN(ItemChange change,
                               DecodeChangeRecord(sequence, it->value().ToString()));
    page.changes.push_back(std::move(change));
  }
  SCANSERVE_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading the change log"));
  // A trim that raced with this read may have taken some of what it skipped over.
  if (after < impl.trimmed_through.load()) return ChangesTrimmedError(after, impl.trimmed_through);
  return page;
}

absl::StatusOr<std::optional<std::string>> RocksDbFeatureStore::GetMeta(
    const std::string& key) const {
  std::shared_lock<std::shared_mutex> lock(impl_->mu);
  SCANSERVE_RETURN_IF_ERROR(impl_->CheckOpen());
  std::string value;
  const rocksdb::Status s =
      impl_->db->Get(rocksdb::ReadOptions(), impl_->meta, ToSlice(key), &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  SCANSERVE_RETURN_IF_ERROR(FromRocksDb(s, absl::StrCat("reading the store's meta entry ", key)));
  return std::optional<std::string>(std::move(value));
}

absl::Status RocksDbFeatureStore::SetMeta(const std::string& key, const std::string& value) {
  return impl_->PutRaw(&Impl::meta, key, value,
                       absl::StrCat("writing the store's meta entry ", key));
}

FeatureStoreStats RocksDbFeatureStore::Stats() const {
  FeatureStoreStats stats;
  stats.synced_writes = impl_->synced_writes.load();
  stats.sync_write_seconds = static_cast<double>(impl_->sync_write_nanos.load()) * 1e-9;
  stats.failed_writes = impl_->failed_writes.load();
  stats.disk_free_bytes = FreeBytes(path_).value_or(-1);
  stats.writes_stopped = impl_->writes_stopped.load();
  stats.reopens = impl_->reopens.load();
  stats.last_change_sequence = impl_->committed_sequence.load();
  stats.changes_trimmed_through = impl_->trimmed_through.load();
  std::shared_lock<std::shared_mutex> lock(impl_->mu);
  stats.change_log_id = impl_->change_log_id;
  if (impl_->db == nullptr) return stats;
  for (rocksdb::ColumnFamilyHandle* family : impl_->handles) {
    for (const std::string* property : {&rocksdb::DB::Properties::kTotalSstFilesSize,
                                        &rocksdb::DB::Properties::kTotalBlobFileSize}) {
      uint64_t bytes = 0;
      if (impl_->db->GetIntProperty(family, *property, &bytes))
        stats.disk_bytes += static_cast<int64_t>(bytes);
    }
  }
  rocksdb::VectorLogPtr wal_files;
  if (impl_->db->GetSortedWalFiles(wal_files).ok()) {
    for (const auto& file : wal_files)
      stats.wal_bytes += static_cast<int64_t>(file->SizeFileBytes());
  }
  stats.disk_bytes += stats.wal_bytes;
  return stats;
}

absl::Status RocksDbFeatureStore::Checkpoint(const std::string& dir) const {
  SCANSERVE_RETURN_IF_ERROR(CheckNewDirectory(dir, "checkpoint directory"));
  std::shared_lock<std::shared_mutex> lock(impl_->mu);
  SCANSERVE_RETURN_IF_ERROR(impl_->CheckOpen());
  rocksdb::Checkpoint* raw = nullptr;
  SCANSERVE_RETURN_IF_ERROR(FromRocksDb(rocksdb::Checkpoint::Create(impl_->db.get(), &raw),
                                        "starting a checkpoint of the feature store"));
  const std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
  const rocksdb::Status s = checkpoint->CreateCheckpoint(dir);
  const absl::Status status =
      FromRocksDb(s, absl::StrCat("checkpointing the feature store into ", dir));
  // Its flush of the write buffer may have met the I/O error that stops writes.
  if (!s.ok()) impl_->NoteFailedWrite(s, status);
  if (!status.ok()) return status;
  // The copy's change log is another from here on (see NewChangeLogId).
  SCANSERVE_ASSIGN_OR_RETURN(std::unique_ptr<RocksDbFeatureStore> copy,
                             Open(dir, {.create_if_missing = false}));
  SCANSERVE_RETURN_IF_ERROR(copy->SetMeta(kChangeLogIdKey, NewChangeLogId()));
  return copy->Close();
}

absl::Status RocksDbFeatureStore::Close() {
  std::unique_lock<std::shared_mutex> lock(impl_->mu);
  if (impl_->closed) return absl::OkStatus();
  impl_->closed = true;
  return impl_->CloseDb();
}

absl::Status RocksDbFeatureStore::RecoverWrites() { return impl_->RecoverWrites(); }

bool RocksDbFeatureStore::WritesStopped() const { return impl_->writes_stopped.load(); }

absl::Status RocksDbFeatureStore::PutRawImageRecordForTesting(const std::string& id,
                                                              const std::string& value) {
  return impl_->PutRaw(&Impl::images, id, value, "writing a raw image record");
}

absl::Status RocksDbFeatureStore::PutRawCaptionRecordForTesting(const std::string& id,
                                                                const std::string& value) {
  return impl_->PutRaw(&Impl::captions, id, value, "writing a raw caption record");
}

}  // namespace scanserve

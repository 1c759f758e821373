// Proto <-> engine conversions for scanserve.v1: the only code that knows both the wire messages and
// the engine's types (engine/retrieval/retrieval_engine.h). Pure functions, no gRPC calls; errors are
// absl::Status with the offending values in the message.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/common/matrix.h"
#include "engine/detector/region_detector.h"
#include "engine/retrieval/retrieval_engine.h"
#include "scanserve/v1/scanserve.pb.h"

namespace scanserve {

// top_k = 0 on the wire means this many.
inline constexpr int kDefaultTopK = 10;
// Queries per search request, as scanserve.proto documents (1..64).
inline constexpr int kMaxQueriesPerRequest = 64;

// ---- requests -> engine ----

// num_regions x dim float32 from the packed little-endian bytes. INVALID_ARGUMENT unless
// num_regions >= 1, dim >= 1, the byte count is exactly num_regions * dim * 4 and every value is
// finite. (The engine checks dim against the model's img_dim.)
absl::StatusOr<FloatMatrix> RegionFeaturesFromProto(const v1::RegionFeatures& features);
// The inverse, for clients and tests.
void RegionFeaturesToProto(const FloatMatrix& matrix, v1::RegionFeatures* features);

SearchFilter FilterFromProto(const v1::Filter& filter);

// 0 -> kDefaultTopK; anything else passes through (the engine range-checks it).
int TopKFromProto(int32_t top_k);

// INVALID_ARGUMENT unless 1..kMaxQueriesPerRequest queries (the engine checks each query's text,
// before the batcher queues it).
absl::StatusOr<std::vector<std::string>> QueriesFromProto(const v1::SearchImagesRequest& request);
SearchParams SearchParamsFromProto(const v1::SearchImagesRequest& request);
SearchParams SearchParamsFromProto(const v1::SearchCaptionsRequest& request);

// image_id -> a stored image; region_features -> raw features; image_bytes -> FAILED_PRECONDITION
// (this conversion has no detector); nothing set -> INVALID_ARGUMENT. Errors name the query.
absl::StatusOr<ImageQuery> ImageQueryFromProto(const v1::ImageQuery& query, int index);
// INVALID_ARGUMENT unless 1..kMaxQueriesPerRequest queries.
absl::Status CheckImageQueryCount(const v1::SearchCaptionsRequest& request);
// The image_bytes of the request's queries, in query order (views into `request`).
std::vector<std::string_view> ImageBytesOf(const v1::SearchCaptionsRequest& request);
// Every query as ImageQueryFromProto, except image_bytes: with `detections` (one per image_bytes
// query, in order: ImageBytesOf's images through the detector) the detected region features, or
// that detection's error naming the query; without (nullptr: no detector) FAILED_PRECONDITION.
// Also INVALID_ARGUMENT unless 1..kMaxQueriesPerRequest queries.
absl::StatusOr<std::vector<ImageQuery>> ImageQueriesFromProto(
    const v1::SearchCaptionsRequest& request,
    std::vector<absl::StatusOr<DetectedRegions>>* detections = nullptr);

// An ingestable image: region features (as above), boxes and labels each absent or one per region.
// image_bytes is FAILED_PRECONDITION (this conversion has no detector; see ImageItemFromDetection).
// Errors name the image id.
absl::StatusOr<ImageItem> ImageItemFromProto(const v1::Image& image);

// Whether an image with image_bytes is worth a detection: INVALID_ARGUMENT (naming it) for an id
// the engine refuses anyway (empty, longer than RetrievalLimits::kMaxIdBytes), or boxes / labels
// sent along (the detector supplies them).
absl::Status CheckImageForDetection(const v1::Image& image);
// The ingestable image whose image_bytes went through the detector: its id, collection and
// metadata with the detected features (k x 2048), boxes (original pixels) and labels. A failed
// detection is that image's error (code kept, message prefixed with the id).
absl::StatusOr<ImageItem> ImageItemFromDetection(const v1::Image& image, absl::StatusOr<DetectedRegions> regions);
CaptionItem CaptionItemFromProto(const v1::Caption& caption);
ItemUpdate ItemUpdateFromProto(const v1::ItemUpdate& update);

// ListItems: the kind, and a page size 0 -> kDefaultListPageSize, above the largest -> the largest.
// INVALID_ARGUMENT for an unspecified kind or a negative page size.
inline constexpr int kDefaultListPageSize = 1000;
absl::StatusOr<ItemKind> ItemKindFromProto(const v1::ListItemsRequest& request);
absl::StatusOr<ListParams> ListParamsFromProto(const v1::ListItemsRequest& request);

// CreateSnapshot: the request's name, or "snapshot-YYYYMMDDTHHMMSSZ" at `now` (UTC) when empty.
// INVALID_ARGUMENT unless 1..128 bytes of [A-Za-z0-9._-] not starting with '.'.
absl::StatusOr<std::string> SnapshotNameFromProto(const v1::CreateSnapshotRequest& request,
                                                  std::chrono::system_clock::time_point now);
// Where snapshot `name` goes under --snapshot-dir.
std::string SnapshotDataDir(const std::string& snapshot_dir, const std::string& name);

// ---- engine -> responses ----

void ImageHitsToProto(const std::vector<ImageHit>& hits, v1::ImageHits* out);
void CaptionHitsToProto(const std::vector<CaptionHit>& hits, v1::CaptionHits* out);
void ItemStatusToProto(const std::string& id, const absl::Status& status, v1::ItemStatus* out);
void ItemResultToProto(const ItemResult& result, v1::ItemStatus* out);
void StoredImageToProto(const StoredImageInfo& info, v1::StoredImage* out);
void StoredCaptionToProto(const StoredCaptionInfo& info, v1::StoredCaption* out);
void ItemPageToProto(const ItemPage& page, v1::ListItemsResponse* out);
// ListChanges: page size 0 -> kDefaultListPageSize, above the largest -> the largest.
absl::StatusOr<int64_t> ChangesPageSizeFromProto(const v1::ListChangesRequest& request);
void ItemChangePageToProto(const ItemChangePage& page, v1::ListChangesResponse* out);
void SnapshotToProto(const std::string& name, const SnapshotInfo& snapshot, v1::CreateSnapshotResponse* out);

// `model_dirs` name the loaded models in order (the engine reports one summary per model);
// `detector` describes the loaded detector (nullptr: none).
void StatsToProto(const EngineStats& stats, const std::vector<std::string>& model_dirs,
                  const std::string& version, const DetectorInfo* detector, v1::GetStatsResponse* out);

}  // namespace scanserve

#include "server/convert.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace scanserve {
namespace {

Metadata MetadataFromProto(const google::protobuf::Map<std::string, std::string>& metadata) {
  return Metadata(metadata.begin(), metadata.end());
}

void MetadataToProto(const Metadata& metadata, google::protobuf::Map<std::string, std::string>* out) {
  for (const auto& [key, value] : metadata) (*out)[key] = value;
}

void BoxToProto(const Box& box, v1::Box* out) {
  out->set_x1(box.x1);
  out->set_y1(box.y1);
  out->set_x2(box.x2);
  out->set_y2(box.y2);
}

Box BoxFromProto(const v1::Box& box) { return Box{box.x1(), box.y1(), box.x2(), box.y2()}; }

// The wire format is little-endian; the copy is a memcpy on the hosts we build for.
void CopyLittleEndianFloats(const std::string& bytes, float* out) {
  std::memcpy(out, bytes.data(), bytes.size());
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  auto* words = reinterpret_cast<uint32_t*>(out);
  for (size_t i = 0; i < bytes.size() / 4; ++i) words[i] = __builtin_bswap32(words[i]);
#endif
}

absl::Status NoDetectorError(const std::string& what, const char* alternative) {
  return absl::FailedPreconditionError(absl::StrCat(
      what, ": image_bytes needs the region detector, which this server has not loaded (start it with "
            "--detector-dir); send ", alternative));
}

absl::Status Prefixed(const absl::Status& status, const std::string& prefix) {
  return absl::Status(status.code(), absl::StrCat(prefix, ": ", status.message()));
}

absl::Status CheckQueryCount(int queries) {
  if (queries < 1 || queries > kMaxQueriesPerRequest) {
    return absl::InvalidArgumentError(absl::StrCat("a search takes 1..", kMaxQueriesPerRequest,
                                                   " queries, got ", queries));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<FloatMatrix> RegionFeaturesFromProto(const v1::RegionFeatures& features) {
  const int64_t rows = features.num_regions();
  const int64_t dim = features.dim();
  if (rows < 1 || dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "region_features: num_regions and dim must be >= 1, got num_regions=", rows, " dim=", dim));
  }
  const std::string& bytes = features.values();
  // rows, dim < 2^31, so rows * dim cannot overflow int64.
  const int64_t expected_floats = rows * dim;
  if (bytes.size() % sizeof(float) != 0 ||
      static_cast<int64_t>(bytes.size() / sizeof(float)) != expected_floats) {
    return absl::InvalidArgumentError(absl::StrCat(
        "region_features: values holds ", bytes.size(), " bytes; num_regions=", rows, " x dim=", dim,
        " float32 needs ", expected_floats * static_cast<int64_t>(sizeof(float)), " bytes"));
  }
  FloatMatrix matrix(rows, dim);
  CopyLittleEndianFloats(bytes, matrix.data.data());
  for (size_t i = 0; i < matrix.data.size(); ++i) {
    if (!std::isfinite(matrix.data[i])) {
      return absl::InvalidArgumentError(absl::StrCat("region_features: value ", matrix.data[i],
                                                     " at region ", i / dim, ", column ", i % dim,
                                                     " is not finite"));
    }
  }
  return matrix;
}

void RegionFeaturesToProto(const FloatMatrix& matrix, v1::RegionFeatures* features) {
  features->set_num_regions(static_cast<int32_t>(matrix.rows));
  features->set_dim(static_cast<int32_t>(matrix.cols));
  std::string* bytes = features->mutable_values();
  bytes->resize(matrix.data.size() * sizeof(float));
  std::memcpy(bytes->data(), matrix.data.data(), bytes->size());
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  auto* words = reinterpret_cast<uint32_t*>(bytes->data());
  for (size_t i = 0; i < matrix.data.size(); ++i) words[i] = __builtin_bswap32(words[i]);
#endif
}

SearchFilter FilterFromProto(const v1::Filter& filter) {
  SearchFilter out;
  out.collection = filter.collection();
  out.metadata = MetadataFromProto(filter.metadata());
  return out;
}

int TopKFromProto(int32_t top_k) { return top_k == 0 ? kDefaultTopK : top_k; }

absl::StatusOr<std::vector<std::string>> QueriesFromProto(const v1::SearchImagesRequest& request) {
  if (absl::Status status = CheckQueryCount(request.queries_size()); !status.ok()) return status;
  return std::vector<std::string>(request.queries().begin(), request.queries().end());
}

SearchParams SearchParamsFromProto(const v1::SearchImagesRequest& request) {
  SearchParams params;
  params.top_k = TopKFromProto(request.top_k());
  params.filter = FilterFromProto(request.filter());
  params.explain = request.explain();
  return params;
}

SearchParams SearchParamsFromProto(const v1::SearchCaptionsRequest& request) {
  SearchParams params;
  params.top_k = TopKFromProto(request.top_k());
  params.filter = FilterFromProto(request.filter());
  return params;
}

absl::StatusOr<ImageQuery> ImageQueryFromProto(const v1::ImageQuery& query, int index) {
  ImageQuery out;
  switch (query.source_case()) {
    case v1::ImageQuery::kImageId:
      if (query.image_id().empty()) {
        return absl::InvalidArgumentError(absl::StrCat("queries[", index, "]: empty image_id"));
      }
      out.stored_id = query.image_id();
      return out;
    case v1::ImageQuery::kRegionFeatures: {
      absl::StatusOr<FloatMatrix> features = RegionFeaturesFromProto(query.region_features());
      if (!features.ok()) {
        return absl::Status(features.status().code(),
                            absl::StrCat("queries[", index, "]: ", features.status().message()));
      }
      out.region_features = *std::move(features);
      return out;
    }
    case v1::ImageQuery::kImageBytes:
      return NoDetectorError(absl::StrCat("queries[", index, "]"), "region_features or an image_id");
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "queries[", index, "]: set one of image_id, region_features, image_bytes"));
  }
}

absl::Status CheckImageQueryCount(const v1::SearchCaptionsRequest& request) {
  return CheckQueryCount(request.queries_size());
}

std::vector<std::string_view> ImageBytesOf(const v1::SearchCaptionsRequest& request) {
  std::vector<std::string_view> images;
  for (const v1::ImageQuery& query : request.queries()) {
    if (query.source_case() == v1::ImageQuery::kImageBytes) images.emplace_back(query.image_bytes());
  }
  return images;
}

absl::StatusOr<std::vector<ImageQuery>> ImageQueriesFromProto(
    const v1::SearchCaptionsRequest& request, std::vector<absl::StatusOr<DetectedRegions>>* detections) {
  if (absl::Status status = CheckQueryCount(request.queries_size()); !status.ok()) return status;
  std::vector<ImageQuery> queries;
  queries.reserve(request.queries_size());
  size_t detected = 0;  // image_bytes queries seen so far
  for (int i = 0; i < request.queries_size(); ++i) {
    const v1::ImageQuery& proto = request.queries(i);
    if (proto.source_case() == v1::ImageQuery::kImageBytes && detections != nullptr) {
      if (detected >= detections->size()) {
        return absl::InternalError(absl::StrCat("queries[", i, "]: no detection for its image_bytes (",
                                                detections->size(), " detections)"));
      }
      absl::StatusOr<DetectedRegions>& regions = (*detections)[detected++];
      if (!regions.ok()) return Prefixed(regions.status(), absl::StrCat("queries[", i, "]"));
      if (regions->features.rows < 1) {
        return absl::InvalidArgumentError(absl::StrCat("queries[", i, "]: the detector found no regions"));
      }
      ImageQuery query;
      query.region_features = std::move(regions->features);
      queries.push_back(std::move(query));
      continue;
    }
    absl::StatusOr<ImageQuery> query = ImageQueryFromProto(proto, i);
    if (!query.ok()) return query.status();
    queries.push_back(*std::move(query));
  }
  return queries;
}

absl::StatusOr<ImageItem> ImageItemFromProto(const v1::Image& image) {
  ImageItem item;
  item.id = image.id();
  item.collection = image.collection();
  item.metadata = MetadataFromProto(image.metadata());
  switch (image.content_case()) {
    case v1::Image::kRegionFeatures: {
      absl::StatusOr<FloatMatrix> features = RegionFeaturesFromProto(image.region_features());
      if (!features.ok()) {
        return absl::Status(features.status().code(),
                            absl::StrCat("image '", image.id(), "': ", features.status().message()));
      }
      item.region_features = *std::move(features);
      break;
    }
    case v1::Image::kImageBytes:
      return NoDetectorError(absl::StrCat("image '", image.id(), "'"), "region_features");
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("image '", image.id(), "': set region_features or image_bytes"));
  }
  const int64_t regions = item.region_features.rows;
  if (image.boxes_size() != 0 && image.boxes_size() != regions) {
    return absl::InvalidArgumentError(absl::StrCat("image '", image.id(), "': ", image.boxes_size(),
                                                   " boxes for ", regions,
                                                   " regions (send none or one per region)"));
  }
  if (image.labels_size() != 0 && image.labels_size() != regions) {
    return absl::InvalidArgumentError(absl::StrCat("image '", image.id(), "': ", image.labels_size(),
                                                   " labels for ", regions,
                                                   " regions (send none or one per region)"));
  }
  item.boxes.reserve(image.boxes_size());
  for (const v1::Box& box : image.boxes()) item.boxes.push_back(BoxFromProto(box));
  item.labels.assign(image.labels().begin(), image.labels().end());
  return item;
}

absl::Status CheckImageForDetection(const v1::Image& image) {
  if (image.id().empty() || image.id().size() > RetrievalLimits::kMaxIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("image id must be 1..", RetrievalLimits::kMaxIdBytes,
                                                   " bytes, got ", image.id().size()));
  }
  if (image.boxes_size() != 0 || image.labels_size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image '", image.id(), "': boxes and labels go with region_features; with image_bytes the "
        "detector supplies them"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ImageItem> ImageItemFromDetection(const v1::Image& image, absl::StatusOr<DetectedRegions> regions) {
  if (!regions.ok()) return Prefixed(regions.status(), absl::StrCat("image '", image.id(), "'"));
  const int64_t k = regions->features.rows;
  if (k < 1) return absl::InvalidArgumentError(absl::StrCat("image '", image.id(), "': the detector found no regions"));
  if (static_cast<int64_t>(regions->boxes.size()) != k || static_cast<int64_t>(regions->labels.size()) != k) {
    return absl::InternalError(absl::StrCat("image '", image.id(), "': the detector returned ", k, " regions, ",
                                            regions->boxes.size(), " boxes and ", regions->labels.size(), " labels"));
  }
  ImageItem item;
  item.id = image.id();
  item.collection = image.collection();
  item.metadata = MetadataFromProto(image.metadata());
  item.region_features = std::move(regions->features);
  item.boxes.reserve(regions->boxes.size());
  for (const std::array<float, 4>& box : regions->boxes) item.boxes.push_back(Box{box[0], box[1], box[2], box[3]});
  item.labels = std::move(regions->labels);
  return item;
}

CaptionItem CaptionItemFromProto(const v1::Caption& caption) {
  CaptionItem item;
  item.id = caption.id();
  item.collection = caption.collection();
  item.metadata = MetadataFromProto(caption.metadata());
  item.text = caption.text();
  return item;
}

ItemUpdate ItemUpdateFromProto(const v1::ItemUpdate& update) {
  ItemUpdate out;
  out.id = update.id();
  if (update.set_collection()) out.collection = update.collection();
  out.set_metadata = Metadata(update.set_metadata().begin(), update.set_metadata().end());
  out.remove_metadata.assign(update.remove_metadata().begin(), update.remove_metadata().end());
  return out;
}

absl::StatusOr<ItemKind> ItemKindFromProto(const v1::ListItemsRequest& request) {
  switch (request.kind()) {
    case v1::ITEM_KIND_IMAGE:
      return ItemKind::kImage;
    case v1::ITEM_KIND_CAPTION:
      return ItemKind::kCaption;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("kind must be ITEM_KIND_IMAGE or ITEM_KIND_CAPTION, got ", request.kind()));
  }
}

absl::StatusOr<std::string> SnapshotNameFromProto(const v1::CreateSnapshotRequest& request,
                                                  std::chrono::system_clock::time_point now) {
  if (request.name().empty()) {
    const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
    std::tm utc{};
    gmtime_r(&seconds, &utc);
    char name[40];
    std::strftime(name, sizeof(name), "snapshot-%Y%m%dT%H%M%SZ", &utc);
    return std::string(name);
  }
  const std::string& name = request.name();
  const bool allowed = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
  if (name.size() > 128 || !allowed || name[0] == '.') {
    return absl::InvalidArgumentError(absl::StrCat(
        "a snapshot name is 1..128 bytes of letters, digits, '.', '_' and '-', not starting with '.'; got ",
        name.size() > 64 ? absl::StrCat(name.size(), " bytes") : absl::StrCat("'", absl::CHexEscape(name), "'")));
  }
  return name;
}

std::string SnapshotDataDir(const std::string& snapshot_dir, const std::string& name) {
  return (std::filesystem::path(snapshot_dir) / name).string();
}

absl::StatusOr<ListParams> ListParamsFromProto(const v1::ListItemsRequest& request) {
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("page_size must be >= 0, got ", request.page_size()));
  }
  ListParams params;
  params.collection = request.collection();
  params.page_size = request.page_size() == 0
                         ? kDefaultListPageSize
                         : std::min<int64_t>(request.page_size(), RetrievalLimits::kMaxListPageSize);
  params.page_token = request.page_token();
  return params;
}

void ImageHitsToProto(const std::vector<ImageHit>& hits, v1::ImageHits* out) {
  out->mutable_hits()->Reserve(static_cast<int>(hits.size()));
  for (const ImageHit& hit : hits) {
    v1::ImageHit* h = out->add_hits();
    h->set_id(hit.id);
    h->set_score(hit.score);
    h->set_collection(hit.collection);
    MetadataToProto(hit.metadata, h->mutable_metadata());
    for (const WordExplanation& word : hit.explanation) {
      v1::WordExplanation* w = h->add_explanation();
      w->set_word(word.word);
      w->set_region(word.region);
      w->set_attention(word.attention);
      if (word.box.has_value()) BoxToProto(*word.box, w->mutable_box());
      w->set_label(word.label);
    }
  }
}

void CaptionHitsToProto(const std::vector<CaptionHit>& hits, v1::CaptionHits* out) {
  out->mutable_hits()->Reserve(static_cast<int>(hits.size()));
  for (const CaptionHit& hit : hits) {
    v1::CaptionHit* h = out->add_hits();
    h->set_id(hit.id);
    h->set_score(hit.score);
    h->set_text(hit.text);
    h->set_collection(hit.collection);
    MetadataToProto(hit.metadata, h->mutable_metadata());
  }
}

void ItemStatusToProto(const std::string& id, const absl::Status& status, v1::ItemStatus* out) {
  out->set_id(id);
  out->set_code(static_cast<int32_t>(status.code()));
  out->set_message(std::string(status.message()));
}

void ItemResultToProto(const ItemResult& result, v1::ItemStatus* out) {
  ItemStatusToProto(result.id, result.status, out);
}

void StoredImageToProto(const StoredImageInfo& info, v1::StoredImage* out) {
  ItemStatusToProto(info.item.id, info.status, out->mutable_status());
  v1::Image* image = out->mutable_image();
  image->set_id(info.item.id);
  if (!info.status.ok()) return;
  image->set_collection(info.item.collection);
  MetadataToProto(info.item.metadata, image->mutable_metadata());
  for (const Box& box : info.item.boxes) BoxToProto(box, image->add_boxes());
  for (const std::string& label : info.item.labels) image->add_labels(label);
  out->set_num_regions(static_cast<int32_t>(info.num_regions));
  out->set_synthetic(info.synthetic);
  out->set_has_region_features(info.has_region_features);
  const FloatMatrix& features = info.item.region_features;
  if (!features.data.empty()) {
    v1::RegionFeatures* wire = image->mutable_region_features();
    wire->set_num_regions(static_cast<int32_t>(features.rows));
    wire->set_dim(static_cast<int32_t>(features.cols));
    wire->set_values(features.data.data(), features.data.size() * sizeof(float));  // little-endian
  }
}

void StoredCaptionToProto(const StoredCaptionInfo& info, v1::StoredCaption* out) {
  ItemStatusToProto(info.item.id, info.status, out->mutable_status());
  v1::Caption* caption = out->mutable_caption();
  caption->set_id(info.item.id);
  if (!info.status.ok()) return;
  caption->set_collection(info.item.collection);
  MetadataToProto(info.item.metadata, caption->mutable_metadata());
  caption->set_text(info.item.text);
  out->set_synthetic(info.synthetic);
}

void SnapshotToProto(const std::string& name, const SnapshotInfo& snapshot, v1::CreateSnapshotResponse* out) {
  out->set_name(name);
  out->set_data_dir(snapshot.data_dir);
  out->set_images(snapshot.images);
  out->set_captions(snapshot.captions);
  out->set_seconds(snapshot.seconds);
}

void ItemPageToProto(const ItemPage& page, v1::ListItemsResponse* out) {
  out->mutable_ids()->Reserve(static_cast<int>(page.ids.size()));
  for (const std::string& id : page.ids) out->add_ids(id);
  out->set_next_page_token(page.next_page_token);
}

absl::StatusOr<int64_t> ChangesPageSizeFromProto(const v1::ListChangesRequest& request) {
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("page_size must be >= 0, got ", request.page_size()));
  }
  return request.page_size() == 0 ? kDefaultListPageSize
                                  : std::min<int64_t>(request.page_size(), RetrievalLimits::kMaxChangesPage);
}

void ItemChangePageToProto(const ItemChangePage& page, v1::ListChangesResponse* out) {
  out->mutable_changes()->Reserve(static_cast<int>(page.changes.size()));
  for (const ItemChange& change : page.changes) {
    v1::ItemChange* item = out->add_changes();
    item->set_sequence(change.sequence);
    item->set_kind(change.is_caption ? v1::ITEM_KIND_CAPTION : v1::ITEM_KIND_IMAGE);
    item->set_id(change.id);
    item->set_deleted(change.deleted);
    item->set_unix_micros(change.unix_micros);
  }
  out->set_last_sequence(page.last_sequence);
  out->set_log_id(page.log_id);
}

void StatsToProto(const EngineStats& stats, const std::vector<std::string>& model_dirs,
                  const std::string& version, const DetectorInfo* detector, v1::GetStatsResponse* out) {
  out->set_images(stats.images);
  out->set_captions(stats.captions);
  out->set_feature_bytes(stats.feature_bytes);
  const size_t models = std::max(model_dirs.size(), stats.model_summaries.size());
  for (size_t i = 0; i < models; ++i) {
    v1::ModelInfo* model = out->add_models();
    if (i < model_dirs.size()) model->set_model_dir(model_dirs[i]);
    if (i < stats.model_summaries.size()) model->set_summary(stats.model_summaries[i]);
  }
  out->set_backend(stats.backend);
  out->set_encoder_device(stats.encoder_device);
  out->set_feature_bytes_limit(stats.feature_bytes_limit);
  out->set_feature_bytes_committed(stats.feature_bytes_committed);
  out->set_synthetic_images(stats.synthetic_images);
  out->set_synthetic_captions(stats.synthetic_captions);
  out->set_storage(stats.storage);
  out->set_query_precision(stats.query_precision);
  out->set_store_disk_bytes(stats.store_disk_bytes);
  out->set_store_disk_free_bytes(stats.store_disk_free_bytes);
  out->set_store_writes_stopped(stats.store_writes_stopped);
  out->set_last_change_sequence(stats.last_change_sequence);
  out->set_changes_trimmed_through(stats.changes_trimmed_through);
  out->set_change_log_id(stats.change_log_id);
  out->set_version(version);
  out->set_detector_loaded(detector != nullptr);
  if (detector != nullptr) out->set_detector(detector->summary);
}

}  // namespace scanserve

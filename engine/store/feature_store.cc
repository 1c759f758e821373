#include "engine/store/feature_store.h"

#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace scanserve {

absl::StatusOr<StoredImage> FeatureStore::GetImage(const std::string& id) const {
  SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::optional<StoredImage>> found,
                             GetImages(absl::MakeConstSpan(&id, 1)));
  if (found.size() != 1 || !found[0].has_value()) {
    return absl::NotFoundError(absl::StrCat("no stored image '", absl::CEscape(id), "'"));
  }
  return *std::move(found[0]);
}

absl::StatusOr<StoredCaption> FeatureStore::GetCaption(const std::string& id) const {
  SCANSERVE_ASSIGN_OR_RETURN(std::vector<std::optional<StoredCaption>> found,
                             GetCaptions(absl::MakeConstSpan(&id, 1)));
  if (found.size() != 1 || !found[0].has_value()) {
    return absl::NotFoundError(absl::StrCat("no stored caption '", absl::CEscape(id), "'"));
  }
  return *std::move(found[0]);
}

}  // namespace scanserve

// A v1::Image given as raw region features, as the server tests upsert them: 2 regions of `dim`
// values 0.5, except the first value, which the fake engine's score reads (tests/server/fake_engine.h).
#pragma once

#include <string>
#include <vector>

#include "scanserve/v1/scanserve.pb.h"
#include "tests/server/fake_engine.h"

namespace scanserve {
namespace testing_fake {

inline v1::Image FeaturesImage(const std::string& id, float first, const std::string& collection = "",
                               int dim = static_cast<int>(FakeRetrievalEngine::kImgDim)) {
  v1::Image image;
  image.set_id(id);
  image.set_collection(collection);
  std::vector<float> values(static_cast<size_t>(2 * dim), 0.5f);
  values[0] = first;
  v1::RegionFeatures* features = image.mutable_region_features();
  features->set_num_regions(2);
  features->set_dim(dim);
  features->set_values(std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float)));
  return image;
}

}  // namespace testing_fake
}  // namespace scanserve

#include "engine/common/safetensors.h"

#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/common/atomic_file.h"
#include "engine/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace scanserve {
namespace {

// Header sizes beyond this are a corrupt length field, not a real header.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

absl::StatusOr<size_t> DtypeBytes(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", dtype, "'"));
}

}  // namespace

int64_t TensorInfo::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeToString(const std::vector<int64_t>& shape) {
  if (shape.size() == 1) return absl::StrCat("(", shape[0], ",)");
  return absl::StrCat("(", absl::StrJoin(shape, ", "), ")");
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  auto corrupt = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat(path, ": not a valid safetensors file: ", why));
  };
  if (file_size < 8) return corrupt(absl::StrCat("only ", file_size, " bytes"));
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > kMaxHeaderBytes || header_len > file_size - 8) {
    return corrupt(absl::StrCat("header length ", header_len, " exceeds the file (", file_size, " bytes)"));
  }
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));

  SafetensorsFile file;
  file.path_ = path;
  file.data_.resize(file_size - 8 - header_len);
  in.read(file.data_.data(), static_cast<std::streamsize>(file.data_.size()));
  if (!in) return corrupt("short read");

  nlohmann::json json = nlohmann::json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return corrupt("header is not a JSON object");
  for (auto it = json.begin(); it != json.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const nlohmann::json& entry = it.value();
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets") || !entry["dtype"].is_string() ||
        !entry["shape"].is_array() || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2) {
      return corrupt(absl::StrCat("tensor '", it.key(), "' lacks dtype/shape/data_offsets"));
    }
    TensorInfo info;
    info.dtype = entry["dtype"].get<std::string>();
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        return corrupt(absl::StrCat("tensor '", it.key(), "' has a bad shape"));
      }
      info.shape.push_back(d.get<int64_t>());
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
      return corrupt(absl::StrCat("tensor '", it.key(), "' has bad data_offsets"));
    }
    const uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    if (begin > end || end > file.data_.size()) {
      return corrupt(absl::StrCat("tensor '", it.key(), "' bytes [", begin, ", ", end,
                                  ") lie outside the data section (", file.data_.size(),
                                  " bytes; truncated file?)"));
    }
    auto elem_bytes = DtypeBytes(info.dtype);
    if (!elem_bytes.ok()) return corrupt(absl::StrCat("tensor '", it.key(), "': ", elem_bytes.status().message()));
    info.offset = begin;
    info.num_bytes = end - begin;
    if (static_cast<uint64_t>(info.num_elements()) * *elem_bytes != info.num_bytes) {
      return corrupt(absl::StrCat("tensor '", it.key(), "' of shape ", ShapeToString(info.shape),
                                  " needs ", info.num_elements() * *elem_bytes, " bytes, has ",
                                  info.num_bytes));
    }
    file.tensors_.emplace(it.key(), std::move(info));
  }
  return file;
}

absl::StatusOr<std::vector<float>> SafetensorsFile::Float32(
    const std::string& name, const std::vector<int64_t>& expected_shape) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return absl::NotFoundError(absl::StrCat(path_, ": missing tensor '", name, "'"));
  const TensorInfo& info = it->second;
  if (info.dtype != "F32") {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor '", name, "' is ", info.dtype, ", expected F32"));
  }
  if (info.shape != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor '", name, "' has shape ",
                                                   ShapeToString(info.shape), ", expected ",
                                                   ShapeToString(expected_shape)));
  }
  std::vector<float> values(static_cast<size_t>(info.num_elements()));
  std::memcpy(values.data(), data_.data() + info.offset, info.num_bytes);  // the format is little-endian, as are our targets
  return values;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::map<std::string, Float32Tensor>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    int64_t n = 1;
    for (int64_t d : tensor.shape) n *= d;
    if (n != static_cast<int64_t>(tensor.values.size())) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' of shape ",
                                                     ShapeToString(tensor.shape), " has ",
                                                     tensor.values.size(), " values"));
    }
    const uint64_t bytes = tensor.values.size() * sizeof(float);
    header[name] = {{"dtype", "F32"}, {"shape", tensor.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  SCANSERVE_ASSIGN_OR_RETURN(AtomicFileWriter out, AtomicFileWriter::Create(path));
  const uint64_t len = header_text.size();
  char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  SCANSERVE_RETURN_IF_ERROR(out.Append(absl::string_view(len_bytes, 8)));
  SCANSERVE_RETURN_IF_ERROR(out.Append(header_text));
  for (const auto& [name, tensor] : tensors) {
    SCANSERVE_RETURN_IF_ERROR(out.Append(absl::string_view(
        reinterpret_cast<const char*>(tensor.values.data()), tensor.values.size() * sizeof(float))));
  }
  return out.Commit();
}

}  // namespace scanserve

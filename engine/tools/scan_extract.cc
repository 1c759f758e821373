// scan_extract: bottom-up-attention region features for a folder of images, written as bottom-up
// TSV (LXMERT's 10 columns or generate_tsv's 6), so users can replace the Caffe pipeline. The res5
// head runs over the proposals of --batch images at once. See --help.
//
// Exit codes: 0 ok, 1 some images failed or an internal error, 2 bad arguments.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <unistd.h>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/common/command_line.h"
#include "engine/common/file_read.h"
#include "engine/common/npy.h"
#include "engine/common/openblas_core.h"
#include "engine/common/status_macros.h"
#include "engine/detector/region_detector.h"
#include "engine/detector/region_drift.h"
#include "engine/detector/region_selection.h"
#include "engine/io/bottom_up_tsv_writer.h"
#include "engine/tools/tool_exit.h"

namespace scanserve {
namespace {

namespace fs = std::filesystem;

// Beside tool_exit.h's 0 and 2: an image (or the detector) failed, the others were written.
constexpr int kExitFailed = 1;

constexpr char kUsage[] = R"(Usage: scan_extract --detector DIR --out FILE.tsv [options] IMAGE_OR_FOLDER...
       scan_extract --detector DIR --benchmark N [--device cuda] [--precision P]
       scan_extract --detector DIR --compare-precision P [--device cuda] IMAGE_OR_FOLDER...

Runs the bottom-up-attention detector (Caffe ResNet-101 Faster R-CNN, converted with
tools/convert_bottom_up_caffemodel.py) on every image and writes one TSV line per image with the
selected regions' boxes and pool5 features, as the original generate_tsv.py did. Folders are read
one level deep: files ending in .jpg, .jpeg, .png or .webp, in name order. The image id is the file
name without its extension.

Required:
  --detector DIR      a detector directory (docs/detector-format.md)
  --out FILE.tsv      output TSV (written through a temporary file unless --resume)

Options:
  --layout NAME       lxmert (default: img_id, img_h, img_w, objects_id, objects_conf, attrs_id,
                      attrs_conf, num_boxes, boxes, features) or generate_tsv (image_id, image_w,
                      image_h, num_boxes, boxes, features)
  --min-boxes N       regions per image, lower bound (default: the detector's, 36 or 10)
  --max-boxes N       upper bound (default: the detector's, 36 or 100)
  --conf-thresh X     class confidence a region needs before the min/max rule, in [0, 1]
                      (default: the detector's detector.json, 0.2 as converted)
  --batch N           images whose proposals go through the res5 head together (default 2)
  --device NAME       cpu (default) or cuda (a CUDA build of LibTorch)
  --precision P       fp32 (default: the original network's numbers), tf32 (TF32 tensor cores on
                      CUDA) or bf16 (convolutions in bf16, ~2x faster on GPUs and on CPUs with
                      AVX512-BF16 or AMX; emulated, and several times slower than fp32, on other
                      CPUs); tf32 and bf16 move the features slightly: see --compare-precision.
                      --tf32 is short for --precision tf32
  --threads N         intra-op threads (default: all cores)
  --resume            append to an existing --out, skipping image ids already in it
  --debug-dir DIR     also write each image's intermediates as .npy: <id>.im_info, .input, .rois,
                      .roi_scores, .cls_prob, .attr_prob, .pool5, .keep (int64), .max_conf
  --quiet             no progress line
  --benchmark N       instead of extracting: time the network alone (no decoding) on N synthetic
                      800x600 images, batch 1, 300 proposals each, after one warm-up; prints images/s
  --compare-precision P
                      instead of extracting: detect every image in fp32 and in precision P and print,
                      per image and overall, how the regions moved (each fp32 region's best box IoU,
                      matches at IoU >= 0.9) and the pool5 drift of the matches (cosine, relative L2),
                      with both precisions' times
)";

struct Args {
  DetectorOptions detector;
  std::string out;
  BottomUpLayout layout = BottomUpLayout::kLxmert10;
  int batch = 2;
  bool help = false;
  bool resume = false;
  bool quiet = false;
  int benchmark = 0;
  std::optional<DetectorPrecision> compare_precision;
  std::string debug_dir;
  std::vector<std::string> inputs;
};

int BadArgs(const std::string& message) {
  std::fprintf(stderr, "scan_extract: %s\n(see scan_extract --help)\n", message.c_str());
  return kExitBadInput;
}

absl::Status ParsePositive(const CommandLineFlag& flag, int* out) {
  if (!absl::SimpleAtoi(flag.value, out) || *out < 1) {
    return absl::InvalidArgumentError(absl::StrCat(flag.name, " needs an integer >= 1"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Args> ParseArgs(int argc, char** argv) {
  CommandLineSpec spec;
  spec.value_flags = {"--detector", "--out", "--layout", "--min-boxes", "--max-boxes",
                      "--conf-thresh", "--batch", "--threads", "--device", "--precision",
                      "--compare-precision", "--benchmark", "--debug-dir"};
  spec.switches = {"--help", "-h", "--tf32", "--resume", "--quiet"};
  spec.operands = true;
  SCANSERVE_ASSIGN_OR_RETURN(const std::vector<CommandLineFlag> flags, ParseCommandLine(argc, argv, spec));
  Args args;
  for (const CommandLineFlag& flag : flags) {
    const std::string& name = flag.name;
    const std::string& value = flag.value;
    if (name.empty()) {
      args.inputs.push_back(value);
    } else if (name == "--help" || name == "-h") {
      args.help = true;
    } else if (name == "--detector") {
      args.detector.detector_dir = value;
    } else if (name == "--out") {
      args.out = value;
    } else if (name == "--layout") {
      if (value == "lxmert") args.layout = BottomUpLayout::kLxmert10;
      else if (value == "generate_tsv") args.layout = BottomUpLayout::kGenerateTsv6;
      else return absl::InvalidArgumentError("--layout is lxmert or generate_tsv");
    } else if (name == "--min-boxes") {
      SCANSERVE_RETURN_IF_ERROR(ParsePositive(flag, &args.detector.min_boxes));
    } else if (name == "--max-boxes") {
      SCANSERVE_RETURN_IF_ERROR(ParsePositive(flag, &args.detector.max_boxes));
    } else if (name == "--conf-thresh") {
      if (!absl::SimpleAtof(value, &args.detector.conf_threshold) ||
          !IsConfidenceThreshold(args.detector.conf_threshold)) {
        return absl::InvalidArgumentError("--conf-thresh needs a number in [0, 1]");
      }
    } else if (name == "--batch") {
      SCANSERVE_RETURN_IF_ERROR(ParsePositive(flag, &args.batch));
    } else if (name == "--threads") {
      SCANSERVE_RETURN_IF_ERROR(ParsePositive(flag, &args.detector.num_threads));
    } else if (name == "--device") {
      if (value == "cpu") args.detector.device = DetectorDevice::kCpu;
      else if (value == "cuda") args.detector.device = DetectorDevice::kCuda;
      else return absl::InvalidArgumentError("--device is cpu or cuda");
    } else if (name == "--tf32") {
      args.detector.precision = DetectorPrecision::kTf32;
    } else if (name == "--precision" || name == "--compare-precision") {
      absl::StatusOr<DetectorPrecision> precision = ParseDetectorPrecision(value);
      if (!precision.ok()) return absl::InvalidArgumentError(absl::StrCat(name, ": ", precision.status().message()));
      if (name == "--precision") {
        args.detector.precision = *precision;
      } else {
        args.compare_precision = *precision;
      }
    } else if (name == "--resume") {
      args.resume = true;
    } else if (name == "--quiet") {
      args.quiet = true;
    } else if (name == "--benchmark") {
      SCANSERVE_RETURN_IF_ERROR(ParsePositive(flag, &args.benchmark));
    } else if (name == "--debug-dir") {
      args.debug_dir = value;
    }
  }
  return args;
}

bool IsImageFile(const fs::path& path) {
  const std::string ext = absl::AsciiStrToLower(path.extension().string());
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".webp";
}

absl::StatusOr<std::vector<fs::path>> ListImages(const std::vector<std::string>& inputs) {
  std::vector<fs::path> images;
  for (const std::string& input : inputs) {
    std::error_code ec;
    if (fs::is_directory(input, ec)) {
      std::vector<fs::path> found;
      for (const fs::directory_entry& entry : fs::directory_iterator(input, ec)) {
        if (entry.is_regular_file() && IsImageFile(entry.path())) found.push_back(entry.path());
      }
      if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot list ", input, ": ", ec.message()));
      std::sort(found.begin(), found.end());
      images.insert(images.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(input, ec)) {
      images.emplace_back(input);
    } else {
      return absl::NotFoundError(absl::StrCat("no such image or folder: ", input));
    }
  }
  return images;
}

// Ids already in a TSV from an earlier run; a torn last line (no newline) is cut off. Streams the
// file a line at a time: an output of many images is far larger than memory.
absl::StatusOr<std::set<std::string>> ExistingIds(const std::string& path) {
  std::set<std::string> ids;
  std::error_code ec;
  if (!fs::exists(path, ec)) return ids;
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  uintmax_t complete = 0;  // bytes up to the end of the last newline-terminated line
  std::string line;
  while (std::getline(in, line) && !in.eof()) {  // eof here: the line had no newline
    complete += line.size() + 1;
    const size_t tab = line.find('\t');
    if (tab != std::string::npos) ids.insert(line.substr(0, tab));
  }
  in.close();
  if (complete != fs::file_size(path, ec)) fs::resize_file(path, complete, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot truncate ", path, ": ", ec.message()));
  return ids;
}

absl::Status WriteTrace(const std::string& dir, const std::string& id, const DetectorTrace& t) {
  const std::string base = (fs::path(dir) / id).string();
  auto floats = [&](const char* name, std::vector<int64_t> shape, const float* data) {
    return WriteNpyFloat32(absl::StrCat(base, ".", name, ".npy"), shape, data);
  };
  const int64_t r = t.rois.rows;
  const std::vector<int64_t> keep(t.keep.begin(), t.keep.end());
  const int64_t height = static_cast<int64_t>(t.im_info[0]), width = static_cast<int64_t>(t.im_info[1]);
  for (const absl::Status& s : {
           floats("im_info", {3}, t.im_info.data()),
           floats("input", {3, height, width}, t.input.data.data()),
           floats("rois", {r, 4}, t.rois.data.data()),
           floats("roi_scores", {r}, t.roi_scores.data()),
           floats("cls_prob", {r, t.cls_prob.cols}, t.cls_prob.data.data()),
           floats("attr_prob", {r, t.attr_prob.cols}, t.attr_prob.data.data()),
           floats("pool5", {r, t.pool5.cols}, t.pool5.data.data()),
           WriteNpyInt64(base + ".keep.npy", {static_cast<int64_t>(keep.size())}, keep.data()),
           floats("max_conf", {r}, t.max_conf.data()),
       }) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// The detector's one-line summary and, where there is one, its warning, on stderr.
void PrintDetectorInfo(const RegionDetector& detector) {
  const DetectorInfo info = detector.Info();
  std::fprintf(stderr, "scan_extract: %s\n", info.summary.c_str());
  if (!info.warning.empty()) std::fprintf(stderr, "scan_extract: warning: %s\n", info.warning.c_str());
}

// Loads a detector into *detector, says which, and runs it once (the timed and compared runs must
// not pay for the first run's set-up). kExitOk, or the exit code: a detector that does not load is
// a bad argument, one that fails to run a failure.
int LoadWarmDetector(const DetectorOptions& options, std::unique_ptr<RegionDetector>* detector) {
  absl::StatusOr<std::unique_ptr<RegionDetector>> loaded = LoadBottomUpDetector(options);
  if (!loaded.ok()) return BadArgs(std::string(loaded.status().message()));
  *detector = *std::move(loaded);
  PrintDetectorInfo(**detector);
  if (absl::Status s = (*detector)->WarmUp(); !s.ok()) {
    std::fprintf(stderr, "scan_extract: %s\n", s.ToString().c_str());
    return kExitFailed;
  }
  return kExitOk;
}

int Benchmark(const Args& args) {
  std::unique_ptr<RegionDetector> detector;
  if (const int code = LoadWarmDetector(args.detector, &detector); code != kExitOk) return code;
  std::vector<double> seconds;
  for (int i = 0; i < args.benchmark; ++i) {
    const auto start = std::chrono::steady_clock::now();
    if (absl::Status s = detector->WarmUp(); !s.ok()) {
      std::fprintf(stderr, "scan_extract: %s\n", s.ToString().c_str());
      return kExitFailed;
    }
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  double total = 0;
  for (double t : seconds) total += t;
  std::printf("| device | precision | images | p50 ms/image | p99 ms/image | images/s |\n|---|---|---|---|---|---|\n");
  std::printf("| %s | %s | %d | %.1f | %.1f | %.2f |\n", detector->Info().device.c_str(),
              DetectorPrecisionName(args.detector.precision), args.benchmark, 1e3 * seconds[seconds.size() / 2],
              1e3 * seconds[std::min(seconds.size() - 1, seconds.size() * 99 / 100)],
              args.benchmark / total);
  return kExitOk;
}

// Detects every image in fp32 and in args.compare_precision and prints how far apart they are.
int ComparePrecision(const Args& args) {
  absl::StatusOr<std::vector<fs::path>> images = ListImages(args.inputs);
  if (!images.ok()) return BadArgs(std::string(images.status().message()));
  if (images->empty()) return BadArgs("no images (.jpg, .jpeg, .png, .webp) in the inputs");
  DetectorOptions reference_options = args.detector;
  reference_options.precision = DetectorPrecision::kFloat32;
  DetectorOptions other_options = args.detector;
  other_options.precision = *args.compare_precision;
  std::unique_ptr<RegionDetector> reference, other;
  if (const int code = LoadWarmDetector(reference_options, &reference); code != kExitOk) return code;
  if (const int code = LoadWarmDetector(other_options, &other); code != kExitOk) return code;
  const char* name = DetectorPrecisionName(*args.compare_precision);
  std::printf("| image | regions fp32 / %s | matched (IoU >= %.1f) | mean best IoU | mean cosine | min cosine "
              "| max rel. L2 | ms fp32 | ms %s |\n|---|---|---|---|---|---|---|---|---|\n",
              name, RegionDrift::kMatchIoU, name);
  int64_t regions = 0, matched = 0, failed = 0, compared = 0;
  double iou_sum = 0, cosine_sum = 0, min_cosine = 1, max_l2 = 0, seconds[2] = {0, 0};
  for (const fs::path& path : *images) {
    absl::StatusOr<std::string> bytes = ReadWholeFile(path.string());
    std::optional<absl::StatusOr<DetectedRegions>> found[2];
    double took[2] = {0, 0};
    for (int i = 0; i < 2 && bytes.ok(); ++i) {
      const auto start = std::chrono::steady_clock::now();
      found[i] = (i == 0 ? reference : other)->Detect(*bytes);
      took[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    const absl::Status status = !bytes.ok() ? bytes.status() : !found[0]->ok() ? found[0]->status() : found[1]->status();
    if (!status.ok()) {
      ++failed;
      std::fprintf(stderr, "scan_extract: %s: %s\n", path.string().c_str(), std::string(status.message()).c_str());
      continue;
    }
    const RegionDrift drift = CompareRegions(**found[0], **found[1]);
    ++compared;
    regions += drift.reference_regions;
    matched += drift.matched;
    iou_sum += drift.mean_best_iou * static_cast<double>(drift.reference_regions);
    cosine_sum += drift.mean_cosine * static_cast<double>(drift.matched);
    if (drift.matched > 0) min_cosine = std::min(min_cosine, drift.min_cosine);
    max_l2 = std::max(max_l2, drift.max_relative_l2);
    seconds[0] += took[0];
    seconds[1] += took[1];
    std::printf("| %s | %lld / %lld | %lld | %.4f | %.5f | %.5f | %.4f | %.0f | %.0f |\n",
                path.filename().string().c_str(), static_cast<long long>(drift.reference_regions),
                static_cast<long long>(drift.other_regions), static_cast<long long>(drift.matched),
                drift.mean_best_iou, drift.mean_cosine, drift.matched > 0 ? drift.min_cosine : 0.0,
                drift.max_relative_l2, 1e3 * took[0], 1e3 * took[1]);
  }
  if (compared > 0) {
    std::printf("| all %lld images | %lld regions | %lld (%.1f%%) | %.4f | %.5f | %.5f | %.4f | %.0f | %.0f |\n",
                static_cast<long long>(compared), static_cast<long long>(regions),
                static_cast<long long>(matched), regions > 0 ? 100.0 * matched / regions : 0.0,
                regions > 0 ? iou_sum / regions : 0.0, matched > 0 ? cosine_sum / matched : 0.0,
                matched > 0 ? min_cosine : 0.0, max_l2, 1e3 * seconds[0] / compared,
                1e3 * seconds[1] / compared);
  }
  return failed > 0 ? kExitFailed : kExitOk;
}

int Run(const Args& args) {
  absl::StatusOr<std::vector<fs::path>> images = ListImages(args.inputs);
  if (!images.ok()) return BadArgs(std::string(images.status().message()));
  if (images->empty()) return BadArgs("no images (.jpg, .jpeg, .png, .webp) in the inputs");
  std::set<std::string> done;
  if (args.resume) {
    absl::StatusOr<std::set<std::string>> ids = ExistingIds(args.out);
    if (!ids.ok()) return BadArgs(std::string(ids.status().message()));
    done = *std::move(ids);
  }
  if (!args.debug_dir.empty()) {
    std::error_code ec;
    fs::create_directories(args.debug_dir, ec);
    if (ec) return BadArgs(absl::StrCat("cannot create ", args.debug_dir, ": ", ec.message()));
  }

  absl::StatusOr<std::unique_ptr<RegionDetector>> detector = LoadBottomUpDetector(args.detector);
  if (!detector.ok()) return BadArgs(std::string(detector.status().message()));
  PrintDetectorInfo(**detector);

  const std::string write_path = args.resume ? args.out : args.out + ".partial";
  std::FILE* out = std::fopen(write_path.c_str(), args.resume ? "ab" : "wb");
  if (out == nullptr) return BadArgs(absl::StrCat("cannot write ", write_path));

  std::vector<fs::path> pending;
  for (const fs::path& p : *images) {
    if (!done.count(p.stem().string())) pending.push_back(p);
  }
  const bool tty = isatty(fileno(stderr));
  const auto start = std::chrono::steady_clock::now();
  int64_t finished = 0, failed = 0, regions = 0;
  for (size_t begin = 0; begin < pending.size(); begin += static_cast<size_t>(args.batch)) {
    const size_t end = std::min(pending.size(), begin + static_cast<size_t>(args.batch));
    std::vector<std::string> bytes;
    std::vector<std::string_view> views;
    std::vector<absl::Status> read_errors;
    for (size_t i = begin; i < end; ++i) {
      absl::StatusOr<std::string> data = ReadWholeFile(pending[i].string());
      read_errors.push_back(data.status());
      bytes.push_back(data.ok() ? *std::move(data) : std::string());
    }
    for (const std::string& b : bytes) views.emplace_back(b);
    std::vector<DetectorTrace> traces;
    std::vector<absl::StatusOr<DetectedRegions>> results =
        (*detector)->DetectBatch(views, args.debug_dir.empty() ? nullptr : &traces);
    for (size_t j = 0; j < results.size(); ++j) {
      const std::string id = pending[begin + j].stem().string();
      absl::Status status = read_errors[j].ok() ? results[j].status() : read_errors[j];
      absl::StatusOr<std::string> line;
      if (status.ok()) {
        DetectedRegions& d = *results[j];
        BottomUpRecord record;
        record.image_id = id;
        record.image_w = d.image_width;
        record.image_h = d.image_height;
        record.num_boxes = d.features.rows;
        record.boxes = FloatMatrix(record.num_boxes, 4);
        for (int64_t r = 0; r < record.num_boxes; ++r) {
          std::copy(d.boxes[r].begin(), d.boxes[r].end(), record.boxes.row(r));
        }
        record.features = std::move(d.features);
        record.object_ids = d.object_ids;
        record.object_conf = d.object_confs;
        record.attribute_ids = d.attribute_ids;
        record.attribute_conf = d.attribute_confs;
        line = FormatBottomUpTsvLine(record, args.layout);
        status = line.status();
      }
      if (status.ok() && !args.debug_dir.empty()) status = WriteTrace(args.debug_dir, id, traces[j]);
      if (!status.ok()) {
        ++failed;
        std::fprintf(stderr, "%sscan_extract: %s: %s\n", tty ? "\n" : "",
                     pending[begin + j].string().c_str(), std::string(status.message()).c_str());
        continue;
      }
      regions += results[j]->boxes.size();
      if (std::fwrite(line->data(), 1, line->size(), out) != line->size() || std::fflush(out) != 0) {
        std::fprintf(stderr, "scan_extract: writing %s failed\n", write_path.c_str());
        std::fclose(out);
        return kExitFailed;
      }
    }
    finished += static_cast<int64_t>(end - begin);
    if (!args.quiet) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = finished / std::max(seconds, 1e-9);
      const double eta = (static_cast<double>(pending.size()) - finished) / std::max(rate, 1e-9);
      std::fprintf(stderr, "%s[%lld/%zu] %.2f images/s, %.1f regions/image, %lld failed, ETA %.0fs%s",
                   tty ? "\r" : "", static_cast<long long>(finished), pending.size(), rate,
                   finished > failed ? static_cast<double>(regions) / (finished - failed) : 0.0,
                   static_cast<long long>(failed), eta, tty ? "" : "\n");
    }
  }
  if (!args.quiet && tty) std::fprintf(stderr, "\n");
  if (std::fclose(out) != 0) {
    std::fprintf(stderr, "scan_extract: closing %s failed\n", write_path.c_str());
    return kExitFailed;
  }
  if (!args.resume) {
    std::error_code ec;
    fs::rename(write_path, args.out, ec);
    if (ec) {
      std::fprintf(stderr, "scan_extract: cannot rename %s: %s\n", write_path.c_str(), ec.message().c_str());
      return kExitFailed;
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "scan_extract: %lld images in %.1fs (%.3f images/s), %lld failed, %zu skipped as done\n",
               static_cast<long long>(finished), seconds, finished / std::max(seconds, 1e-9),
               static_cast<long long>(failed), images->size() - pending.size());
  return failed > 0 ? kExitFailed : kExitOk;
}

}  // namespace
}  // namespace scanserve

int main(int argc, char** argv) {
  scanserve::ReexecWithBetterOpenBlasCore(argv);
  using namespace scanserve;
  absl::StatusOr<Args> parsed = ParseArgs(argc, argv);
  if (!parsed.ok()) return BadArgs(std::string(parsed.status().message()));
  Args& args = *parsed;
  if (args.help) {
    std::fputs(kUsage, stdout);
    return kExitOk;
  }
  if (args.detector.detector_dir.empty()) return BadArgs("--detector is required");
  if (args.benchmark > 0) return Benchmark(args);
  if (args.compare_precision.has_value()) {
    if (args.inputs.empty()) return BadArgs("no images given");
    return ComparePrecision(args);
  }
  if (args.out.empty()) return BadArgs("--out is required");
  if (args.inputs.empty()) return BadArgs("no images given");
  return Run(args);
}

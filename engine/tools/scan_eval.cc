// scan_eval: SCAN's evalrank on a precomputed split. Loads one model (or an ensemble), scores every
// image of `{data_dir}/{split}_ims.npy` against every caption of `{split}_caps.txt`, and prints the
// reference's recall lines; see --help.
//
// Exit codes: 0 ok, 2 bad arguments or input (message on stderr), 1 internal error.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/common/command_line.h"
#include "engine/common/npy.h"
#include "engine/common/openblas_core.h"
#include "engine/common/status_macros.h"
#include "engine/eval/precomp_split.h"
#include "engine/eval/retrieval_metrics.h"
#include "engine/eval/similarity.h"
#include "engine/model/scan_model.h"
#include "engine/scoring/gemm.h"
#include "engine/scoring/scorer.h"
#include "engine/tools/similarity_tool.h"
#include "engine/tools/tool_exit.h"
#include "nlohmann/json.hpp"

namespace scanserve {
namespace {

constexpr char kUsage[] = R"(Usage: scan_eval --model DIR [--model DIR2 ...] --data-dir DIR [options]

Evaluates SCAN image-text retrieval on a precomputed split, as the reference evalrank does:
scores every image of {data-dir}/{split}_ims.npy (float32, N x k x img_dim) against every caption of
{data-dir}/{split}_caps.txt (5 per image; captions 5i..5i+4 belong to image i) and reports
R@1/5/10, medr and meanr for sentence retrieval (image to text) and image retrieval (text to image).

Required:
  --model DIR         a scanserve model directory (tools/convert_scan_checkpoint.py output);
                      repeat for an ensemble, whose similarity is the mean of the models'
  --data-dir DIR      directory holding {split}_ims.npy and {split}_caps.txt

Options:
  --split NAME        split name (default: test; COCO 5K is testall)
  --fold5             COCO 1K protocol: 5 folds of 1000 images, metrics averaged over folds
                      (needs exactly 5 x 1000 images)
  --fold-images N     images per fold for --fold5 (default: 1000)
  --save-sims FILE    write the full n_images x n_captions float32 similarity matrix (.npy)
  --json              print one JSON object with every metric (and the threads used) as the last
                      stdout line
  --backend NAME      scorer backend: cpu (default), reference, cuda (CUDA builds only)
  --storage NAME      stored-item precision: fp32 (default), bf16 or fp8
  --threads N         CPU threads for the encoders and the scorer (default: 0 = all cores)
  --help              show this text

Exit codes: 0 ok, 2 bad arguments or input, 1 internal error.
)";

struct EvalFlags {
  std::vector<std::string> model_dirs;
  std::string data_dir;
  std::string split = "test";
  bool fold5 = false;
  int64_t fold_images = kFold5ImagesPerFold;
  std::string save_sims;
  bool json = false;
  ScorerBackend backend = ScorerBackend::kCpu;
  StorageType storage = StorageType::kFloat32;
  int threads = 0;
  bool help = false;
};

absl::StatusOr<EvalFlags> ParseFlags(int argc, char** argv) {
  SCANSERVE_ASSIGN_OR_RETURN(
      const std::vector<CommandLineFlag> args,
      ParseCommandLine(argc, argv,
                       {{"--model", "--data-dir", "--split", "--fold-images", "--save-sims", "--backend",
                         "--storage", "--threads"},
                        {"--help", "-h", "--fold5", "--json"}}));
  EvalFlags flags;
  for (const auto& [arg, value] : args) {
    if (arg == "--help" || arg == "-h") {
      flags.help = true;
    } else if (arg == "--fold5") {
      flags.fold5 = true;
    } else if (arg == "--json") {
      flags.json = true;
    } else if (arg == "--model") {
      flags.model_dirs.push_back(value);
    } else if (arg == "--data-dir") {
      flags.data_dir = value;
    } else if (arg == "--split") {
      flags.split = value;
    } else if (arg == "--fold-images") {
      if (!absl::SimpleAtoi(value, &flags.fold_images) || flags.fold_images < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("--fold-images: expected a positive integer, got '", value, "'"));
      }
    } else if (arg == "--save-sims") {
      flags.save_sims = value;
    } else if (arg == "--backend") {
      SCANSERVE_ASSIGN_OR_RETURN(flags.backend, ParseScorerBackend(value));
    } else if (arg == "--storage") {
      SCANSERVE_ASSIGN_OR_RETURN(flags.storage, ParseStorageType(value));
    } else if (arg == "--threads") {
      SCANSERVE_RETURN_IF_ERROR(ParseThreadsFlag(value, &flags.threads));
    }
  }
  if (flags.help) return flags;
  if (flags.model_dirs.empty()) return absl::InvalidArgumentError("--model is required");
  if (flags.data_dir.empty()) return absl::InvalidArgumentError("--data-dir is required");
  if (flags.split.empty()) return absl::InvalidArgumentError("--split must not be empty");
  return flags;
}

int Fail(const absl::Status& status) { return FailTool("scan_eval", status); }

std::string RecallLine(const RecallMetrics& m, const char* separator) {
  return absl::StrFormat("%.1f%s%.1f%s%.1f%s%.1f%s%.1f", m.r1, separator, m.r5, separator, m.r10,
                         separator, m.medr, separator, m.meanr);
}

double AverageRecall(const RecallMetrics& m) { return (m.r1 + m.r5 + m.r10) / 3; }

// The reference's summary block (evaluation.py evalrank).
void PrintSummary(const RetrievalMetrics& m) {
  std::printf("rsum: %.1f\n", m.rsum);
  std::printf("Average i2t Recall: %.1f\n", AverageRecall(m.i2t));
  std::printf("Image to text: %s\n", RecallLine(m.i2t, " ").c_str());
  std::printf("Average t2i Recall: %.1f\n", AverageRecall(m.t2i));
  std::printf("Text to image: %s\n", RecallLine(m.t2i, " ").c_str());
}

nlohmann::ordered_json RecallJson(const RecallMetrics& m) {
  return {{"r1", m.r1}, {"r5", m.r5}, {"r10", m.r10}, {"medr", m.medr}, {"meanr", m.meanr}};
}

nlohmann::ordered_json MetricsJson(const RetrievalMetrics& m) {
  return {{"i2t", RecallJson(m.i2t)}, {"t2i", RecallJson(m.t2i)}, {"rsum", m.rsum}};
}

// The similarities the metrics read. With fold_images > 0 (fold-5 without --save-sims) only the
// diagonal fold blocks are scored, a fifth of the pairs; the rest of the matrix stays 0 and is never
// read by EvaluateRetrievalFold5.
absl::StatusOr<FloatMatrix> ComputeEvaluatedSimilarities(const std::vector<const ScanModel*>& models,
                                                         const std::vector<RegionFeaturesView>& images,
                                                         const std::vector<std::string>& captions,
                                                         const SimilarityOptions& options,
                                                         int64_t fold_images) {
  if (fold_images <= 0) return ComputeSimilarities(models, images, captions, options);
  const int64_t n_images = static_cast<int64_t>(images.size());
  FloatMatrix sims(n_images, static_cast<int64_t>(captions.size()));
  for (int64_t begin = 0; begin < n_images; begin += fold_images) {
    const int64_t count = std::min(fold_images, n_images - begin);
    std::vector<std::string> fold_captions(captions.begin() + 5 * begin,
                                           captions.begin() + 5 * (begin + count));
    absl::StatusOr<FloatMatrix> block = ComputeSimilarities(
        models, absl::MakeConstSpan(images).subspan(begin, count), fold_captions, options);
    if (!block.ok()) return block.status();
    for (int64_t i = 0; i < count; ++i) {
      std::copy(block->row(i), block->row(i) + block->cols, sims.row(begin + i) + 5 * begin);
    }
  }
  return sims;
}

int Run(const EvalFlags& flags) {
  if (!flags.save_sims.empty()) {
    if (absl::Status status = CheckOutputDirectory(flags.save_sims, "--save-sims"); !status.ok()) {
      return Fail(status);
    }
  }
  if (absl::Status status = ApplyThreadsAndCheckBackend(flags.backend, flags.storage, flags.threads);
      !status.ok()) {
    return Fail(status);
  }
  absl::StatusOr<LoadedModels> loaded = LoadModels(flags.model_dirs, flags.threads);
  if (!loaded.ok()) return Fail(loaded.status());
  for (size_t m = 0; m < loaded->models.size(); ++m) {
    std::printf("model %zu: %s\n  %s\n", m + 1, flags.model_dirs[m].c_str(),
                loaded->models[m]->config().Summary().c_str());
  }
  std::fflush(stdout);

  absl::StatusOr<PrecompSplit> split = LoadPrecompSplit(flags.data_dir, flags.split);
  if (!split.ok()) return Fail(split.status());
  std::printf("split %s: %lld images, %lld captions, %lld regions x %lld features per image\n",
              flags.split.c_str(), static_cast<long long>(split->num_images),
              static_cast<long long>(split->captions.size()),
              static_cast<long long>(split->regions_per_image), static_cast<long long>(split->img_dim));
  std::fflush(stdout);
  if (flags.fold5 && split->num_images != kNumFolds * flags.fold_images) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--fold5 needs exactly ", kNumFolds, " x ", flags.fold_images, " = ",
        kNumFolds * flags.fold_images, " images; split '", flags.split, "' has ", split->num_images)));
  }

  std::vector<RegionFeaturesView> images(static_cast<size_t>(split->num_images));
  for (int64_t i = 0; i < split->num_images; ++i) {
    images[static_cast<size_t>(i)] = {split->image_features(i), split->regions_per_image, split->img_dim};
  }
  SimilarityOptions options;
  options.backend = flags.backend;
  options.storage = flags.storage;
  options.num_threads = flags.threads;
  options.show_progress = true;
  absl::StatusOr<FloatMatrix> sims = ComputeEvaluatedSimilarities(
      loaded->models, images, split->captions, options,
      flags.fold5 && flags.save_sims.empty() ? flags.fold_images : 0);
  if (!sims.ok()) return Fail(sims.status());
  split->features = std::vector<float>();  // no longer needed; the metrics only read sims

  if (!flags.save_sims.empty()) {
    if (absl::Status status = WriteNpyFloatMatrix(flags.save_sims, *sims); !status.ok()) {
      return Fail(status);
    }
    std::printf("similarities (%lld x %lld) written to %s\n", static_cast<long long>(sims->rows),
                static_cast<long long>(sims->cols), flags.save_sims.c_str());
  }

  nlohmann::ordered_json json;
  if (flags.fold5) {
    absl::StatusOr<Fold5Metrics> folds = EvaluateRetrievalFold5(*sims, flags.fold_images);
    if (!folds.ok()) return Fail(folds.status());
    nlohmann::ordered_json fold_json = nlohmann::ordered_json::array();
    for (size_t f = 0; f < folds->folds.size(); ++f) {
      const RetrievalMetrics& m = folds->folds[f];
      std::printf("fold %zu/%d (images %lld..%lld):\n", f + 1, kNumFolds,
                  static_cast<long long>(static_cast<int64_t>(f) * flags.fold_images),
                  static_cast<long long>((static_cast<int64_t>(f) + 1) * flags.fold_images - 1));
      std::printf("Image to text: %s\n", RecallLine(m.i2t, ", ").c_str());
      std::printf("Text to image: %s\n", RecallLine(m.t2i, ", ").c_str());
      std::printf("rsum: %.1f ar: %.1f ari: %.1f\n", m.rsum, AverageRecall(m.i2t),
                  AverageRecall(m.t2i));
      fold_json.push_back(MetricsJson(m));
    }
    std::printf("-----------------------------------\n");
    std::printf("Mean metrics: \n");
    PrintSummary(folds->mean);
    json = MetricsJson(folds->mean);
    json["folds"] = std::move(fold_json);
  } else {
    absl::StatusOr<RetrievalMetrics> metrics = EvaluateRetrieval(*sims);
    if (!metrics.ok()) return Fail(metrics.status());
    PrintSummary(*metrics);
    json = MetricsJson(*metrics);
  }
  if (flags.json) {
    nlohmann::ordered_json out = {
        {"n_images", sims->rows}, {"n_captions", sims->cols}, {"threads", ComputeThreads()}};
    out.update(json);
    std::printf("%s\n", out.dump().c_str());
  }
  return kExitOk;
}

}  // namespace
}  // namespace scanserve

int main(int argc, char** argv) {
  scanserve::ReexecWithBetterOpenBlasCore(argv);
  return scanserve::RunToolMain("scan_eval", scanserve::kUsage, scanserve::ParseFlags(argc, argv), scanserve::Run);
}

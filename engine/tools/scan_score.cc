// scan_score: the similarity matrix of arbitrary images and captions under one SCAN model or an
// ensemble, from .npy region features and a captions file; optionally dumps every embedding. The
// Python parity tests drive it through exactly this command line; see --help.
//
// Exit codes: 0 ok, 2 bad arguments or input (message on stderr), 1 internal error.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/common/command_line.h"
#include "engine/common/npy.h"
#include "engine/common/openblas_core.h"
#include "engine/common/status_macros.h"
#include "engine/eval/precomp_split.h"
#include "engine/eval/similarity.h"
#include "engine/model/scan_model.h"
#include "engine/scoring/scorer.h"
#include "engine/tools/similarity_tool.h"
#include "engine/tools/tool_exit.h"

namespace scanserve {
namespace {

constexpr char kUsage[] = R"(Usage: scan_score --model DIR [--model DIR2 ...] --regions R.npy --region-counts C.npy
                  --captions CAPS.txt --out SIMS.npy [options]

Scores every image against every caption with SCAN stacked cross attention and writes the
n_images x n_captions float32 similarity matrix. With several --model flags the matrix is the mean
of the models' matrices (an ensemble).

Required:
  --model DIR            a scanserve model directory; repeat for an ensemble
  --regions R.npy        float32 (total_regions, img_dim): every image's region features, stacked
  --region-counts C.npy  int64 or int32 (n_images,): regions per image, each >= 1, summing to
                         total_regions; image i is the next C[i] rows of R
  --captions CAPS.txt    one caption per line (surrounding whitespace stripped; no empty lines)
  --out SIMS.npy         output: float32 (n_images, n_captions)

Options:
  --backend NAME         scorer backend: cpu (default), reference, cuda (CUDA builds only)
  --storage NAME         stored-item precision: fp32 (default), bf16 or fp8
  --stored SIDE          which side the scorer stores: images (default) or captions; the other
                         side is scored against it (the scores do not depend on it)
  --dump-embeddings DIR  also write, for each model m (0-based, in --model order):
                           images_m{m}.npy    float32 (total_regions, embed_size) region embeddings
                           captions_m{m}.npy  float32 (total_words, embed_size) word embeddings
                         and once, from the first model's vocabulary:
                           caption_ids.npy      int64 (total_words,) token ids, captions in order
                           caption_lengths.npy  int64 (n_captions,) tokens per caption, counting
                                                <start> and <end>
                         DIR is created if missing.
  --threads N            CPU threads for the encoders and the scorer (default: 0 = all cores)
  --help                 show this text

Exit codes: 0 ok, 2 bad arguments or input, 1 internal error.
)";

struct ScoreFlags {
  std::vector<std::string> model_dirs;
  std::string regions;
  std::string region_counts;
  std::string captions;
  std::string out;
  std::string dump_dir;
  ScorerBackend backend = ScorerBackend::kCpu;
  StorageType storage = StorageType::kFloat32;
  ItemKind stored = ItemKind::kImage;
  int threads = 0;
  bool help = false;
};

absl::StatusOr<ScoreFlags> ParseFlags(int argc, char** argv) {
  SCANSERVE_ASSIGN_OR_RETURN(
      const std::vector<CommandLineFlag> args,
      ParseCommandLine(argc, argv,
                       {{"--model", "--regions", "--region-counts", "--captions", "--out", "--dump-embeddings",
                         "--backend", "--storage", "--stored", "--threads"},
                        {"--help", "-h"}}));
  ScoreFlags flags;
  for (const auto& [arg, value] : args) {
    if (arg == "--help" || arg == "-h") {
      flags.help = true;
    } else if (arg == "--model") {
      flags.model_dirs.push_back(value);
    } else if (arg == "--regions") {
      flags.regions = value;
    } else if (arg == "--region-counts") {
      flags.region_counts = value;
    } else if (arg == "--captions") {
      flags.captions = value;
    } else if (arg == "--out") {
      flags.out = value;
    } else if (arg == "--dump-embeddings") {
      flags.dump_dir = value;
    } else if (arg == "--backend") {
      SCANSERVE_ASSIGN_OR_RETURN(flags.backend, ParseScorerBackend(value));
    } else if (arg == "--storage") {
      SCANSERVE_ASSIGN_OR_RETURN(flags.storage, ParseStorageType(value));
    } else if (arg == "--stored") {
      if (value == "images") {
        flags.stored = ItemKind::kImage;
      } else if (value == "captions") {
        flags.stored = ItemKind::kCaption;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("--stored: expected images or captions, got '", value, "'"));
      }
    } else if (arg == "--threads") {
      SCANSERVE_RETURN_IF_ERROR(ParseThreadsFlag(value, &flags.threads));
    }
  }
  if (flags.help) return flags;
  if (flags.model_dirs.empty()) return absl::InvalidArgumentError("--model is required");
  for (const auto& [name, value] : {std::pair<const char*, const std::string*>{"--regions", &flags.regions},
                                    {"--region-counts", &flags.region_counts},
                                    {"--captions", &flags.captions},
                                    {"--out", &flags.out}}) {
    if (value->empty()) return absl::InvalidArgumentError(absl::StrCat(name, " is required"));
  }
  return flags;
}

int Fail(const absl::Status& status) { return FailTool("scan_score", status); }

// Images as views into the stacked region matrix, after checking the counts against it.
absl::StatusOr<std::vector<RegionFeaturesView>> SplitRegions(const FloatMatrix& regions,
                                                             const std::vector<int64_t>& counts,
                                                             const ScoreFlags& flags) {
  std::vector<RegionFeaturesView> images;
  images.reserve(counts.size());
  int64_t offset = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] < 1) {
      return absl::InvalidArgumentError(absl::StrCat(flags.region_counts, ": image ", i, " has ",
                                                     counts[i], " regions; every image needs >= 1"));
    }
    if (counts[i] > regions.rows - offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          flags.region_counts, ": the counts sum to more than the ", regions.rows, " rows of ",
          flags.regions, " (exceeded at image ", i, ")"));
    }
    images.push_back({regions.row(offset), counts[i], regions.cols});
    offset += counts[i];
  }
  if (offset != regions.rows) {
    return absl::InvalidArgumentError(absl::StrCat(flags.region_counts, ": the counts sum to ",
                                                   offset, " but ", flags.regions, " has ",
                                                   regions.rows, " rows"));
  }
  return images;
}

absl::Status DumpEmbeddings(const std::string& dir, size_t model_index,
                            const std::vector<std::vector<int64_t>>& caption_ids,
                            const ModelEmbeddings& embeddings) {
  const std::string prefix = dir + "/";
  SCANSERVE_RETURN_IF_ERROR(WriteNpyFloatMatrix(
      absl::StrCat(prefix, "images_m", model_index, ".npy"), embeddings.images.rows));
  SCANSERVE_RETURN_IF_ERROR(WriteNpyFloatMatrix(
      absl::StrCat(prefix, "captions_m", model_index, ".npy"), embeddings.captions.rows));
  if (model_index != 0) return absl::OkStatus();
  std::vector<int64_t> flat_ids, lengths;
  lengths.reserve(caption_ids.size());
  for (const std::vector<int64_t>& ids : caption_ids) {
    flat_ids.insert(flat_ids.end(), ids.begin(), ids.end());
    lengths.push_back(static_cast<int64_t>(ids.size()));
  }
  const int64_t ids_shape[1] = {static_cast<int64_t>(flat_ids.size())};
  SCANSERVE_RETURN_IF_ERROR(WriteNpyInt64(prefix + "caption_ids.npy", ids_shape, flat_ids.data()));
  const int64_t lengths_shape[1] = {static_cast<int64_t>(lengths.size())};
  return WriteNpyInt64(prefix + "caption_lengths.npy", lengths_shape, lengths.data());
}

int Run(const ScoreFlags& flags) {
  if (absl::Status status = CheckOutputDirectory(flags.out, "--out"); !status.ok()) {
    return Fail(status);
  }
  if (absl::Status status = ApplyThreadsAndCheckBackend(flags.backend, flags.storage, flags.threads);
      !status.ok()) {
    return Fail(status);
  }

  absl::StatusOr<FloatMatrix> regions = ReadNpyFloatMatrix(flags.regions);
  if (!regions.ok()) return Fail(regions.status());
  absl::StatusOr<std::vector<int64_t>> counts = ReadNpyInt64Vector(flags.region_counts);
  if (!counts.ok()) return Fail(counts.status());
  absl::StatusOr<std::vector<RegionFeaturesView>> images = SplitRegions(*regions, *counts, flags);
  if (!images.ok()) return Fail(images.status());
  absl::StatusOr<std::vector<std::string>> captions = ReadCaptionLines(flags.captions);
  if (!captions.ok()) return Fail(captions.status());

  absl::StatusOr<LoadedModels> loaded = LoadModels(flags.model_dirs, flags.threads);
  if (!loaded.ok()) return Fail(loaded.status());
  for (size_t m = 0; m < loaded->models.size(); ++m) {
    if (const int64_t img_dim = loaded->models[m]->config().img_dim; img_dim != regions->cols) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(flags.regions, " holds ", regions->cols,
                                                          "-d region features; the model in ",
                                                          flags.model_dirs[m], " expects ", img_dim, "-d")));
    }
  }

  SimilarityOptions options;
  options.backend = flags.backend;
  options.storage = flags.storage;
  options.stored = flags.stored;
  options.num_threads = flags.threads;
  if (!flags.dump_dir.empty()) {
    std::error_code error;
    std::filesystem::create_directories(flags.dump_dir, error);
    if (error) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--dump-embeddings: cannot create ", flags.dump_dir, ": ", error.message())));
    }
    options.on_embeddings = [&flags](size_t model_index,
                                     const std::vector<std::vector<int64_t>>& caption_ids,
                                     const ModelEmbeddings& embeddings) {
      return DumpEmbeddings(flags.dump_dir, model_index, caption_ids, embeddings);
    };
  }
  absl::StatusOr<FloatMatrix> sims = ComputeSimilarities(loaded->models, *images, *captions, options);
  if (!sims.ok()) return Fail(sims.status());
  if (absl::Status status = WriteNpyFloatMatrix(flags.out, *sims); !status.ok()) return Fail(status);
  std::fprintf(stderr, "scan_score: wrote %s (%lld images x %lld captions)\n", flags.out.c_str(),
               static_cast<long long>(sims->rows), static_cast<long long>(sims->cols));
  return kExitOk;
}

}  // namespace
}  // namespace scanserve

int main(int argc, char** argv) {
  scanserve::ReexecWithBetterOpenBlasCore(argv);
  return scanserve::RunToolMain("scan_score", scanserve::kUsage, scanserve::ParseFlags(argc, argv), scanserve::Run);
}

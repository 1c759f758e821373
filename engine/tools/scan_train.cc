// scan_train: trains a SCAN model on a precomputed split (engine/train/scan_trainer.h); see --help.
//
// Exit codes: 0 ok, 2 bad arguments or input (message on stderr), 1 internal error,
// 130 interrupted (SIGINT / SIGTERM; a checkpoint was written: rerun the command with --resume).
#include <malloc.h>
#include <signal.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/common/command_line.h"
#include "engine/common/npy.h"
#include "engine/common/openblas_core.h"
#include "engine/common/safetensors.h"
#include "engine/common/status_macros.h"
#include "engine/tools/tool_exit.h"
#include "engine/train/scan_trainer.h"
#include "nlohmann/json.hpp"

namespace scanserve {
namespace {

constexpr int kExitInterrupted = 130;

constexpr char kUsage[] = R"(Usage: scan_train --data-dir DIR --out MODEL_DIR [options]

Trains SCAN (stacked cross attention) on a precomputed split: {data-dir}/{split}_ims.npy (float32,
N x k x img_dim region features) and {split}_caps.txt (5 captions per image; captions 5i..5i+4 belong
to image i), as the reference train.py does: the region FC, the word embedding and the (bi)GRU, with
the hinge triplet loss over every pair of a batch, Adam, gradient-norm clipping and lr x 0.1 every
--lr-update epochs. After each epoch the model is evaluated on the dev split (R@1/5/10 both ways,
rsum) through the serving code path, and the best one (highest rsum) is kept in MODEL_DIR, which
scan_eval and the server load as it is. The data is checked before training starts.

Data:
  --data-dir DIR          directory holding the splits (required)
  --train-split NAME      training split (default: train)
  --dev-split NAME        evaluation split (default: dev)
  --dev-images N          evaluate on the first N dev images only (default: all)
  --vocab JSON            a SCAN vocabulary file (default: built from the training captions)
  --min-count N           with no --vocab: keep words seen at least N times (default: 4)
  --init-model DIR        start from this model directory (its config, vocabulary and weights)

Model (the reference's option names):
  --cross-attn t2i|i2t    (default: t2i)
  --agg-func NAME         LogSumExp, Mean, Max or Sum (default: LogSumExp)
  --lambda-softmax X      attention softmax temperature (default: 9)
  --lambda-lse X          LogSumExp pooling temperature (default: 6)
  --raw-feature-norm N    clipped_l2norm, l2norm, clipped, no_norm, softmax (default: clipped_l2norm)
  --embed-size N          joint embedding width (default: 1024)
  --word-dim N            word embedding width (default: 300)
  --num-layers N          GRU layers (default: 1)
  --no-bi-gru             a forward GRU only (default: bidirectional, as the released models)
  --no-imgnorm, --no-txtnorm   skip the l2norm of region / word embeddings
  --data-name NAME        recorded in config.json (default: the data directory's name)

Training:
  --margin X              hinge margin (default: 0.2)
  --max-violation         hardest negative in the batch (default)
  --no-max-violation      sum over all negatives
  --warmup-sum-epochs N   sum over all negatives in the first N epochs, then --max-violation
                          (hardest negatives from random weights can stall; default: 0)
  --lr X                  Adam learning rate (default: 2e-4)
  --lr-update N           lr x 0.1 every N epochs (default: 15)
  --epochs N              (default: 30)
  --batch-size N          (default: 128)
  --grad-clip X           gradient 2-norm clip, 0 = off (default: 2)
  --seed N                weight init and data order (default: 0)

Output and resuming:
  --out DIR               the best model (required)
  --checkpoint-dir DIR    checkpoints (default: MODEL_DIR-checkpoint)
  --checkpoint-every N    also checkpoint every N iterations (default: once per epoch)
  --resume                continue the run in --checkpoint-dir with the same settings; the result is
                          bit-for-bit the uninterrupted run's on the same device and --threads
                          (only --epochs, thread counts and output options may change)

Runtime:
  --threads N             BLAS and dev-scoring threads (default: 0 = all cores)
  --intra-op-threads N    LibTorch's OpenMP threads for elementwise ops (default: 1; 0 = --threads).
                          libgomp busy-waits between operations and starves the BLAS threads on
                          small or shared machines; raise it on an idle many-core machine (ideally
                          with OMP_WAIT_POLICY=passive in the environment)
  --device cpu|cuda|auto  (default: auto = cuda when available)
  --no-progress           no progress bar on stderr

Gradient check (tests): computes the loss and every gradient on one batch and writes them.
  --dump-gradients DIR    write DIR/gradients.safetensors, DIR/scores.npy, DIR/loss.json
                          (needs --init-model and --data-dir; the split is --train-split)
  --dump-captions I,J,..  the batch's captions (default: caption 5i of image i, first --batch-size images)
  --dtype float32|float64 precision of the gradient check (default: float32)
  --dump-steps N          then N optimiser steps on that batch (--grad-clip, Adam at --lr); the
                          weights go to DIR/weights_after_steps.safetensors

Exit codes: 0 ok, 2 bad arguments or input, 1 internal error, 130 interrupted (checkpoint written).
)";

struct Flags {
  TrainOptions train;
  std::string dump_dir;
  std::vector<int64_t> dump_captions;
  bool float64 = false;
  int dump_steps = 0;
  bool help = false;
};

std::atomic<bool> g_stop_requested{false};

extern "C" void OnStopSignal(int) { g_stop_requested.store(true); }

absl::Status ParseInt(const std::string& flag, const std::string& value, int64_t min, int64_t* out) {
  if (!absl::SimpleAtoi(value, out) || *out < min) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": expected an integer >= ", min, ", got '", value, "'"));
  }
  return absl::OkStatus();
}

absl::Status ParseDouble(const std::string& flag, const std::string& value, double* out) {
  if (!absl::SimpleAtod(value, out)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": expected a number, got '", value, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Flags> ParseFlags(int argc, char** argv) {
  Flags flags;
  TrainOptions& t = flags.train;
  SCANSERVE_ASSIGN_OR_RETURN(
      const std::vector<CommandLineFlag> args,
      ParseCommandLine(
          argc, argv,
          {{"--data-dir", "--train-split", "--dev-split", "--dev-images", "--vocab", "--min-count",
            "--init-model", "--cross-attn", "--agg-func", "--lambda-softmax", "--lambda-lse",
            "--raw-feature-norm", "--embed-size", "--word-dim", "--num-layers", "--data-name", "--margin",
            "--lr", "--lr-update", "--epochs", "--batch-size", "--grad-clip", "--seed", "--out",
            "--checkpoint-dir", "--checkpoint-every", "--threads", "--intra-op-threads", "--device",
            "--dump-gradients", "--dump-captions", "--dtype", "--stop-after-iterations",
            "--warmup-sum-epochs", "--dump-steps"},
           {"--help", "-h", "--bi-gru", "--no-bi-gru", "--max-violation", "--no-max-violation",
            "--no-imgnorm", "--no-txtnorm", "--resume", "--no-progress"}}));
  for (const auto& [arg, value] : args) {
    int64_t n = 0;
    double x = 0;
    if (arg == "--help" || arg == "-h") {
      flags.help = true;
    } else if (arg == "--bi-gru" || arg == "--no-bi-gru") {
      t.model.bi_gru = arg == "--bi-gru";
    } else if (arg == "--max-violation" || arg == "--no-max-violation") {
      t.loss.max_violation = arg == "--max-violation";
    } else if (arg == "--no-imgnorm") {
      t.model.no_imgnorm = true;
    } else if (arg == "--no-txtnorm") {
      t.model.no_txtnorm = true;
    } else if (arg == "--resume") {
      t.resume = true;
    } else if (arg == "--no-progress") {
      t.show_progress = false;
    } else if (arg == "--data-dir") {
      t.data_dir = value;
    } else if (arg == "--train-split") {
      t.train_split = value;
    } else if (arg == "--dev-split") {
      t.dev_split = value;
    } else if (arg == "--dev-images") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 0, &t.dev_images));
    } else if (arg == "--vocab") {
      t.vocab_path = value;
    } else if (arg == "--min-count") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 1, &n));
      t.min_count = static_cast<int>(n);
    } else if (arg == "--init-model") {
      t.init_model = value;
    } else if (arg == "--cross-attn") {
      SCANSERVE_ASSIGN_OR_RETURN(t.model.attention.cross_attn, ParseCrossAttention(value));
    } else if (arg == "--agg-func") {
      SCANSERVE_ASSIGN_OR_RETURN(t.model.attention.pooling, ParsePooling(value));
    } else if (arg == "--lambda-softmax") {
      SCANSERVE_RETURN_IF_ERROR(ParseDouble(arg, value, &x));
      t.model.attention.lambda_softmax = static_cast<float>(x);
    } else if (arg == "--lambda-lse") {
      SCANSERVE_RETURN_IF_ERROR(ParseDouble(arg, value, &x));
      t.model.attention.lambda_lse = static_cast<float>(x);
    } else if (arg == "--raw-feature-norm") {
      SCANSERVE_ASSIGN_OR_RETURN(t.model.attention.raw_feature_norm, ParseRawFeatureNorm(value));
    } else if (arg == "--embed-size") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 1, &t.model.embed_size));
    } else if (arg == "--word-dim") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 1, &t.model.word_dim));
    } else if (arg == "--num-layers") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 1, &n));
      t.model.num_layers = static_cast<int>(n);
    } else if (arg == "--data-name") {
      t.model.data_name = value;
    } else if (arg == "--margin") {
      SCANSERVE_RETURN_IF_ERROR(ParseDouble(arg, value, &x));
      t.loss.margin = static_cast<float>(x);
    } else if (arg == "--warmup-sum-epochs") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 0, &n));
      t.warmup_sum_epochs = static_cast<int>(n);
    } else if (arg == "--lr") {
      SCANSERVE_RETURN_IF_ERROR(ParseDouble(arg, value, &t.learning_rate));
    } else if (arg == "--lr-update") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 1, &n));
      t.lr_update = static_cast<int>(n);
    } else if (arg == "--epochs") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 1, &n));
      t.epochs = static_cast<int>(n);
    } else if (arg == "--batch-size") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 2, &n));
      t.batch_size = static_cast<int>(n);
    } else if (arg == "--grad-clip") {
      SCANSERVE_RETURN_IF_ERROR(ParseDouble(arg, value, &t.grad_clip));
    } else if (arg == "--seed") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 0, &n));
      t.seed = static_cast<uint64_t>(n);
    } else if (arg == "--out") {
      t.out_dir = value;
    } else if (arg == "--checkpoint-dir") {
      t.checkpoint_dir = value;
    } else if (arg == "--checkpoint-every") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 0, &t.checkpoint_every));
    } else if (arg == "--threads") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 0, &n));
      t.threads = static_cast<int>(n);
    } else if (arg == "--intra-op-threads") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 0, &n));
      t.intra_op_threads = static_cast<int>(n);
    } else if (arg == "--device") {
      t.device = value;
    } else if (arg == "--dump-gradients") {
      flags.dump_dir = value;
    } else if (arg == "--dump-captions") {
      for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipEmpty())) {
        int64_t index = 0;
        SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, std::string(part), 0, &index));
        flags.dump_captions.push_back(index);
      }
    } else if (arg == "--dump-steps") {
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 0, &n));
      flags.dump_steps = static_cast<int>(n);
    } else if (arg == "--dtype") {
      if (value != "float32" && value != "float64") {
        return absl::InvalidArgumentError(absl::StrCat("--dtype: expected float32 or float64, got '", value, "'"));
      }
      flags.float64 = value == "float64";
    } else if (arg == "--stop-after-iterations") {  // test hook: simulates an interruption
      SCANSERVE_RETURN_IF_ERROR(ParseInt(arg, value, 0, &t.stop_after_iterations));
    }
  }
  if (flags.help) return flags;
  if (t.data_dir.empty()) return absl::InvalidArgumentError("--data-dir is required");
  if (!flags.dump_dir.empty()) {
    if (t.init_model.empty()) return absl::InvalidArgumentError("--dump-gradients needs --init-model");
    return flags;
  }
  if (t.out_dir.empty()) return absl::InvalidArgumentError("--out is required");
  return flags;
}

int Fail(const absl::Status& status) { return FailTool("scan_train", status); }

int DumpGradients(const Flags& flags) {
  GradientCheckOptions options;
  options.model_dir = flags.train.init_model;
  options.data_dir = flags.train.data_dir;
  options.split = flags.train.train_split;
  options.batch_size = flags.train.batch_size;
  options.caption_indices = flags.dump_captions;
  options.loss = flags.train.loss;
  options.float64 = flags.float64;
  options.threads = flags.train.threads > 0 ? flags.train.threads : 1;
  options.steps = flags.dump_steps;
  options.learning_rate = flags.train.learning_rate;
  options.grad_clip = flags.train.grad_clip;
  absl::StatusOr<GradientCheckResult> result = ComputeLossAndGradients(options);
  if (!result.ok()) return Fail(result.status());
  std::error_code error;
  std::filesystem::create_directories(flags.dump_dir, error);
  if (error) return Fail(absl::PermissionDeniedError(absl::StrCat(flags.dump_dir, ": ", error.message())));
  if (absl::Status s = WriteSafetensors(flags.dump_dir + "/gradients.safetensors", result->gradients); !s.ok()) {
    return Fail(s);
  }
  if (!result->weights_after_steps.empty()) {
    if (absl::Status s = WriteSafetensors(flags.dump_dir + "/weights_after_steps.safetensors",
                                          result->weights_after_steps);
        !s.ok()) {
      return Fail(s);
    }
  }
  if (absl::Status s = WriteNpyFloatMatrix(flags.dump_dir + "/scores.npy", result->scores); !s.ok()) {
    return Fail(s);
  }
  nlohmann::json json = {{"loss", result->loss}, {"batch", static_cast<int64_t>(result->scores.rows)}};
  std::ofstream(flags.dump_dir + "/loss.json") << json.dump() << "\n";
  std::printf("loss %.17g on %lld pairs; gradients in %s\n", result->loss,
              static_cast<long long>(result->scores.rows), flags.dump_dir.c_str());
  return kExitOk;
}

int Run(Flags& flags) {
  if (!flags.dump_dir.empty()) return DumpGradients(flags);
  // The first SIGINT / SIGTERM stops after the current iteration with a checkpoint; a second one
  // (the default action is restored) ends the process at once.
  struct sigaction action = {};
  action.sa_handler = OnStopSignal;
  action.sa_flags = SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  flags.train.stop_requested = &g_stop_requested;

  absl::StatusOr<TrainResult> result = TrainScan(flags.train);
  if (!result.ok()) return Fail(result.status());
  if (result->interrupted) {
    std::fprintf(stderr,
                 "scan_train: stopped after %lld iterations; checkpoint in %s: rerun the same command "
                 "with --resume to continue\n",
                 static_cast<long long>(result->iterations), result->checkpoint_dir.c_str());
    return kExitInterrupted;
  }
  std::printf("best dev rsum %.1f at epoch %d; model in %s\n", result->best_rsum, result->best_epoch,
              flags.train.out_dir.c_str());
  return kExitOk;
}

}  // namespace
}  // namespace scanserve

int main(int argc, char** argv) {
  scanserve::ReexecWithBetterOpenBlasCore(argv);

  // Training allocates the same large intermediates (tens of MB) every iteration. glibc serves
  // blocks that large with mmap and unmaps them on free, so each one page-faults afresh, which costs
  // more than the arithmetic on them; keep them in the heap and reuse them instead.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  return scanserve::RunToolMain("scan_train", scanserve::kUsage, scanserve::ParseFlags(argc, argv), scanserve::Run);
}

// Training a SCAN model (Lee et al. 2018) on a precomputed split, as the reference train.py does:
// the region FC, the word embedding and the (bi)GRU, with the hinge triplet loss over a B x B batch
// of stacked-cross-attention scores, Adam, gradient-norm clipping and a step learning rate.
//
// The trainable model has exactly the inference semantics of engine/model/scan_model.cc and the
// attention of ../shared/spec/scan-model.md (t2i and i2t, every raw_feature_norm and pooling, SCAN's
// l2norm with eps added and cosine with eps clamped); the best model (dev rsum) is written in the
// model-directory format (docs/model-format.md) that ScanModel::Load, scan_eval and the server read.
//
// Resumability: a checkpoint (weights, Adam state, epoch / iteration, best rsum, history) is written
// atomically and fsync'd (engine/common/atomic_file.h: a power loss keeps the last one whole)
// after each epoch (and every `checkpoint_every` iterations, and when a stop is requested).
// The data order is a pure function of (seed, epoch), so `resume` continues bit-for-bit
// where the run stopped -- on the same device with the same thread counts (CPU reductions may
// partition their work by thread count, so another count can round differently).
//
// Torch stays in scan_trainer.cc.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/common/matrix.h"
#include "engine/common/safetensors.h"
#include "engine/eval/retrieval_metrics.h"
#include "engine/model/model_config.h"
#include "engine/scoring/attention_params.h"

namespace scanserve {

// The hinge triplet loss of SCAN (the seed's eq. 11/12), over a B x B score matrix whose diagonal
// holds the positive pairs: for image i and caption j, [margin - S(i,i) + S(i,j)]_+ (captions
// ranked for image i) and [margin - S(j,j) + S(i,j)]_+ (images ranked for caption j), diagonal
// excluded; max_violation keeps the hardest negative per row / column (eq. 12), else all are summed
// (eq. 11). The loss is the sum over the batch.
struct LossOptions {
  float margin = 0.2f;
  bool max_violation = true;
};

struct TrainOptions {
  // Data.
  std::string data_dir;
  std::string train_split = "train";
  std::string dev_split = "dev";
  int64_t dev_images = 0;  // evaluate on the first N dev images only (0 = all)
  std::string vocab_path;  // empty: built from the training captions (words seen >= min_count times)
  int min_count = 4;
  std::string init_model;  // optional model directory: its config, vocabulary and weights start the run

  // Model (without init_model). img_dim and vocab_size come from the data; data_name defaults to the
  // data directory's name.
  ModelConfig model;

  // Loss and optimisation (train.py's names and defaults).
  LossOptions loss;
  // The first N epochs sum over all negatives even with loss.max_violation: hardest negatives from
  // random weights can stall at the collapsed solution (VSE++, Faghri et al. 2018), the sum cannot.
  int warmup_sum_epochs = 0;
  double learning_rate = 2e-4;
  int lr_update = 15;  // lr x 0.1 every lr_update epochs
  int epochs = 30;
  int batch_size = 128;
  double grad_clip = 2.0;  // total gradient 2-norm; <= 0 disables clipping
  uint64_t seed = 0;       // weight init (torch) and the data order

  // Output.
  std::string out_dir;         // the best model (model-directory format)
  std::string checkpoint_dir;  // empty: out_dir + "-checkpoint"
  bool resume = false;         // continue from checkpoint_dir
  int64_t checkpoint_every = 0;  // also checkpoint every N iterations (0 = once per epoch)

  // Runtime.
  int threads = 0;              // BLAS and scorer threads (0 = all cores)
  int intra_op_threads = 1;     // LibTorch's OpenMP pool for elementwise ops (0 = `threads`); see
                                // SetThreads in scan_trainer.cc for why 1 is the default
  std::string device = "auto";  // cpu, cuda, auto (cuda when available)
  bool show_progress = true;    // progress bar on stderr
  bool print_epochs = true;     // one dev-metrics line per epoch on stdout
  // Stops (checkpoint written, result.interrupted = true) after the current iteration once set,
  // e.g. by a SIGINT handler. May be null.
  const std::atomic<bool>* stop_requested = nullptr;
  // Test hook: behaves as if stop_requested were set after this many iterations of this process.
  int64_t stop_after_iterations = 0;
};

struct EpochReport {
  int epoch = 0;            // 1-based
  double mean_loss = 0;     // per batch
  RetrievalMetrics dev;
  bool best = false;        // the model was written to out_dir
  double seconds = 0;       // training time of the epoch in this process (0 when it was resumed)
  double dev_seconds = 0;   // evaluation time
};

struct TrainResult {
  std::vector<EpochReport> epochs;  // every finished epoch, resumed ones included
  double best_rsum = -1;
  int best_epoch = 0;
  int64_t iterations = 0;  // total optimiser steps of the run
  bool interrupted = false;
  std::string checkpoint_dir;
};

// Validates the data (before anything is trained), then trains, evaluates on the dev split after
// every epoch and keeps the best model in out_dir. Errors: INVALID_ARGUMENT / NOT_FOUND / DATA_LOSS
// for bad options or data (the file and line or image named), FAILED_PRECONDITION for a resume that
// does not match the checkpoint, INTERNAL for torch failures.
absl::StatusOr<TrainResult> TrainScan(const TrainOptions& options);

// The loss and every parameter's gradient on one batch, for parity tests: the model in `model_dir`,
// images `image_indices` of the split paired with captions `caption_indices` (same length; default:
// image i with caption 5i for the first `batch_size` images).
struct GradientCheckOptions {
  std::string model_dir;
  std::string data_dir;
  std::string split = "train";
  int64_t batch_size = 8;
  std::vector<int64_t> caption_indices;  // optional; image of caption c is c / 5
  LossOptions loss;
  bool float64 = false;  // compute in double (the gradients are still written as float32)
  int threads = 1;
  // Then this many optimiser steps on the same batch (gradient clipping, Adam at learning_rate),
  // for checking the optimiser against torch.optim.Adam + clip_grad_norm_.
  int steps = 0;
  double learning_rate = 2e-4;
  double grad_clip = 2.0;
};

struct GradientCheckResult {
  double loss = 0;
  FloatMatrix scores;  // B x B, image i x caption j
  std::map<std::string, Float32Tensor> gradients;  // model-format tensor names
  std::map<std::string, Float32Tensor> weights_after_steps;  // when steps > 0
};

absl::StatusOr<GradientCheckResult> ComputeLossAndGradients(const GradientCheckOptions& options);

// The training-time (batched, differentiable) similarity evaluated without gradients, for tests that
// compare it with the engine's scorers: images (k_i x d, every k_i equal) against captions (n_j x d),
// already encoded. Returns n_images x n_captions.
absl::StatusOr<FloatMatrix> TrainingSimilarity(const std::vector<FloatMatrix>& images,
                                               const std::vector<FloatMatrix>& captions,
                                               const AttentionParams& attention);

}  // namespace scanserve

#include "server/config.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/common/status_macros.h"
#include "engine/scoring/cuda_pass_kernels.h"
#include "engine/scoring/cuda_query_precision.h"
#include "engine/scoring/storage_type.h"

namespace scanserve {
namespace {

constexpr char kDefaultDataDir[] = "./scanserve-data";
// Room in a message for an image's id, metadata and framing besides its bytes.
constexpr int64_t kMessageOverheadBytes = 1LL << 20;

absl::Status ParseInt64(const std::string& key, const std::string& value, int64_t min, int64_t max,
                        int64_t* out) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(value, &v) || v < min || v > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", key, ": expected an integer in ", min, "..", max, ", got '", value, "'"));
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status ParseInt(const std::string& key, const std::string& value, int min, int max, int* out) {
  int64_t v = 0;
  if (absl::Status status = ParseInt64(key, value, min, max, &v); !status.ok()) return status;
  *out = static_cast<int>(v);
  return absl::OkStatus();
}

absl::Status ParseDouble(const std::string& key, const std::string& value, double min, double max, double* out) {
  double v = 0;
  if (!absl::SimpleAtod(value, &v) || !(v >= min) || v > max) {  // !(v >= min): NaN too
    // Whole bounds as integers: StrCat would write 3.6e+06.
    const auto bound = [](double x) {
      return std::trunc(x) == x ? absl::StrCat(static_cast<int64_t>(x)) : absl::StrCat(x);
    };
    return absl::InvalidArgumentError(
        absl::StrCat("--", key, ": expected ", bound(min), "..", bound(max), ", got '", value, "'"));
  }
  *out = v;
  return absl::OkStatus();
}

// A byte count: an integer with an optional binary suffix K, M, G (or KiB, MiB, GiB).
absl::Status ParseBytes(const std::string& key, const std::string& value, int64_t min, int64_t max,
                        int64_t* out) {
  std::string digits = value;
  int64_t scale = 1;
  for (const auto& [suffix, factor] : {std::pair<const char*, int64_t>{"KiB", 1LL << 10},
                                       {"MiB", 1LL << 20}, {"GiB", 1LL << 30}, {"K", 1LL << 10},
                                       {"M", 1LL << 20}, {"G", 1LL << 30}}) {
    const std::string s = suffix;
    if (digits.size() > s.size() && digits.compare(digits.size() - s.size(), s.size(), s) == 0) {
      digits.resize(digits.size() - s.size());
      scale = factor;
      break;
    }
  }
  int64_t v = 0;
  if (!absl::SimpleAtoi(digits, &v) || v < 0 || v > max / scale || v * scale < min) {
    return absl::InvalidArgumentError(absl::StrCat("--", key, ": expected a byte count in ", min, "..",
                                                   max, " (suffixes K, M, G), got '", value, "'"));
  }
  *out = v * scale;
  return absl::OkStatus();
}

// "cuda" (device 0) or "cuda:N" -> *index; false for anything else.
bool ParseCudaDevice(const std::string& value, int* index) {
  if (value == "cuda") {
    *index = 0;
    return true;
  }
  int v = 0;
  if (value.rfind("cuda:", 0) != 0 || !absl::SimpleAtoi(value.substr(5), &v) || v < 0 || v >= 1024) return false;
  *index = v;
  return true;
}

std::string EncoderDeviceName(const std::optional<EncoderDevice>& device) {
  return device.has_value() ? device->ToString() : std::string("auto");
}

std::string DetectorDeviceName(const DetectorOptions& detector) {
  if (detector.device == DetectorDevice::kCpu) return "cpu";
  return detector.cuda_device == 0 ? std::string("cuda") : absl::StrCat("cuda:", detector.cuda_device);
}

// A box count: -1 (the detector directory's policy) or 1..1000.
absl::Status ParseBoxes(const std::string& key, const std::string& value, int* out) {
  int v = 0;
  if (absl::Status status = ParseInt(key, value, -1, 1000, &v); !status.ok()) return status;
  if (v == 0) return absl::InvalidArgumentError(absl::StrCat("--", key, ": expected -1 or 1..1000, got 0"));
  *out = v;
  return absl::OkStatus();
}

struct Flag {
  const char* name;
  const char* arg;   // the value's placeholder in --help
  const char* help;
  std::function<std::string(const ServerConfig&)> show;  // the current value, for --help defaults
  std::function<absl::Status(const std::string&, ServerConfig*)> apply;
};

const std::vector<Flag>& Flags() {
  static const auto* flags = new std::vector<Flag>{
      {"config", "FILE", "read settings from FILE (key = value lines; keys are these flags' names)",
       [](const ServerConfig& c) { return c.config_file; },
       [](const std::string&, ServerConfig*) {
         return absl::InvalidArgumentError("'config' cannot be set inside a config file");
       }},
      {"listen", "HOST:PORT", "gRPC address (port 0 = any free port)",
       [](const ServerConfig& c) { return c.server.listen_address; },
       [](const std::string& v, ServerConfig* c) {
         if (v.empty()) return absl::InvalidArgumentError("--listen: empty address");
         c->server.listen_address = v;
         return absl::OkStatus();
       }},
      {"metrics-listen", "HOST:PORT", "HTTP address of GET /metrics and /healthz; 'off' disables",
       [](const ServerConfig& c) { return c.server.metrics_address.empty() ? std::string("off") : c.server.metrics_address; },
       [](const std::string& v, ServerConfig* c) {
         c->server.metrics_address = (v == "off" || v.empty()) ? "" : v;
         return absl::OkStatus();
       }},
      {"data-dir", "DIR", "the durable store (created if absent)",
       [](const ServerConfig& c) { return c.engine.data_dir; },
       [](const std::string& v, ServerConfig* c) {
         if (v.empty()) return absl::InvalidArgumentError("--data-dir: empty path");
         c->engine.data_dir = v;
         return absl::OkStatus();
       }},
      {"model", "MODEL_DIR", "a scanserve model directory (docs/model-format.md); repeat once for a "
                             "two-model ensemble. Required",
       [](const ServerConfig& c) { return absl::StrJoin(c.engine.model_dirs, ","); },
       [](const std::string& v, ServerConfig* c) {
         if (v.empty()) return absl::InvalidArgumentError("--model: empty path");
         c->engine.model_dirs.push_back(v);
         return absl::OkStatus();
       }},
      {"backend", "cpu|cuda|reference", "scorer backend (cuda only in CUDA builds)",
       [](const ServerConfig& c) { return std::string(ScorerBackendName(c.engine.backend)); },
       [](const std::string& v, ServerConfig* c) -> absl::Status {
         SCANSERVE_ASSIGN_OR_RETURN(c->engine.backend, ParseScorerBackend(v));
         return absl::OkStatus();
       }},
      {"storage", "fp32|bf16|fp8",
       "precision of stored features (bf16 halves memory; fp8 e4m3 quarters it and moves rankings "
       "slightly). Default: fp32 with the cpu backend, bf16 with cuda",
       [](const ServerConfig& c) { return std::string(StorageTypeName(c.engine.storage)); },
       [](const std::string& v, ServerConfig* c) -> absl::Status {
         SCANSERVE_ASSIGN_OR_RETURN(c->engine.storage, ParseStorageType(v));
         c->storage_given = true;
         return absl::OkStatus();
       }},
      {"cuda-kernels", "gemm|fused|auto",
       "the CUDA backend's scoring pass: gemm (cuBLAS products, then the fused SCAN epilogue "
       "kernel), fused (one kernel: products on the tensor cores in shared memory, scored there; "
       "bf16 or fp8 storage) or auto (times both on the first passes of each batch shape, then "
       "runs the faster and re-checks now and then). Scores are the same to rounding; "
       "scanserve_scorer_passes_total{kernel} says which ran",
       [](const ServerConfig& c) {
         return std::string(CudaPassKernelsName(c.engine.scorer_tuning.cuda_pass_kernels));
       },
       [](const std::string& v, ServerConfig* c) {
         absl::StatusOr<CudaPassKernels> kernels = ParseCudaPassKernels(v);
         if (!kernels.ok()) {
           return absl::InvalidArgumentError(
               absl::StrCat("--cuda-kernels: ", kernels.status().message()));
         }
         c->engine.scorer_tuning.cuda_pass_kernels = *kernels;
         return absl::OkStatus();
       }},
      {"cuda-query-precision", "bf16x2|bf16",
       "how the CUDA backend's queries meet bf16/fp8 stored features on the tensor cores: bf16x2 "
       "(each query as two bf16 parts: products exact to ~2^-16, the scores of the rounded "
       "items) or bf16 (queries rounded too: half the tensor-core work of a batched pass, "
       "~2^-9 more relative error per product; opt-in, its ranking agreement is in the README)",
       [](const ServerConfig& c) {
         return std::string(CudaQueryPrecisionName(c.engine.scorer_tuning.cuda_query_precision));
       },
       [](const std::string& v, ServerConfig* c) {
         absl::StatusOr<CudaQueryPrecision> precision = ParseCudaQueryPrecision(v);
         if (!precision.ok()) {
           return absl::InvalidArgumentError(
               absl::StrCat("--cuda-query-precision: ", precision.status().message()));
         }
         c->engine.scorer_tuning.cuda_query_precision = *precision;
         return absl::OkStatus();
       }},
      {"encoder-device", "auto|cpu|cuda|cuda:N",
       "where the text and region encoders run. auto: cuda:0 with --backend cuda when this "
       "LibTorch has CUDA and a GPU, else cpu; cuda fails start-up when it cannot be used",
       [](const ServerConfig& c) { return EncoderDeviceName(c.engine.encoder_device); },
       [](const std::string& v, ServerConfig* c) {
         int index = 0;
         if (v == "auto") {
           c->engine.encoder_device.reset();
         } else if (v == "cpu") {
           c->engine.encoder_device = EncoderDevice::Cpu();
         } else if (ParseCudaDevice(v, &index)) {
           c->engine.encoder_device = EncoderDevice::Cuda(index);
         } else {
           return absl::InvalidArgumentError(
               absl::StrCat("--encoder-device: expected auto, cpu, cuda or cuda:N, got '", v, "'"));
         }
         return absl::OkStatus();
       }},
      {"threads", "N", "CPU threads for encoding and scoring (0 = all cores)",
       [](const ServerConfig& c) { return absl::StrCat(c.engine.num_threads); },
       [](const std::string& v, ServerConfig* c) { return ParseInt("threads", v, 0, 4096, &c->engine.num_threads); }},
      {"max-batch-queries", "N",
       "most queries merged into one engine call (captions for SearchImages, images for "
       "SearchCaptions; each direction has its own batcher)",
       [](const ServerConfig& c) { return absl::StrCat(c.server.batching.max_batch_queries); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt("max-batch-queries", v, 1, 4096, &c->server.batching.max_batch_queries);
       }},
      {"max-queue-delay-us", "MICROSECONDS", "longest a search waits for others to join its batch",
       [](const ServerConfig& c) { return absl::StrCat(c.server.batching.max_queue_delay_us); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt64("max-queue-delay-us", v, 0, 10'000'000, &c->server.batching.max_queue_delay_us);
       }},
      {"max-queue-size", "N",
       "searches waiting at most, per direction; more are refused with RESOURCE_EXHAUSTED",
       [](const ServerConfig& c) { return absl::StrCat(c.server.batching.max_queue_size); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt("max-queue-size", v, 1, 100'000, &c->server.batching.max_queue_size);
       }},
      {"batch-workers", "N", "threads running batched searches",
       [](const ServerConfig& c) { return absl::StrCat(c.server.batching.num_workers); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt("batch-workers", v, 1, 64, &c->server.batching.num_workers);
       }},
      {"ingest-batch-size", "N", "most consecutive Ingest stream items per engine upsert",
       [](const ServerConfig& c) { return absl::StrCat(c.server.ingest_batch_size); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt("ingest-batch-size", v, 1, 65536, &c->server.ingest_batch_size);
       }},
      {"max-message-bytes", "BYTES", "largest gRPC message in or out (suffixes K, M, G)",
       [](const ServerConfig& c) { return absl::StrCat(c.server.max_message_bytes); },
       [](const std::string& v, ServerConfig* c) {
         return ParseBytes("max-message-bytes", v, 1024, INT32_MAX, &c->server.max_message_bytes);
       }},
      {"grpc-memory-quota", "BYTES",
       "memory gRPC may hold for connections and requests being received; past it the calls buffering "
       "the most are refused (RESOURCE_EXHAUSTED) instead of the process growing; at least twice "
       "--max-message-bytes; 0 = no bound (suffixes K, M, G)",
       [](const ServerConfig& c) { return absl::StrCat(c.server.grpc_memory_quota_bytes); },
       [](const std::string& v, ServerConfig* c) {
         return ParseBytes("grpc-memory-quota", v, 0, INT64_MAX, &c->server.grpc_memory_quota_bytes);
       }},
      {"max-images", "N", "store capacity in images; beyond it ingest is RESOURCE_EXHAUSTED",
       [](const ServerConfig& c) { return absl::StrCat(c.engine.max_images); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt64("max-images", v, 0, INT64_MAX, &c->engine.max_images);
       }},
      {"max-captions", "N", "store capacity in captions",
       [](const ServerConfig& c) { return absl::StrCat(c.engine.max_captions); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt64("max-captions", v, 0, INT64_MAX, &c->engine.max_captions);
       }},
      {"max-feature-bytes", "BYTES",
       "scorer memory for stored items, all models and both sides (with --backend cuda, at most what "
       "the GPU can hold); a store beyond it refuses to start",
       [](const ServerConfig& c) { return absl::StrCat(c.engine.max_feature_bytes); },
       [](const std::string& v, ServerConfig* c) {
         return ParseBytes("max-feature-bytes", v, 0, INT64_MAX, &c->engine.max_feature_bytes);
       }},
      {"region-features", "drop|keep",
       "keep each image's input region features in the store beside its embeddings (~3x the disk), so "
       "that `scanctl copy` can encode the collection again in a server with other models without "
       "the detector; drop: embeddings only",
       [](const ServerConfig& c) { return std::string(c.engine.keep_region_features ? "keep" : "drop"); },
       [](const std::string& v, ServerConfig* c) {
         if (v != "drop" && v != "keep") {
           return absl::InvalidArgumentError(
               absl::StrCat("--region-features: expected drop or keep, got '", v, "'"));
         }
         c->engine.keep_region_features = v == "keep";
         return absl::OkStatus();
       }},
      {"change-log-retention-s", "SECONDS",
       "the store's change log (ListChanges) keeps at least this much history of writes, so that a "
       "`scanctl copy` or a follower that falls this far behind can still catch up; 0 = all of it",
       [](const ServerConfig& c) { return absl::StrCat(c.engine.change_log_retention_s); },
       [](const std::string& v, ServerConfig* c) {
         return ParseDouble("change-log-retention-s", v, 0, 1e9, &c->engine.change_log_retention_s);
       }},
      {"synthetic-images", "N",
       "load tests and benchmarks only: N random images (36 regions; ids synthetic/0.., collection "
       "'synthetic') added to the scorers at start, never stored, regenerated at each start",
       [](const ServerConfig& c) { return absl::StrCat(c.engine.synthetic_images); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt64("synthetic-images", v, 0, 100'000'000, &c->engine.synthetic_images);
       }},
      {"synthetic-captions", "N", "as --synthetic-images, for N random captions (12..19 tokens)",
       [](const ServerConfig& c) { return absl::StrCat(c.engine.synthetic_captions); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt64("synthetic-captions", v, 0, 100'000'000, &c->engine.synthetic_captions);
       }},
      {"max-top-k", "N", "largest top_k a search may ask for",
       [](const ServerConfig& c) { return absl::StrCat(c.engine.max_top_k); },
       [](const std::string& v, ServerConfig* c) { return ParseInt("max-top-k", v, 1, 1'000'000, &c->engine.max_top_k); }},
      {"max-query-words", "N", "tokens per caption query, <start>/<end> included",
       [](const ServerConfig& c) { return absl::StrCat(c.engine.max_query_words); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt("max-query-words", v, 3, 65536, &c->engine.max_query_words);
       }},
      {"detector-dir", "DIR", "a bottom-up detector directory (docs/detector-format.md): image bytes in "
                              "UpsertImages, Ingest and SearchCaptions run through it. Empty: no detector "
                              "(image bytes are FAILED_PRECONDITION)",
       [](const ServerConfig& c) { return c.detector.detector_dir; },
       [](const std::string& v, ServerConfig* c) {
         c->detector.detector_dir = v;
         return absl::OkStatus();
       }},
      {"detector-device", "cpu|cuda|cuda:N", "where the detector runs (cuda needs a CUDA LibTorch and GPU)",
       [](const ServerConfig& c) { return DetectorDeviceName(c.detector); },
       [](const std::string& v, ServerConfig* c) {
         if (v == "cpu") {
           c->detector.device = DetectorDevice::kCpu;
           c->detector.cuda_device = 0;
           return absl::OkStatus();
         }
         int index = 0;
         if (ParseCudaDevice(v, &index)) {
           c->detector.device = DetectorDevice::kCuda;
           c->detector.cuda_device = index;
           return absl::OkStatus();
         }
         return absl::InvalidArgumentError(absl::StrCat("--detector-device: expected cpu, cuda or cuda:N, got '", v, "'"));
       }},
      {"detector-precision", "fp32|bf16",
       "the detector network's arithmetic: fp32 reproduces the original; bf16 (convolutions in bf16: "
       "~2x faster on GPUs and CPUs with AVX512-BF16/AMX, emulated and far slower on others) is "
       "opt-in and moves the features slightly "
       "(scan_extract --compare-precision measures by how much)",
       [](const ServerConfig& c) { return std::string(DetectorPrecisionName(c.detector.precision)); },
       [](const std::string& v, ServerConfig* c) -> absl::Status {
         absl::StatusOr<DetectorPrecision> precision = ParseDetectorPrecision(v);
         if (!precision.ok()) return absl::InvalidArgumentError(absl::StrCat("--", precision.status().message()));
         if (*precision == DetectorPrecision::kTf32) {
           // LibTorch's TF32 switch is process-wide: it would also run the text encoders' cuDNN GRU
           // in TF32, and their scores would leave the reference's.
           return absl::InvalidArgumentError(
               "--detector-precision tf32 is for scan_extract only (LibTorch's TF32 switch is "
               "process-wide and would change the text encoders too); use bf16");
         }
         c->detector.precision = *precision;
         return absl::OkStatus();
       }},
      {"detector-workers", "N", "threads running detections (each detection uses several intra-op threads)",
       [](const ServerConfig& c) { return absl::StrCat(c.server.detection.num_workers); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt("detector-workers", v, 1, 64, &c->server.detection.num_workers);
       }},
      {"detector-queue", "N", "images waiting for the detector at most; more are RESOURCE_EXHAUSTED",
       [](const ServerConfig& c) { return absl::StrCat(c.server.detection.max_queue_images); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt("detector-queue", v, 1, 100'000, &c->server.detection.max_queue_images);
       }},
      {"detector-batch", "N", "most images of one call per detector run (DetectBatch)",
       [](const ServerConfig& c) { return absl::StrCat(c.server.detection.max_batch_images); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt("detector-batch", v, 1, 256, &c->server.detection.max_batch_images);
       }},
      {"detector-min-boxes", "N", "fewest regions per image; -1 = the detector directory's policy",
       [](const ServerConfig& c) { return absl::StrCat(c.detector.min_boxes); },
       [](const std::string& v, ServerConfig* c) { return ParseBoxes("detector-min-boxes", v, &c->detector.min_boxes); }},
      {"detector-max-boxes", "N", "most regions per image; -1 = the detector directory's policy",
       [](const ServerConfig& c) { return absl::StrCat(c.detector.max_boxes); },
       [](const std::string& v, ServerConfig* c) { return ParseBoxes("detector-max-boxes", v, &c->detector.max_boxes); }},
      {"detector-conf-threshold", "X",
       "class confidence a region needs before the min/max rule, in [0, 1]; -1 = the detector "
       "directory's (0.2 as converted)",
       [](const ServerConfig& c) { return absl::StrCat(c.detector.conf_threshold); },
       [](const std::string& v, ServerConfig* c) -> absl::Status {
         if (v == "-1") {
           c->detector.conf_threshold = -1;
           return absl::OkStatus();
         }
         double x = 0;
         absl::Status parsed = ParseDouble("detector-conf-threshold", v, 0, 1, &x);
         if (parsed.ok()) c->detector.conf_threshold = static_cast<float>(x);
         return parsed;
       }},
      {"max-image-bytes", "BYTES", "largest encoded image (suffixes K, M, G); larger ones are INVALID_ARGUMENT",
       [](const ServerConfig& c) { return absl::StrCat(c.server.detection.max_image_bytes); },
       [](const std::string& v, ServerConfig* c) {
         return ParseBytes("max-image-bytes", v, 1024, 1LL << 30, &c->server.detection.max_image_bytes);
       }},
      {"compressed-requests", "refuse|accept",
       "accept gzip/deflate-compressed requests? gRPC inflates one in full before checking "
       "--max-message-bytes (a few MB of gzip can take gigabytes), so refused (UNIMPLEMENTED) unless the "
       "clients are trusted",
       [](const ServerConfig& c) { return std::string(c.server.accept_compressed_requests ? "accept" : "refuse"); },
       [](const std::string& v, ServerConfig* c) {
         if (v != "refuse" && v != "accept") {
           return absl::InvalidArgumentError(
               absl::StrCat("--compressed-requests: expected refuse or accept, got '", v, "'"));
         }
         c->server.accept_compressed_requests = v == "accept";
         return absl::OkStatus();
       }},
      {"tls-cert", "FILE", "PEM certificate chain: serve gRPC over TLS (with --tls-key)",
       [](const ServerConfig& c) { return c.server.tls.cert_file; },
       [](const std::string& v, ServerConfig* c) {
         c->server.tls.cert_file = v;
         return absl::OkStatus();
       }},
      {"tls-key", "FILE", "PEM private key for --tls-cert",
       [](const ServerConfig& c) { return c.server.tls.key_file; },
       [](const std::string& v, ServerConfig* c) {
         c->server.tls.key_file = v;
         return absl::OkStatus();
       }},
      {"tls-client-ca", "FILE",
       "PEM CA certificates: require every client to present a certificate they signed (mutual "
       "TLS; with --tls-cert)",
       [](const ServerConfig& c) { return c.server.tls.client_ca_file; },
       [](const std::string& v, ServerConfig* c) {
         c->server.tls.client_ca_file = v;
         return absl::OkStatus();
       }},
      {"auth-token", "TOKEN", "require 'authorization: Bearer TOKEN' on ScanService calls (health "
                              "and reflection stay open); prefer --auth-token-file",
       [](const ServerConfig& c) { return c.server.auth_token.empty() ? std::string() : std::string("(set)"); },
       [](const std::string& v, ServerConfig* c) {
         c->server.auth_token = v;
         return absl::OkStatus();
       }},
      {"auth-token-file", "FILE",
       "accept the bearer tokens in FILE, one per line (blank and '#' lines skipped; several at once "
       "let clients move to a new one); re-read every --credential-reload-s",
       [](const ServerConfig& c) { return c.server.auth_token_file; },
       [](const std::string& v, ServerConfig* c) {
         c->server.auth_token_file = v;
         return absl::OkStatus();
       }},
      {"credential-reload-s", "SECONDS",
       "read the TLS files and the token file again this often: a change that passes the checks (a key "
       "that matches its certificate, at least one token) is served without a restart, one that fails "
       "them is logged and the previous credentials stay; 0 = only at start and on SIGHUP (which "
       "also reads them at once otherwise)",
       [](const ServerConfig& c) { return absl::StrCat(c.server.credential_reload_s); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt("credential-reload-s", v, 0, 24 * 3600, &c->server.credential_reload_s);
       }},
      {"max-connection-age-s", "SECONDS",
       "close connections older than this (GOAWAY; clients reconnect, e.g. spreading again over the "
       "replicas behind a Kubernetes Service); 0 = never",
       [](const ServerConfig& c) { return absl::StrCat(c.server.max_connection_age_s); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt("max-connection-age-s", v, 0, 30 * 24 * 3600, &c->server.max_connection_age_s);
       }},
      {"max-connection-age-grace-s", "SECONDS",
       "after --max-connection-age-s, how long calls in flight on the old connection may finish",
       [](const ServerConfig& c) { return absl::StrCat(c.server.max_connection_age_grace_s); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt("max-connection-age-grace-s", v, 0, 24 * 3600,
                         &c->server.max_connection_age_grace_s);
       }},
      {"keepalive-s", "SECONDS",
       "ping connections idle this long (drops dead clients, keeps NAT and load-balancer state); "
       "0 = gRPC's default (2 h)",
       [](const ServerConfig& c) { return absl::StrCat(c.server.keepalive_s); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt("keepalive-s", v, 0, 24 * 3600, &c->server.keepalive_s);
       }},
      {"min-client-ping-interval-s", "SECONDS",
       "let clients send keepalive pings this often, also on idle connections; 0 = gRPC's policy "
       "(one per 5 min, none while idle: more closes the connection with too_many_pings)",
       [](const ServerConfig& c) { return absl::StrCat(c.server.min_client_ping_interval_s); },
       [](const std::string& v, ServerConfig* c) {
         return ParseInt("min-client-ping-interval-s", v, 0, 24 * 3600,
                         &c->server.min_client_ping_interval_s);
       }},
      {"snapshot-dir", "DIR",
       "where CreateSnapshot (scanctl snapshot) writes restorable copies of the store, one directory each "
       "(created at start if absent); on the data directory's file system they are hard links, taken in "
       "milliseconds. Empty: snapshots are refused",
       [](const ServerConfig& c) { return c.server.snapshot_dir; },
       [](const std::string& v, ServerConfig* c) {
         c->server.snapshot_dir = v;
         return absl::OkStatus();
       }},
      {"slow-call-log-ms", "MILLISECONDS",
       "log a line for each unary call at least this slow (calls failing with INTERNAL, UNKNOWN, DATA_LOSS, "
       "RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED or UNIMPLEMENTED always get one); 0 = no slow-call lines",
       [](const ServerConfig& c) { return absl::StrCat(c.server.call_log.slow_call_seconds * 1e3); },
       [](const std::string& v, ServerConfig* c) {
         double ms = 0;
         if (absl::Status status = ParseDouble("slow-call-log-ms", v, 0, 3.6e6, &ms); !status.ok()) return status;
         c->server.call_log.slow_call_seconds = ms / 1e3;
         return absl::OkStatus();
       }},
      {"call-log-lines-per-s", "N",
       "most call log lines per second (bursts as large); beyond, lines are counted and the count logged with the next",
       [](const ServerConfig& c) { return absl::StrCat(c.server.call_log.max_lines_per_second); },
       [](const std::string& v, ServerConfig* c) {
         return ParseDouble("call-log-lines-per-s", v, 0.01, 1e6, &c->server.call_log.max_lines_per_second);
       }},
      {"shutdown-grace-s", "SECONDS", "on SIGTERM/SIGINT, how long in-flight calls may finish",
       [](const ServerConfig& c) { return absl::StrCat(c.shutdown_grace_s); },
       [](const std::string& v, ServerConfig* c) { return ParseDouble("shutdown-grace-s", v, 0, 3600, &c->shutdown_grace_s); }},
      {"shutdown-delay-s", "SECONDS",
       "on SIGTERM/SIGINT, how long health reports NOT_SERVING while calls are still served, before the "
       "shutdown's grace: load balancers (a Kubernetes Service's endpoints) stop sending new calls first",
       [](const ServerConfig& c) { return absl::StrCat(c.shutdown_delay_s); },
       [](const std::string& v, ServerConfig* c) { return ParseDouble("shutdown-delay-s", v, 0, 3600, &c->shutdown_delay_s); }},
      {"log-format", "text|json",
       "stderr lines: text, or one JSON object each (time, level, msg; the call log's method, code, "
       "time, peer as fields; gRPC's own lines too) for log collectors",
       [](const ServerConfig& c) { return std::string(c.log_format == LogFormat::kJson ? "json" : "text"); },
       [](const std::string& v, ServerConfig* c) {
         absl::StatusOr<LogFormat> format = ParseLogFormat(v);
         if (!format.ok()) return absl::InvalidArgumentError(absl::StrCat("--log-format: ", format.status().message()));
         c->log_format = *format;
         return absl::OkStatus();
       }},
  };
  return *flags;
}

const Flag* FindFlag(const std::string& name) {
  for (const Flag& flag : Flags()) {
    if (name == flag.name) return &flag;
  }
  return nullptr;
}

absl::Status LoadConfigFile(const std::string& path, ServerConfig* config) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("--config: cannot read ", path));
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (const size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    const absl::string_view stripped = absl::StripAsciiWhitespace(line);
    if (stripped.empty()) continue;
    const size_t eq = stripped.find('=');
    if (eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", number, ": expected 'key = value'"));
    }
    const std::string key(absl::StripAsciiWhitespace(stripped.substr(0, eq)));
    const std::string value(absl::StripAsciiWhitespace(stripped.substr(eq + 1)));
    if (absl::Status status = ApplySetting(key, value, config); !status.ok()) {
      return absl::Status(status.code(), absl::StrCat(path, ":", number, ": ", status.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

ServerConfig DefaultServerConfig() {
  ServerConfig config;
  config.engine.data_dir = kDefaultDataDir;
  return config;
}

absl::Status ApplySetting(const std::string& key, const std::string& value, ServerConfig* config) {
  const Flag* flag = FindFlag(key);
  if (flag == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown setting '", key, "'"));
  return flag->apply(value, config);
}

absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv) {
  CommandLine result;
  result.config = DefaultServerConfig();
  // (name, value) pairs in order; --help anywhere wins.
  std::vector<std::pair<std::string, std::string>> settings;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      result.help = true;
      return result;
    }
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "' (flags start with --)"));
    }
    std::string name = arg.substr(2);
    std::string value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    } else {
      if (FindFlag(name) == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = argv[++i];
    }
    if (FindFlag(name) == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    settings.emplace_back(std::move(name), std::move(value));
  }
  // The file first, so that flags override it.
  for (const auto& [name, value] : settings) {
    if (name != "config") continue;
    result.config.config_file = value;
    if (absl::Status status = LoadConfigFile(value, &result.config); !status.ok()) return status;
  }
  bool models_from_flags = false;
  for (const auto& [name, value] : settings) {
    if (name == "config") continue;
    if (name == "model" && !models_from_flags) {
      result.config.engine.model_dirs.clear();  // flags replace the file's models
      models_from_flags = true;
    }
    if (absl::Status status = ApplySetting(name, value, &result.config); !status.ok()) return status;
  }
  if (result.config.engine.model_dirs.empty()) {
    return absl::InvalidArgumentError("no model: pass --model MODEL_DIR (or 'model = DIR' in --config)");
  }
  if (result.config.engine.model_dirs.size() > 2) {
    return absl::InvalidArgumentError(absl::StrCat("at most two models (an ensemble), got ",
                                                   result.config.engine.model_dirs.size()));
  }
  if (!result.config.server.auth_token.empty() && !result.config.server.auth_token_file.empty()) {
    return absl::InvalidArgumentError("--auth-token and --auth-token-file exclude each other");
  }
  if (result.config.server.tls.cert_file.empty() != result.config.server.tls.key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!result.config.server.tls.client_ca_file.empty() && result.config.server.tls.cert_file.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS)");
  }
  result.config.server.model_dirs = result.config.engine.model_dirs;
  // On the GPU the store is read once per pass: bf16 halves that at ~2^-9 relative per value.
  if (!result.config.storage_given && result.config.engine.backend == ScorerBackend::kCuda) {
    result.config.engine.storage = StorageType::kBFloat16;
  }
  const CudaPassKernels kernels = result.config.engine.scorer_tuning.cuda_pass_kernels;
  if (kernels != CudaPassKernels::kGemm) {
    if (result.config.engine.backend != ScorerBackend::kCuda) {
      return absl::InvalidArgumentError(
          absl::StrCat("--cuda-kernels ", CudaPassKernelsName(kernels), " needs --backend cuda"));
    }
    // auto with fp32 storage is allowed: it simply always takes the GEMM path.
    if (kernels == CudaPassKernels::kFused && result.config.engine.storage == StorageType::kFloat32) {
      return absl::InvalidArgumentError(
          "--cuda-kernels fused needs --storage bf16 or fp8 (fp32 is scored with cuBLAS SGEMM)");
    }
  }
  if (result.config.engine.scorer_tuning.cuda_query_precision != CudaQueryPrecision::kBf16Split) {
    if (result.config.engine.backend != ScorerBackend::kCuda ||
        result.config.engine.storage == StorageType::kFloat32) {
      return absl::InvalidArgumentError(
          "--cuda-query-precision bf16 needs --backend cuda with --storage bf16 or fp8 (fp32 "
          "storage is scored in fp32, the CPU backends keep fp32 queries)");
    }
  }
  DetectorOptions& detector = result.config.detector;
  detector.max_image_bytes = result.config.server.detection.max_image_bytes;
  if (detector.min_boxes > 0 && detector.max_boxes > 0 && detector.min_boxes > detector.max_boxes) {
    return absl::InvalidArgumentError(absl::StrCat("--detector-min-boxes ", detector.min_boxes,
                                                   " exceeds --detector-max-boxes ", detector.max_boxes));
  }
  const ServerOptions& server = result.config.server;
  if (!GrpcMemoryQuotaIsValid(server)) {
    return absl::InvalidArgumentError(absl::StrCat("--grpc-memory-quota ", server.grpc_memory_quota_bytes,
                                                   " must be 0 or at least twice --max-message-bytes ",
                                                   server.max_message_bytes, " (a message is held twice while decoded)"));
  }
  if (!detector.detector_dir.empty() &&
      result.config.server.max_message_bytes < result.config.server.detection.max_image_bytes + kMessageOverheadBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-message-bytes ", result.config.server.max_message_bytes, " cannot carry one image of --max-image-bytes ",
        result.config.server.detection.max_image_bytes, " (allow ", kMessageOverheadBytes, " bytes more)"));
  }
  return result;
}

std::string Usage(const std::string& program) {
  const ServerConfig defaults = DefaultServerConfig();
  std::string text = absl::StrCat(
      "Usage: ", program, " --model MODEL_DIR [--model MODEL_DIR2] [flags]\n\n",
      "Serves SCAN image-text retrieval (scanserve.v1.ScanService) over gRPC, with grpc.health.v1,\n"
      "server reflection, and Prometheus metrics over HTTP. SIGTERM/SIGINT shut it down gracefully.\n\n"
      "Flags (also accepted as `key = value` lines in --config FILE; flags win):\n");
  for (const Flag& flag : Flags()) {
    std::string head = absl::StrCat("  --", flag.name, " ", flag.arg);
    if (head.size() < 34) head.resize(34, ' ');
    else head += "\n" + std::string(34, ' ');
    absl::StrAppend(&text, head, flag.help);
    const std::string shown = flag.show(defaults);
    if (!shown.empty()) absl::StrAppend(&text, " [default: ", shown, "]");
    absl::StrAppend(&text, "\n");
  }
  std::string help = "  --help";
  help.resize(34, ' ');
  absl::StrAppend(&text, help, "show this text\n");
  return text;
}

std::string DescribeConfig(const ServerConfig& config) {
  std::string text;
  for (const Flag& flag : Flags()) {
    const std::string shown = flag.show(config);
    if (shown.empty()) continue;
    absl::StrAppend(&text, "  ", flag.name, " = ", shown, "\n");
  }
  return text;
}

}  // namespace scanserve

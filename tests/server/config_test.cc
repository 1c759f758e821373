// Server configuration: defaults, the config file, flags overriding it, --help listing every flag.
#include "server/config.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>


namespace scanserve {
namespace {

absl::StatusOr<CommandLine> ParseArgs(std::vector<std::string> args) {
  args.insert(args.begin(), "scanserve");
  std::vector<const char*> argv;
  for (const std::string& arg : args) argv.push_back(arg.c_str());
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data());
}

std::string WriteTemp(const std::string& name, const std::string& contents) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << contents;
  return path;
}

TEST(ConfigTest, DefaultsRunOutOfTheBox) {
  absl::StatusOr<CommandLine> parsed = ParseArgs({"--model", "/m"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const ServerConfig& c = parsed->config;
  EXPECT_EQ(c.server.listen_address, "127.0.0.1:50051");
  EXPECT_EQ(c.server.metrics_address, "127.0.0.1:9464");
  EXPECT_EQ(c.engine.data_dir, "./scanserve-data");
  EXPECT_EQ(c.server.max_message_bytes, 64 << 20);
  EXPECT_TRUE(c.detector.detector_dir.empty()) << "no detector unless configured";
  EXPECT_EQ(c.detector.device, DetectorDevice::kCpu);
  EXPECT_EQ(c.detector.min_boxes, -1);
  EXPECT_EQ(c.detector.max_boxes, -1);
  EXPECT_EQ(c.server.detection.num_workers, 1);
  EXPECT_EQ(c.server.detection.max_queue_images, 32);
  EXPECT_EQ(c.server.detection.max_image_bytes, 32 << 20);
  EXPECT_EQ(c.detector.max_image_bytes, 32 << 20) << "the detector gets the server's limit";
  EXPECT_EQ(c.engine.model_dirs, std::vector<std::string>{"/m"});
  EXPECT_EQ(c.server.model_dirs, std::vector<std::string>{"/m"});
  EXPECT_TRUE(c.server.auth_token.empty());
}

TEST(ConfigTest, AModelIsRequiredAndAtMostTwo) {
  EXPECT_EQ(ParseArgs({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ParseArgs({"--model", "a", "--model", "b"}).ok());
  EXPECT_EQ(ParseArgs({"--model", "a", "--model", "b", "--model", "c"}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ConfigTest, FlagsOverrideTheFile) {
  const std::string file = WriteTemp("scanserve.conf",
                                     "# comment\n"
                                     "listen = 0.0.0.0:6000\n"
                                     "model = /file/m1   # trailing comment\n"
                                     "model = /file/m2\n"
                                     "\n"
                                     "storage = bf16\n"
                                     "max-batch-queries = 16\n"
                                     "max-message-bytes = 8M\n"
                                     "metrics-listen = off\n");
  absl::StatusOr<CommandLine> parsed = ParseArgs({"--config", file, "--max-batch-queries=32"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.server.listen_address, "0.0.0.0:6000");
  EXPECT_EQ(parsed->config.engine.model_dirs, (std::vector<std::string>{"/file/m1", "/file/m2"}));
  EXPECT_EQ(parsed->config.engine.storage, StorageType::kBFloat16);
  EXPECT_EQ(parsed->config.server.batching.max_batch_queries, 32);
  EXPECT_EQ(parsed->config.server.max_message_bytes, 8 << 20);
  EXPECT_TRUE(parsed->config.server.metrics_address.empty());
  EXPECT_EQ(parsed->config.config_file, file);

  parsed = ParseArgs({"--model", "/flag/m", "--config", file});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.engine.model_dirs, std::vector<std::string>{"/flag/m"}) << "--model replaces the file's";
}

TEST(ConfigTest, BadValuesNameTheirFlagOrLine) {
  absl::StatusOr<CommandLine> parsed = ParseArgs({"--model", "m", "--threads", "many"});
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(parsed.status().message().find("--threads"), absl::string_view::npos);
  EXPECT_EQ(ParseArgs({"--model", "m", "--storage", "fp16"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ParseArgs({"--model", "m", "--storage", "fp16"}).status().message().find("--storage: expected fp32, bf16 or fp8"),
            std::string::npos);
  auto fp8 = ParseArgs({"--model", "m", "--storage", "fp8"});
  ASSERT_TRUE(fp8.ok()) << fp8.status();
  EXPECT_EQ(fp8->config.engine.storage, StorageType::kFp8E4M3);
  // The default follows the backend (bf16 on the GPU); an explicit choice always wins.
  auto cpu_default = ParseArgs({"--model", "m"});
  ASSERT_TRUE(cpu_default.ok());
  EXPECT_EQ(cpu_default->config.engine.storage, StorageType::kFloat32);
  auto cuda_default = ParseArgs({"--model", "m", "--backend", "cuda"});
  ASSERT_TRUE(cuda_default.ok());
  EXPECT_EQ(cuda_default->config.engine.storage, StorageType::kBFloat16);
  auto cuda_fp32 = ParseArgs({"--storage", "fp32", "--model", "m", "--backend", "cuda"});
  ASSERT_TRUE(cuda_fp32.ok());
  EXPECT_EQ(cuda_fp32->config.engine.storage, StorageType::kFloat32);
  EXPECT_EQ(ParseArgs({"--model", "m", "--bogus", "1"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseArgs({"--model", "m", "--max-queue-size", "0"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseArgs({"--model", "m", "--tls-cert", "c.pem"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseArgs({"--model", "m", "--tls-client-ca", "ca.pem"}).status().code(),
            absl::StatusCode::kInvalidArgument)
      << "mutual TLS needs the server's own certificate";
  auto mtls = ParseArgs({"--model", "m", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"});
  ASSERT_TRUE(mtls.ok()) << mtls.status();
  EXPECT_EQ(mtls->config.server.tls.client_ca_file, "ca.pem");
  EXPECT_EQ(ParseArgs({"--model"}).status().code(), absl::StatusCode::kInvalidArgument);
  auto synthetic = ParseArgs({"--model", "m", "--synthetic-images", "1000000", "--synthetic-captions=50"});
  ASSERT_TRUE(synthetic.ok()) << synthetic.status();
  EXPECT_EQ(synthetic->config.engine.synthetic_images, 1'000'000);
  EXPECT_EQ(synthetic->config.engine.synthetic_captions, 50);
  EXPECT_EQ(ParseArgs({"--model", "m", "--synthetic-images", "-1"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseArgs({"--config", "/nonexistent/x.conf"}).status().code(), absl::StatusCode::kNotFound);
  const std::string file = WriteTemp("bad.conf", "model = m\nthreads: 4\n");
  parsed = ParseArgs({"--config", file});
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(parsed.status().message().find(":2:"), absl::string_view::npos) << parsed.status();
}

TEST(ConfigTest, ConnectionAgeAndKeepalive) {
  auto defaults = ParseArgs({"--model", "m"});
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->config.server.max_connection_age_s, 0) << "off unless asked for";
  auto aged = ParseArgs({"--model", "m", "--max-connection-age-s", "300", "--max-connection-age-grace-s=5"});
  ASSERT_TRUE(aged.ok()) << aged.status();
  EXPECT_EQ(aged->config.server.max_connection_age_s, 300);
  EXPECT_EQ(aged->config.server.max_connection_age_grace_s, 5);
  auto keepalive = ParseArgs({"--model", "m", "--keepalive-s", "60", "--min-client-ping-interval-s", "10"});
  ASSERT_TRUE(keepalive.ok()) << keepalive.status();
  EXPECT_EQ(keepalive->config.server.keepalive_s, 60);
  EXPECT_EQ(keepalive->config.server.min_client_ping_interval_s, 10);
  EXPECT_EQ(defaults->config.server.keepalive_s, 0);
  EXPECT_EQ(defaults->config.server.min_client_ping_interval_s, 0);
  const absl::Status negative = ParseArgs({"--model", "m", "--max-connection-age-s", "-1"}).status();
  EXPECT_EQ(negative.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(negative.message().find("--max-connection-age-s"), absl::string_view::npos) << negative;
}

TEST(ConfigTest, CallLogSettings) {
  auto defaults = ParseArgs({"--model", "m"});
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_DOUBLE_EQ(defaults->config.server.call_log.slow_call_seconds, 1.0);
  EXPECT_DOUBLE_EQ(defaults->config.server.call_log.max_lines_per_second, 10.0);
  auto set = ParseArgs({"--model", "m", "--slow-call-log-ms", "250", "--call-log-lines-per-s", "0.5"});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_DOUBLE_EQ(set->config.server.call_log.slow_call_seconds, 0.25);
  EXPECT_DOUBLE_EQ(set->config.server.call_log.max_lines_per_second, 0.5);
  auto off = ParseArgs({"--model", "m", "--slow-call-log-ms", "0"});
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ(off->config.server.call_log.slow_call_seconds, 0.0);
  for (const char* bad : {"-1", "soon", "nan"}) {
    auto parsed = ParseArgs({"--model", "m", "--slow-call-log-ms", bad});
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(parsed.status().message().find("--slow-call-log-ms"), absl::string_view::npos) << parsed.status();
  }
  EXPECT_EQ(ParseArgs({"--model", "m", "--call-log-lines-per-s", "0"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ParseArgs({"--model", "m", "--slow-call-log-ms", "-1"}).status().message().find("expected 0..3600000"),
            absl::string_view::npos);
}

TEST(ConfigTest, ShutdownDelayAndGrace) {
  auto defaults = ParseArgs({"--model", "m"});
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->config.shutdown_delay_s, 0.0) << "no delay unless asked: a plain stop is immediate";
  EXPECT_EQ(defaults->config.shutdown_grace_s, 10.0);
  auto set = ParseArgs({"--model", "m", "--shutdown-delay-s", "7.5", "--shutdown-grace-s", "20"});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->config.shutdown_delay_s, 7.5);
  EXPECT_EQ(set->config.shutdown_grace_s, 20.0);
  for (const char* bad : {"-1", "3601", "nan", "later"}) {
    auto parsed = ParseArgs({"--model", "m", "--shutdown-delay-s", bad});
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(parsed.status().message().find("--shutdown-delay-s: expected 0..3600"), absl::string_view::npos)
        << parsed.status();
  }
}

TEST(ConfigTest, GrpcMemoryQuota) {
  auto defaults = ParseArgs({"--model", "m"});
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->config.server.grpc_memory_quota_bytes, 2LL << 30) << "bounded by default";
  auto set = ParseArgs({"--model", "m", "--grpc-memory-quota", "512M", "--max-message-bytes", "256M"});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->config.server.grpc_memory_quota_bytes, 512LL << 20);
  EXPECT_NE(DescribeConfig(set->config).find("grpc-memory-quota = 536870912"), std::string::npos);
  EXPECT_EQ(ParseArgs({"--model", "m", "--grpc-memory-quota", "0"})->config.server.grpc_memory_quota_bytes, 0)
      << "0 = no bound";
  // Smaller than two of the largest messages: one such request alone would be refused.
  const absl::Status small = ParseArgs({"--model", "m", "--grpc-memory-quota", "100M"}).status();
  EXPECT_EQ(small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(small.message().find("at least twice --max-message-bytes 67108864"), absl::string_view::npos) << small;
  EXPECT_TRUE(ParseArgs({"--model", "m", "--grpc-memory-quota", "128M"}).ok());
  EXPECT_EQ(ParseArgs({"--model", "m", "--grpc-memory-quota", "-1"}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ConfigTest, DetectorSettings) {
  const std::string file = WriteTemp("detector.conf",
                                     "model = /m\n"
                                     "detector-dir = /detectors/bua-36\n"
                                     "detector-device = cuda:1\n"
                                     "detector-precision = bf16\n"
                                     "detector-workers = 2\n"
                                     "detector-queue = 8\n"
                                     "detector-batch = 4\n"
                                     "detector-min-boxes = 10\n"
                                     "detector-max-boxes = 100\n"
                                     "detector-conf-threshold = 0.3\n"
                                     "max-image-bytes = 8M\n");
  absl::StatusOr<CommandLine> parsed = ParseArgs({"--config", file, "--detector-queue", "16"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const ServerConfig& c = parsed->config;
  EXPECT_EQ(c.detector.detector_dir, "/detectors/bua-36");
  EXPECT_EQ(c.detector.device, DetectorDevice::kCuda);
  EXPECT_EQ(c.detector.cuda_device, 1);
  EXPECT_EQ(c.detector.precision, DetectorPrecision::kBf16);
  EXPECT_EQ(c.server.detection.num_workers, 2);
  EXPECT_EQ(c.server.detection.max_queue_images, 16) << "the flag wins";
  EXPECT_EQ(c.server.detection.max_batch_images, 4);
  EXPECT_EQ(c.detector.min_boxes, 10);
  EXPECT_EQ(c.detector.max_boxes, 100);
  EXPECT_FLOAT_EQ(c.detector.conf_threshold, 0.3f);
  EXPECT_EQ(c.server.detection.max_image_bytes, 8 << 20);
  EXPECT_EQ(c.detector.max_image_bytes, 8 << 20);
  EXPECT_NE(DescribeConfig(c).find("detector-dir = /detectors/bua-36"), std::string::npos) << DescribeConfig(c);

  EXPECT_EQ(ParseArgs({"--model", "m", "--detector-device", "tpu"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseArgs({"--model", "m"})->config.detector.precision, DetectorPrecision::kFloat32) << "the default";
  const absl::Status bad_precision = ParseArgs({"--model", "m", "--detector-precision", "fp16"}).status();
  EXPECT_EQ(bad_precision.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_precision.message().find("fp32, tf32 or bf16"), absl::string_view::npos) << bad_precision;
  const absl::Status tf32 = ParseArgs({"--model", "m", "--detector-precision", "tf32"}).status();
  EXPECT_EQ(tf32.code(), absl::StatusCode::kInvalidArgument) << "process-wide: it would change the encoders";
  EXPECT_NE(tf32.message().find("scan_extract"), absl::string_view::npos) << tf32;
  EXPECT_EQ(ParseArgs({"--model", "m", "--detector-workers", "0"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseArgs({"--model", "m", "--detector-queue", "0"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseArgs({"--model", "m", "--detector-min-boxes", "0"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ParseArgs({"--model", "m", "--detector-min-boxes", "-1"}).ok());
  EXPECT_EQ(ParseArgs({"--model", "m"})->config.detector.conf_threshold, -1.0f) << "the directory's";
  EXPECT_EQ(ParseArgs({"--model", "m", "--detector-conf-threshold", "-1"})->config.detector.conf_threshold, -1.0f);
  for (const char* bad : {"1.5", "-0.5", "nan", "x"}) {
    EXPECT_EQ(ParseArgs({"--model", "m", "--detector-conf-threshold", bad}).status().code(),
              absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(ParseArgs({"--model", "m", "--detector-min-boxes", "50", "--detector-max-boxes", "20"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A message must be able to carry one image of the largest size.
  absl::StatusOr<CommandLine> small = ParseArgs({"--model", "m", "--detector-dir", "/d", "--max-message-bytes", "16M"});
  EXPECT_EQ(small.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(small.status().message().find("--max-message-bytes"), absl::string_view::npos) << small.status();
  EXPECT_TRUE(ParseArgs({"--model", "m", "--detector-dir", "/d", "--max-message-bytes", "16M", "--max-image-bytes", "8M"}).ok());
}

TEST(ConfigTest, EncoderDevice) {
  absl::StatusOr<CommandLine> parsed = ParseArgs({"--model", "m"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->config.engine.encoder_device.has_value()) << "auto by default";
  EXPECT_NE(DescribeConfig(parsed->config).find("encoder-device = auto"), std::string::npos);

  const std::vector<std::pair<std::string, EncoderDevice>> explicit_devices = {
      {"cpu", EncoderDevice::Cpu()}, {"cuda", EncoderDevice::Cuda(0)}, {"cuda:1", EncoderDevice::Cuda(1)}};
  for (const auto& [value, device] : explicit_devices) {
    parsed = ParseArgs({"--model", "m", "--encoder-device", value});
    ASSERT_TRUE(parsed.ok()) << value << ": " << parsed.status();
    ASSERT_TRUE(parsed->config.engine.encoder_device.has_value()) << value;
    EXPECT_EQ(*parsed->config.engine.encoder_device, device) << value;
  }
  EXPECT_NE(DescribeConfig(parsed->config).find("encoder-device = cuda:1"), std::string::npos)
      << DescribeConfig(parsed->config);

  // The flag overrides the file, back to auto.
  const std::string file = WriteTemp("encoder.conf", "model = /m\nencoder-device = cuda:2\n");
  parsed = ParseArgs({"--config", file});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.engine.encoder_device, EncoderDevice::Cuda(2));
  parsed = ParseArgs({"--config", file, "--encoder-device=auto"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->config.engine.encoder_device.has_value());

  for (const char* bad : {"gpu", "cuda:", "cuda:-1", "cuda:x", "CPU", ""}) {
    parsed = ParseArgs({"--model", "m", "--encoder-device", bad});
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(parsed.status().message().find("--encoder-device"), absl::string_view::npos) << parsed.status();
  }
}

// The CUDA backend's pass: gemm by default; fused only with --backend cuda and bf16/fp8 storage;
// auto with --backend cuda and any storage (with fp32 it always takes the GEMM path).
TEST(ConfigTest, CudaKernels) {
  absl::StatusOr<CommandLine> parsed = ParseArgs({"--model", "m", "--backend", "cuda"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.engine.scorer_tuning.cuda_pass_kernels, CudaPassKernels::kGemm);
  EXPECT_NE(DescribeConfig(parsed->config).find("cuda-kernels = gemm"), std::string::npos);

  for (const std::vector<std::string>& storage :
       {std::vector<std::string>{}, {"--storage", "bf16"}, {"--storage", "fp8"}}) {
    std::vector<std::string> args = {"--model", "m", "--backend", "cuda", "--cuda-kernels", "fused"};
    args.insert(args.end(), storage.begin(), storage.end());
    parsed = ParseArgs(args);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(parsed->config.engine.scorer_tuning.cuda_pass_kernels, CudaPassKernels::kFused);
    EXPECT_NE(DescribeConfig(parsed->config).find("cuda-kernels = fused"), std::string::npos);
  }
  for (const char* storage : {"fp32", "bf16", "fp8"}) {
    parsed = ParseArgs(
        {"--model", "m", "--backend", "cuda", "--storage", storage, "--cuda-kernels", "auto"});
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(parsed->config.engine.scorer_tuning.cuda_pass_kernels, CudaPassKernels::kAuto);
    EXPECT_NE(DescribeConfig(parsed->config).find("cuda-kernels = auto"), std::string::npos);
  }
  const std::string file = WriteTemp("kernels.conf", "model = /m\nbackend = cuda\ncuda-kernels = fused\n");
  parsed = ParseArgs({"--config", file});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.engine.scorer_tuning.cuda_pass_kernels, CudaPassKernels::kFused);
  parsed = ParseArgs({"--config", file, "--cuda-kernels", "gemm"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.engine.scorer_tuning.cuda_pass_kernels, CudaPassKernels::kGemm);

  const std::vector<std::vector<std::string>> bad = {
      {"--model", "m", "--backend", "cuda", "--cuda-kernels", "cublas"},
      {"--model", "m", "--backend", "cuda", "--cuda-kernels", ""},
      {"--model", "m", "--cuda-kernels", "fused"},  // the cpu backend
      {"--model", "m", "--cuda-kernels", "auto"},
      {"--model", "m", "--backend", "cuda", "--storage", "fp32", "--cuda-kernels", "fused"}};
  for (const std::vector<std::string>& args : bad) {
    parsed = ParseArgs(args);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << args.back();
    EXPECT_NE(parsed.status().message().find("--cuda-kernels"), absl::string_view::npos)
        << parsed.status();
  }
}

TEST(ConfigTest, CudaQueryPrecision) {
  absl::StatusOr<CommandLine> parsed = ParseArgs({"--model", "m", "--backend", "cuda"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.engine.scorer_tuning.cuda_query_precision, CudaQueryPrecision::kBf16Split);
  EXPECT_NE(DescribeConfig(parsed->config).find("cuda-query-precision = bf16x2"), std::string::npos);

  for (const std::vector<std::string>& storage :
       {std::vector<std::string>{}, {"--storage", "bf16"}, {"--storage", "fp8"}}) {
    std::vector<std::string> args = {"--model", "m", "--backend", "cuda", "--cuda-query-precision", "bf16"};
    args.insert(args.end(), storage.begin(), storage.end());
    parsed = ParseArgs(args);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(parsed->config.engine.scorer_tuning.cuda_query_precision, CudaQueryPrecision::kBf16);
    EXPECT_NE(DescribeConfig(parsed->config).find("cuda-query-precision = bf16\n"), std::string::npos)
        << DescribeConfig(parsed->config);
  }
  // The default spelled out is accepted anywhere.
  parsed = ParseArgs({"--model", "m", "--cuda-query-precision", "bf16x2"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const std::string file = WriteTemp("queries.conf", "model = /m\nbackend = cuda\ncuda-query-precision = bf16\n");
  parsed = ParseArgs({"--config", file});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.engine.scorer_tuning.cuda_query_precision, CudaQueryPrecision::kBf16);

  const std::vector<std::vector<std::string>> bad = {
      {"--model", "m", "--backend", "cuda", "--cuda-query-precision", "fp16"},
      {"--model", "m", "--backend", "cuda", "--cuda-query-precision", ""},
      {"--model", "m", "--cuda-query-precision", "bf16"},  // the cpu backend keeps fp32 queries
      {"--model", "m", "--backend", "cuda", "--storage", "fp32", "--cuda-query-precision", "bf16"}};
  for (const std::vector<std::string>& args : bad) {
    parsed = ParseArgs(args);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << args.back();
    EXPECT_NE(parsed.status().message().find("--cuda-query-precision"), absl::string_view::npos)
        << parsed.status();
  }
}

TEST(ConfigTest, TokenFileAndReloadInterval) {
  absl::StatusOr<CommandLine> parsed = ParseArgs({"--model", "m"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.server.credential_reload_s, 60);
  // The file is read by the server (Server::Create), which re-reads it while serving.
  parsed = ParseArgs({"--model", "m", "--auth-token-file", "/etc/scanserve/tokens", "--credential-reload-s", "5"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.server.auth_token_file, "/etc/scanserve/tokens");
  EXPECT_TRUE(parsed->config.server.auth_token.empty());
  EXPECT_EQ(parsed->config.server.credential_reload_s, 5);
  parsed = ParseArgs({"--model", "m", "--credential-reload-s", "0"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.server.credential_reload_s, 0);

  parsed = ParseArgs({"--model", "m", "--auth-token", "s3cret", "--auth-token-file", "/etc/scanserve/tokens"});
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(parsed.status().message().find("exclude"), absl::string_view::npos) << parsed.status();
  parsed = ParseArgs({"--model", "m", "--credential-reload-s", "-1"});
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);

  parsed = ParseArgs({"--model", "m", "--auth-token", "s3cret"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(DescribeConfig(parsed->config).find("s3cret"), std::string::npos) << "the log never shows the token";
}

TEST(ConfigTest, LogFormat) {
  absl::StatusOr<CommandLine> parsed = ParseArgs({"--model", "m"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.log_format, LogFormat::kText);
  parsed = ParseArgs({"--model", "m", "--log-format", "json"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.log_format, LogFormat::kJson);
  EXPECT_NE(DescribeConfig(parsed->config).find("log-format = json"), std::string::npos) << DescribeConfig(parsed->config);
  parsed = ParseArgs({"--model", "m", "--log-format", "logfmt"});
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(parsed.status().message().find("--log-format"), absl::string_view::npos) << parsed.status();
}

TEST(ConfigTest, CompressedRequests) {
  absl::StatusOr<CommandLine> parsed = ParseArgs({"--model", "m"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->config.server.accept_compressed_requests) << "refused by default";
  parsed = ParseArgs({"--model", "m", "--compressed-requests", "accept"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->config.server.accept_compressed_requests);
  parsed = ParseArgs({"--model", "m", "--compressed-requests", "gzip"});
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConfigTest, HelpListsEveryFlag) {
  absl::StatusOr<CommandLine> parsed = ParseArgs({"--help"});
  ASSERT_TRUE(parsed.ok());
  EXPECT_TRUE(parsed->help);
  const std::string usage = Usage("scanserve");
  for (const char* flag : {"--listen", "--metrics-listen", "--data-dir", "--model", "--config", "--threads", "--encoder-device", "--cuda-kernels",
                           "--storage", "--max-batch-queries", "--max-queue-delay-us", "--max-queue-size",
                           "--max-message-bytes", "--grpc-memory-quota", "--max-images", "--max-captions", "--tls-cert", "--tls-key",
                           "--tls-client-ca", "--auth-token", "--auth-token-file", "--detector-dir", "--detector-device",
                           "--detector-precision", "--detector-workers", "--detector-queue", "--detector-batch", "--detector-min-boxes",
                           "--detector-max-boxes", "--detector-conf-threshold", "--max-image-bytes", "--synthetic-images",
                           "--synthetic-captions", "--max-connection-age-s", "--max-connection-age-grace-s",
                           "--keepalive-s", "--min-client-ping-interval-s", "--credential-reload-s", "--log-format", "--compressed-requests", "--help"}) {
    EXPECT_NE(usage.find(flag), std::string::npos) << flag;
  }
}

TEST(ConfigTest, TheShippedExampleConfigParses) {
  // deploy/scanserve.conf is what operators copy: every key in it must stay a valid setting.
  const std::string path = std::string(SCANSERVE_SOURCE_DIR) + "/deploy/scanserve.conf";
  auto parsed = ParseArgs({"--config", path});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.engine.storage, StorageType::kFloat32);
  EXPECT_EQ(parsed->config.server.batching.max_batch_queries, 64);
  EXPECT_TRUE(parsed->config.server.tls.client_ca_file.empty()) << "TLS lines are commented out";
}

}  // namespace
}  // namespace scanserve

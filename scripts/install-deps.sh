#!/usr/bin/env bash
# Installs scanserve's build and test dependencies from Debian 12 packages (run as root or via sudo).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libopenblas0-pthread          # LibTorch 1.13 CPU; OpenBLAS instead of the reference BLAS
  libabsl-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-torch python3-numpy python3-nltk   # reference implementations and converters (/usr/bin/python3)
  libopencv-dev                              # the detector decodes and resizes images as the original (cv2)
  python3-opencv python3-torchvision python3-protobuf  # the detector's reference and caffemodel converter
  # the service: gRPC API, durable store, metrics
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev prometheus-cpp-dev libcpp-httplib-dev libssl-dev openssl
  prometheus python3-grpcio python3-grpc-tools  # the real Prometheus and a Python client, for tests
  python3-yaml                               # the Kubernetes manifest's test reads deploy/kubernetes.yaml
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

#!/usr/bin/env bash
# On the CPU machine, from the project root: gathers in .debs/ (git-ignored) the Debian packages the
# GPU machine lacks for scripts/gpu-check.sh: ../shared/gpu/fetch-debs.sh's list (Abseil, RocksDB,
# gRPC, ...), nlohmann-json (header-only), and unpack-debs.sh. Then name ".debs" in the device
# call's carry. OpenCV is not carried: an engine-only build without it keeps the detector's network
# and CUDA kernels and refuses image bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${SCANSERVE_SHARED_DIR:-../shared}"
bash "$shared/gpu/fetch-debs.sh"
cp "$shared/gpu/unpack-debs.sh" .debs/
(cd .debs && apt-get download nlohmann-json3-dev >/dev/null)
ls .debs | wc -l | xargs echo "files in .debs:"

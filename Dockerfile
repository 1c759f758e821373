# scanserve CPU image from Debian 12 packages.
#   docker build -t scanserve .
#   docker run -p 50051:50051 -p 9464:9464 -v scanserve-data:/data -v $PWD/model:/model:ro scanserve
#   (add -v $PWD/detector:/detector:ro scanserve --model /model --detector-dir /detector to ingest
#   image bytes; see docs/detector-format.md)
# The server listens on all interfaces inside the container; /data (the durable store) is a volume.
# A CUDA variant arrives with the GPU issue (build argument SCANSERVE_WITH_CUDA).
FROM debian:12 AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/
RUN bash scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSCANSERVE_BUILD_TESTS=OFF \
 && cmake --build /build -j"$(nproc)"

FROM debian:12
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libtorch1.13 libopenblas0-pthread libabsl20220623 libgrpc++1.51 libprotobuf32 \
      librocksdb7.8 libprometheus-cpp-core1.0 libcpp-httplib0.11 libssl3 \
      libopencv-core406 libopencv-imgproc406 libopencv-imgcodecs406 \
      python3-torch python3-numpy python3-protobuf python3-grpc-tools \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --uid 10001 scanserve \
 && mkdir -p /data && chown scanserve /data
COPY --from=build /build/server/scanserve /build/client/scanctl /build/engine/scan_eval \
                  /build/engine/scan_score /build/engine/scan_bench /build/engine/scan_bench_encoder \
                  /build/engine/scan_train \
                  /build/engine/scan_tokenize /build/engine/scan_extract /usr/local/bin/
COPY tools/ /opt/scanserve/tools/
USER scanserve
VOLUME ["/data"]
WORKDIR /data
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/scanserve", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464", "--data-dir", "/data"]
CMD ["--model", "/model"]

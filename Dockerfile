# syntax=docker/dockerfile:1
# ghanet on a GPU: `ghanet` is the entrypoint, slides/weights/outputs are mounted volumes.
#
#   docker build -t ghanet .
#   docker run --rm ghanet doctor                                     # check the image
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" \
#       -v /path/to/slides:/data:ro -v "$HOME/.cache/torch":/weights:ro -v "$PWD/results":/out \
#       ghanet extract-features /data --recursive --out /out
#
# Base image: the NVIDIA CUDA "base" image (CUDA compat + driver hooks for `--gpus`). The PyPI torch
# wheel brings its own CUDA runtime and cuDNN as pip packages, so the larger "runtime"/"cudnn" images
# would only add a second copy. The CUDA major version must match the torch wheel pinned in
# constraints.txt (torch 2.14.1 -> CUDA 13); host driver >= the one that CUDA version needs.
# Any Debian/Ubuntu image with python3 >= 3.11 works as well (CPU only), e.g.
#   docker build --build-arg CUDA_IMAGE=debian:bookworm -t ghanet .
#
# Private package index / proxy CA: pass them as build secrets, mounted for the pip steps only (never
# stored in a layer):
#   docker build --secret id=pip.conf,src=my-pip.conf --secret id=ca.crt,src=/etc/ssl/certs/ca-certificates.crt .
# `make docker-check` (pipelines/testing/docker-check.sh, docs/workflow.md) builds and runs the image this way.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04

# ---------- builder: a virtual environment with ghanet and its pinned dependencies ----------
FROM ${CUDA_IMAGE} AS builder
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Package versions come from the base image's distribution (Debian or Ubuntu): not pinned here.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
# The pinned constraints need Python >= 3.11 (numpy 2.4, scipy, pandas' stack): say so, not a pip resolver error.
RUN python3 -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 'ghanet needs python3 >= 3.11; this base image has ' + sys.version.split()[0])" \
 && python3 -m venv /opt/ghanet
ENV PATH=/opt/ghanet/bin:$PATH
WORKDIR /src
# Dependencies first (cached while only the code changes): metadata + the package's __init__ only.
COPY constraints.txt setup.cfg pyproject.toml README.md ./
COPY ghanet_pipeline/__init__.py ghanet_pipeline/__init__.py
# EXTRAS=workflow also installs Snakemake + the SLURM executor plugin into the image.
ARG EXTRAS=""
# Build secrets (optional): pip.conf = index settings, ca.crt = CA bundle for HTTPS to the index.
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
 && if [ -s /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
 && pip install --no-cache-dir -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
 && pip uninstall -y ghanet
COPY ghanet_pipeline ghanet_pipeline
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
 && if [ -s /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
 && pip install --no-cache-dir --no-deps -c constraints.txt . \
 && find /opt/ghanet -name '__pycache__' -prune -exec rm -rf {} +

# ---------- final: python + the venv, no compilers, non-root ----------
FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/ghanet /opt/ghanet
# TORCH_HOME=/weights: extract-features looks for $TORCH_HOME/hub/checkpoints/resnet50-*.pth, so
# mounting your ~/.cache/torch at /weights finds the ImageNet weights without any download.
# MALLOC_*: keep freed memory in the process (measured: 1.32x the encoder's CPU patches/s, median;
# docs/benchmarks.md, "glibc malloc").
ENV PATH=/opt/ghanet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TORCH_HOME=/weights \
    MPLCONFIGDIR=/tmp/matplotlib \
    MALLOC_MMAP_MAX_=0 \
    MALLOC_TRIM_THRESHOLD_=17179869184
RUN groupadd --gid 10001 ghanet \
 && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin ghanet \
 && mkdir -p /data /weights /out \
 && chown ghanet:ghanet /out
USER 10001:10001
WORKDIR /out
VOLUME ["/data", "/weights", "/out"]
# `docker run --rm ghanet doctor` prints the same report; exit 1 when a required check fails.
HEALTHCHECK --interval=10m --timeout=60s --start-period=30s \
    CMD ["ghanet", "doctor", "--out", "/tmp/ghanet-doctor"]
ENTRYPOINT ["ghanet"]
CMD ["--help"]

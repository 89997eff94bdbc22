# syntax=docker/dockerfile:1.7
#
# Images for sphinxx, built from one source tree, so the operator and the Ray head/worker pods
# always run the same code (the chart's runtime.image defaults to the operator image's `-gpu` tag).
#
#   docker build -t ghcr.io/sphinxx/sphinxx:0.1.0 .                               # CPU (default target)
#   docker build --target gpu -t ghcr.io/sphinxx/sphinxx:0.1.0-gpu .              # CUDA + DeepSpeed + MegaBlocks
#   docker build --target mlflow -t ghcr.io/sphinxx/sphinxx-mlflow:0.1.0 .        # MLflow server
#
# Versions follow pyproject.toml (tests/helm/test_dockerfile.py checks the extras and pins named
# here against it): the package installs with the `train,operator` extras; the CPU stage's torch is
# pinned to the `model` extra's version; the MLflow server uses the same mlflow pin as the client.
# The `gpu` stage's stack (torch's CUDA build, DeepSpeed, MegaBlocks built with the source fix
# CUDA 13 needs) is installed by .ci/install_gpu_stack.sh, which holds those pins
# (tests/foundation/test_gpu_stack.py checks them against pyproject.toml) and which
# bench/gpu_setup.sh runs too, so the GPU checks (bench/GPU.md) install what this image installs.

ARG PYTHON_VERSION=3.11
# The CUDA image must match the CUDA major version of the torch build below (TORCH_INDEX).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04

# ---------------------------------------------------------------------------- sources
FROM scratch AS src
COPY pyproject.toml README.md /src/
COPY sphinxx/ /src/sphinxx/
COPY model/ /src/model/
COPY jobs/ /src/jobs/
COPY storage/ /src/storage/
COPY operator/ /src/operator/

# ---------------------------------------------------------------------------- mlflow
# Tracking server for the chart's mlflow.server: PostgreSQL backend (psycopg2), S3 artifacts (boto3).
FROM python:${PYTHON_VERSION}-slim-bookworm AS mlflow
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN pip install "mlflow==3.17.2" "psycopg2-binary==2.9.13" "boto3>=1.43.115,<1.43.118" "botocore>=1.43.115,<1.43.118" \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp mlflow
USER 10001
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]

# ---------------------------------------------------------------------------- gpu
# CUDA devel image: MegaBlocks and grouped_gemm build CUDA code against our torch (nvcc), and
# DeepSpeed JIT-compiles any op it needs on first use (nvcc, ninja).
FROM ${CUDA_IMAGE} AS gpu
ARG PYTHON_VERSION
# Its CUDA major version must be the CUDA image's.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
# Build for A100 (8.0) and H100/H200 (9.0) without needing a GPU at build time.
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
ENV UV_NO_CACHE=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}
# wget: KubeRay's default Ray probes run `wget` in the container; git: some sdists need it.
# No apt version pins (hadolint DL3008): an exact version leaves the archive when superseded, which
# would break the build; these few tools follow the base image's release and its security updates.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates wget git \
 && rm -rf /var/lib/apt/lists/*
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
# The GPU stack, by the script the GPU checks run (with pip: `--seed` puts it in the venv). It is
# copied before the sources, so a change of the package reuses this layer and its CUDA builds.
COPY .ci/install_gpu_stack.sh /usr/local/bin/install_gpu_stack.sh
RUN uv venv --seed --python ${PYTHON_VERSION} /opt/venv \
 && PYTHON=/opt/venv/bin/python bash /usr/local/bin/install_gpu_stack.sh install --torch-index ${TORCH_INDEX}
COPY --from=src /src /opt/sphinxx
# The torch, DeepSpeed and MegaBlocks installed above satisfy the package's pins and stay.
RUN uv pip install --compile-bytecode "/opt/sphinxx[train,operator]" \
 && useradd --uid 10001 --user-group --create-home sphinxx
USER 10001
WORKDIR /home/sphinxx
CMD ["sphinxx", "--help"]

# ---------------------------------------------------------------------------- cpu (default)
# The operator, and Ray pods of CPU-only runs. Last stage, so a plain `docker build` produces it.
FROM python:${PYTHON_VERSION}-slim-bookworm AS cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# wget for KubeRay's probes; not version-pinned, as in the `gpu` stage (hadolint DL3008).
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/*
COPY --from=src /src /opt/sphinxx
# torch from the CPU index first: the PyPI wheel is the multi-GB CUDA build (docs/architecture.md,
# "Dependencies and pins").
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install "/opt/sphinxx[train,operator]" \
 && useradd --uid 10001 --user-group --create-home sphinxx
USER 10001
WORKDIR /home/sphinxx
CMD ["sphinxx", "--help"]

# syntax=docker/dockerfile:1.7
#
# Images for sphinxx, built from one source tree, so the operator and the Ray head/worker pods
# always run the same code (the chart's runtime.image defaults to the operator image's `-gpu` tag).
#
#   docker build -t ghcr.io/sphinxx/sphinxx:0.1.0 .                               # CPU (default target)
#   docker build --target gpu -t ghcr.io/sphinxx/sphinxx:0.1.0-gpu .              # CUDA + MegaBlocks
#   docker build --target mlflow -t ghcr.io/sphinxx/sphinxx-mlflow:0.1.0 .        # MLflow server
#
# Versions follow pyproject.toml (tests/helm/test_dockerfile.py checks the extras and pins named
# here against it): the package installs with the `train,operator` extras; torch is pinned to the
# `model` extra's version; MegaBlocks is installed with --no-deps (its own pins would replace our
# torch, see docs/moe.md, "Expert kernels"); the MLflow server uses the same mlflow pin as the client.

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
# CUDA devel image: MegaBlocks, stanford-stk and grouped_gemm build CUDA code against our torch.
FROM ${CUDA_IMAGE} AS gpu
ARG PYTHON_VERSION
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
# Build for A100 (8.0) and H100/H200 (9.0) without needing a GPU at build time.
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
ENV UV_NO_CACHE=1 PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}
# wget: KubeRay's default Ray probes run `wget` in the container; git: some sdists need it.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates wget git \
 && rm -rf /var/lib/apt/lists/*
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
COPY --from=src /src /opt/sphinxx
RUN uv venv --python ${PYTHON_VERSION} /opt/venv \
 && uv pip install --index-url ${TORCH_INDEX} "torch==2.13.0" \
 && uv pip install setuptools wheel ninja "/opt/sphinxx[train,operator]" \
 && uv pip install --no-deps --no-build-isolation \
      "megablocks==0.10.0" "stanford-stk==0.7.1" "grouped_gemm==0.3.0" \
 && useradd --uid 10001 --user-group --create-home sphinxx
USER 10001
WORKDIR /home/sphinxx
CMD ["sphinxx", "--help"]

# ---------------------------------------------------------------------------- cpu (default)
# The operator, and Ray pods of CPU-only runs. Last stage, so a plain `docker build` produces it.
FROM python:${PYTHON_VERSION}-slim-bookworm AS cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
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

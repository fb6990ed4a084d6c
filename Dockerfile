# syntax=docker/dockerfile:1
# Two images by purpose, from one file, both running as a non-root user:
#
#   serving   (the default, last stage) the base install, no torch: the components the chart runs
#             python -m transformers_pre     the search transformer (InferenceService `search`)
#             python -m predictors.recall    the MF recall predictor (InferenceService `mf-recall`)
#             The ranker runs on NVIDIA's Triton image, not this one.
#   pipeline  the base install with the `train` and `ops` extras (CPU torch) and configs/: the
#             `shopserve` CLI jobs of a cluster (data, train, optimise, evaluate, package,
#             pipeline run, bundles, loadtest and gate against a cluster, promote, rollback,
#             monitor). Not in it: helm (`deploy`) and the local Triton (`up`, `evaluate stack`,
#             `gate --local`), which run from a checkout (`make up`).
#
#   docker build --target serving -t ghcr.io/shopserve/shopserve:0.1.0 .
#   docker run --rm ghcr.io/shopserve/shopserve:0.1.0 predictors.recall    # ENTRYPOINT is `python -m`
#   docker build --target pipeline -t ghcr.io/shopserve/shopserve-pipeline:0.1.0 .
#   docker run --rm ghcr.io/shopserve/shopserve-pipeline:0.1.0 bundles list    # ENTRYPOINT `shopserve`
#
# No Docker engine runs on the development machines: tests/charts/test_dockerfile.py checks this
# file instead (stages, users, no torch in serving, the CPU torch pin in pipeline, the packages
# copied, entrypoints that import).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------------------------------
# build-serving: compilers and pip live in the build stages only; the result is /opt/venv with the
# base install of pyproject.toml (no extras) and the serving packages.
# --------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build-serving

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler for any dependency without a wheel for this platform (none today on x86_64).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The package exactly as pyproject.toml declares it (non-editable), serving packages only: no
# torch, and no index but PyPI.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shopserve ./shopserve
COPY transformers_pre ./transformers_pre
COPY predictors ./predictors
RUN pip install --upgrade pip \
    && pip install . \
    && pip check \
    && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} +

# --------------------------------------------------------------------------------------------------
# build-pipeline: the serving venv plus the build and operations packages and their extras.
# --------------------------------------------------------------------------------------------------
FROM build-serving AS build-pipeline

# CPU torch first, from PyTorch's CPU index: the same pin as pyproject.toml's `train` extra, and an
# unpinned torch from PyPI would pull a multi-GB CUDA build. The install below finds it satisfied.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY training ./training
COPY pipeline ./pipeline
COPY loadtest ./loadtest
# recbole ships MovieLens-100K (training.data.movielens); its declared dependencies (old Ray,
# TensorBoard) are not needed, as in the Makefile, so it comes after `pip check`, which would name them.
RUN pip install '.[train,ops]' \
    && pip check \
    && pip install --no-deps recbole==1.2.1 \
    && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} +

# --------------------------------------------------------------------------------------------------
# runtime: what both images share: OpenMP, the user, the environment; read-only root friendly.
# --------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# libgomp1: the OpenMP runtime of faiss (and implicit, torch in the pipeline image); a shared
# library, not a compiler.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 shopserve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin shopserve

# HOME and caches point at /tmp, the only writable path in the pods (an emptyDir); the tokenizer
# and models come from the bundle at /mnt/models, never from the Hugging Face hub.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /tmp

# --------------------------------------------------------------------------------------------------
# pipeline: the `shopserve` CLI with the build and operations stack.
# --------------------------------------------------------------------------------------------------
FROM runtime AS pipeline

COPY --from=build-pipeline /opt/venv /opt/venv
# The named pipeline configurations (`shopserve pipeline run --config ...`, `build-demo`).
COPY configs /opt/shopserve/configs
ENV SHOPSERVE_CONFIG_DIR=/opt/shopserve/configs

# Numeric, so Kubernetes can verify runAsNonRoot; the same uid as the serving image.
USER 10001:10001

ENTRYPOINT ["shopserve"]
CMD ["--help"]

# --------------------------------------------------------------------------------------------------
# serving: the image the chart runs (the default target: the last stage).
# --------------------------------------------------------------------------------------------------
FROM runtime AS serving

COPY --from=build-serving /opt/venv /opt/venv

# Numeric, so Kubernetes can verify runAsNonRoot; the chart runs as the same uid (values.yaml).
USER 10001:10001

# search transformer 8080 (REST) / 8081 (gRPC); recall predictor 8090 / 8091.
EXPOSE 8080 8081 8090 8091

ENTRYPOINT ["python", "-m"]
CMD ["transformers_pre"]

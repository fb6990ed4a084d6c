# syntax=docker/dockerfile:1
# One image for the shopserve components the chart runs, as a non-root user:
#   python -m transformers_pre     the search transformer (InferenceService `search`)
#   python -m predictors.recall    the MF recall predictor (InferenceService `mf-recall`)
# The ranker runs on NVIDIA's Triton image, not this one.
#
#   docker build -t ghcr.io/shopserve/shopserve:0.1.0 .
#   docker run --rm ghcr.io/shopserve/shopserve:0.1.0 predictors.recall    # ENTRYPOINT is `python -m`
#
# No Docker engine runs on the development machines: tests/charts/test_dockerfile.py checks this
# file instead (stages, user, CPU torch, the package of pyproject.toml, entrypoints that import).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------------------------------
# build: compilers and pip live here only; the result is the virtualenv in /opt/venv.
# --------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler for any dependency without a wheel for this platform (none today on x86_64).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# CPU torch first, from PyTorch's CPU index: the same pin as pyproject.toml, and an unpinned torch
# from PyPI would pull a multi-GB CUDA build. The project install below then finds it satisfied.
RUN pip install --upgrade pip \
    && pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# The package exactly as pyproject.toml declares it (non-editable, with its dependencies).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shopserve ./shopserve
COPY predictors ./predictors
COPY transformers_pre ./transformers_pre
COPY pipeline ./pipeline
COPY loadtest ./loadtest
RUN pip install . \
    && pip check \
    && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} +

# --------------------------------------------------------------------------------------------------
# runtime: the virtualenv and OpenMP, nothing else; read-only root filesystem friendly.
# --------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# libgomp1: the OpenMP runtime of implicit and faiss (a shared library, not a compiler).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 shopserve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin shopserve

COPY --from=build /opt/venv /opt/venv

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
# Numeric, so Kubernetes can verify runAsNonRoot; the chart runs as the same uid (values.yaml).
USER 10001:10001

# search transformer 8080 (REST) / 8081 (gRPC); recall predictor 8090 / 8091.
EXPOSE 8080 8081 8090 8091

ENTRYPOINT ["python", "-m"]
CMD ["transformers_pre"]

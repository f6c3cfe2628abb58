# The MLflow tracking server and model registry for the kr pipeline: mlflow (the version constraints.txt pins),
# the PostgreSQL driver, boto3 for S3 artifacts, and basic auth (`mlflow server --app-name basic-auth`).
# scripts/build-images tags it <registry>/kr-mlflow:<tag>; infra/ runs it.
# Base: pinned by tag here; scripts/build-images resolves the tag to its digest and builds from
# BASE_IMAGE=python:3.11.14-slim-trixie@sha256:<digest> (recorded in its images lock and in the base.name label).
# Air-gapped sites: any Debian-based image with python3 and python3-venv serves as BASE_IMAGE (scripts/build-base),
# and a filled docker/wheelhouse (scripts/build-images --wheelhouse) makes the build need no network.
# Build context: the repository root (see .dockerignore).
ARG BASE_IMAGE=python:3.11.14-slim-trixie

FROM ${BASE_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
# With wheels in docker/wheelhouse pip installs from it alone, without an index (see docker/cpu.Dockerfile).
COPY docker/wheelhouse ./wheelhouse
# requirements/mlflow.lock: docker/mlflow-requirements.txt resolved at the versions kr is tested with (scripts/lock),
# every file checked against its sha256 (`--require-hashes --no-deps`: nothing is resolved here).
COPY requirements/mlflow.lock ./
RUN if [ -n "$(find wheelhouse -maxdepth 1 -name '*.whl' -print -quit)" ]; then \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=/build/wheelhouse; echo "pip: the wheelhouse only, no index"; fi \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps --requirement mlflow.lock

FROM ${BASE_IMAGE}
# Everything but the venv and the provenance first, the venv as late as possible: on a storage driver that copies
# each layer in full (vfs) every step after the venv copies it again, and a changed commit rebuilds only from ARG on.
RUN useradd --no-log-init -l --uid 10001 --gid 0 --home-dir /home/mlflow --create-home --shell /usr/sbin/nologin mlflow
COPY constraints.txt docker/mlflow-requirements.txt docker/verify_image.py docker/mlflow_start.py /opt/mlflow/
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    HOME=/home/mlflow \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_HOST=0.0.0.0 \
    MLFLOW_PORT=5000 \
    MLFLOW_WORKERS=2 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
USER 10001:0
WORKDIR /home/mlflow
EXPOSE 5000
# /health answers without credentials (MLflow's basic auth leaves it open); Kubernetes uses its own probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('MLFLOW_PORT', '5000'), timeout=4)"]
ENTRYPOINT ["python", "/opt/mlflow/mlflow_start.py"]
# Provenance labels, used last so that a new commit leaves the layers above cached (an ARG whose value changes misses
# the cache where it is used, not where it is declared): scripts/build-images passes the commit (KR_COMMIT, full
# hash) and the digest-pinned base (BASE_IMAGE).
ARG BASE_IMAGE
ARG KR_VERSION=unknown
ARG KR_COMMIT=unknown
COPY --from=builder /opt/venv /opt/venv
LABEL org.opencontainers.image.title="kr-mlflow" \
      org.opencontainers.image.description="MLflow tracking server with basic auth, PostgreSQL and S3 for kr" \
      org.opencontainers.image.version="${KR_VERSION}" \
      org.opencontainers.image.revision="${KR_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
RUN python /opt/mlflow/verify_image.py --mlflow --pip-check --freeze --roots-from /opt/mlflow/mlflow-requirements.txt \
        --constraints /opt/mlflow/constraints.txt --constraints /opt/mlflow/mlflow-requirements.txt

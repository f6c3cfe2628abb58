# The kr component image for CPU-only nodes (dev clusters, CI): the same project and pins as the GPU image, with
# the CPU build of torch. scripts/build-images tags it <registry>/kr:<tag>-cpu.
# Base: Python 3.11 (the version the tests use), Debian slim, pinned to an exact patch release here;
# scripts/build-images resolves that tag to its digest and builds from
#   BASE_IMAGE=python:3.11.14-slim-trixie@sha256:<digest>
# (recorded in its images lock and in the image's org.opencontainers.image.base.name label; --cpu-base names another).
# Build context: the repository root (see .dockerignore).
ARG BASE_IMAGE=python:3.11.14-slim-trixie

FROM ${BASE_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
# As scripts/bootstrap does: the CPU torch wheel first (from the PyTorch CPU index; constraints.txt's torch==2.13.0
# matches 2.13.0+cpu), then kr built as a wheel and installed with every other version from constraints.txt,
# then medmnist without its torchvision requirement.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu --no-deps "torch==${TORCH_VERSION}+cpu" \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /build/wheels . \
    && /opt/venv/bin/pip install --constraint constraints.txt /build/wheels/kr-*.whl \
    && /opt/venv/bin/pip install --no-deps medmnist==3.0.2

FROM ${BASE_IMAGE}
ARG TORCH_VERSION=2.13.0
# Non-root user 10001 in group 0; /gcs, /minio, /s3 and /oci are where the KFP v2 launcher puts artifacts.
RUN useradd --no-log-init -l --uid 10001 --gid 0 --home-dir /home/kr --create-home --shell /usr/sbin/nologin kr \
    && install -d -o 10001 -g 0 -m 0775 /gcs /minio /s3 /oci \
    && chmod 0775 /home/kr
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /build/constraints.txt /opt/kr/constraints.txt
COPY docker/verify_image.py /opt/kr/verify_image.py
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    HOME=/home/kr \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg
# Provenance, set last so that a new commit leaves the layers above cached. scripts/build-images passes the commit
# (KR_COMMIT, full hash), whether the build inputs differed from it (KR_DIRTY=1) and the digest-pinned base
# (BASE_IMAGE); kr.run.tracking.code_version() reads KR_COMMIT/KR_DIRTY, as there is no git checkout in the image.
ARG BASE_IMAGE
ARG KR_VERSION=unknown
ARG KR_COMMIT=unknown
ARG KR_DIRTY=0
LABEL org.opencontainers.image.title="kr" \
      org.opencontainers.image.description="Knowledge Recycling pipeline components (CPU)" \
      org.opencontainers.image.version="${KR_VERSION}" \
      org.opencontainers.image.revision="${KR_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
ENV KR_COMMIT="${KR_COMMIT}" \
    KR_DIRTY="${KR_DIRTY}"
USER 10001:0
WORKDIR /home/kr
RUN python /opt/kr/verify_image.py --root kr --constraints /opt/kr/constraints.txt --torch "${TORCH_VERSION}" --cpu --pip-check
CMD ["kr", "--help"]

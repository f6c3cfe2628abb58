# The kr component image for CPU-only nodes (dev clusters, CI): the same project and pins as the GPU image, with
# the CPU build of torch. scripts/build-images tags it <registry>/kr:<tag>-cpu.
# Base: Python 3.11 (the version the tests use), Debian slim, pinned to an exact patch release here;
# scripts/build-images resolves that tag to its digest and builds from
#   BASE_IMAGE=python:3.11.14-slim-trixie@sha256:<digest>
# (recorded in its images lock and in the image's org.opencontainers.image.base.name label; --cpu-base names another).
# Air-gapped sites: any Debian-based image with python3 and python3-venv serves as BASE_IMAGE (scripts/build-base
# makes one from a Debian mirror), and a filled docker/wheelhouse makes the build install without any network
# (see the RUN below; scripts/build-images --wheelhouse fills it and builds with --network none).
# TORCH_BUILD=cuda makes the GPU variant from this same file: torch==TORCH_VERSION is then installed from the
# wheelhouse or index (the PyPI Linux wheel, a CUDA build, with its nvidia-* wheels; not in the locks, so not
# hash-checked) instead of requirements/torch-cpu.lock's +cpu wheel.
# Build context: the repository root (see .dockerignore).
ARG BASE_IMAGE=python:3.11.14-slim-trixie

FROM ${BASE_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_BUILD=cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
# docker/wheelhouse holds only its README in a checkout. With wheels in it (scripts/build-images --wheelhouse: every
# requirement of the images, the build backend included, made on the host with pip wheel) every pip call below
# installs from it alone (PIP_NO_INDEX, PIP_FIND_LINKS): the build needs no network. Without wheels pip uses the
# indexes. The wheelhouse stays in this stage: the final image gets only the venv.
COPY docker/wheelhouse ./wheelhouse
COPY requirements/torch-cpu.lock requirements/build.lock requirements/kr.lock ./requirements/
# The dependencies first, so that a change to the project's code reinstalls only kr, exactly as locked
# (`--require-hashes --no-deps`: every file is checked against its sha256 in the lock, nothing is resolved here):
# the CPU torch wheel (requirements/torch-cpu.lock, from the PyTorch CPU index or the wheelhouse), the build backend
# (requirements/build.lock: what builds kfp-server-api, PyPI has no wheel of it, and kr, with --no-build-isolation),
# then kr's dependencies and medmnist (requirements/kr.lock: medmnist without its torchvision requirement).
RUN if [ -n "$(find wheelhouse -maxdepth 1 -name '*.whl' -print -quit)" ]; then \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=/build/wheelhouse; echo "pip: the wheelhouse only, no index"; fi \
    && python3 -m venv /opt/venv \
    && if [ "${TORCH_BUILD}" = cpu ]; then \
        /opt/venv/bin/pip install --require-hashes --no-deps --index-url https://download.pytorch.org/whl/cpu \
            --requirement requirements/torch-cpu.lock; \
    else /opt/venv/bin/pip install "torch==${TORCH_VERSION}"; fi \
    && /opt/venv/bin/pip install --require-hashes --no-deps --requirement requirements/build.lock \
    && /opt/venv/bin/pip install --require-hashes --no-deps --no-build-isolation --requirement requirements/kr.lock
COPY pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
# Then kr, built as a wheel from this build context with the locked setuptools (--no-build-isolation: nothing
# unlocked is downloaded) and installed without dependencies (all of them are in place already).
RUN /opt/venv/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /build/wheels . \
    && /opt/venv/bin/pip install --no-deps /build/wheels/kr-*.whl

FROM ${BASE_IMAGE}
ARG TORCH_VERSION=2.13.0
ARG TORCH_BUILD=cpu
# Non-root user 10001 in group 0; /gcs, /minio, /s3 and /oci are where the KFP v2 launcher puts artifacts.
RUN useradd --no-log-init -l --uid 10001 --gid 0 --home-dir /home/kr --create-home --shell /usr/sbin/nologin kr \
    && install -d -o 10001 -g 0 -m 0775 /gcs /minio /s3 /oci \
    && chmod 0775 /home/kr
# Everything but the venv and the provenance first, the venv as late as possible: on a storage driver that copies
# each layer in full (vfs) every step after the venv copies it again, and a changed commit rebuilds only from ARG on.
COPY constraints.txt /opt/kr/constraints.txt
COPY docker/verify_image.py /opt/kr/verify_image.py
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    HOME=/home/kr \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg
USER 10001:0
WORKDIR /home/kr
CMD ["kr", "--help"]
# Provenance, used last so that a new commit leaves the layers above cached (an ARG whose value changes misses the
# cache where it is used, in LABEL, ENV and RUN below, not where it is declared). scripts/build-images passes the
# commit (KR_COMMIT, full hash), whether the build inputs differed from it (KR_DIRTY=1) and the digest-pinned base
# (BASE_IMAGE); kr.run.tracking.code_version() reads KR_COMMIT/KR_DIRTY, as there is no git checkout in the image.
ARG BASE_IMAGE
ARG KR_VERSION=unknown
ARG KR_COMMIT=unknown
ARG KR_DIRTY=0
COPY --from=builder /opt/venv /opt/venv
LABEL org.opencontainers.image.title="kr" \
      org.opencontainers.image.description="Knowledge Recycling pipeline components (torch ${TORCH_BUILD})" \
      org.opencontainers.image.version="${KR_VERSION}" \
      org.opencontainers.image.revision="${KR_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
ENV KR_COMMIT="${KR_COMMIT}" \
    KR_DIRTY="${KR_DIRTY}"
RUN python /opt/kr/verify_image.py --root kr --constraints /opt/kr/constraints.txt --torch "${TORCH_VERSION}" \
        "--${TORCH_BUILD}" --pip-check --freeze --pin medmnist==3.0.2 --no-deps medmnist

# The kr component image for GPU nodes: every step of the Kubeflow pipeline runs in it
# (`scripts/build-images` builds it as <registry>/kr:<tag> and compiles the pipeline against that reference).
#
# Base: the official PyTorch CUDA runtime image for the torch version constraints.txt pins (2.13.0, whose PyPI
# build targets CUDA 13.0: GPU nodes need an NVIDIA driver >= 580). It is pinned by tag here; scripts/build-images
# resolves that tag to its digest and builds from
#   BASE_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime@sha256:<digest>
# (recorded in its images lock and in the image's org.opencontainers.image.base.name label; --gpu-base names another).
# Air-gapped sites: load the CUDA base into the local engine (docker load) and fill docker/wheelhouse
# (scripts/build-images --wheelhouse): the builder stage then installs without any network. Or build the GPU image
# from docker/cpu.Dockerfile with TORCH_BUILD=cuda and a CUDA torch wheel in the wheelhouse (docs/deploy.md).
# Build context: the repository root (see .dockerignore).
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime

FROM ${BASE_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
# With wheels in docker/wheelhouse pip installs from it alone, without an index (see docker/cpu.Dockerfile).
COPY docker/wheelhouse ./wheelhouse
COPY requirements/build.lock requirements/kr.lock ./requirements/
COPY pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
# kr's dependencies exactly as locked (`--require-hashes --no-deps`: every file checked against its sha256, nothing
# resolved here). requirements/kr.lock holds no torch (the CPU wheel is in requirements/torch-cpu.lock, which this
# image does not use): the venv sees the base image's CUDA build through --system-site-packages and keeps it. The
# build backend (requirements/build.lock) comes first: kfp-server-api (PyPI has no wheel of it) and kr are built with
# it (--no-build-isolation); kr is installed from its wheel without dependencies, so no source tree reaches the final
# stage. medmnist is in the lock, without its torchvision requirement.
RUN if [ -n "$(find wheelhouse -maxdepth 1 -name '*.whl' -print -quit)" ]; then \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=/build/wheelhouse; echo "pip: the wheelhouse only, no index"; fi \
    && python -m venv --system-site-packages /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps --requirement requirements/build.lock \
    && /opt/venv/bin/pip install --require-hashes --no-deps --no-build-isolation --requirement requirements/kr.lock \
    && /opt/venv/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /build/wheels . \
    && /opt/venv/bin/pip install --no-deps /build/wheels/kr-*.whl

FROM ${BASE_IMAGE}
ARG TORCH_VERSION=2.13.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The base image installs gcc for Triton's JIT (torch.compile); kr does not compile kernels, so no compiler stays.
# Non-root user 10001 in group 0 (so clusters that assign an arbitrary UID in group 0 work too). The KFP v2 launcher
# maps artifact URIs to /gcs, /minio, /s3 and /oci: those folders must exist and be writable for a non-root step.
RUN dpkg-query -W -f '${Package}\n' | { grep -E '^(gcc|g\+\+|cpp|clang)(-[0-9.]+)?$' || true; } \
        | xargs --no-run-if-empty apt-get purge -y --auto-remove \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --no-log-init -l --uid 10001 --gid 0 --home-dir /home/kr --create-home --shell /usr/sbin/nologin kr \
    && install -d -o 10001 -g 0 -m 0775 /gcs /minio /s3 /oci \
    && chmod 0775 /home/kr
COPY --from=builder /opt/venv /opt/venv
COPY constraints.txt /opt/kr/constraints.txt
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
      org.opencontainers.image.description="Knowledge Recycling pipeline components (CUDA)" \
      org.opencontainers.image.version="${KR_VERSION}" \
      org.opencontainers.image.revision="${KR_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
ENV KR_COMMIT="${KR_COMMIT}" \
    KR_DIRTY="${KR_DIRTY}"
USER 10001:0
WORKDIR /home/kr
RUN python /opt/kr/verify_image.py --root kr --constraints /opt/kr/constraints.txt --torch "${TORCH_VERSION}" --cuda
CMD ["kr", "--help"]

# SideFormer: one image for GPU clusters (the default, CUDA build of torch) and for CPU CI.
#
#   docker build -t sideformer:cuda .                                 # public base image, PyPI
#   docker build --build-arg TORCH_VARIANT=cpu -t sideformer:cpu .    # CPU build of torch
#   image/build-offline.sh                                            # no registry, no PyPI (see image/)
#
# The entrypoint is `sideformer`: `docker run IMAGE train --data /data --output /output ...`.
# Nothing secret or large is baked in: datasets, outputs, HF caches and credentials come from volumes and
# the environment at run time.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- builder: a virtualenv with every dependency, and the sideformer wheel -------------------------------
FROM ${BASE_IMAGE} AS builder
# cuda: PyPI's default torch build (bundles its CUDA libraries); cpu: PyTorch's CPU-only index.
ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
# A folder of wheels in the build context; when it holds any, nothing is fetched from an index.
ARG WHEELHOUSE=image/wheelhouse
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore

RUN python3 -m venv /opt/venv
COPY ${WHEELHOUSE}/ /wheels/
COPY image/pip.sh image/requirements.py image/check_torch.py /build/image/

# torch first, in its own layer: the largest and least often changed. The CUDA image adds torchvision (the
# build matching torch: pip resolves it) for data.decode=device's nvJPEG decoder.
RUN case "${TORCH_VARIANT}" in \
        cpu) export TORCH_INDEX=https://download.pytorch.org/whl/cpu ;; \
        cuda) set -- torchvision ;; \
        *) echo "TORCH_VARIANT=${TORCH_VARIANT}: expected cuda or cpu" >&2; exit 2 ;; \
    esac \
    && /build/image/pip.sh install "torch==${TORCH_VERSION}" "$@" \
    && /opt/venv/bin/python /build/image/check_torch.py "${TORCH_VARIANT}"

# Then the other dependencies, read from pyproject.toml; code edits below do not invalidate this layer.
COPY pyproject.toml /build/
RUN /opt/venv/bin/python /build/image/requirements.py /build/pyproject.toml > /build/requirements.txt \
    && /build/image/pip.sh install -r /build/requirements.txt

COPY README.md /build/
COPY sideformer/ /build/sideformer/
RUN /build/image/pip.sh wheel --no-deps --wheel-dir /dist /build

# -- runtime ----------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# tini as PID 1 reaps orphaned processes and forwards SIGTERM (Kubernetes has no --init). The offline
# base already has it; a public slim base gets it from Debian (its version follows the base image's release).
# hadolint ignore=DL3008
RUN if ! command -v tini >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin sideformer

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /dist/ /tmp/dist/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /tmp/dist/*.whl && rm -rf /tmp/dist
COPY image/entrypoint.sh /usr/local/bin/sideformer-entrypoint

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/sideformer
USER 1000:1000
WORKDIR /home/sideformer
ENTRYPOINT ["tini", "--", "sideformer-entrypoint"]
CMD ["--help"]

# Last, so that a new revision does not invalidate the cached layers above.
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sideformer" \
      org.opencontainers.image.description="SegFormer trainer for walking-environment segmentation, with Optuna search" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

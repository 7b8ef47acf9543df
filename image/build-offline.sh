#!/usr/bin/env bash
# Build the CPU image where containers reach no network and no image registry is available:
#   1. a Debian bookworm base image (Python 3.11) made with debootstrap and `docker import`;
#   2. a wheelhouse of every dependency, built on the host (torch's CPU build, the package's dependencies,
#      setuptools to build the package), so that `pip install --no-index` inside the build finds all;
#   3. `docker build` with both.
# Each step is skipped when its result is already there, so running it again only rebuilds what changed.
#
# Usage: image/build-offline.sh [IMAGE_TAG]            (default sideformer:cpu)
# Environment: BASE_TAG (sideformer-base:bookworm), DEBIAN_MIRROR, TORCH_VERSION (2.13.0), PYTHON (python3),
# TORCH_PIP_ARGS: where pip finds the CPU torch wheel, e.g. "--extra-index-url https://download.pytorch.org/whl/cpu"
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-sideformer:cpu}
base_tag=${BASE_TAG:-sideformer-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
torch_version=${TORCH_VERSION:-2.13.0}
python=${PYTHON:-python3}
wheelhouse=image/wheelhouse
read -ra torch_pip_args <<<"${TORCH_PIP_ARGS:-}"

die() {
    echo "build-offline: $*" >&2
    exit 1
}
step() { echo "build-offline: $*"; }

command -v docker >/dev/null || die "docker is not installed (Debian: apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable: start dockerd, or check DOCKER_HOST"

# Wheels are built for the host's Python; the base image's Python must be the same minor version.
host_python=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
[[ $host_python == 3.11 ]] || die "$python is Python $host_python; bookworm's is 3.11 (set PYTHON=python3.11)"

# 1. Base image.
if docker image inspect "$base_tag" >/dev/null 2>&1; then
    step "base image $base_tag exists"
else
    command -v debootstrap >/dev/null || die "debootstrap is not installed (Debian: apt-get install debootstrap)"
    [[ $(id -u) -eq 0 ]] || die "debootstrap needs root to build the base image: run 'sudo $0'"
    rootfs=$(mktemp -d /tmp/sideformer-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    step "debootstrap bookworm into $rootfs (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tini \
        bookworm "$rootfs" "$mirror" >/tmp/sideformer-debootstrap.log 2>&1 ||
        die "debootstrap failed; see /tmp/sideformer-debootstrap.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$base_tag" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    step "imported $base_tag"
fi

# 2. Wheelhouse: what is there already is reused (--find-links), so a re-run fetches nothing new.
step "wheelhouse in $wheelhouse"
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
"$python" image/requirements.py pyproject.toml >"$requirements"
"$python" -m pip wheel --quiet --wheel-dir "$wheelhouse" --find-links "$wheelhouse" \
    "${torch_pip_args[@]}" "torch==$torch_version" "setuptools>=68" wheel -r "$requirements"
compgen -G "$wheelhouse/torch-*+cpu-*.whl" >/dev/null ||
    die "the wheelhouse holds no CPU build of torch $torch_version; put its wheel on pip's --find-links path"

# 3. The image.
step "docker build -t $tag"
docker build \
    --build-arg BASE_IMAGE="$base_tag" \
    --build-arg TORCH_VARIANT=cpu \
    --build-arg TORCH_VERSION="$torch_version" \
    --build-arg WHEELHOUSE="$wheelhouse" \
    --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --tag "$tag" .
step "built $tag ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.2f GB", $1 / 1e9}'))"

#!/usr/bin/env bash
# Make a Docker engine available for the container tests: install Debian's docker.io (and debootstrap,
# which image/build-offline.sh uses for the air-gapped base image) when missing, and start dockerd when
# nothing answers on its socket. Idempotent: `make test` calls it every time.
set -euo pipefail

die() {
    echo "start-docker: $*" >&2
    exit 1
}

missing=()
if ! docker info >/dev/null 2>&1 && ! command -v dockerd >/dev/null; then
    missing+=(docker.io)
fi
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "${missing[*]} not installed, and installing needs root: run 'sudo $0'"
    command -v apt-get >/dev/null || die "${missing[*]} not installed and apt-get is missing: install them yourself"
    echo "start-docker: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" iptables
fi

if docker info >/dev/null 2>&1; then
    echo "start-docker: engine running ($(docker version --format '{{.Server.Version}}'))"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || die "the Docker engine is not running, and starting dockerd needs root: run 'sudo $0'"
log=/tmp/sideformer-dockerd.log
echo "start-docker: starting dockerd (log: $log)"
nohup dockerd >"$log" 2>&1 &
for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && {
        echo "start-docker: engine running ($(docker version --format '{{.Server.Version}}'))"
        exit 0
    }
    sleep 1
done
die "dockerd did not answer within 60 s; last lines of $log:
$(tail -n 20 "$log")"

#!/bin/sh
# The image's entrypoint (under tini, which reaps orphans and forwards signals as PID 1): the arguments
# are a `sideformer` command line, exactly what the Kubernetes manifests pass as `args`.
set -eu
# With a read-only root filesystem the home folder is not writable; caches (HF, W&B, matplotlib)
# then go under /tmp, which the pod mounts as an emptyDir.
if [ ! -w "${HOME:-/nonexistent}" ]; then
    export HOME=/tmp
fi
# Files on shared volumes stay writable by the other pods of the job (same fsGroup).
umask 0002
exec sideformer "$@"

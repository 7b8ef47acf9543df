#!/usr/bin/env bash
# Install the PostgreSQL server binaries the test suite needs (tests/pg/server.py runs its own throwaway
# cluster from them; Debian's default cluster and service are never used). Idempotent: a machine that
# already has them is left untouched, so `make test` can call this every time.
set -euo pipefail

die() {
    echo "install-postgres: $*" >&2
    exit 1
}

# Same search order as tests/pg/server.py: Debian's versioned directories (highest version), then PATH.
find_pg_ctl() {
    local found=(/usr/lib/postgresql/*/bin/pg_ctl)
    if [[ -x ${found[0]} ]]; then
        printf '%s\n' "${found[@]}" | sort -V | tail -n 1
    else
        command -v pg_ctl
    fi
}

if pg_ctl=$(find_pg_ctl); then
    echo "install-postgres: already installed: $("$pg_ctl" --version) ($pg_ctl)"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed and installing it needs root: run 'sudo $0'"
command -v apt-get >/dev/null ||
    die "PostgreSQL is not installed and apt-get is missing: install the PostgreSQL server (initdb, pg_ctl) yourself"

# Keep the package from starting its own service: invoke-rc.d asks policy-rc.d, and 101 means "not allowed".
# An existing policy (container images ship one) is left as it is.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
start=$SECONDS
apt-get update -q
apt-get install -y -q --no-install-recommends postgresql

pg_ctl=$(find_pg_ctl) || die "apt-get installed postgresql but no pg_ctl was found under /usr/lib/postgresql/*/bin"
echo "install-postgres: installed $("$pg_ctl" --version) ($pg_ctl) in $((SECONDS - start)) s"

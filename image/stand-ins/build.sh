#!/usr/bin/env bash
# Offline stand-ins for the third-party images the chart and the Training Operator run, tagged with the
# exact references they render, so that the Docker rehearsal (tests/e2e/test_rehearsal.py) runs every
# rendered container unchanged where no registry can be reached. Built like image/build-offline.sh builds
# ours: Debian packages (debootstrap, or .debs fetched on the host), then `docker import`. Containers
# reach no network, so everything goes in here.
#
# Usage: image/stand-ins/build.sh POSTGRES_REF INIT_REF     e.g. postgres:17.6 alpine:3.10
# Each image carries the content hash of this folder (label org.sideformer.stand-in); an image whose
# label matches is reused, so a test run builds them once and later runs build nothing.
#
# POSTGRES_REF: Debian bookworm minbase + postgresql-15. Keeps the official image's contract that the
#   chart relies on: user `postgres` uid/gid 999 and no account for uid 1000; /usr/local/bin/
#   docker-entrypoint.sh (postgres-entrypoint.sh here) initialising PGDATA from POSTGRES_USER/PASSWORD/DB
#   and running /docker-entrypoint-initdb.d/* once; pg_isready and psql on PATH (Debian's pg_wrapper in
#   /usr/bin, the server's bin folder appended, as the official image does); PGDATA=/var/lib/postgresql/
#   data; listen_addresses '*' in postgresql.conf.sample; /var/run/postgresql 3777 postgres; STOPSIGNAL
#   SIGINT; runs as uid 999 on a read-only root with the chart's volumes. Known differences: PostgreSQL 15
#   (Debian bookworm), not the tag's version; the entrypoint is a shorter script with the same behaviour
#   for these variables (no *_FILE variables but POSTGRES_PASSWORD_FILE, POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD, initdb WAL
#   dir, *.sql.gz or nss_wrapper); setpriv instead of gosu when started as root; no locales beyond C.UTF-8.
# INIT_REF: the Training Operator's init-container image (alpine:3.10 in v1.9): Debian's busybox-static
#   1.35 with its applets (sh, nslookup, seq, sleep) linked into /bin, an /etc/passwd with root and
#   nobody only. Known differences: busybox 1.35 (glibc, static) instead of alpine 3.10's busybox 1.30
#   (musl); no apk, no /etc/alpine-release.
set -euo pipefail
cd "$(dirname "$0")"

postgres_ref=${1:?usage: build.sh POSTGRES_REF INIT_REF}
init_ref=${2:?usage: build.sh POSTGRES_REF INIT_REF}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
hash=$(cat build.sh postgres-entrypoint.sh | sha256sum | cut -c1-16)
label=org.sideformer.stand-in

die() {
    echo "stand-ins: $*" >&2
    exit 1
}
step() { echo "stand-ins: $*"; }
current() { [ "$(docker image inspect --format "{{ index .Config.Labels \"$label\" }}" "$1" 2>/dev/null)" = "$hash" ]; }

[[ $(id -u) -eq 0 ]] || die "debootstrap and chroot need root: run 'sudo $0 $*'"
work=$(mktemp -d /tmp/sideformer-stand-ins.XXXXXX)
trap 'rm -rf "$work"' EXIT

if current "$postgres_ref"; then
    step "$postgres_ref is current ($hash)"
else
    command -v debootstrap >/dev/null || die "debootstrap is not installed (Debian: apt-get install debootstrap)"
    root=$work/postgres
    step "debootstrap bookworm + postgresql-15 for $postgres_ref (about two minutes)"
    debootstrap --variant=minbase --include=postgresql-15,postgresql-client-15 \
        bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        die "debootstrap failed: $(tail -n 20 "$work/debootstrap.log")"
    # Debian's package made a system user with some uid and a cluster; the official image has uid/gid 999
    # and an empty PGDATA that its entrypoint initialises.
    old_uid=$(chroot "$root" id -u postgres)
    old_gid=$(chroot "$root" id -g postgres)
    chroot "$root" groupmod --gid 999 postgres
    chroot "$root" usermod --uid 999 --gid 999 --home /var/lib/postgresql postgres
    find "$root" -xdev -uid "$old_uid" -exec chown --no-dereference 999 '{}' +
    find "$root" -xdev -gid "$old_gid" -exec chgrp --no-dereference 999 '{}' +
    if chroot "$root" getent passwd 1000 >/dev/null; then die "the rootfs has an account for uid 1000"; fi
    rm -rf "$root"/var/lib/postgresql/15 "$root"/etc/postgresql/15 \
        "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    # As in the official image: the server listens on every address (initdb copies this sample).
    sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$root"/usr/share/postgresql/15/postgresql.conf.sample
    grep -q "^listen_addresses = '\*'" "$root"/usr/share/postgresql/15/postgresql.conf.sample ||
        die "listen_addresses not set in postgresql.conf.sample"
    install -d -o 999 -g 999 -m 1777 "$root"/var/lib/postgresql/data
    install -d -o 999 -g 999 -m 3777 "$root"/var/run/postgresql
    install -d -m 0755 "$root"/docker-entrypoint-initdb.d
    install -m 0755 postgres-entrypoint.sh "$root"/usr/local/bin/docker-entrypoint.sh
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/15/bin' \
        --change 'ENV PG_MAJOR=15' \
        --change 'ENV PGDATA=/var/lib/postgresql/data' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
        --change 'CMD ["postgres"]' \
        --change 'EXPOSE 5432' \
        - "$postgres_ref-rootfs" >/dev/null
    # `docker import` cannot set the stop signal: a one-line build on the imported image (nothing pulled).
    printf 'FROM %s\nSTOPSIGNAL SIGINT\nLABEL %s=%s\n' "$postgres_ref-rootfs" "$label" "$hash" |
        docker build --quiet --tag "$postgres_ref" - >/dev/null
    docker image rm "$postgres_ref-rootfs" >/dev/null
    step "imported $postgres_ref"
fi

if current "$init_ref"; then
    step "$init_ref is current ($hash)"
else
    root=$work/init
    step "busybox-static for $init_ref"
    (cd "$work" && apt-get download busybox-static >"$work/download.log" 2>&1) ||
        die "apt-get download busybox-static failed: $(cat "$work/download.log")"
    dpkg-deb -x "$work"/busybox-static_*.deb "$root"
    mkdir -p "$root"/bin "$root"/sbin "$root"/usr/bin "$root"/usr/sbin "$root"/etc "$root"/tmp "$root"/root
    chmod 1777 "$root"/tmp
    chroot "$root" /bin/busybox --install -s
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' >"$root"/etc/passwd
    printf 'root:x:0:\nnobody:x:65534:\n' >"$root"/etc/group
    rm -rf "$root"/usr/share/doc
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/sh"]' \
        --change "LABEL $label=$hash" \
        - "$init_ref" >/dev/null
    step "imported $init_ref"
fi

#!/usr/bin/env bash
# docker-entrypoint.sh of the postgres stand-in (image/stand-ins/build.sh): the part of the official
# image's entrypoint contract the chart relies on, written for this project (not a copy):
#   - the server is started as `postgres` (CMD); a first argument starting with "-" is a server option;
#   - as root it re-executes itself as the postgres user (uid 999); otherwise it runs as it is;
#   - an empty PGDATA is initialised with initdb from POSTGRES_USER (default postgres), POSTGRES_PASSWORD
#     or the file POSTGRES_PASSWORD_FILE names (one is required) and POSTGRES_DB (default POSTGRES_USER); host connections need scram-sha-256 passwords,
#     local socket connections are trusted (initdb's default, as in the official image);
#   - a socket-only temporary server runs /docker-entrypoint-initdb.d/*.sh (run when executable, else
#     sourced) and *.sql once, on that first start only; then the real server is exec'd.
set -Eeuo pipefail

if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi
if [ "$1" != 'postgres' ]; then
    exec "$@"
fi

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ -z "${POSTGRES_PASSWORD:-}" ] && [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
fi
: "${POSTGRES_PASSWORD:=}"
export POSTGRES_USER POSTGRES_DB POSTGRES_PASSWORD

mkdir -p "$PGDATA"
chmod 00700 "$PGDATA" || : # fails on a volume owned by another uid; postgres then says why
mkdir -p /var/run/postgresql || :
chmod 03775 /var/run/postgresql || :

if [ "$(id -u)" = 0 ]; then
    find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

sql() { PGHOST='' PGHOSTADDR='' psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"; }

if [ -s "$PGDATA/PG_VERSION" ]; then
    echo "PostgreSQL database directory appears to contain a database; skipping initialization"
else
    if [ -z "$POSTGRES_PASSWORD" ]; then
        echo "Error: database is uninitialized and superuser password is not specified (POSTGRES_PASSWORD)" >&2
        exit 1
    fi
    ls /docker-entrypoint-initdb.d/ >/dev/null
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD")
    printf '\nhost all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    export PGPASSWORD="$POSTGRES_PASSWORD"
    PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start
    if [ -z "$(sql --dbname postgres --set db="$POSTGRES_DB" --tuples-only \
        <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")" ]; then
        sql --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
        *.sh)
            if [ -x "$f" ]; then
                echo "$0: running $f"
                "$f"
            else
                echo "$0: sourcing $f"
                # shellcheck disable=SC1090
                . "$f"
            fi
            ;;
        *.sql)
            echo "$0: running $f"
            sql --dbname "$POSTGRES_DB" -f "$f"
            ;;
        *) echo "$0: ignoring $f" ;;
        esac
    done
    PGUSER="${PGUSER:-postgres}" pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGPASSWORD
    echo "PostgreSQL init process complete; ready for start up."
fi
exec "$@"

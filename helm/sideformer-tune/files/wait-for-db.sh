#!/bin/sh
# Wait until PostgreSQL at $DB_HOST:$DB_PORT accepts connections, for at most $DB_WAIT_SECONDS seconds.
# With OPTUNA_STORAGE set (the dashboard), also wait until the study tables exist: a read-only role
# cannot create them, the study creator does. Runs as an init container of the postgres image.
set -eu
# libpq's PG* variables from a SQLAlchemy URL (postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DB), so the
# password reaches psql in PGPASSWORD, never on its command line (the process list). Percent-escapes in
# the URL are not decoded: use passwords without reserved characters (generated ones are alphanumeric).
pg_env_from_url() {
    rest=${1#*://}
    creds=${rest%%@*}
    rest=${rest#*@}
    hostport=${rest%%/*}
    db=${rest#*/}
    PGUSER=${creds%%:*} PGPASSWORD=${creds#*:} PGHOST=${hostport%%:*} PGDATABASE=${db%%\?*}
    case $hostport in *:*) PGPORT=${hostport##*:} ;; *) PGPORT=5432 ;; esac
    export PGUSER PGPASSWORD PGHOST PGDATABASE PGPORT
}
deadline=$(($(date +%s) + ${DB_WAIT_SECONDS:-600}))
give_up() {
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "gave up after ${DB_WAIT_SECONDS:-600}s: $1" >&2
        exit 1
    fi
}
until pg_isready --host="$DB_HOST" --port="$DB_PORT" --timeout=5 >/dev/null 2>&1; do
    give_up "PostgreSQL at $DB_HOST:$DB_PORT does not accept connections"
    echo "waiting for PostgreSQL at $DB_HOST:$DB_PORT"
    sleep 2
done
echo "PostgreSQL at $DB_HOST:$DB_PORT accepts connections"
if [ -n "${OPTUNA_STORAGE:-}" ]; then
    pg_env_from_url "$OPTUNA_STORAGE"
    until psql --no-psqlrc -tA -c "SELECT 1 FROM studies LIMIT 1" >/dev/null 2>&1; do
        give_up "no study tables (has the study creator run?)"
        echo "waiting for the study tables"
        sleep 3
    done
    echo "the study tables exist"
fi

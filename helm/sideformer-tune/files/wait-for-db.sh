#!/bin/sh
# Wait until PostgreSQL at $DB_HOST:$DB_PORT accepts connections, for at most $DB_WAIT_SECONDS seconds.
# With OPTUNA_STORAGE set (the dashboard), also wait until the study tables exist: a read-only role
# cannot create them, the study creator does. Runs as an init container of the postgres image.
set -eu
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
    url=$(printf '%s' "$OPTUNA_STORAGE" | sed 's|^postgresql+psycopg2://|postgresql://|')
    until psql "$url" --no-psqlrc -tA -c "SELECT 1 FROM studies LIMIT 1" >/dev/null 2>&1; do
        give_up "no study tables (has the study creator run?)"
        echo "waiting for the study tables"
        sleep 3
    done
    echo "the study tables exist"
fi

#!/bin/sh
# Wait until PostgreSQL at $DB_HOST:$DB_PORT accepts connections, for at most $DB_WAIT_SECONDS seconds.
# Runs as an init container (postgres image: pg_isready) before anything opens the study.
set -eu
deadline=$(($(date +%s) + ${DB_WAIT_SECONDS:-600}))
until pg_isready --host="$DB_HOST" --port="$DB_PORT" --timeout=5 >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "PostgreSQL at $DB_HOST:$DB_PORT did not accept connections within ${DB_WAIT_SECONDS:-600}s" >&2
        exit 1
    fi
    echo "waiting for PostgreSQL at $DB_HOST:$DB_PORT"
    sleep 2
done
echo "PostgreSQL at $DB_HOST:$DB_PORT accepts connections"

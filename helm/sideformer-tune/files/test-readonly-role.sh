#!/bin/sh
# `helm test`: the dashboard's role reaches the database and sees the study, but cannot change it.
# OPTUNA_STORAGE is the dashboard's (SQLAlchemy) URL; libpq wants it without the +psycopg2 driver part.
set -eu
url=$(printf '%s' "$OPTUNA_STORAGE" | sed 's|^postgresql+psycopg2://|postgresql://|')
pg_isready --dbname="$url" --timeout=30
found=$(psql "$url" --no-psqlrc -v ON_ERROR_STOP=1 -v study="$STUDY" -tA \
    -c "SELECT count(*) FROM studies WHERE study_name = :'study'")
if [ "$found" != "1" ]; then
    echo "FAIL: study '$STUDY' not found through the dashboard's role" >&2
    exit 1
fi
echo "ok: study '$STUDY' is visible through the dashboard's role"
# Inside a transaction that is rolled back either way, so the check can never delete anything.
if psql "$url" --no-psqlrc -v ON_ERROR_STOP=1 -v study="$STUDY" \
    -c "BEGIN" -c "DELETE FROM studies WHERE study_name = :'study'" -c "ROLLBACK" >/dev/null 2>&1; then
    echo "FAIL: the dashboard's role may delete studies; it must be read-only" >&2
    exit 1
fi
echo "ok: the dashboard's role cannot delete the study"

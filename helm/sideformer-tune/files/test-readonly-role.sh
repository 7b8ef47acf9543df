#!/bin/sh
# `helm test`: the dashboard's role reaches the database and sees the study, but cannot change it.
# OPTUNA_STORAGE is the dashboard's (SQLAlchemy) URL.
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
pg_env_from_url "$OPTUNA_STORAGE"
pg_isready --timeout=30
found=$(psql --no-psqlrc -v ON_ERROR_STOP=1 -v study="$STUDY" -tA <<'SQL'
SELECT count(*) FROM studies WHERE study_name = :'study';
SQL
)
if [ "$found" != "1" ]; then
    echo "FAIL: study '$STUDY' not found through the dashboard's role" >&2
    exit 1
fi
echo "ok: study '$STUDY' is visible through the dashboard's role"
# Privileges, not a trial DELETE: nothing here may ever change the study.
writable=$(psql --no-psqlrc -v ON_ERROR_STOP=1 -tA <<'SQL'
SELECT count(*) FROM information_schema.tables
WHERE table_schema = 'public'
  AND has_table_privilege(current_user, format('%I.%I', table_schema, table_name), 'INSERT,UPDATE,DELETE,TRUNCATE')
UNION ALL
SELECT count(*) FROM (SELECT 1 WHERE has_schema_privilege(current_user, 'public', 'CREATE')) AS create_privilege;
SQL
)
if [ "$(printf '%s' "$writable" | tr -d '[:space:]')" != "00" ]; then
    echo "FAIL: the dashboard's role may write (tables, schema): $(printf '%s' "$writable" | tr '\n' ' ');" \
        "it must be read-only" >&2
    exit 1
fi
echo "ok: the dashboard's role cannot change the study"

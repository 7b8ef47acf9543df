#!/usr/bin/env bash
# Runs once, when the official postgres image initialises an empty data directory
# (/docker-entrypoint-initdb.d). Creates the role the tune workers use (owner of the study database) and
# a SELECT-only role for optuna-dashboard, which has no authentication of its own: with this role an
# anonymous visitor can look at the study but not delete it. For an external server, run it once with
# POSTGRES_USER (a superuser), POSTGRES_DB and the SIDEFORMER_* variables set, and PGHOST/PGPASSWORD.
# Each password comes from SIDEFORMER_*_PASSWORD or, in the chart, from the file SIDEFORMER_*_PASSWORD_FILE
# names (the mounted Secret); psql reads them from its environment (\getenv), never from its command line.
set -euo pipefail
from_file() { # NAME: NAME's value, else the content of the file NAME_FILE names
    local file_var="$1_FILE"
    if [ -z "${!1:-}" ] && [ -n "${!file_var:-}" ]; then
        export "$1=$(cat "${!file_var}")"
    fi
    : "${!1:?$1 or $file_var must be set}"
}
from_file SIDEFORMER_DB_PASSWORD
from_file SIDEFORMER_DASHBOARD_PASSWORD
psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=db="$POSTGRES_DB" --set=tuner="$SIDEFORMER_DB_USER" --set=viewer="$SIDEFORMER_DASHBOARD_USER" <<'SQL'
\getenv tuner_password SIDEFORMER_DB_PASSWORD
\getenv viewer_password SIDEFORMER_DASHBOARD_PASSWORD
CREATE ROLE :"tuner" LOGIN PASSWORD :'tuner_password';
ALTER DATABASE :"db" OWNER TO :"tuner";
ALTER SCHEMA public OWNER TO :"tuner";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
CREATE ROLE :"viewer" LOGIN PASSWORD :'viewer_password';
GRANT CONNECT ON DATABASE :"db" TO :"viewer";
GRANT USAGE ON SCHEMA public TO :"viewer";
-- Optuna creates its tables later, as the tuner role: grant read access to those tables in advance.
ALTER DEFAULT PRIVILEGES FOR ROLE :"tuner" IN SCHEMA public GRANT SELECT ON TABLES TO :"viewer";
ALTER DEFAULT PRIVILEGES FOR ROLE :"tuner" IN SCHEMA public GRANT SELECT ON SEQUENCES TO :"viewer";
SQL

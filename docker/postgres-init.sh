#!/usr/bin/env bash
# Runs once, when the postgres volume is new (the image's /docker-entrypoint-initdb.d): the
# reconciliation's read-only login. `martstream migrate` (as the owner, globalmart) grants it
# SELECT on the operational tables it reads, as in the local stack (scripts/stack).
set -euo pipefail
psql -v ON_ERROR_STOP=1 -v pw="$MARTSTREAM_PG_READER_PASSWORD" --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE martstream_reader LOGIN PASSWORD :'pw';
SQL

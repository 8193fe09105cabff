#!/bin/bash
# Destination database initialisation (runs once, on an empty data directory, as the superuser, before
# 10-destination-init.sql): the sink's role walbridge_sink, with the password from WALBRIDGE_SINK_PASSWORD
# (deploy/.env). It gets only what the PostgreSQL sink needs: CONNECT, CREATE on the database (the sink creates
# its `walbridge` schema with the offsets and truncate-barrier tables), and on the replicated tables
# SELECT, INSERT, UPDATE, DELETE and TRUNCATE (granted by 10-destination-init.sql).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v sink_password="$WALBRIDGE_SINK_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE walbridge_sink WITH LOGIN PASSWORD %L', :'sink_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'walbridge_sink')
\gexec
SELECT format('GRANT CONNECT, CREATE ON DATABASE %I TO walbridge_sink', current_database())
\gexec
SQL

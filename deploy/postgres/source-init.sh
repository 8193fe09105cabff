#!/bin/bash
# Source database initialisation (runs once, on an empty data directory, as the superuser):
# the capture role walbridge, with the password from WALBRIDGE_CAPTURE_PASSWORD (deploy/.env).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v capture_password="$WALBRIDGE_CAPTURE_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE walbridge WITH LOGIN REPLICATION PASSWORD %L', :'capture_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'walbridge')
\gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO walbridge', current_database())
\gexec
SQL

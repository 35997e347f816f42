#!/usr/bin/env bash
# First start of the compose PostgreSQL (empty data volume) only: the official image runs the
# files in /docker-entrypoint-initdb.d once, as the `postgres` OS user, against a temporary
# server that listens on its Unix socket only.
#
# Creates the application role `gatehouse` and the database `gatehouse` it owns. The role is
# deliberately ordinary: the core API refuses to start outside development if its role is a
# superuser or has BYPASSRLS (row-level security is FORCEd on tasks and must apply to it).
# `core-api migrate` runs as this same role, so it owns the tables it creates.
#
# The password comes from the file named by GATEHOUSE_DB_PASSWORD_FILE (a compose secret).
# Changing it later is not done here (this script never runs again): use ALTER ROLE.
set -eo pipefail

pw_file=${GATEHOUSE_DB_PASSWORD_FILE:-/run/secrets/db_password}
if [[ ! -r $pw_file ]]; then
  echo "10-app-role.sh: cannot read $pw_file (GATEHOUSE_DB_PASSWORD_FILE)" >&2
  exit 1
fi
pw=$(tr -d '\r\n' <"$pw_file")
if [[ -z $pw ]]; then
  echo "10-app-role.sh: $pw_file is empty" >&2
  exit 1
fi

# The password travels as a psql variable (:'pw' quotes it as a literal), never through the
# shell into the SQL text; the quoted here-document keeps the shell out of it too.
psql -v ON_ERROR_STOP=1 -X -q --username "${POSTGRES_USER:-postgres}" --dbname postgres \
  --set=pw="$pw" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE gatehouse WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION
  PASSWORD :'pw';
CREATE DATABASE gatehouse OWNER gatehouse;
REVOKE ALL ON DATABASE gatehouse FROM PUBLIC;
SQL

echo "10-app-role.sh: role gatehouse (NOSUPERUSER NOBYPASSRLS) owns database gatehouse"

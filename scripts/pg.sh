#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for tests and local development.
#
# Source it and call the functions:
#   source scripts/pg.sh
#   pg_start DIR [PORT]   # init (once) + start + role/db; exports the env below
#   pg_stop DIR
#   pg_bin_dir; free_port
# or run it:
#   scripts/pg.sh start DIR [PORT]   # prints the export lines on stdout
#   scripts/pg.sh stop DIR
#   scripts/pg.sh env DIR            # eval "$(scripts/pg.sh env DIR)"
#
# pg_start writes DIR/env with: PGPORT, DATABASE_URL, TEST_DATABASE_URL,
# TEST_PG_ADMIN_URL, TEST_PG_CA_FILE.
#
# Layout: DIR/data (cluster), DIR/tls/{ca.pem,ca.key,server.pem,server.key},
# DIR/postgres.log, DIR/env; the unix socket lives in DIR itself so it never
# collides with a system cluster.
#
# Functions return non-zero on failure instead of relying on `set -e`, so they
# behave the same whether or not the sourcing shell uses errexit. Shell options
# are only set when the file is executed, never imposed on a sourcing shell.

PG_SUPERUSER_PASSWORD=postgres
PG_APP_ROLE=gatehouse
PG_APP_PASSWORD=gatehouse
PG_APP_DB=gatehouse

_pg_say() { printf 'pg: %s\n' "$*" >&2; }

# PostgreSQL refuses to run as root, so root drives the cluster as `postgres`.
_pg_cluster_user() {
  if [[ $(id -u) -eq 0 ]]; then
    if ! id -u postgres >/dev/null 2>&1; then
      _pg_say "running as root but there is no 'postgres' OS user (run scripts/install-deps.sh)"
      return 1
    fi
    echo postgres
  else
    id -un
  fi
}

# Run a command as the cluster's OS user. `cd /` because root's cwd (e.g.
# /root) is usually not readable by postgres, which makes some tools complain.
_pg_as_user() {
  if [[ $(id -u) -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# Print the PostgreSQL server bin dir (the one holding initdb/pg_ctl).
pg_bin_dir() {
  local d
  if [[ -n ${PG_BIN:-} && -x ${PG_BIN}/initdb ]]; then
    echo "$PG_BIN"
    return 0
  fi
  # Debian's pg_config may come from libpq-dev of a different major version,
  # so only trust it if initdb is really there.
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir 2>/dev/null) || d=
    if [[ -n $d && -x $d/initdb ]]; then
      echo "$d"
      return 0
    fi
  fi
  d=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null |
    sort -V | tail -n 1)
  if [[ -n $d ]]; then
    dirname "$d"
    return 0
  fi
  if command -v initdb >/dev/null 2>&1; then
    d=$(command -v initdb)
    dirname "$d"
    return 0
  fi
  _pg_say "cannot find the PostgreSQL server binaries (initdb); run scripts/install-deps.sh"
  return 1
}

# True if nothing accepts connections on 127.0.0.1:PORT.
_pg_port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Print a free TCP port on 127.0.0.1.
free_port() {
  local p
  p=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' 2>/dev/null) || p=
  if [[ $p =~ ^[0-9]+$ ]]; then
    echo "$p"
    return 0
  fi
  for ((p = 54320; p < 55320; p++)); do
    if _pg_port_free "$p"; then
      echo "$p"
      return 0
    fi
  done
  _pg_say "no free port found in 54320-55319"
  return 1
}

# postgres (as a non-root user) must be able to reach DIR; chmod o+x any
# ancestor that blocks it (mktemp -d and home dirs are often 0700).
_pg_make_traversable() {
  local dir=$1 d path='' parts
  _pg_as_user test -x "$dir" && return 0
  # Walk from / downwards so only the directories that actually block get changed.
  IFS=/ read -ra parts <<<"${dir#/}"
  for d in "${parts[@]}"; do
    path+=/$d
    if ! _pg_as_user test -x "$path"; then
      _pg_say "chmod o+x $path so the postgres user can reach the cluster"
      chmod o+x "$path" || return 1
    fi
  done
  _pg_as_user test -x "$dir"
}

# Throwaway CA + server leaf certificate (CN=localhost, SAN localhost and
# 127.0.0.1, CA:FALSE) so clients can test sslmode=verify-full.
_pg_make_tls() {
  local tls=$1 serial
  mkdir -p "$tls" && chmod 0755 "$tls" || return 1
  # Our own config so the system openssl.cnf cannot add or clash with extensions.
  cat >"$tls/openssl.cnf" <<'EOF' || return 1
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
  serial=$(openssl rand -hex 16) || return 1
  (
    umask 077
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tls/ca.key" &&
      openssl req -config "$tls/openssl.cnf" -new -x509 -key "$tls/ca.key" -sha256 -days 3650 \
        -subj "/CN=Gatehouse throwaway test CA" -extensions ca_ext -out "$tls/ca.pem" &&
      openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tls/server.key" &&
      openssl req -config "$tls/openssl.cnf" -new -key "$tls/server.key" -subj "/CN=localhost" \
        -out "$tls/server.csr" &&
      openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
        -set_serial "0x$serial" -days 825 -sha256 \
        -extfile "$tls/openssl.cnf" -extensions leaf_ext -out "$tls/server.pem"
  ) >/dev/null 2>"$tls/openssl.err" || {
    cat "$tls/openssl.err" >&2
    _pg_say "generating TLS certificates failed"
    return 1
  }
  rm -f "$tls/server.csr" "$tls/openssl.err"
  # Public parts readable by everyone (clients need ca.pem); keys stay 0600.
  chmod 0644 "$tls/ca.pem" "$tls/server.pem" && chmod 0600 "$tls/ca.key" "$tls/server.key"
}

# Port of a running cluster, from line 4 of postmaster.pid.
_pg_running_port() {
  sed -n 4p "$1/data/postmaster.pid" 2>/dev/null
}

_pg_is_running() {
  local bin=$1 dir=$2
  [[ -f $dir/data/PG_VERSION ]] || return 1
  _pg_as_user "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

# Idempotent role/database setup. The app role is deliberately not a
# superuser and has no BYPASSRLS: row-level security is under test.
_pg_bootstrap_sql() {
  local bin=$1 dir=$2 port=$3
  "$bin/psql" -X -q -v ON_ERROR_STOP=1 \
    -d "host=$dir port=$port user=postgres dbname=postgres sslmode=disable" >/dev/null <<EOF
SET password_encryption = 'scram-sha-256';
SELECT 'CREATE ROLE $PG_APP_ROLE'
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_APP_ROLE') \gexec
ALTER ROLE $PG_APP_ROLE WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOREPLICATION CREATEDB
  PASSWORD '$PG_APP_PASSWORD';
SELECT 'CREATE DATABASE $PG_APP_DB OWNER $PG_APP_ROLE'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_APP_DB') \gexec
EOF
}

_pg_write_env() {
  local dir=$1 port=$2
  PGPORT=$port
  DATABASE_URL="postgres://$PG_APP_ROLE:$PG_APP_PASSWORD@127.0.0.1:$port/$PG_APP_DB"
  TEST_DATABASE_URL=$DATABASE_URL
  TEST_PG_ADMIN_URL="postgres://postgres:$PG_SUPERUSER_PASSWORD@127.0.0.1:$port/postgres"
  TEST_PG_CA_FILE="$dir/tls/ca.pem"
  export PGPORT DATABASE_URL TEST_DATABASE_URL TEST_PG_ADMIN_URL TEST_PG_CA_FILE
  {
    printf 'export PGPORT=%q\n' "$PGPORT"
    printf 'export DATABASE_URL=%q\n' "$DATABASE_URL"
    printf 'export TEST_DATABASE_URL=%q\n' "$TEST_DATABASE_URL"
    printf 'export TEST_PG_ADMIN_URL=%q\n' "$TEST_PG_ADMIN_URL"
    printf 'export TEST_PG_CA_FILE=%q\n' "$TEST_PG_CA_FILE"
  } >"$dir/env"
}

# pg_start DIR [PORT]: create (once) and start a cluster in DIR, make sure the
# gatehouse role and database exist, write DIR/env and export its variables.
# Reuses a cluster that is already running. Sets PG_CLUSTER_DIR (absolute DIR).
pg_start() {
  local dir=${1:?usage: pg_start DIR [PORT]} want_port=${2:-}
  local bin user port opts attempt pwfile fresh=0

  # pg_ctl -o goes through /bin/sh and unix_socket_directories is a list, so
  # keep paths simple rather than attempt quoting for both.
  if [[ $dir =~ [[:space:]\'\"\\,] ]]; then
    _pg_say "cluster dir must not contain spaces, quotes, backslashes or commas: $dir"
    return 1
  fi
  bin=$(pg_bin_dir) || return 1
  user=$(_pg_cluster_user) || return 1

  mkdir -p "$dir" && chmod 0755 "$dir" || return 1
  dir=$(cd "$dir" && pwd -P) || return 1
  # The socket path DIR/.s.PGSQL.NNNNN must fit in sun_path (107 bytes).
  if ((${#dir} > 90)); then
    _pg_say "cluster dir path too long for a unix socket (${#dir} > 90 chars): $dir"
    return 1
  fi
  PG_CLUSTER_DIR=$dir

  if [[ $(id -u) -eq 0 ]]; then
    _pg_make_traversable "$dir" || return 1
  fi

  if _pg_is_running "$bin" "$dir"; then
    port=$(_pg_running_port "$dir")
    if [[ -n $want_port && $want_port != "$port" ]]; then
      _pg_say "cluster in $dir already running on port $port (ignoring requested $want_port)"
    else
      _pg_say "reusing running cluster in $dir on 127.0.0.1:$port"
    fi
  else
    if [[ ! -f $dir/data/PG_VERSION ]]; then
      fresh=1
      if [[ -e $dir/data ]]; then
        _pg_say "$dir/data exists but is not a cluster; remove it first"
        return 1
      fi
      if [[ $(id -u) -eq 0 ]]; then
        chown -R "$user:" "$dir" || return 1
      fi
      pwfile="$dir/.pwfile"
      (umask 077 && printf '%s\n' "$PG_SUPERUSER_PASSWORD" >"$pwfile") || return 1
      [[ $(id -u) -ne 0 ]] || chown "$user:" "$pwfile" || return 1
      _pg_say "initdb $dir/data"
      if ! _pg_as_user "$bin/initdb" -D "$dir/data" -N -A scram-sha-256 --pwfile="$pwfile" \
        -U postgres -E UTF8 --locale=C >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        rm -f "$pwfile"
        _pg_say "initdb failed"
        return 1
      fi
      rm -f "$pwfile" "$dir/initdb.log"
      # Local socket is trusted (bootstrap, psql); TCP needs a password, TLS optional.
      cat >"$dir/data/pg_hba.conf" <<'EOF' || return 1
# TYPE   DATABASE USER ADDRESS       METHOD
local    all      all                trust
host     all      all  127.0.0.1/32  scram-sha-256
hostssl  all      all  127.0.0.1/32  scram-sha-256
EOF
      chmod 0600 "$dir/data/pg_hba.conf" || return 1
    fi

    if [[ ! -f $dir/tls/server.pem || ! -f $dir/tls/server.key || ! -f $dir/tls/ca.pem ]]; then
      _pg_say "generating throwaway CA and server certificate in $dir/tls"
      _pg_make_tls "$dir/tls" || return 1
    fi
    if [[ $(id -u) -eq 0 ]]; then
      # postgres insists its key is owned by the server user and 0600.
      chown -R "$user:" "$dir" || return 1
    fi

    # Keep a persistent cluster (make dev) on the same port across restarts
    # when that port is still free, so DATABASE_URL stays stable.
    if [[ -z $want_port && $fresh -eq 0 && -f $dir/port ]]; then
      port=$(<"$dir/port")
      if ! [[ $port =~ ^[0-9]+$ ]] || ! _pg_port_free "$port"; then
        port=
      fi
    else
      port=$want_port
    fi

    for attempt in 1 2 3; do
      [[ -n $port ]] || port=$(free_port) || return 1
      opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir"
      opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
      opts+=" -c max_connections=300 -c shared_buffers=128MB"
      opts+=" -c ssl=on -c ssl_cert_file=$dir/tls/server.pem -c ssl_key_file=$dir/tls/server.key"
      if _pg_as_user "$bin/pg_ctl" -D "$dir/data" -w -t 30 -l "$dir/postgres.log" \
        start -o "$opts" >/dev/null; then
        break
      fi
      # Another process may grab an auto-picked port between free_port and
      # bind; only that case is worth a retry.
      if [[ -z $want_port && $attempt -lt 3 ]] &&
        tail -n 20 "$dir/postgres.log" 2>/dev/null | grep -q 'could not bind\|could not create any TCP/IP sockets'; then
        _pg_say "port $port was taken, retrying with another one"
        port=
        continue
      fi
      _pg_say "failed to start PostgreSQL; see $dir/postgres.log"
      return 1
    done
    printf '%s\n' "$port" >"$dir/port"
    _pg_say "started PostgreSQL in $dir on 127.0.0.1:$port"
  fi

  if ! _pg_bootstrap_sql "$bin" "$dir" "$port"; then
    _pg_say "creating role/database $PG_APP_ROLE failed"
    return 1
  fi
  _pg_write_env "$dir" "$port" || return 1
}

# pg_stop DIR: fast shutdown if running; never fails.
pg_stop() {
  local dir=${1:?usage: pg_stop DIR} bin
  [[ -f $dir/data/PG_VERSION ]] || return 0
  dir=$(cd "$dir" && pwd -P) || return 0
  bin=$(pg_bin_dir 2>/dev/null) || return 0
  if _pg_is_running "$bin" "$dir"; then
    if _pg_as_user "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1; then
      _pg_say "stopped PostgreSQL in $dir"
    else
      _pg_say "stopping PostgreSQL in $dir failed (ignored)"
    fi
  fi
  return 0
}

_pg_main() {
  local cmd=${1:-}
  case $cmd in
    start)
      [[ $# -ge 2 && $# -le 3 ]] || {
        echo "usage: $0 start DIR [PORT]" >&2
        return 2
      }
      pg_start "$2" "${3:-}" || return 1
      cat "$PG_CLUSTER_DIR/env"
      ;;
    stop)
      [[ $# -eq 2 ]] || {
        echo "usage: $0 stop DIR" >&2
        return 2
      }
      pg_stop "$2"
      ;;
    env)
      [[ $# -eq 2 ]] || {
        echo "usage: $0 env DIR" >&2
        return 2
      }
      if [[ ! -f $2/env ]]; then
        _pg_say "no $2/env; run: $0 start $2"
        return 1
      fi
      cat "$2/env"
      ;;
    *)
      echo "usage: $0 start DIR [PORT] | stop DIR | env DIR" >&2
      return 2
      ;;
  esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  _pg_main "$@"
fi

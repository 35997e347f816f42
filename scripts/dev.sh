#!/usr/bin/env bash
# What `make dev` runs: a persistent PostgreSQL under .dev/pg, migrations, and
# the core API on 127.0.0.1:8000 in the foreground. Ctrl-C stops all of it.
# DEV_FRESH=1 wipes .dev/pg first.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

API=http://127.0.0.1:8000
EDGE=https://localhost:8443
target_dir=${CARGO_TARGET_DIR:-$repo/target}
core_bin="$target_dir/debug/core-api"
pg_dir="$repo/.dev/pg"
core_pid=
gw_pid=

"$repo/scripts/install-deps.sh"
# shellcheck source=scripts/pg.sh
source "$repo/scripts/pg.sh"

# shellcheck disable=SC2317 # only reached via the traps below
stop_core() {
  [[ -n $core_pid ]] || return 0
  if kill -TERM "$core_pid" 2>/dev/null; then
    # Give graceful shutdown up to 10 s before insisting.
    for _ in $(seq 100); do
      kill -0 "$core_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$core_pid" 2>/dev/null || true
  fi
  wait "$core_pid" 2>/dev/null || true
  core_pid=
}
# shellcheck disable=SC2317 # only reached via the traps below
cleanup() {
  # make forwards a second SIGTERM/SIGINT; do not let it cut the cleanup short.
  trap '' INT TERM
  if [[ -n $gw_pid ]]; then
    kill -TERM "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
  fi
  stop_core
  pg_stop "$pg_dir"
}
trap cleanup EXIT
trap 'echo; echo "dev: stopping"; exit 130' INT
trap 'exit 143' TERM

if [[ ${DEV_FRESH:-} == 1 ]]; then
  echo "dev: DEV_FRESH=1, wiping $pg_dir"
  pg_stop "$pg_dir"
  rm -rf "$pg_dir"
fi
mkdir -p "$repo/.dev"

if ! pg_start "$pg_dir"; then
  if [[ -f $pg_dir/postgres.log ]]; then
    echo "--- last 50 lines of $pg_dir/postgres.log ---" >&2
    tail -n 50 "$pg_dir/postgres.log" >&2
  fi
  exit 1
fi

# A leftover `make dev` (or anything else) on :8000 would answer our
# readiness probe and make this run look healthy when it is not.
for port in 8000 8443 8080 9090; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "dev: something is already listening on 127.0.0.1:$port; stop it first" >&2
    exit 1
  fi
done

echo "dev: cargo build -p core-api -p gateway"
cargo build -p core-api -p gateway

export APP_ENV=development DATABASE_URL
export RUST_LOG=${RUST_LOG:-info}

echo "dev: core-api migrate"
"$core_bin" migrate

echo "dev: core-api serve"
"$core_bin" serve &
core_pid=$!

ready=0
for _ in $(seq 60); do
  if ! kill -0 "$core_pid" 2>/dev/null; then
    echo "dev: core-api exited during startup" >&2
    exit 1
  fi
  if curl -fsS -o /dev/null "$API/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.5
done
if ((ready == 0)); then
  echo "dev: core-api not ready after 30s ($API/readyz)" >&2
  exit 1
fi

echo "dev: gateway run (https://localhost:8443, http :8080, admin 127.0.0.1:9090)"
"$target_dir/debug/gateway" run &
gw_pid=$!
ready=0
for _ in $(seq 60); do
  if ! kill -0 "$gw_pid" 2>/dev/null; then
    echo "dev: gateway exited during startup" >&2
    exit 1
  fi
  if curl -fsS -o /dev/null http://127.0.0.1:9090/readyz 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.5
done
if ((ready == 0)); then
  echo "dev: gateway not ready after 30s (http://127.0.0.1:9090/readyz)" >&2
  exit 1
fi
# The development CA the gateway generated (certs/dev/ca.pem); trust it instead of -k.
CA="$repo/certs/dev/ca.pem"

# Exercise the happy path once so the printed commands are known to work.
creds='{"email":"ada@example.com","password":"correct horse battery"}'
resp=$(mktemp)
code=$(curl -sS --cacert "$CA" -o "$resp" -w '%{http_code}' -X POST "$EDGE/auth/register" \
  -H 'content-type: application/json' -d "$creds") || code=000
case $code in
  2??) echo "dev: registered ada@example.com" ;;
  409) echo "dev: ada@example.com already registered" ;;
  *) echo "dev: register returned HTTP $code: $(cat "$resp")" >&2 ;;
esac
token=
code=$(curl -sS --cacert "$CA" -o "$resp" -w '%{http_code}' -X POST "$EDGE/auth/login" \
  -H 'content-type: application/json' -d "$creds") || code=000
if [[ $code == 2?? ]]; then
  token=$(python3 -c 'import json, sys
d = json.load(sys.stdin)
t = d.get("access_token") or d.get("token") or (d.get("data") or {}).get("access_token")
print(t or "")' <"$resp" 2>/dev/null) || token=
fi
if [[ -z $token ]]; then
  echo "dev: login returned HTTP $code without an access token: $(cat "$resp")" >&2
fi
rm -f "$resp"

cat <<EOF

Gatehouse is up: gateway on $EDGE -> core API on $API (PostgreSQL on 127.0.0.1:$PGPORT, data in .dev/pg)

  # register (HTTP 409 if the user already exists)
  curl --cacert certs/dev/ca.pem -X POST $EDGE/auth/register -H 'content-type: application/json' -d '$creds'

  # log in; the JSON response carries access_token
  curl --cacert certs/dev/ca.pem -X POST $EDGE/auth/login -H 'content-type: application/json' -d '$creds'

  # who am I (through TLS, JWT check and rate limits at the edge)
  curl --cacert certs/dev/ca.pem -H "authorization: Bearer ${token:-\$TOKEN}" $EDGE/api/me

  # gateway metrics, database
  curl http://127.0.0.1:9090/metrics
  psql '$DATABASE_URL'

Ctrl-C stops the gateway, the core API and PostgreSQL (data stays in .dev/pg; DEV_FRESH=1 make dev wipes it).
EOF

# Foreground until Ctrl-C or until either service dies on its own.
status=0
wait -n "$core_pid" "$gw_pid" || status=$?
echo "dev: a service exited with status $status; stopping the rest" >&2
exit "$status"

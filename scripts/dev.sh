#!/usr/bin/env bash
# What `make dev` runs: a persistent PostgreSQL under .dev/pg, migrations, the core API on
# 127.0.0.1:8000, the gateway on https://localhost:8443 and the front end (web/, `next dev`
# with hot reload) on https://localhost:3000. Ctrl-C stops all of it.
# DEV_FRESH=1 wipes .dev/pg first. DEV_ACME=1 (`make dev-acme`): the gateway gets its
# certificate from a local ACME CA (Pebble, .dev/pebble) instead of generating one (the front
# end is not started then: it serves with the development certificate). DEV_WEB=0 leaves the
# front end out.
#
# The front end is on https, with the gateway's development certificate: https://localhost:3000
# and https://localhost:8443 are one site, so the browser keeps the API's HttpOnly refresh
# cookie (SameSite=Strict). From http://localhost:3000 Chromium treats the API as another site
# and stores no cookie from it at all (docs/frontend.md).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

API=http://127.0.0.1:8000
EDGE=https://localhost:8443
WEB=https://localhost:3000
target_dir=${CARGO_TARGET_DIR:-$repo/target}
core_bin="$target_dir/debug/core-api"
pg_dir="$repo/.dev/pg"
core_pid=
gw_pid=
web_pid=

"$repo/scripts/install-deps.sh"
# shellcheck source=scripts/pg.sh
source "$repo/scripts/pg.sh"
# shellcheck source=scripts/pebble.sh
source "$repo/scripts/pebble.sh"
acme=${DEV_ACME:-0}

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
  if [[ -n $web_pid ]]; then
    # npx -> next -> its workers: the whole process group.
    kill -TERM -- "-$web_pid" 2>/dev/null || kill -TERM "$web_pid" 2>/dev/null || true
    wait "$web_pid" 2>/dev/null || true
  fi
  if [[ -n $gw_pid ]]; then
    kill -TERM "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
  fi
  stop_core
  [[ $acme == 1 ]] && pebble_stop "$repo/.dev/pebble"
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
web=${DEV_WEB:-1}
[[ $acme == 1 ]] && web=0
ports=(8000 8443 8080 9090)
[[ $acme == 1 ]] && ports+=(14000 15000 8055)
[[ $web == 1 ]] && ports+=(3000)
for port in "${ports[@]}"; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "dev: something is already listening on 127.0.0.1:$port; stop it first" >&2
    exit 1
  fi
done

echo "dev: cargo build -p core-api -p gateway"
cargo build -p core-api -p gateway

export APP_ENV=development DATABASE_URL
export RUST_LOG=${RUST_LOG:-info}

# await_ready WHAT PID URL [CURL_ARGS...]: until URL answers 2xx (30 s), or PID exits.
await_ready() {
  local what=$1 pid=$2 url=$3 _
  for _ in $(seq 60); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "dev: $what: the process exited during startup" >&2
      exit 1
    fi
    curl -fsS -o /dev/null "${@:4}" "$url" 2>/dev/null && return 0
    sleep 0.5
  done
  echo "dev: $what not ready after 30 s ($url)" >&2
  exit 1
}

echo "dev: core-api migrate"
"$core_bin" migrate

echo "dev: core-api serve"
"$core_bin" serve &
core_pid=$!

await_ready core-api "$core_pid" "$API/readyz"

# The development CA the gateway generates (certs/dev/ca.pem), or with DEV_ACME=1 the root of
# the local ACME CA: trust it instead of -k.
CA=certs/dev/ca.pem
if [[ $acme == 1 ]]; then
  # Pebble starts empty (new root, no accounts): certificates of an earlier run are useless.
  rm -rf "$repo/.dev/acme"
  pebble_start "$repo/.dev/pebble" 8080 8443
  export TLS_SOURCE=acme
  CA=.dev/pebble/root.pem
fi

echo "dev: gateway run (https://localhost:8443, http :8080, admin 127.0.0.1:9090)"
"$target_dir/debug/gateway" run &
gw_pid=$!
await_ready gateway "$gw_pid" http://127.0.0.1:9090/readyz
if [[ $acme == 1 ]]; then
  echo "dev: waiting for the ACME certificate for localhost"
  await_ready "the ACME certificate (the gateway log above says why)" "$gw_pid" "$EDGE/.well-known/jwks.json" --cacert "$CA"
  echo "dev: certificate issued by the local ACME CA (see .dev/pebble/pebble.log)"
fi

if [[ $web == 1 ]]; then
  stamp=web/node_modules/.gatehouse-lock
  if [[ ! -f $stamp ]] || ! cmp -s web/package-lock.json "$stamp"; then
    echo "dev: npm ci (web/)"
    (cd web && npm ci --no-audit --no-fund --loglevel=error) && cp web/package-lock.json "$stamp"
  fi
  echo "dev: front end (next dev) on $WEB, log in .dev/web.log"
  # Its own process group (set -m), so that cleanup stops npx, next and next's workers.
  set -m
  (cd web && NEXT_TELEMETRY_DISABLED=1 NEXT_PUBLIC_API_ORIGIN=$EDGE exec npx next dev \
    --hostname localhost --port 3000 --experimental-https \
    --experimental-https-key ../certs/dev/gateway.key --experimental-https-cert ../certs/dev/gateway.pem) \
    >.dev/web.log 2>&1 &
  web_pid=$!
  set +m
  # The first request compiles the page: allow a minute.
  for _ in $(seq 120); do
    curl -fsS -o /dev/null --cacert "$CA" "$WEB/login" 2>/dev/null && break
    kill -0 "$web_pid" 2>/dev/null || { tail -n 20 .dev/web.log >&2; echo "dev: the front end exited during startup" >&2; exit 1; }
    sleep 0.5
  done
  curl -fsS -o /dev/null --cacert "$CA" "$WEB/login" || { tail -n 20 .dev/web.log >&2; echo "dev: the front end is not answering on $WEB" >&2; exit 1; }
fi

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
  curl --cacert $CA -X POST $EDGE/auth/register -H 'content-type: application/json' -d '$creds'

  # log in; the JSON response carries access_token
  curl --cacert $CA -X POST $EDGE/auth/login -H 'content-type: application/json' -d '$creds'

  # who am I (through TLS, JWT check and rate limits at the edge)
  curl --cacert $CA -H "authorization: Bearer ${token:-\$TOKEN}" $EDGE/api/me

  # gateway metrics, database
  curl http://127.0.0.1:9090/metrics
  psql '$DATABASE_URL'

Ctrl-C stops the front end, the gateway, the core API and PostgreSQL (data stays in .dev/pg; DEV_FRESH=1 make dev wipes it).
EOF
if [[ $web == 1 ]]; then
  cat <<EOF

Front end: $WEB  (sign in as ada@example.com / correct horse battery)
  Your browser must trust $CA (import it as an authority), or accept the certificate
  warning once on $EDGE and once on $WEB. The page calls the gateway cross-origin.
EOF
fi

# Foreground until Ctrl-C or until either service dies on its own.
status=0
wait -n "$core_pid" "$gw_pid" ${web_pid:+"$web_pid"} || status=$?
echo "dev: a service exited with status $status; stopping the rest" >&2
exit "$status"

#!/usr/bin/env bash
# The browser tests (web/tests/, Playwright driving Debian's chromium, headless) against the
# real stack: a fresh database on the cluster of scripts/test.sh, the core API and the gateway
# (the debug binaries `cargo test` built) on free loopback ports, and the front end's static
# export served by web/scripts/serve.mjs with the headers of web/vercel.json. scripts/test.sh
# runs it after `cargo test`; everything it starts is stopped and the database dropped on exit.
#
#   scripts/web-test.sh [playwright args, e.g. tests/journey.spec.ts]
#       (needs DATABASE_URL and TEST_PG_ADMIN_URL from scripts/pg.sh)
#
# What the stack looks like to the browser:
#   https://localhost:<web>    the front end (the gateway's CORS origin; same site as the API,
#                              so the HttpOnly refresh cookie works)
#   https://127.0.0.1:<web>    the same pages on an origin the gateway does not allow
#   https://localhost:<memory> the front end built with NEXT_PUBLIC_REFRESH_TRANSPORT=memory
#                              (allowed too): the refresh token in page memory, no cookie
#   https://localhost:<https>  the gateway (shipped config/gateway.toml plus the overlay below)
# Both speak TLS with the gateway's self-signed development certificate; Chromium trusts
# exactly that key (--ignore-certificate-errors-spki-list), Node (Playwright's API requests)
# its CA (NODE_EXTRA_CA_CERTS).
#
# Test settings, each for a reason: access tokens live 60 s (the API's minimum) with no leeway,
# so a test can watch one expire; bcrypt cost 4 (documented test setting, refused outside
# development); three failed sign-ins a minute per account (the 429 test); generous gateway
# rate limits, because every test comes from 127.0.0.1.
#
# Knobs: CORE_API_BIN, GATEWAY_BIN (default target/debug/…), CHROMIUM (default
# /usr/bin/chromium), WEB_TEST_WORKERS (default 2), WEB_TEST_TIMEOUT (seconds for the whole
# Playwright run, default 600), WEB_TEST_KEEP=1 keeps the work dir.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
web=$repo/web
api_bin=${CORE_API_BIN:-$repo/target/debug/core-api}
gw_bin=${GATEWAY_BIN:-$repo/target/debug/gateway}
chromium=${CHROMIUM:-/usr/bin/chromium}

say() { printf 'web-test: %s\n' "$*"; }
die() { printf 'web-test: %s\n' "$*" >&2; exit 1; }

[[ -x $api_bin ]] || die "$api_bin not found: run cargo build -p core-api (or set CORE_API_BIN)"
[[ -x $gw_bin ]] || die "$gw_bin not found: run cargo build -p gateway (or set GATEWAY_BIN)"
[[ -x $chromium ]] || die "$chromium not found: apt-get install chromium (scripts/install-deps.sh does)"
: "${DATABASE_URL:?DATABASE_URL is not set (source the env of scripts/pg.sh)}"
: "${TEST_PG_ADMIN_URL:?TEST_PG_ADMIN_URL is not set (source the env of scripts/pg.sh)}"

# ---- node_modules from the committed lock file, again only when the lock file changed.
stamp=$web/node_modules/.gatehouse-lock
if [[ ! -f $stamp ]] || ! cmp -s "$web/package-lock.json" "$stamp"; then
  say "npm ci"
  (cd "$web" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
  cp "$web/package-lock.json" "$stamp"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-web.XXXXXX")
db="web_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
pids=()
cleanup() {
  local rc=$?
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql -X -q "$TEST_PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  if [[ $rc -ne 0 || ${WEB_TEST_KEEP:-} == 1 ]]; then
    say "work dir kept: $work (api.log, gateway.log, web-*.log, build-*.log)"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Free loopback ports: bound and released at once; a race with another process is possible
# but each server below fails loudly if its port was taken.
read -r api_port gw_https gw_http gw_admin web_port memory_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
web_origin=https://localhost:$web_port
other_origin=https://127.0.0.1:$web_port
memory_origin=https://localhost:$memory_port
api_origin=https://localhost:$gw_https

# ---- the front end, built for this gateway (the API origin is compiled in), once per
# refresh-token transport; the cookie build is the one left in web/out.
for transport in memory cookie; do
  say "building web/ for $api_origin, refresh token transport: $transport"
  (cd "$web" && NEXT_TELEMETRY_DISABLED=1 NEXT_PUBLIC_API_ORIGIN=$api_origin NEXT_PUBLIC_REFRESH_TRANSPORT=$transport \
    npm run --silent build) >"$work/build-$transport.log" 2>&1 \
    || { tail -n 40 "$work/build-$transport.log" >&2; die "next build failed (full log: $work/build-$transport.log)"; }
  (cd "$web" && node scripts/size.mjs --json "$web/test-results/sizes-$transport.json") \
    || die "the JavaScript of a page is over its budget or inline (above)"
  cp -r "$web/out" "$work/out-$transport"
done

# ---- database and core API.
psql -X -q -v ON_ERROR_STOP=1 "$TEST_PG_ADMIN_URL" -c "CREATE DATABASE $db OWNER gatehouse" >/dev/null
db_url=$(python3 -c 'import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$DATABASE_URL" "$db")
cp "$repo/config/core-api.toml" "$work/core-api.toml"
cat >"$work/core-api.development.toml" <<EOF
[server]
listen = "127.0.0.1:$api_port"
[database]
acquire_timeout_ms = 1000
connect_timeout_ms = 1000
[auth]
issuer = "$api_origin"
access_ttl_seconds = 60
leeway_seconds = 0
bcrypt_cost = 4
insecure_test_bcrypt = true
login_attempts_per_minute = 3
[log]
format = "json"
level = "info"
EOF
"$api_bin" keygen >"$work/key.pem"
export APP_ENV=development JWT_ISSUER=$api_origin
DATABASE_URL=$db_url JWT_SIGNING_KEY_FILE=$work/key.pem \
  "$api_bin" --config "$work/core-api.toml" migrate >"$work/migrate.log" 2>&1 \
  || { cat "$work/migrate.log" >&2; die "core-api migrate failed"; }
DATABASE_URL=$db_url JWT_SIGNING_KEY_FILE=$work/key.pem \
  "$api_bin" --config "$work/core-api.toml" serve >"$work/api.log" 2>&1 &
pids+=($!)

# ---- the gateway: the shipped base configuration, this overlay on top.
cp "$repo/config/gateway.toml" "$work/gateway.toml"
cat >"$work/gateway.development.toml" <<EOF
[listen]
https = "127.0.0.1:$gw_https"
http = "127.0.0.1:$gw_http"
admin = "127.0.0.1:$gw_admin"
[tls]
source = "self-signed"
certificates = []
self_signed_dir = "$work/certs"
[jwt]
issuer = "$api_origin"
jwks_url = "http://127.0.0.1:$api_port/.well-known/jwks.json"
leeway_seconds = 0
[upstreams.core-api]
targets = ["127.0.0.1:$api_port"]
[cors.web]
origins = ["$web_origin", "$memory_origin"]
[cors.session]
origins = ["$web_origin", "$memory_origin"]
[limits.per_ip]
per_second = 500
burst = 1000
[limits.auth]
per_second = 100
burst = 200
[limits.per_subject]
per_second = 200
burst = 400
[log]
format = "json"
level = "info,rustls=error"
EOF
"$gw_bin" run --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
pids+=($!)

# await NAME URL [CURL_ARGS...]: 2xx within 30 s, or the logs say why not.
await() {
  local name=$1 url=$2 _
  for _ in $(seq 300); do
    curl -fsS -o /dev/null "${@:3}" "$url" 2>/dev/null && return 0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { tail -n 20 "$work"/*.log >&2; die "$name: a server exited during startup"; }
    done
    sleep 0.1
  done
  tail -n 20 "$work"/*.log >&2
  die "$name not ready after 30 s ($url)"
}
await core-api "http://127.0.0.1:$api_port/readyz"
await gateway "http://127.0.0.1:$gw_admin/readyz"
await "gateway TLS" "$api_origin/.well-known/jwks.json" --cacert "$work/certs/ca.pem"

# ---- the pages, with the gateway's certificate (it names localhost and 127.0.0.1).
for site in "cookie $web_port" "memory $memory_port"; do
  read -r transport port <<<"$site"
  node "$web/scripts/serve.mjs" --host 127.0.0.1 --port "$port" --root "$work/out-$transport" \
    --cert "$work/certs/gateway.pem" --key "$work/certs/gateway.key" >"$work/web-$transport.log" 2>&1 &
  pids+=($!)
  await "web server ($transport)" "https://localhost:$port/login" --cacert "$work/certs/ca.pem" --resolve "localhost:$port:127.0.0.1"
done

# Chromium trusts the leaf's key, nothing else: base64(SHA-256(SubjectPublicKeyInfo)).
spki=$(openssl x509 -in "$work/certs/gateway.pem" -pubkey -noout | openssl pkey -pubin -outform der \
  | openssl dgst -sha256 -binary | base64)

say "stack up: web $web_origin, gateway $api_origin, core API 127.0.0.1:$api_port, database $db"
export WEB_ORIGIN=$web_origin OTHER_ORIGIN=$other_origin MEMORY_ORIGIN=$memory_origin API_ORIGIN=$api_origin \
  CHROMIUM=$chromium CHROMIUM_SPKI=$spki NODE_EXTRA_CA_CERTS=$work/certs/ca.pem \
  WEB_TEST_DB=$db ACCESS_TTL_SECONDS=60 LOGIN_ATTEMPTS_PER_MINUTE=3
status=0
(cd "$web" && timeout --kill-after=10 "${WEB_TEST_TIMEOUT:-600}" npx playwright test "$@") || status=$?
if [[ $status -ne 0 ]]; then
  [[ $status -eq 124 ]] && say "Playwright did not finish within ${WEB_TEST_TIMEOUT:-600} s"
  say "last lines of the servers' logs:"
  tail -n 15 "$work/api.log" "$work/gateway.log" "$work"/web-*.log >&2 || true
  die "browser tests failed (traces and screenshots: web/test-results/)"
fi
if grep -q 'panicked' "$work/api.log" "$work/gateway.log"; then
  grep 'panicked' "$work/api.log" "$work/gateway.log" | head -n 5 >&2
  die "a server panicked during the browser tests"
fi
say "ok (screenshots of every screen: web/test-results/screens/)"

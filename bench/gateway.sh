#!/usr/bin/env bash
# Gateway benchmark: the gateway side by side with nginx, HAProxy and Caddy (Debian packages) and
# a bare Pingora proxy (gateway/examples/bare_proxy.rs) as reverse proxies in front of one small
# upstream, on loopback, each pinned to the same CPU with one worker. Nothing is built here.
#
#   scripts/pgo-build.sh && bench/gateway.sh
#
# The default binaries are the PGO build the gateway image ships (scripts/pgo-build.sh), the
# bare Pingora proxy built the same way; GATEWAY_BIN / BARE_BIN measure others (a plain
# `cargo build --release -p gateway --bin gateway --example bare_proxy`, say).
#
# Steps:
#   1. a throwaway ECDSA P-256 CA + leaf (the one certificate of every proxy), an Ed25519
#      JWT signing key, its JWKS and an access token (openssl; python3 stdlib);
#   2. the upstream: nginx (bench/upstream/nginx.conf), one worker, a fixed small JSON body for
#      any path, the JWKS at /.well-known/jwks.json, /healthz;
#   3. the proxies, all running at once, each with one worker thread/process pinned to
#      PROXY_CPU: nginx (bench/peers/nginx.conf), HAProxy (bench/peers/haproxy.cfg), Caddy
#      (bench/peers/Caddyfile, GOMAXPROCS=1), the bare Pingora proxy (same Pingora settings as
#      the gateway, no features), the gateway (bench/peers/gateway.toml: "/" plain, "/api/" with
#      JWT + CORS + rate limits) and a second gateway with its access log on (level info, one
#      JSON line per request to a file);
#   4. sanity: every proxy answers 200 with the upstream's body over TLS (h1, h2) and plain
#      HTTP; the gateway's "/api/" answers 200 + CORS headers with the token and 401 with a
#      tampered one; `openssl s_client` shows the TLS version, cipher and group each negotiates;
#   5. closed-loop load from LOAD_CPU, each run after a WARMUP, proxies interleaved per scenario,
#      the whole sequence REPEATS times (the table gives the median of the repeats):
#        plain HTTP/1.1 keep-alive (wrk; the gateway's plain listener with http_mode = "proxy"),
#        HTTP/1.1 keep-alive over TLS (wrk), h2 over TLS
#        (h2load -m H2_STREAMS), TLS HTTP/1.1 with the JWT run's request headers on the plain
#        route (wrk), and the gateway's "/api/" with JWT + CORS + limits (wrk); the gateway's
#        runs for the JWT target go back to back (plain TLS again, the headers, the features),
#        and the target compares the features with the plain run just before them;
#      per run: req/s, p50/p99, the proxy's CPU time (utime+stime of its processes) per request
#      and share of its core, its RSS after the run, upstream connections it opened;
#   6. IDLE_CONNS idle TLS keep-alive connections (one request each, then idle) to each proxy
#      in turn: the proxy's RSS (and PSS) summed over its processes while they are open;
#   7. a markdown table with the target checks on stdout, also saved as
#      bench/results/gateway-<UTC time>.md.
#
# Any non-2xx answer or socket error in any run stops the benchmark (exit 1).
#
# Environment (defaults in brackets):
#   GATEWAY_BIN [target/pgo/bin/gateway]   binary under test (copied, so a rebuild mid-run
#                                          cannot swap it)
#   BARE_BIN [target/pgo/bin/bare_proxy]   the bare Pingora proxy (copied too)
#   DURATION [10]        seconds per measured run     WARMUP [2]  seconds of warm-up before each
#   REPEATS [3]          times the whole load sequence runs (median reported)
#   CONNECTIONS [64]     wrk / h2load connections     H2_STREAMS [10]  h2load streams per conn.
#   IDLE_CONNS [10000]   idle keep-alive connections held open for the memory check (0: skip)
#   PLAIN_HTTP [1]       0: skip the plain-HTTP runs
#   LOAD_CPU [0]  PROXY_CPU [1]  UPSTREAM_CPU [0]   taskset CPU lists
#   BENCH_STRICT [0]     1: exit 2 when a target is missed
#   BENCH_KEEP [0]       1: keep the temp dir (configs, logs, raw wrk/h2load output)
#   BENCH_RESULTS_DIR [bench/results]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
cd "$repo"

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
REPEATS=${REPEATS:-3}
CONNECTIONS=${CONNECTIONS:-64}
H2_STREAMS=${H2_STREAMS:-10}
IDLE_CONNS=${IDLE_CONNS:-10000}
PLAIN_HTTP=${PLAIN_HTTP:-1}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
UPSTREAM_CPU=${UPSTREAM_CPU:-0}
BENCH_STRICT=${BENCH_STRICT:-0}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_RESULTS_DIR=${BENCH_RESULTS_DIR:-$repo/bench/results}
GATEWAY_BIN=${GATEWAY_BIN:-target/pgo/bin/gateway}
BARE_BIN=${BARE_BIN:-target/pgo/bin/bare_proxy}

# Targets (issue 10): the plain proxy >= 0.85x nginx's req/s over HTTP/1.1 (plain and TLS) with
# p99 <= 1.25x nginx's, over h2 >= 0.85x with p99 <= 1.5x; JWT + CORS + limits >= 0.9x the
# gateway's own plain TLS rate; the gateway >= 0.95x the bare Pingora proxy on the same route;
# the access log on costs less than half the rate; RSS with IDLE_CONNS idle connections <=
# nginx's.
TARGET_VS_NGINX=0.85
TARGET_P99_H1=1.25
TARGET_P99_H2=1.5
TARGET_FEATURES=0.9
TARGET_VS_BARE=0.95
TARGET_LOG=0.5

JWT_ISSUER=https://issuer.bench.example
JWT_AUDIENCE=gatehouse-api
JWT_KID=bench-key
CORS_ORIGIN=https://app.example.com
PROXIES=(nginx haproxy caddy bare gateway gateway-log)
# The runs each proxy takes part in. gateway-log is the same binary and configuration as gateway
# with the access log on: compared on the plain route's HTTP/1.1 and h2 runs only.
PLAIN_PROXIES=(nginx haproxy caddy bare gateway)
TLS_PROXIES=(nginx haproxy caddy bare gateway gateway-log)
HEADER_PROXIES=(nginx haproxy gateway)
IDLE_PROXIES=(nginx haproxy caddy bare gateway)

say() { printf 'bench: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

for v in DURATION WARMUP REPEATS CONNECTIONS H2_STREAMS IDLE_CONNS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((DURATION >= 1 && REPEATS >= 1 && CONNECTIONS >= 1 && H2_STREAMS >= 1)) ||
  die "need DURATION, REPEATS, CONNECTIONS and H2_STREAMS >= 1"
for v in LOAD_CPU PROXY_CPU UPSTREAM_CPU; do
  [[ ${!v} =~ ^[0-9,-]+$ ]] || die "$v must be a taskset CPU list like 0 or 2,3 (got '${!v}')"
done

# ---------------------------------------------------------------------------------------------
# Tools: nginx, haproxy, caddy, wrk, h2load (nghttp2-client), openssl, python3, curl. Idempotent.

have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 ]]; }
bin_path() {
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; else echo "/usr/sbin/$1"; fi
}

ensure_tools() {
  local pkgs=()
  have nginx || pkgs+=(nginx)
  have haproxy || pkgs+=(haproxy)
  have caddy || pkgs+=(caddy)
  have wrk || pkgs+=(wrk)
  have h2load || pkgs+=(nghttp2-client)
  have openssl || pkgs+=(openssl)
  have python3 || pkgs+=(python3)
  have curl || pkgs+=(curl)
  have taskset || pkgs+=(util-linux)
  have pgrep || pkgs+=(procps)
  apt_install "${pkgs[@]}"
}

ensure_tools
NGINX=$(bin_path nginx)
HAPROXY=$(bin_path haproxy)
CADDY=$(bin_path caddy)

for b in "$GATEWAY_BIN" "$BARE_BIN"; do
  if [[ ! -f $b ]]; then
    say "no binary at $b"
    say "build them first:  scripts/pgo-build.sh   (the PGO build the gateway image ships)"
    say "(or set GATEWAY_BIN and BARE_BIN, e.g. to a plain cargo build --release's)"
    exit 1
  fi
done
bin_label=$GATEWAY_BIN
case $GATEWAY_BIN in
  */debug/*) build_kind="debug build: the numbers below mean nothing" ;;
  */pgo/*) build_kind="release build with PGO, scripts/pgo-build.sh" ;;
  */release/*) build_kind="release build" ;;
  *) build_kind="build profile unknown" ;;
esac

for cpu in "$LOAD_CPU" "$PROXY_CPU" "$UPSTREAM_CPU"; do
  taskset -c "$cpu" true 2>/dev/null ||
    die "cannot pin to CPU $cpu on this machine ($(nproc) CPUs): set LOAD_CPU, PROXY_CPU, UPSTREAM_CPU"
done

# Idle connections need a descriptor each in the client and in the proxy.
hard_nofile=$(ulimit -Hn)
[[ $hard_nofile == unlimited ]] && hard_nofile=65536
if ((hard_nofile < 65536)) && ulimit -Hn 65536 2>/dev/null; then
  hard_nofile=65536
fi
nofile=$((hard_nofile < 65536 ? hard_nofile : 65536))
ulimit -n "$nofile" || die "cannot raise the open-files limit to $nofile"
if ((IDLE_CONNS + 1024 > nofile)); then
  die "open-files limit $nofile (hard) is too low for IDLE_CONNS=$IDLE_CONNS; raise it or lower IDLE_CONNS"
fi
# Client connections plus upstream connections plus headroom, per proxy.
maxconn=$((IDLE_CONNS + CONNECTIONS * H2_STREAMS + 1024))

# ---------------------------------------------------------------------------------------------
# Workspace, processes, cleanup.

work=$(mktemp -d /tmp/gh-gw-bench.XXXXXX)
# nginx workers run as nobody when started by root: they must be able to reach their files.
chmod 711 "$work"
declare -A proxy_pid=()
upstream_pid=
child_pid=

# shellcheck disable=SC2317 # reached through the traps
cleanup() {
  local rc=$? p
  trap '' INT TERM
  stop_pid "$child_pid"
  for p in "${PROXIES[@]}"; do
    stop_pid "${proxy_pid[$p]:-}"
  done
  stop_pid "$upstream_pid"
  # A failed run keeps its files for a look; an interrupted one does not.
  if [[ $BENCH_KEEP == 1 || ($rc -ne 0 && $interrupted == 0) ]]; then
    say "kept $work (logs: $work/gateway/gateway.log, $work/*/error.log, raw output in $work/runs)"
    [[ $BENCH_KEEP == 1 ]] || say "remove it with: rm -rf $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
interrupted=0
trap cleanup EXIT
trap 'interrupted=1; say interrupted; exit 130' INT
trap 'interrupted=1; exit 143' TERM

# run_child OUT CMD...: run a load generator in the background and wait for it, so that a
# TERM/INT reaches our trap at once (bash defers traps while a foreground child runs) and the
# cleanup can stop the child too.
run_child() {
  local out=$1 rc=0
  "${@:2}" >"$out" 2>&1 &
  child_pid=$!
  wait "$child_pid" || rc=$?
  child_pid=
  return "$rc"
}

mkdir -p "$work/runs" "$work/certs" "$work/upstream" "$work/nginx" "$work/haproxy" \
  "$work/caddy/data" "$work/bare" "$work/gateway" "$work/gateway-log"

# The binaries may be rebuilt by someone else while we run: take private copies, retrying a few
# times in case one is being replaced right now.
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  if cp "$GATEWAY_BIN" "$work/gateway/gateway" 2>/dev/null &&
    "$work/gateway/gateway" --version >/dev/null 2>&1 &&
    cp "$BARE_BIN" "$work/bare/bare_proxy" 2>/dev/null; then
    break
  fi
  ((attempt < 10)) || die "cannot copy a working $GATEWAY_BIN and $BARE_BIN"
  sleep 2
done
gw_bin=$work/gateway/gateway
bare_bin=$work/bare/bare_proxy
gw_version=$("$gw_bin" --version)
gw_built=$(date -u -r "$GATEWAY_BIN" '+%Y-%m-%d %H:%M UTC')
bare_built=$(date -u -r "$BARE_BIN" '+%Y-%m-%d %H:%M UTC')
say "binary: $bin_label ($gw_version, $build_kind); bare proxy: $BARE_BIN"

# Fifteen distinct free loopback ports, all held at once while they are chosen.
ports=$(python3 - <<'PY'
import socket
socks = []
for _ in range(15):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
) || die "could not find free ports"
read -r upstream_port nginx_tls nginx_plain haproxy_tls haproxy_plain caddy_tls caddy_plain \
  bare_tls bare_plain gw_tls gw_http gw_admin gwl_tls gwl_http gwl_admin <<<"$ports"
declare -A tls_port=([nginx]=$nginx_tls [haproxy]=$haproxy_tls [caddy]=$caddy_tls
  [bare]=$bare_tls [gateway]=$gw_tls [gateway-log]=$gwl_tls)
declare -A plain_port=([nginx]=$nginx_plain [haproxy]=$haproxy_plain [caddy]=$caddy_plain
  [bare]=$bare_plain [gateway]=$gw_http [gateway-log]=$gwl_http)

# ---------------------------------------------------------------------------------------------
# Keys and certificates: one ECDSA P-256 leaf (CA-signed) for all three proxies; an Ed25519
# JWT key whose JWKS the upstream serves.

certs=$work/certs
make_keys "$certs" "Gatehouse bench CA" || {
  cat "$certs/openssl.log" >&2
  die "openssl could not make the certificates"
}
make_token "$certs/jwt.key" "$JWT_KID" "$JWT_ISSUER" "$JWT_AUDIENCE" "$work" ||
  die "could not make the JWKS and token"
token=$(<"$work/token")
bad_token=$(<"$work/token-tampered")

# OpenSSL settings of every client (wrk, h2load, curl, s_client): TLS 1.2+ and X25519 only, so
# every proxy negotiates the same key exchange whatever its own preference (rustls may prefer
# another group; wrk and h2load have no option for it).
client_cnf=$work/client-openssl.cnf
cat >"$client_cnf" <<'EOF'
openssl_conf = openssl_init

[openssl_init]
ssl_conf = ssl_sect

[ssl_sect]
system_default = system_default_sect

[system_default_sect]
MinProtocol = TLSv1.2
CipherString = DEFAULT@SECLEVEL=2
Groups = X25519
EOF
export OPENSSL_CONF=$client_cnf


# ---------------------------------------------------------------------------------------------
# Upstream and proxies.

render bench/upstream/nginx.conf "$work/upstream/nginx.conf" "WORK=$work" "NOFILE=$nofile" \
  "UPSTREAM_PORT=$upstream_port" "JWKS=$(<"$work/jwks.json")"
upstream_keepalive=$((CONNECTIONS * H2_STREAMS > 128 ? CONNECTIONS * H2_STREAMS : 128))
render bench/peers/nginx.conf "$work/nginx/nginx.conf" "WORK=$work" "NOFILE=$nofile" \
  "MAXCONN=$maxconn" "UPSTREAM_PORT=$upstream_port" "UPSTREAM_KEEPALIVE=$upstream_keepalive" \
  "TLS_PORT=$nginx_tls" "PLAIN_PORT=$nginx_plain" "CERT=$certs/chain.pem" "KEY=$certs/leaf.key"
render bench/peers/haproxy.cfg "$work/haproxy/haproxy.cfg" "MAXCONN=$maxconn" \
  "UPSTREAM_PORT=$upstream_port" "TLS_PORT=$haproxy_tls" "PLAIN_PORT=$haproxy_plain" \
  "PEM=$certs/haproxy.pem"
render bench/peers/Caddyfile "$work/caddy/Caddyfile" "WORK=$work" \
  "UPSTREAM_PORT=$upstream_port" "UPSTREAM_KEEPALIVE=$upstream_keepalive" \
  "TLS_PORT=$caddy_tls" "PLAIN_PORT=$caddy_plain" "CERT=$certs/chain.pem" "KEY=$certs/leaf.key"
# The gateway twice: with the bench's log level (warn: no line per request), and with its access
# log on (info: one JSON line per request, written to a file like a container's stdout).
render bench/peers/gateway.toml "$work/gateway/gateway.toml" "TLS_PORT=$gw_tls" \
  "HTTP_PORT=$gw_http" "ADMIN_PORT=$gw_admin" "CERT=$certs/chain.pem" "KEY=$certs/leaf.key" \
  "UPSTREAM_PORT=$upstream_port" "ISSUER=$JWT_ISSUER" "AUDIENCE=$JWT_AUDIENCE" \
  "ORIGIN=$CORS_ORIGIN" "LOG_LEVEL=warn"
render bench/peers/gateway.toml "$work/gateway-log/gateway.toml" "TLS_PORT=$gwl_tls" \
  "HTTP_PORT=$gwl_http" "ADMIN_PORT=$gwl_admin" "CERT=$certs/chain.pem" "KEY=$certs/leaf.key" \
  "UPSTREAM_PORT=$upstream_port" "ISSUER=$JWT_ISSUER" "AUDIENCE=$JWT_AUDIENCE" \
  "ORIGIN=$CORS_ORIGIN" "LOG_LEVEL=info"

"$NGINX" -t -q -e "$work/upstream/error.log" -c "$work/upstream/nginx.conf" >"$work/upstream/check.log" 2>&1 || {
  cat "$work/upstream/check.log" >&2
  die "upstream nginx config invalid"
}
"$NGINX" -t -q -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" >"$work/nginx/check.log" 2>&1 || {
  cat "$work/nginx/check.log" >&2
  die "nginx peer config invalid"
}
"$HAPROXY" -c -q -f "$work/haproxy/haproxy.cfg" >"$work/haproxy/check.log" 2>&1 || {
  cat "$work/haproxy/check.log" >&2
  die "HAProxy peer config invalid"
}
HOME=$work/caddy "$CADDY" validate --adapter caddyfile --config "$work/caddy/Caddyfile" \
  >"$work/caddy/check.log" 2>&1 || {
  cat "$work/caddy/check.log" >&2
  die "Caddy peer config invalid"
}
for g in gateway gateway-log; do
  env -u RUST_LOG APP_ENV=development "$gw_bin" check --config "$work/$g/gateway.toml" \
    >"$work/$g/check.log" 2>&1 || {
    cat "$work/$g/check.log" >&2
    die "$g config invalid"
  }
done

# wait_http URL WHAT PID [curl args...]: until URL answers 2xx (30 s), or die naming the log
# when PID exits first or time runs out.
wait_http() {
  local url=$1 what=$2 pid=$3 i
  for ((i = 0; i < 300; i++)); do
    if curl -fsS -o /dev/null --max-time 2 "${@:4}" "$url" 2>/dev/null; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || die "$what exited during start-up"
    sleep 0.1
  done
  die "$what did not answer $url within 30 s"
}

say "upstream: nginx on 127.0.0.1:$upstream_port, CPU $UPSTREAM_CPU"
taskset -c "$UPSTREAM_CPU" "$NGINX" -e "$work/upstream/error.log" -c "$work/upstream/nginx.conf" \
  -g 'daemon off;' >"$work/upstream/stdout.log" 2>&1 &
upstream_pid=$!
wait_http "http://127.0.0.1:$upstream_port/healthz" "the upstream (log: $work/upstream/error.log)" \
  "$upstream_pid"

say "proxies on CPU $PROXY_CPU (TLS port / plain port): nginx :$nginx_tls/$nginx_plain, HAProxy :$haproxy_tls/$haproxy_plain, Caddy :$caddy_tls/$caddy_plain, bare Pingora :$bare_tls/$bare_plain, gateway :$gw_tls/$gw_http, gateway with access log :$gwl_tls/$gwl_http"
taskset -c "$PROXY_CPU" "$NGINX" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" \
  -g 'daemon off;' >"$work/nginx/stdout.log" 2>&1 &
proxy_pid[nginx]=$!
taskset -c "$PROXY_CPU" "$HAPROXY" -db -f "$work/haproxy/haproxy.cfg" >"$work/haproxy/error.log" 2>&1 &
proxy_pid[haproxy]=$!
# Caddy: one core for Go's scheduler like the one worker of the others; its own HOME so nothing
# of the machine's Caddy state is read or written.
HOME=$work/caddy XDG_DATA_HOME=$work/caddy/data XDG_CONFIG_HOME=$work/caddy GOMAXPROCS=1 \
  taskset -c "$PROXY_CPU" "$CADDY" run --adapter caddyfile --config "$work/caddy/Caddyfile" \
  >"$work/caddy/error.log" 2>&1 &
proxy_pid[caddy]=$!
THREADS=1 taskset -c "$PROXY_CPU" "$bare_bin" "127.0.0.1:$upstream_port" "127.0.0.1:$bare_plain" \
  "127.0.0.1:$bare_tls" "$certs/chain.pem" "$certs/leaf.key" >"$work/bare/error.log" 2>&1 &
proxy_pid[bare]=$!
for g in gateway gateway-log; do
  env -u RUST_LOG APP_ENV=development GATEWAY_UPGRADE_SOCK="$work/$g/upgrade.sock" \
    GATEWAY_PID_FILE="$work/$g/gateway.pid" \
    taskset -c "$PROXY_CPU" "$gw_bin" run --config "$work/$g/gateway.toml" \
    >"$work/$g/gateway.log" 2>&1 &
  proxy_pid[$g]=$!
done

wait_http "https://127.0.0.1:$nginx_tls/" "nginx (log: $work/nginx/error.log)" "${proxy_pid[nginx]}" -k
wait_http "https://127.0.0.1:$haproxy_tls/" "HAProxy (log: $work/haproxy/error.log)" \
  "${proxy_pid[haproxy]}" -k
wait_http "https://127.0.0.1:$caddy_tls/" "Caddy (log: $work/caddy/error.log)" "${proxy_pid[caddy]}" -k
wait_http "https://127.0.0.1:$bare_tls/" "the bare Pingora proxy (log: $work/bare/error.log)" \
  "${proxy_pid[bare]}" -k
# /readyz: keys loaded from the upstream's JWKS and the upstream healthy.
wait_http "http://127.0.0.1:$gw_admin/readyz" "the gateway (log: $work/gateway/gateway.log)" \
  "${proxy_pid[gateway]}"
wait_http "http://127.0.0.1:$gwl_admin/readyz" \
  "the gateway with its access log (log: $work/gateway-log/gateway.log)" "${proxy_pid[gateway-log]}"

# ---------------------------------------------------------------------------------------------
# Sanity: the same answer through every proxy, the gateway's JWT route really verifies.

expect_body='{"ok":true}'
# check_get WHAT EXPECTED_STATUS http|https PORT PATH [curl args...]: one request (TLS against
# the name in the certificate, verified with the bench CA); leaves the response headers and
# body in $work/runs/sanity-*.
check_get() {
  local what=$1 want=$2 scheme=$3 port=$4 path=$5 code url
  local -a tls=()
  if [[ $scheme == https ]]; then
    url="https://localhost:$port$path"
    tls=(--cacert "$certs/ca.pem" --resolve "localhost:$port:127.0.0.1")
  else
    url="http://127.0.0.1:$port$path"
  fi
  code=$(curl -sS -o "$work/runs/sanity-body" -D "$work/runs/sanity-headers" -w '%{http_code}' \
    --max-time 10 "${tls[@]}" "${@:6}" "$url" 2>&1) || die "$what: curl failed: $code"
  [[ $code == "$want" ]] || {
    cat "$work/runs/sanity-headers" "$work/runs/sanity-body" >&2
    die "$what: HTTP $code, expected $want"
  }
}
# has_hsts: whether the last answer carried Strict-Transport-Security.
has_hsts() { grep -qi '^strict-transport-security:' "$work/runs/sanity-headers"; }
for p in "${PROXIES[@]}"; do
  check_get "$p over TLS, HTTP/1.1" 200 https "${tls_port[$p]}" /sanity --http1.1
  [[ $(<"$work/runs/sanity-body") == "$expect_body" ]] ||
    die "$p over TLS: body $(<"$work/runs/sanity-body"), expected $expect_body"
  # The same response headers from every proxy but the bare one (which adds none): HSTS over
  # HTTPS only (RFC 6797 §7.2).
  [[ $p == bare ]] || has_hsts || die "$p over TLS: no Strict-Transport-Security"
  check_get "$p over TLS, h2" 200 https "${tls_port[$p]}" /sanity --http2
  grep -q '^HTTP/2 200' "$work/runs/sanity-headers" || die "$p did not answer in h2"
  if [[ -n ${plain_port[$p]:-} ]]; then
    check_get "$p plain HTTP" 200 http "${plain_port[$p]}" /sanity
    ! has_hsts || die "$p over plain HTTP: Strict-Transport-Security sent"
  fi
done
check_get "gateway /api/ without a token" 401 https "$gw_tls" /api/sanity -H "Origin: $CORS_ORIGIN"
check_get "gateway /api/ with a tampered token" 401 https "$gw_tls" /api/sanity \
  -H "Authorization: Bearer $bad_token" -H "Origin: $CORS_ORIGIN"
check_get "gateway /api/ with the token" 200 https "$gw_tls" /api/sanity \
  -H "Authorization: Bearer $token" -H "Origin: $CORS_ORIGIN"
grep -qi "^access-control-allow-origin: $CORS_ORIGIN" "$work/runs/sanity-headers" || {
  cat "$work/runs/sanity-headers" >&2
  die "gateway /api/: no Access-Control-Allow-Origin for $CORS_ORIGIN"
}

# What each proxy negotiates with the clients' OpenSSL settings (X25519 only), and what it
# would pick for an unrestricted OpenSSL 3 client (Debian defaults).
declare -A tls_seen=()
tls_probe() {
  local port=$1 out
  out=$(openssl s_client -connect "127.0.0.1:$port" -servername localhost -alpn http/1.1 \
    -CAfile "$certs/ca.pem" "${@:2}" </dev/null 2>&1) || true
  awk '
    /^New, / && !proto { proto = $2; sub(/,$/, "", proto); cipher = $NF }
    /^Server Temp Key:/ { sub(/^Server Temp Key: */, ""); sub(/,.*/, ""); group = $0 }
    /Negotiated TLS1.3 group:/ { sub(/^.*group: */, ""); group = $0 }
    /^Peer signature type:/ { sig = $NF }
    /^ALPN protocol:/ { alpn = $NF }
    /^Verification: / { verify = $2 }
    END {
      printf "%s %s, group %s, %s signature, ALPN %s, verification %s", proto ? proto : "?", cipher ? cipher : "?", group ? group : "?", sig ? sig : "?", alpn ? alpn : "?", verify ? verify : "?"
    }
  ' <<<"$out"
}
for p in "${PROXIES[@]}"; do
  tls_seen[$p]=$(tls_probe "${tls_port[$p]}" -groups X25519)
  tls_seen[$p.default]=$(OPENSSL_CONF=/etc/ssl/openssl.cnf tls_probe "${tls_port[$p]}" |
    sed -n 's/^.*, group \([^,]*\),.*$/\1/p')
  say "TLS $p: ${tls_seen[$p]}; with OpenSSL's default groups: ${tls_seen[$p.default]:-?}"
done

# ---------------------------------------------------------------------------------------------
# Measurement helpers.

clk_tck=$(getconf CLK_TCK)

# tree_pids PID...: the processes and all their descendants.
tree_pids() {
  local p c
  for p in "$@"; do
    echo "$p"
    for c in $(pgrep -P "$p" || true); do
      tree_pids "$c"
    done
  done
}
# mem_kib Rss|Pss PID...: summed over the processes, KiB.
mem_kib() {
  local field=$1 p t=0 v
  for p in "${@:2}"; do
    v=$(awk -v f="$field:" '$1 == f { print $2; exit }' "/proc/$p/smaps_rollup" 2>/dev/null) || v=0
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
# upstream_accepts: connections the upstream accepted so far (nginx stub_status).
upstream_accepts() {
  curl -fsS --max-time 5 "http://127.0.0.1:$upstream_port/nginx_status" | awk 'NR == 3 { print $1 }'
}
now_ms() { date +%s%3N; }
# core_ticks CPU: non-idle ticks of one CPU so far (user nice system irq softirq steal), from
# /proc/stat; empty for a CPU list.
core_ticks() {
  [[ $1 =~ ^[0-9]+$ ]] || return 0
  awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}
# all_ticks: non-idle ticks of all CPUs so far.
all_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }


# h2load_value FILE rps|requests|bad: from h2load's summary.
h2load_value() {
  awk -v want="$2" '
    /^finished in/ { rps = $4 }
    /^requests:/ { done = $6; failed = $10; errored = $12; timeout = $14 }
    /^status codes:/ { ok = $3 }
    END {
      if (want == "rps") v = rps
      else if (want == "requests") v = ok
      else if (want == "bad") v = failed + errored + timeout + (done - ok) + (done == "" ? 1 : 0)
      if (v == "") exit 1
      print v + 0
    }' "$1"
}

# percentiles LOG: "p50 p99" in ms from h2load's --log-file (third column: µs per request).
percentiles() {
  awk -F '\t' '{ print $3 }' "$1" | sort -n | awk '
    { v[NR] = $1 }
    END {
      if (NR == 0) { print "0 0"; exit }
      i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
      i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
      printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000
    }'
}

declare -A R_rps=() R_p50=() R_p99=() R_cpu=() R_user=() R_sys=() R_busy=() R_load=() R_rss=() R_upconns=()
loadgen=(taskset -c "$LOAD_CPU")

# measure SCENARIO PROXY TOOL URL [tool args...]: warm-up, then one measured run; records
# req/s, p50/p99, the proxy's CPU per request and share of its core, its RSS, upstream
# connections opened. Any non-2xx or socket error stops the benchmark.
measure() {
  local scenario=$1 proxy=$2 tool=$3 url=$4 key=$1/$2@$rep out t0 t1 u0 u1 s0 s1 l0 l1 a0 a1 pids bad requests p50 p99
  out=$work/runs/$scenario-$proxy-$rep.txt
  local -a cmd
  case $tool in
    wrk) cmd=(wrk -t1 -c"$CONNECTIONS" --latency --timeout 10s "${@:5}") ;;
    h2load) cmd=(h2load -t1 -c"$CONNECTIONS" -m"$H2_STREAMS" "${@:5}") ;;
  esac
  say "$scenario: $proxy ($tool, ${WARMUP}s warm-up + ${DURATION}s; repeat $rep of $REPEATS)"
  if ((WARMUP > 0)); then
    now_ms >>"$work/run-bounds"
    if [[ $tool == wrk ]]; then
      run_child "$out.warmup" "${loadgen[@]}" "${cmd[@]}" -d"${WARMUP}s" "$url" || {
        cat "$out.warmup" >&2
        die "$scenario $proxy: wrk warm-up failed"
      }
      now_ms >>"$work/run-bounds"
    else
      run_child "$out.warmup" "${loadgen[@]}" "${cmd[@]}" -D "$WARMUP" "$url" || {
        cat "$out.warmup" >&2
        die "$scenario $proxy: h2load warm-up failed"
      }
      now_ms >>"$work/run-bounds"
    fi
  fi
  mapfile -t pids < <(tree_pids "${proxy_pid[$proxy]}")
  a0=$(upstream_accepts)
  read -r u0 s0 < <(cpu_ticks "${pids[@]}")
  l0=$(core_ticks "$LOAD_CPU")
  t0=$(now_ms)
  echo "$t0" >>"$work/run-bounds"
  if [[ $tool == wrk ]]; then
    run_child "$out" "${loadgen[@]}" "${cmd[@]}" -d"${DURATION}s" "$url" || {
      cat "$out" >&2
      die "$scenario $proxy: wrk failed"
    }
  else
    run_child "$out" "${loadgen[@]}" "${cmd[@]}" -D "$DURATION" --log-file="$out.log" "$url" || {
      cat "$out" >&2
      die "$scenario $proxy: h2load failed"
    }
  fi
  t1=$(now_ms)
  read -r u1 s1 < <(cpu_ticks "${pids[@]}")
  l1=$(core_ticks "$LOAD_CPU")
  echo "$t1" >>"$work/run-bounds"
  a1=$(upstream_accepts)
  if [[ $tool == wrk ]]; then
    bad=$(($(wrk_value "$out" non2xx) + $(wrk_value "$out" errors)))
    requests=$(wrk_value "$out" requests)
    R_rps[$key]=$(wrk_value "$out" rps)
    R_p50[$key]=$(wrk_value "$out" p50)
    R_p99[$key]=$(wrk_value "$out" p99)
  else
    bad=$(h2load_value "$out" bad)
    requests=$(h2load_value "$out" requests)
    R_rps[$key]=$(h2load_value "$out" rps)
    read -r p50 p99 < <(percentiles "$out.log")
    R_p50[$key]=$p50
    R_p99[$key]=$p99
    rm -f "$out.log"
  fi
  if ((bad > 0)) || ((requests == 0)); then
    cat "$out" >&2
    die "$scenario $proxy: $bad non-2xx responses or socket errors ($requests good): see above"
  fi
  R_cpu[$key]=$(awk -v c=$((u1 - u0 + s1 - s0)) -v hz="$clk_tck" -v n="$requests" 'BEGIN { printf "%.1f", c / hz * 1e6 / n }')
  R_user[$key]=$(awk -v c=$((u1 - u0)) -v hz="$clk_tck" -v n="$requests" 'BEGIN { printf "%.1f", c / hz * 1e6 / n }')
  R_sys[$key]=$(awk -v c=$((s1 - s0)) -v hz="$clk_tck" -v n="$requests" 'BEGIN { printf "%.1f", c / hz * 1e6 / n }')
  R_busy[$key]=$(awk -v c=$((u1 - u0 + s1 - s0)) -v hz="$clk_tck" -v ms=$((t1 - t0)) 'BEGIN { printf "%.0f", c / hz * 100000 / ms }')
  if [[ -n $l0 ]]; then
    R_load[$key]="$(awk -v c=$((l1 - l0)) -v hz="$clk_tck" -v ms=$((t1 - t0)) 'BEGIN { printf "%.0f", c / hz * 100000 / ms }')%"
  else
    R_load[$key]="–"
  fi
  R_rss[$key]=$(mem_kib Rss "${pids[@]}")
  R_upconns[$key]=$((a1 - a0 - 1)) # minus the stub_status request itself
  say "  $(printf '%.0f' "${R_rps[$key]}") req/s, p50 ${R_p50[$key]} ms, p99 ${R_p99[$key]} ms, ${R_cpu[$key]} CPU-µs/req (user ${R_user[$key]}, system ${R_sys[$key]}), proxy core ${R_busy[$key]}% busy, load core ${R_load[$key]}"
}

# other_load SECONDS: CPU used on the machine while our processes sit idle, in % of one CPU.
other_load() {
  local a0 a1
  a0=$(all_ticks)
  sleep "$1"
  a1=$(all_ticks)
  awk -v c=$((a1 - a0)) -v hz="$clk_tck" -v s="$1" 'BEGIN { printf "%.0f", c / hz * 100 / s }'
}
warnings=()
check_quiet() {
  local busy
  busy=$(other_load 2)
  if ((busy > 15)); then
    say "WARNING: the machine is busy $1 (${busy}% of a CPU used by other work): numbers will be noisy"
    warnings+=("the machine was busy $1: ${busy}% of a CPU used by other processes (a build?); the numbers are noisy")
  fi
}

# ---------------------------------------------------------------------------------------------
# Load runs, proxies interleaved per scenario.

check_quiet "before the runs"

scenarios=()
[[ $PLAIN_HTTP == 1 ]] && scenarios+=(plain-h1)
scenarios+=(tls-h1 tls-h2 headers features-ref features)
# The JWT run's request headers on the plain route: what carrying them costs without the
# features. Static headers (-H), so wrk's own work per request stays the same.
auth_headers=(-H "Authorization: Bearer $token" -H "Origin: $CORS_ORIGIN")
# The whole sequence REPEATS times: a disturbance (another process on the machine) then hits
# one repeat of every proxy rather than all runs of one, and the median drops it.
for ((rep = 1; rep <= REPEATS; rep++)); do
  if [[ $PLAIN_HTTP == 1 ]]; then
    for p in "${PLAIN_PROXIES[@]}"; do
      measure plain-h1 "$p" wrk "http://127.0.0.1:${plain_port[$p]}/bench"
    done
  fi
  for p in "${TLS_PROXIES[@]}"; do
    measure tls-h1 "$p" wrk "https://127.0.0.1:${tls_port[$p]}/bench"
  done
  for p in "${TLS_PROXIES[@]}"; do
    measure tls-h2 "$p" h2load "https://127.0.0.1:${tls_port[$p]}/bench"
  done
  for p in "${HEADER_PROXIES[@]}"; do
    [[ $p == gateway ]] && continue
    measure headers "$p" wrk "https://127.0.0.1:${tls_port[$p]}/bench" "${auth_headers[@]}"
  done
  # The gateway's side of the JWT target back to back, so that the machine's drift over the
  # minutes between the TLS run above and the JWT run does not enter the ratio: the plain route
  # (the target's reference), the same with the JWT run's headers, then JWT + CORS + limits.
  measure features-ref gateway wrk "https://127.0.0.1:$gw_tls/bench"
  measure headers gateway wrk "https://127.0.0.1:$gw_tls/bench" "${auth_headers[@]}"
  measure features gateway wrk "https://127.0.0.1:$gw_tls/api/bench" "${auth_headers[@]}"
done

# The median of the repeats, each column on its own; the req/s of every repeat is kept for the
# report (R_all).
declare -A R_all=()
for s in "${scenarios[@]}"; do
  for p in "${PROXIES[@]}"; do
    [[ -n ${R_rps[$s/$p@1]:-} ]] || continue
    for m in R_rps R_p50 R_p99 R_cpu R_user R_sys R_busy R_load R_rss R_upconns; do
      declare -n arr=$m
      vals=()
      for ((rep = 1; rep <= REPEATS; rep++)); do
        vals+=("${arr[$s/$p@$rep]%\%}")
      done
      if [[ ${vals[0]} == "–" ]]; then
        arr[$s/$p]="–"
      elif [[ $m == R_load ]]; then
        arr[$s/$p]="$(median "${vals[@]}")%"
      else
        arr[$s/$p]=$(median "${vals[@]}")
      fi
      unset -n arr
    done
    all=()
    for ((rep = 1; rep <= REPEATS; rep++)); do
      all+=("$(printf '%.0f' "${R_rps[$s/$p@$rep]}")")
    done
    R_all[$s/$p]=$(IFS=/; echo "${all[*]}")
  done
done

# ---------------------------------------------------------------------------------------------
# Idle keep-alive connections: memory per proxy.

declare -A I_base=() I_rss=() I_pss=() I_open=()
cat >"$work/idle.py" <<'PY'
# Opens COUNT TLS connections to 127.0.0.1:PORT, sends one HTTP/1.1 request on each and reads
# the answer (so each is a keep-alive connection the proxy has served), then holds them idle
# until DONE_FILE appears (at most HOLD seconds), counts those still open, closes everything.
import asyncio, os, resource, ssl, sys, time

port, count, ca, ready_file, done_file, hold = sys.argv[1:]
port, count, hold = int(port), int(count), float(hold)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
request = b"GET /idle HTTP/1.1\r\nHost: localhost\r\n\r\n"
conns = []
errors = []

async def one(sem):
    async with sem:
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 30)
            w.write(request)
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode("latin-1").split("\r\n")
            if not lines[0].startswith("HTTP/1.1 200"):
                raise RuntimeError(lines[0])
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            await asyncio.wait_for(r.readexactly(length), 30)
            conns.append((r, w))
        except Exception as e:  # noqa: BLE001 - reported, the run fails
            errors.append(repr(e))

async def main():
    sem = asyncio.Semaphore(256)
    started = time.monotonic()
    await asyncio.gather(*(one(sem) for _ in range(count)))
    with open(ready_file, "w") as f:
        f.write(f"{len(conns)} {len(errors)} {time.monotonic() - started:.1f}\n")
    deadline = time.monotonic() + hold
    while not os.path.exists(done_file) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    alive = sum(1 for r, _ in conns if not r.at_eof())
    print(f"open={len(conns)} errors={len(errors)} alive={alive}")
    for e in errors[:5]:
        print(f"error: {e}")
    for _, w in conns:
        w.close()
    await asyncio.sleep(0.5)
    return 0 if not errors and alive == count else 1

sys.exit(asyncio.run(main()))
PY

idle_test() {
  local p=$1
  local out=$work/runs/idle-$p.txt ready=$work/runs/idle-$p.ready done=$work/runs/idle-$p.done
  local pids i opened nerr secs rc=0
  mapfile -t pids < <(tree_pids "${proxy_pid[$p]}")
  I_base[$p]=$(mem_kib Rss "${pids[@]}")
  say "idle: $IDLE_CONNS TLS keep-alive connections to $p"
  now_ms >>"$work/run-bounds"
  taskset -c "$LOAD_CPU" python3 "$work/idle.py" "${tls_port[$p]}" "$IDLE_CONNS" "$certs/ca.pem" \
    "$ready" "$done" 300 >"$out" 2>&1 &
  child_pid=$!
  for ((i = 0; i < 3000; i++)); do
    [[ -s $ready ]] && break
    kill -0 "$child_pid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -s $ready ]] || {
    cat "$out" >&2
    die "idle: $p: the connections did not open within 300 s"
  }
  read -r opened nerr secs <"$ready"
  sleep 1 # let the proxy settle
  mapfile -t pids < <(tree_pids "${proxy_pid[$p]}")
  I_rss[$p]=$(mem_kib Rss "${pids[@]}")
  I_pss[$p]=$(mem_kib Pss "${pids[@]}")
  touch "$done"
  wait "$child_pid" || rc=$?
  child_pid=
  now_ms >>"$work/run-bounds"
  I_open[$p]=$(sed -n 's/^open=\([0-9]*\) errors=[0-9]* alive=\([0-9]*\)$/\2/p' "$out")
  if ((rc != 0 || nerr > 0)); then
    cat "$out" >&2
    die "idle: $p: $opened of $IDLE_CONNS connections opened, $nerr failed, ${I_open[$p]:-?} still open at measurement"
  fi
  say "  opened $opened in ${secs}s; RSS $((I_base[$p] / 1024)) → $((I_rss[$p] / 1024)) MiB"
  # Give the proxy a moment to tear the connections down before the next one is measured.
  sleep 2
}
if ((IDLE_CONNS > 0)); then
  for p in "${IDLE_PROXIES[@]}"; do
    idle_test "$p"
  done
fi

check_quiet "after the runs"

# What the gateway logged at warn or above, by kind, and whether it came while a load generator
# opened or closed its connections (within 2 s of a run's start or end) or in the middle of a run.
gw_log_summary=$(python3 - "$work/gateway/gateway.log" "$work/run-bounds" <<'PY'
import collections, datetime, json, re, sys

log, bounds_file = sys.argv[1:]
bounds = [int(x) / 1000 for x in open(bounds_file).read().split()]
kinds = [
    ("Illegal SNI extension", "rustls WARN: IP address sent as SNI (wrk puts the URL's host, 127.0.0.1, there)"),
    ("without sending TLS close_notify", "ERROR `Fail to proxy: Downstream ReadError`: a client closed an idle keep-alive connection without TLS close_notify"),
    ("unexpected frame type", "ERROR `Fail to proxy: Downstream WriteError ... unexpected frame type`: h2 response to a stream whose connection the client closed"),
    ("broken pipe", "ERROR `Fail to proxy: Downstream HNError/ReadError ... broken pipe`: h2 streams open when the client closed the connection"),
    ("handshake", "ERROR `Downstream handshake error`: a client closed during the TLS handshake"),
]
counts = collections.Counter()
for line in open(log, errors="replace"):
    try:
        j = json.loads(line)
        level, msg, ts = j.get("level", ""), j.get("message", ""), j.get("timestamp", "")
    except ValueError:
        level, msg, ts = "?", line.strip(), ""
    if level not in ("WARN", "ERROR") and "panicked" not in line:
        continue
    kind = next((k for pat, k in kinds if pat in msg), None)
    if kind is None:
        kind = f"{level}: {re.sub(r'[0-9]+', 'N', msg)[:140]}"
    when = "?"
    if ts:
        t = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        near = any(abs(t - b) <= 2.0 for b in bounds)
        when = "as a run started or ended" if near else "in the middle of a run"
    counts[(kind, when)] += 1
for (kind, when), n in counts.most_common(8):
    print(f"{n} × {kind} ({when})")
PY
) || gw_log_summary="(could not read the gateway log)"

# Access lines the gateway with its access log wrote (the log is JSON, one line per request).
gwl_lines=$(grep -c '"target":"access"' "$work/gateway-log/gateway.log" || true)

# ---------------------------------------------------------------------------------------------
# Report.

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

declare -A scenario_label=(
  [plain-h1]="plain HTTP/1.1 keep-alive (wrk)"
  [tls-h1]="TLS, HTTP/1.1 keep-alive (wrk)"
  [tls-h2]="TLS, h2 ×$H2_STREAMS streams (h2load)"
  [headers]="TLS, HTTP/1.1 with the JWT run's headers, no features (wrk)"
  [features-ref]="TLS, HTTP/1.1 keep-alive, run just before the JWT run (wrk)"
  [features]="TLS, HTTP/1.1 + JWT + CORS + rate limits (wrk)"
)
proxy_label() {
  case $1 in
    nginx) echo nginx ;;
    haproxy) echo HAProxy ;;
    caddy) echo Caddy ;;
    bare) echo "bare Pingora" ;;
    gateway) echo gateway ;;
    gateway-log) echo "gateway, access log on" ;;
  esac
}

# (awk reads everything: `| head -n 1` could kill the writer with SIGPIPE, fatal with pipefail)
cpu_model=$(lscpu 2>/dev/null | awk -F ':[[:space:]]*' '$1 == "Model name" && !m { m = $2 } END { print m }')
[[ -n $cpu_model ]] || cpu_model=unknown
nginx_version=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
haproxy_version=$("$HAPROXY" -v 2>&1 | awk 'NR == 1 { print $3 }')
caddy_version=$("$CADDY" version 2>&1 | awk 'NR == 1 { print $1 }')
wrk_version=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }' || true)
h2load_version=$(h2load --version 2>&1 | awk 'NR == 1 { print $2 }')
openssl_version=$(openssl version | awk '{ print $2 }')
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
  revision+=" (+ uncommitted changes)"
fi
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)

# Targets.
g1=tls-h1/gateway n1=tls-h1/nginx g2=tls-h2/gateway n2=tls-h2/nginx gf=features/gateway
gr=features-ref/gateway
h1_ratio=$(calc "${R_rps[$g1]} / ${R_rps[$n1]}")
h2_ratio=$(calc "${R_rps[$g2]} / ${R_rps[$n2]}")
# The JWT target against the plain run made just before it in each repeat (the median of the
# per-repeat ratios, so that each ratio comes from two adjacent runs).
f_ratios=()
for ((rep = 1; rep <= REPEATS; rep++)); do
  f_ratios+=("$(calc "${R_rps[$gf@$rep]} / ${R_rps[$gr@$rep]}")")
done
f_ratio=$(median "${f_ratios[@]}")
h1_pass=$(pass "$h1_ratio >= $TARGET_VS_NGINX && ${R_p99[$g1]} <= $TARGET_P99_H1 * ${R_p99[$n1]}")
h2_pass=$(pass "$h2_ratio >= $TARGET_VS_NGINX && ${R_p99[$g2]} <= $TARGET_P99_H2 * ${R_p99[$n2]}")
f_pass=$(pass "$f_ratio >= $TARGET_FEATURES")
bare_ratio=$(calc "${R_rps[$g1]} / ${R_rps[tls-h1/bare]}")
bare_pass=$(pass "$bare_ratio >= $TARGET_VS_BARE")
log_ratio=$(calc "${R_rps[tls-h1/gateway-log]} / ${R_rps[$g1]}")
log_pass=$(pass "$log_ratio >= $TARGET_LOG")
if [[ $PLAIN_HTTP == 1 ]]; then
  g0=plain-h1/gateway n0=plain-h1/nginx
  h0_ratio=$(calc "${R_rps[$g0]} / ${R_rps[$n0]}")
  h0_pass=$(pass "$h0_ratio >= $TARGET_VS_NGINX && ${R_p99[$g0]} <= $TARGET_P99_H1 * ${R_p99[$n0]}")
  bare0_ratio=$(calc "${R_rps[$g0]} / ${R_rps[plain-h1/bare]}")
  bare0_pass=$(pass "$bare0_ratio >= $TARGET_VS_BARE")
fi
if ((IDLE_CONNS > 0)); then
  idle_ratio=$(calc "${I_rss[gateway]} / ${I_rss[nginx]}")
  idle_pass=$(pass "${I_rss[gateway]} <= ${I_rss[nginx]}")
fi

# cpu_delta KEY KEY_REF: "A against B CPU-µs per request (+d: +u user, +k kernel)".
cpu_delta() {
  awk -v a="${R_cpu[$1]}" -v b="${R_cpu[$2]}" -v au="${R_user[$1]}" -v bu="${R_user[$2]}" \
    -v as="${R_sys[$1]}" -v bs="${R_sys[$2]}" 'BEGIN {
      printf "%.1f against %.1f CPU-µs per request (%+.1f: %+.1f user, %+.1f kernel)", a, b, a - b, au - bu, as - bs
    }'
}

# where_time KEY_GATEWAY KEY_REF LABEL IN_FLIGHT: a sentence on where the gateway's time goes
# compared with the reference run. IN_FLIGHT: requests in flight when the warm-up ended (their
# upstream connections are closed with them and opened again as the run starts).
where_time() {
  local g=$1 r=$2 label=$3 inflight=$4
  awk -v gc="${R_cpu[$g]}" -v rc="${R_cpu[$r]}" -v gb="${R_busy[$g]}" -v rb="${R_busy[$r]}" \
    -v gus="${R_user[$g]}" -v rus="${R_user[$r]}" -v gsy="${R_sys[$g]}" -v rsy="${R_sys[$r]}" \
    -v gl="${R_load[$g]%\%}" -v gu="${R_upconns[$g]}" -v ru="${R_upconns[$r]}" -v label="$label" \
    -v load_cpu="$LOAD_CPU" -v inflight="$inflight" 'BEGIN {
      printf "%s: the gateway used %.1f CPU-µs per request against %.1f (%+.1f µs, %+.0f%%): %+.1f µs in user space (%.1f against %.1f), %+.1f µs in the kernel (%.1f against %.1f); its core was %d%% busy (reference %d%%).", label, gc, rc, gc - rc, (rc > 0 ? (gc / rc - 1) * 100 : 0), gus - rus, gus, rus, gsy - rsy, gsy, rsy, gb, rb
      if (gb >= 90) printf " Its core is saturated: the CPU cost per request sets its rate."
      else if (gl != "–" && gl + 0 >= 90) printf " Its core is not saturated but the load generator core (CPU %s) is (%d%%): the rate is the client side limit, compare CPU-µs per request.", load_cpu, gl
      else printf " Neither its core nor the load generator core is saturated: the time goes to waiting (inside the proxy, or on the upstream)."
      if (gu > inflight) printf " It opened %d upstream connections during the run (reference %d), more than the %d requests cut off at the end of the warm-up: upstream connections are closed and opened again while the run goes on.", gu, ru, inflight
      printf "\n"
    }'
}

report=$work/report.md
{
  echo "# Gateway vs nginx, HAProxy, Caddy and a bare Pingora proxy, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Median of $REPEATS interleaved repeats (each column on its own); \"req/s each run\" lists every repeat."
  echo
  echo "| scenario | proxy | req/s | req/s each run | p50 ms | p99 ms | CPU-µs/req (user + system) | proxy core busy | load core busy | RSS MiB | upstream conns opened | vs nginx |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for s in "${scenarios[@]}"; do
    for p in "${PROXIES[@]}"; do
      k=$s/$p
      if [[ -z ${R_rps[$k]:-} ]]; then
        continue
      fi
      if [[ $s == features ]]; then
        vs="$(fmt "$f_ratio" 2)× the run before it"
      elif [[ -n ${R_rps[$s/nginx]:-} ]]; then
        vs="$(fmt "$(calc "${R_rps[$k]} / ${R_rps[$s/nginx]}")" 2)×"
      else
        vs="–"
      fi
      echo "| ${scenario_label[$s]} | $(proxy_label "$p") | $(fmt "${R_rps[$k]}" 0) | ${R_all[$k]} | $(fmt "${R_p50[$k]}" 2) | $(fmt "${R_p99[$k]}" 2) | $(fmt "${R_cpu[$k]}") ($(fmt "${R_user[$k]}") + $(fmt "${R_sys[$k]}")) | $(fmt "${R_busy[$k]}" 0)% | ${R_load[$k]} | $(mib "${R_rss[$k]}") | $(fmt "${R_upconns[$k]}" 0) | $vs |"
    done
  done
  if ((IDLE_CONNS > 0)); then
    echo
    echo "| $IDLE_CONNS idle TLS keep-alive connections | RSS before MiB | RSS with them MiB | PSS with them MiB | KiB per connection | RSS vs nginx |"
    echo "|---|---|---|---|---|---|"
    for p in "${IDLE_PROXIES[@]}"; do
      echo "| $(proxy_label "$p") | $(mib "${I_base[$p]}") | $(mib "${I_rss[$p]}") | $(mib "${I_pss[$p]}") | $(awk -v a="${I_base[$p]}" -v b="${I_rss[$p]}" -v n="$IDLE_CONNS" 'BEGIN { printf "%.1f", (b - a) / n }') | $(fmt "$(calc "${I_rss[$p]} / ${I_rss[nginx]}")" 2)× |"
    done
  fi
  echo
  echo "| target | measured | pass? |"
  echo "|---|---|---|"
  if [[ $PLAIN_HTTP == 1 ]]; then
    echo "| plain proxy, HTTP/1.1 without TLS: ≥ ${TARGET_VS_NGINX}× nginx req/s, p99 ≤ ${TARGET_P99_H1}× nginx's | $(fmt "$h0_ratio" 2)×, p99 $(fmt "${R_p99[$g0]}" 2) vs $(fmt "${R_p99[$n0]}" 2) ms | $h0_pass |"
  fi
  echo "| plain proxy, TLS HTTP/1.1: ≥ ${TARGET_VS_NGINX}× nginx req/s, p99 ≤ ${TARGET_P99_H1}× nginx's | $(fmt "$h1_ratio" 2)×, p99 $(fmt "${R_p99[$g1]}" 2) vs $(fmt "${R_p99[$n1]}" 2) ms | $h1_pass |"
  echo "| plain proxy, TLS h2: ≥ ${TARGET_VS_NGINX}× nginx req/s, p99 ≤ ${TARGET_P99_H2}× nginx's | $(fmt "$h2_ratio" 2)×, p99 $(fmt "${R_p99[$g2]}" 2) vs $(fmt "${R_p99[$n2]}" 2) ms | $h2_pass |"
  echo "| JWT + CORS + rate limits: ≥ ${TARGET_FEATURES}× the gateway's plain TLS HTTP/1.1 req/s (the run just before it) | $(fmt "$f_ratio" 2)× | $f_pass |"
  if [[ $PLAIN_HTTP == 1 ]]; then
    echo "| gateway ≥ ${TARGET_VS_BARE}× the bare Pingora proxy, plain HTTP/1.1 | $(fmt "$bare0_ratio" 2)× | $bare0_pass |"
  fi
  echo "| gateway ≥ ${TARGET_VS_BARE}× the bare Pingora proxy, TLS HTTP/1.1 | $(fmt "$bare_ratio" 2)× | $bare_pass |"
  echo "| access log on: ≥ ${TARGET_LOG}× the gateway's rate without it (TLS HTTP/1.1) | $(fmt "$log_ratio" 2)× | $log_pass |"
  if ((IDLE_CONNS > 0)); then
    echo "| RSS with $IDLE_CONNS idle keep-alive connections ≤ nginx's | $(mib "${I_rss[gateway]}") vs $(mib "${I_rss[nginx]}") MiB ($(fmt "$idle_ratio" 2)×) | $idle_pass |"
  fi
  echo
  echo "Where the time goes:"
  echo
  if [[ $PLAIN_HTTP == 1 ]]; then
    echo "- $(where_time "$g0" "$n0" "plain HTTP/1.1 vs nginx" "$CONNECTIONS")"
    echo "  - Pingora's share (the bare proxy against nginx): $(cpu_delta plain-h1/bare "$n0");"
    echo "    the gateway's own (against the bare proxy): $(cpu_delta "$g0" plain-h1/bare)."
  fi
  echo "- $(where_time "$g1" "$n1" "TLS HTTP/1.1 vs nginx" "$CONNECTIONS")"
  echo "  - Pingora's share (the bare proxy against nginx): $(cpu_delta tls-h1/bare "$n1");"
  echo "    the gateway's own (against the bare proxy): $(cpu_delta "$g1" tls-h1/bare)."
  echo "  - the access log on: $(cpu_delta tls-h1/gateway-log "$g1")."
  echo "- $(where_time "$g2" "$n2" "TLS h2 vs nginx" $((CONNECTIONS * H2_STREAMS)))"
  echo "  - Pingora's share (the bare proxy against nginx): $(cpu_delta tls-h2/bare "$n2");"
  echo "    the gateway's own (against the bare proxy): $(cpu_delta "$g2" tls-h2/bare)."
  echo "- $(where_time "$gf" "$gr" "JWT + CORS + limits vs the gateway's plain proxy (the runs just before it)" "$CONNECTIONS")"
  echo "  - of which carrying the bigger request (Authorization: Bearer + a ${#token}-byte token, Origin)"
  echo "    through the plain route: $(cpu_delta headers/gateway "$gr"); nginx: $(cpu_delta headers/nginx "$n1");"
  echo "    HAProxy: $(cpu_delta headers/haproxy tls-h1/haproxy)."
  echo "  - and the features themselves (JWT from the verified-token cache, CORS, two limits):"
  echo "    $(cpu_delta "$gf" headers/gateway)."
  echo
  echo "- Machine: $(nproc) CPUs, $cpu_model; $(uname -sr). Everything on loopback. Pinned with"
  echo "  taskset: load generator on CPU $LOAD_CPU, the upstream on CPU $UPSTREAM_CPU, the proxy under test on"
  echo "  CPU $PROXY_CPU (all proxies run throughout, those not under load sit idle)."
  echo "- gateway: $bin_label, $gw_version ($build_kind), built $gw_built; the work tree was at"
  echo "  revision $revision when it ran; threads = 1, bench/peers/gateway.toml with log level warn;"
  echo "  the second gateway the same with level info (an access line per request: $gwl_lines lines written)."
  echo "  bare Pingora: $BARE_BIN (gateway/examples/bare_proxy.rs), built $bare_built, THREADS=1."
  echo "  nginx $nginx_version (1 worker process, bench/peers/nginx.conf), HAProxy $haproxy_version"
  echo "  (nbthread 1, bench/peers/haproxy.cfg), Caddy $caddy_version (GOMAXPROCS=1, bench/peers/Caddyfile);"
  echo "  upstream: nginx, 1 worker, fixed 11-byte JSON body (bench/upstream/nginx.conf)."
  echo "- Load: wrk ${wrk_version:-?} -t1 -c$CONNECTIONS, h2load ${h2load_version:-?} -t1 -c$CONNECTIONS -m$H2_STREAMS; closed loop,"
  echo "  ${DURATION}s per run after a ${WARMUP}s warm-up, $REPEATS repeats. CPU-µs/req: the proxy's utime+stime (all its"
  echo "  processes) over the run / requests completed; core busy: that CPU time / wall time. RSS: VmRSS"
  echo "  summed over the proxy's processes (nginx: master + worker) after the run."
  echo "- TLS: one ECDSA P-256 certificate for all; clients (OpenSSL $openssl_version) limited to X25519."
  for p in "${PROXIES[@]}"; do
    echo "  $(proxy_label "$p"): ${tls_seen[$p]} (group with OpenSSL's default list: ${tls_seen[$p.default]:-?})."
  done
  echo "- JWT run: one EdDSA access token on every request (the gateway's verified-token cache"
  echo "  answers after the first), Origin: $CORS_ORIGIN, two rate limits (per IP, per subject)"
  echo "  of 1 000 000/s that never refuse."
  if [[ -n $gw_log_summary ]]; then
    echo "- The gateway's log at warn and above:"
    while IFS= read -r line; do
      echo "  - $line"
    done <<<"$gw_log_summary"
  fi
  for w in "${warnings[@]}"; do
    echo "- WARNING: $w"
  done
} >"$report"

echo
cat "$report"
mkdir -p "$BENCH_RESULTS_DIR"
cp "$report" "$BENCH_RESULTS_DIR/gateway-$stamp.md"
say "saved $BENCH_RESULTS_DIR/gateway-$stamp.md"

missed=0
for r in "${h0_pass:-✅ yes}" "$h1_pass" "$h2_pass" "$f_pass" "${bare0_pass:-✅ yes}" "$bare_pass" \
  "$log_pass" "${idle_pass:-✅ yes}"; do
  [[ $r == "✅ yes" ]] || missed=1
done
if [[ $BENCH_STRICT == 1 && $missed == 1 ]]; then
  say "a target was missed (BENCH_STRICT=1)"
  exit 2
fi

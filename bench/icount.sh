#!/usr/bin/env bash
# Instructions per request of the gateway and of the bare Pingora proxy, counted by valgrind's
# callgrind: deterministic whatever else the machine runs, so two builds can be compared on a
# busy machine where req/s and CPU time cannot. Nothing is built here.
#
#   cargo build --release -p gateway --bin gateway --example bare_proxy && bench/icount.sh
#
# For each proxy and scenario (plain HTTP/1.1, TLS HTTP/1.1, TLS h2): the proxy starts under
# callgrind (instrumentation off), WARM requests warm it up (connections, pools, caches), then
# instrumentation is switched on for exactly N requests (h2load -n, CONNECTIONS connections, h2:
# H2_STREAMS streams each) and the count is dumped. Instructions per request = Ir / N, every
# thread of the process included. The dump files are kept in OUT_DIR for callgrind_annotate.
#
# Environment (defaults in brackets):
#   GATEWAY_BIN [target/release/gateway]  BARE_BIN [target/release/examples/bare_proxy]
#   PROXIES ["bare gateway"]   SCENARIOS ["plain-h1 tls-h1 tls-h2"; also tls-headers, tls-jwt:
#     the JWT run's request of bench/gateway.sh (bearer token, Origin) on the plain route and
#     on the gateway's "/api/" (JWT, CORS, two rate limits; bare Pingora just forwards it)]
#   N [20000]  WARM [1000]  CONNECTIONS [16]  H2_STREAMS [10]
#   GATEWAY_CONFIG [bench/peers/gateway.toml]  LOG_LEVEL [warn]   (info: access log on)
#   OUT_DIR [a temp dir, printed]
#   TOOL [callgrind]   none: the same requests with nothing counted, the proxies run natively
#     (scripts/pgo-build.sh trains its instrumented build with this; each proxy is stopped with
#     SIGTERM after each scenario, so it exits normally and writes its profile)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
cd "$repo"

GATEWAY_BIN=${GATEWAY_BIN:-target/release/gateway}
BARE_BIN=${BARE_BIN:-target/release/examples/bare_proxy}
PROXIES=${PROXIES:-bare gateway}
SCENARIOS=${SCENARIOS:-plain-h1 tls-h1 tls-h2}
N=${N:-20000}
WARM=${WARM:-1000}
CONNECTIONS=${CONNECTIONS:-16}
H2_STREAMS=${H2_STREAMS:-10}
GATEWAY_CONFIG=${GATEWAY_CONFIG:-bench/peers/gateway.toml}
LOG_LEVEL=${LOG_LEVEL:-warn}
TOOL=${TOOL:-callgrind}

say() { printf 'icount: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

for v in N WARM CONNECTIONS H2_STREAMS; do
  [[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} >= 1)) || die "$v must be a whole number >= 1 (got '${!v}')"
done
case $TOOL in
  callgrind | none) ;;
  *) die "TOOL must be callgrind or none (got '$TOOL')" ;;
esac
pkgs=()
[[ $TOOL == none ]] || command -v valgrind >/dev/null || pkgs+=(valgrind)
command -v h2load >/dev/null || pkgs+=(nghttp2-client)
[[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || pkgs+=(nginx)
command -v openssl >/dev/null || pkgs+=(openssl)
command -v python3 >/dev/null || pkgs+=(python3)
command -v curl >/dev/null || pkgs+=(curl)
apt_install "${pkgs[@]}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for b in "$GATEWAY_BIN" "$BARE_BIN"; do
  [[ -f $b ]] || die "no binary at $b: cargo build --release -p gateway --bin gateway --example bare_proxy"
done

work=$(mktemp -d /tmp/gh-icount.XXXXXX)
chmod 711 "$work"
OUT_DIR=${OUT_DIR:-$work/out}
mkdir -p "$OUT_DIR" "$work/upstream" "$work/gateway" "$work/certs"
upstream_pid=
proxy_pid=
# shellcheck disable=SC2317 # reached through the trap
cleanup() {
  local rc=$?
  stop_pid "$proxy_pid"
  stop_pid "$upstream_pid"
  if [[ $OUT_DIR == "$work/out" && $TOOL == callgrind ]]; then
    say "callgrind files kept in $OUT_DIR (remove $work when done)"
    find "$work" -mindepth 1 -maxdepth 1 ! -name out -exec rm -rf {} +
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cp "$GATEWAY_BIN" "$work/gateway/gateway"
cp "$BARE_BIN" "$work/bare_proxy"

ports=$(python3 -c '
import socket
s = [socket.socket() for _ in range(6)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')
read -r upstream_port tls_port plain_port admin_port bare_tls bare_plain <<<"$ports"

certs=$work/certs
make_keys "$certs" "Gatehouse icount CA" || die "openssl: $(cat "$certs/openssl.log")"
# The JWT route (tls-jwt) verifies tokens against the JWKS the upstream serves.
issuer=https://issuer.icount.example audience=gatehouse-api origin=https://app.example.com
make_token "$certs/jwt.key" icount-key "$issuer" "$audience" "$work" ||
  die "could not make the JWKS and token"
token=$(<"$work/token")
render bench/upstream/nginx.conf "$work/upstream/nginx.conf" "WORK=$work" "NOFILE=4096" \
  "UPSTREAM_PORT=$upstream_port" "JWKS=$(<"$work/jwks.json")"
render "$GATEWAY_CONFIG" "$work/gateway/gateway.toml" "TLS_PORT=$tls_port" \
  "HTTP_PORT=$plain_port" "ADMIN_PORT=$admin_port" "CERT=$certs/chain.pem" \
  "KEY=$certs/leaf.key" "UPSTREAM_PORT=$upstream_port" "ISSUER=$issuer" \
  "AUDIENCE=$audience" "ORIGIN=$origin" "LOG_LEVEL=$LOG_LEVEL"

"$NGINX" -e "$work/upstream/error.log" -c "$work/upstream/nginx.conf" -g 'daemon off;' \
  >"$work/upstream/stdout.log" 2>&1 &
upstream_pid=$!

wait_up() {
  local url=$1 i
  for ((i = 0; i < 600; i++)); do
    curl -fsS -o /dev/null --max-time 5 -k "$url" 2>/dev/null && return 0
    kill -0 "$proxy_pid" 2>/dev/null || die "the proxy exited during start-up (log: $work/proxy.log)"
    sleep 0.2
  done
  die "$url did not answer within 120 s"
}
wait_up_plain() {
  local i
  for ((i = 0; i < 100; i++)); do
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$upstream_port/healthz" && return 0
    sleep 0.1
  done
  die "the upstream did not start"
}
wait_up_plain

# load SCENARIO PORT_TLS PORT_PLAIN COUNT: COUNT requests through the proxy.
load() {
  local scenario=$1 tls=$2 plain=$3 count=$4 out=$5
  local -a args=(-n "$count" -c "$CONNECTIONS")
  case $scenario in
    plain-h1) args+=(--h1 "http://127.0.0.1:$plain/bench") ;;
    tls-h1) args+=(--h1 "https://127.0.0.1:$tls/bench") ;;
    tls-h2) args+=(-m "$H2_STREAMS" "https://127.0.0.1:$tls/bench") ;;
    # The JWT run's request (bench/gateway.sh): on the plain route, then on "/api/" with JWT
    # verification (from the verified-token cache after the first), CORS and two rate limits.
    tls-headers | tls-jwt)
      local path=/bench
      [[ $scenario == tls-jwt ]] && path=/api/bench
      args+=(--h1 -H "Authorization: Bearer $token" -H "Origin: $origin"
        "https://127.0.0.1:$tls$path")
      ;;
    *) die "unknown scenario $scenario" ;;
  esac
  h2load "${args[@]}" >"$out" 2>&1 || die "h2load failed: $(tail -5 "$out")"
  # Every request answered 2xx, or the count means nothing.
  awk -v n="$count" '/^status codes:/ { ok = $3 } END { exit !(ok + 0 == n) }' "$out" ||
    die "not every request got a 2xx: $(grep -E '^(requests|status)' "$out")"
}

printf '| proxy | scenario | requests | instructions | instructions per request |\n|---|---|---|---|---|\n' \
  >"$work/table.md"
for p in $PROXIES; do
  for s in $SCENARIOS; do
    cg=$OUT_DIR/callgrind.$p.$s
    vg=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$cg" --trace-children=no)
    [[ $TOOL == none ]] && vg=()
    case $p in
      gateway)
        env -u RUST_LOG APP_ENV=development GATEWAY_UPGRADE_SOCK="$work/gateway/upgrade.sock" \
          GATEWAY_PID_FILE="$work/gateway/gateway.pid" \
          "${vg[@]}" "$work/gateway/gateway" run --config "$work/gateway/gateway.toml" \
          >"$work/proxy.log" 2>&1 &
        proxy_pid=$!
        ptls=$tls_port pplain=$plain_port
        wait_up "http://127.0.0.1:$plain_port/ready"
        ;;
      bare)
        THREADS=1 "${vg[@]}" "$work/bare_proxy" "127.0.0.1:$upstream_port" \
          "127.0.0.1:$bare_plain" "127.0.0.1:$bare_tls" "$certs/chain.pem" "$certs/leaf.key" \
          >"$work/proxy.log" 2>&1 &
        proxy_pid=$!
        ptls=$bare_tls pplain=$bare_plain
        wait_up "http://127.0.0.1:$bare_plain/ready"
        ;;
      *) die "unknown proxy $p" ;;
    esac
    say "$p $s: warm-up ($WARM requests)"
    load "$s" "$ptls" "$pplain" "$WARM" "$work/warm.txt"
    if [[ $TOOL == none ]]; then
      say "$p $s: $N requests"
      load "$s" "$ptls" "$pplain" "$N" "$work/run.txt"
    else
      callgrind_control -i on "$proxy_pid" >/dev/null 2>&1
      say "$p $s: $N requests counted"
      load "$s" "$ptls" "$pplain" "$N" "$work/run.txt"
      callgrind_control -d "$p.$s" "$proxy_pid" >/dev/null 2>&1
      callgrind_control -i off "$proxy_pid" >/dev/null 2>&1
    fi
    stop_pid "$proxy_pid"
    proxy_pid=
    [[ $TOOL == none ]] && continue
    # The dump named after the run: the file with the largest Ir among this run's dumps.
    ir=0
    for f in "$cg"*; do
      v=$(awk '/^summary:/ { print $2 }' "$f")
      ((${v:-0} > ir)) && ir=$v && best=$f
    done
    [[ $best == "$cg" ]] || mv "$best" "$cg"
    find "$OUT_DIR" -name "callgrind.$p.$s.*" -delete
    per=$(awk -v i="$ir" -v n="$N" 'BEGIN { printf "%.0f", i / n }')
    say "$p $s: $per instructions per request"
    printf '| %s | %s | %s | %s | %s |\n' "$p" "$s" "$N" "$ir" "$per" >>"$work/table.md"
  done
done
[[ $TOOL == none ]] && exit 0
cat "$work/table.md"
cp "$work/table.md" "$OUT_DIR/table.md"

#!/usr/bin/env bash
# A local ACME CA for development: Pebble (Let's Encrypt's test server, Debian package `pebble`)
# with pebble-challtestsrv as its DNS server (every name resolves to 127.0.0.1).
#
#   source scripts/pebble.sh
#   pebble_start DIR HTTP_PORT TLS_PORT   # validates HTTP-01 on HTTP_PORT, TLS-ALPN-01 on TLS_PORT
#   pebble_stop DIR
#
# After pebble_start: directory https://127.0.0.1:14000/dir, DIR/ca.pem (trust for the directory:
# tls.acme.ca_file), DIR/root.pem (the root that signs issued certificates: trust it in
# clients). Pebble keeps nothing across restarts: a new root and no accounts each time.

# shellcheck source=scripts/local-ca.sh
source "$(dirname "${BASH_SOURCE[0]}")/local-ca.sh"

pebble_start() {
  local dir=$1 http_port=$2 tls_port=$3
  mkdir -p "$dir"
  if [[ ! -f $dir/leaf.pem ]]; then
    local_ca_and_leaf "$dir" "Pebble listener CA (development)" 3650 >"$dir/openssl.log" 2>&1 || {
      cat "$dir/openssl.log" >&2
      return 1
    }
  fi
  cat >"$dir/pebble.json" <<EOF
{"pebble": {
  "listenAddress": "127.0.0.1:14000",
  "managementListenAddress": "127.0.0.1:15000",
  "certificate": "$dir/leaf.pem",
  "privateKey": "$dir/leaf.key",
  "httpPort": $http_port,
  "tlsPort": $tls_port,
  "ocspResponderURL": "",
  "externalAccountBindingRequired": false,
  "certificateValidityPeriod": 86400
}}
EOF
  pebble-challtestsrv -dns01 127.0.0.1:8053 -defaultIPv4 127.0.0.1 -defaultIPv6 "" \
    -http01 "" -https01 "" -tlsalpn01 "" -management 127.0.0.1:8055 \
    >"$dir/challtestsrv.log" 2>&1 &
  echo $! >"$dir/challtestsrv.pid"
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 \
    pebble -config "$dir/pebble.json" -dnsserver 127.0.0.1:8053 >"$dir/pebble.log" 2>&1 &
  echo $! >"$dir/pebble.pid"
  local _
  for _ in $(seq 50); do
    if curl -fsS --cacert "$dir/ca.pem" -o "$dir/root.pem" https://127.0.0.1:15000/roots/0 2>/dev/null; then
      echo "pebble: ACME directory https://127.0.0.1:14000/dir (validating on :$http_port and :$tls_port)"
      return 0
    fi
    sleep 0.2
  done
  echo "pebble: did not start; see $dir/pebble.log" >&2
  tail -n 20 "$dir/pebble.log" >&2
  return 1
}

pebble_stop() {
  local dir=$1 f
  for f in "$dir/pebble.pid" "$dir/challtestsrv.pid"; do
    [[ -f $f ]] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}

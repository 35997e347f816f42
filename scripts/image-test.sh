#!/usr/bin/env bash
# The runtime images without Docker: builds a root filesystem holding only what
# Dockerfile.api and Dockerfile.gateway put in theirs (distroless cc-debian12: glibc, libgcc,
# CA roots, /etc/passwd with nonroot 65532, /tmp; the binaries in /usr/local/bin, config/ in
# /etc/gatehouse/config, the gateway's ACME directory owned by 65532), then runs both binaries
# chrooted into it as uid 65532 with the images' environment (APP_ENV=production) against the
# test PostgreSQL over verified TLS: migrate, serve, the images' HEALTHCHECK commands, and a
# request through the gateway to the API. No shell, curl or package manager inside.
#
#   scripts/image-test.sh [BIN_DIR [GATEWAY_BIN]]
#       BIN_DIR (default target/release) holds core-api, and the gateway unless GATEWAY_BIN names
#       it: make test passes the PGO build the gateway image ships (scripts/pgo-build.sh)
#
# Needs: root (chroot, uid switch) or unprivileged user namespaces (unshare -r), openssl,
# curl, and DATABASE_URL / TEST_PG_CA_FILE from scripts/pg.sh (make test provides them).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin_dir=${1:-$repo/target/release}
gateway_bin=${2:-$bin_dir/gateway}
say() { printf 'image-test: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

for b in "$bin_dir/core-api" "$gateway_bin"; do
  [[ -x $b ]] || die "no $b (build it first)"
done
: "${DATABASE_URL:?DATABASE_URL (scripts/pg.sh) is needed}"
: "${TEST_PG_CA_FILE:?TEST_PG_CA_FILE (scripts/pg.sh) is needed}"

root=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-rootfs.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$root"
}
trap cleanup EXIT
[[ -n ${IMAGE_TEST_KEEP:-} ]] && trap - EXIT

# --- the root filesystem --------------------------------------------------------------------
chmod 0755 "$root" # mktemp makes it 0700: the runtime user must reach /
install -d "$root"/{usr/local/bin,etc/gatehouse,etc/ssl/certs,tmp,run/secrets,var/lib/gatehouse}
chmod 1777 "$root/tmp"
install -m 0755 "$bin_dir/core-api" "$root/usr/local/bin/"
install -m 0755 "$gateway_bin" "$root/usr/local/bin/gateway"
cp -r "$repo/config" "$root/etc/gatehouse/config"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
# Docker and Kubernetes mount /etc/hosts (and resolv.conf) into every container.
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
install -d -o 65532 -g 65532 "$root/var/lib/gatehouse/acme" "$root/home/nonroot"
# The shared libraries the binaries load (what distroless/cc ships), at the same paths.
for lib in $(ldd "$bin_dir/core-api" "$gateway_bin" | awk '/=>/ {print $3} /^\t\/lib/ {print $1}' | sort -u); do
  install -D -m 0755 "$lib" "$root$lib"
done
# Secrets as an orchestrator would mount them (readable by the runtime user only).
"$bin_dir/core-api" keygen >"$root/run/secrets/jwt_signing_key"
cp "$TEST_PG_CA_FILE" "$root/run/secrets/pg-ca.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -keyout "$root/run/secrets/tls.key" -out "$root/run/secrets/tls.pem" \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" >/dev/null 2>&1
chown 65532:65532 "$root"/run/secrets/* 2>/dev/null || true
chmod 0400 "$root"/run/secrets/*

# --- running inside it -----------------------------------------------------------------------
# inside ENV_ARRAY CMD...: CMD in the root filesystem with exactly that environment (the image
# has no `env` binary, so the environment is set before entering).
chroot_bin=$(command -v chroot)
unshare_bin=$(command -v unshare || true)
if [[ $(id -u) -eq 0 ]]; then
  inside() {
    local -n vars=$1
    env -i "${vars[@]}" "$chroot_bin" --userspec=65532:65532 "$root" "${@:2}"
  }
  runs_as="uid 65532"
  chroot_args=(--userspec=65532:65532 "$root")
elif unshare -r true 2>/dev/null; then
  inside() {
    local -n vars=$1
    env -i "${vars[@]}" "$unshare_bin" -r "$chroot_bin" "$root" "${@:2}"
  }
  chroot_args=("$root")
  runs_as="a user namespace (not root: uid 65532 needs root to switch to)"
else
  die "needs root (chroot) or unprivileged user namespaces (unshare -r)"
fi

# start_inside ENV_ARRAY LOG CMD...: in the background; env and chroot exec into CMD, so the
# pid recorded is the service's own.
start_inside() {
  local -n vars=$1
  if [[ $(id -u) -eq 0 ]]; then
    env -i "${vars[@]}" "$chroot_bin" "${chroot_args[@]}" "${@:3}" >"$2" 2>&1 &
  else
    env -i "${vars[@]}" "$unshare_bin" -r "$chroot_bin" "${chroot_args[@]}" "${@:3}" >"$2" 2>&1 &
  fi
  pids+=($!)
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api_port=$(free_port)
https_port=$(free_port)
http_port=$(free_port)
admin_port=$(free_port)
# The test cluster's URL, with verified TLS against the CA mounted as a secret.
sep='?'
[[ $DATABASE_URL == *\?* ]] && sep='&'
db_url="${DATABASE_URL}${sep}sslmode=verify-full&sslrootcert=/run/secrets/pg-ca.pem"
db_url=${db_url/@127.0.0.1:/@localhost:}

common=(APP_ENV=production JWT_ISSUER=https://localhost JWT_AUDIENCE=gatehouse-api)
api_env=("${common[@]}" CORE_API_CONFIG=/etc/gatehouse/config/core-api.toml PORT="$api_port"
  DATABASE_URL="$db_url" JWT_SIGNING_KEY_FILE=/run/secrets/jwt_signing_key)
gw_env=("${common[@]}" GATEWAY_CONFIG=/etc/gatehouse/config/gateway.toml
  GATEWAY_HTTPS_LISTEN=127.0.0.1:$https_port PORT=$http_port GATEWAY_ADMIN_LISTEN=127.0.0.1:$admin_port
  TLS_CERT_FILE=/run/secrets/tls.pem TLS_KEY_FILE=/run/secrets/tls.key
  API_UPSTREAM=127.0.0.1:$api_port JWKS_URL=http://127.0.0.1:$api_port/.well-known/jwks.json
  FRONTEND_ORIGIN=https://app.example.com
  GATEWAY_PID_FILE=/tmp/gateway.pid GATEWAY_UPGRADE_SOCK=/tmp/upgrade.sock)

wait_for() {
  local what=$1 _
  shift
  for _ in $(seq 100); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$what did not become healthy"
}

say "root filesystem: $(du -sh "$root" | cut -f1) in $root; running as $runs_as"
inside api_env /usr/local/bin/core-api migrate >"$root/../migrate.$$.log" 2>&1 ||
  die "core-api migrate failed: $(cat "$root/../migrate.$$.log")"
rm -f "$root/../migrate.$$.log"
start_inside api_env "$root/tmp/api.log" /usr/local/bin/core-api serve
# The image's HEALTHCHECK command, run the way Docker runs it: inside, with the image's env.
wait_for "core-api (HEALTHCHECK core-api healthcheck)" inside api_env /usr/local/bin/core-api healthcheck
curl -fsS "http://127.0.0.1:$api_port/readyz" >/dev/null || die "core-api /readyz failed: $(cat "$root/tmp/api.log")"

start_inside gw_env "$root/tmp/gateway.log" /usr/local/bin/gateway run
wait_for "gateway (HEALTHCHECK gateway healthcheck)" inside gw_env /usr/local/bin/gateway healthcheck
curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null || die "gateway /readyz failed: $(cat "$root/tmp/gateway.log")"

# A request through the gateway (TLS from the mounted certificate) to the API.
code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$root/run/secrets/tls.pem" \
  --resolve "localhost:$https_port:127.0.0.1" "https://localhost:$https_port/.well-known/jwks.json" || true)
[[ $code == 200 ]] || die "GET /.well-known/jwks.json through the gateway: HTTP $code
--- gateway ---
$(cat "$root/tmp/gateway.log")"
code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$root/run/secrets/tls.pem" \
  --resolve "localhost:$https_port:127.0.0.1" "https://localhost:$https_port/api/me" || true)
[[ $code == 401 ]] || die "GET /api/me without a token through the gateway: HTTP $code, expected 401"
if [[ $(id -u) -eq 0 ]]; then
  for p in "${pids[@]}"; do
    uid=$(awk '/^Uid:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo "?")
    [[ $uid == 65532 ]] || die "process $p runs as uid $uid, not 65532"
  done
fi
say "ok: migrate, serve, both HEALTHCHECK commands, /readyz, HTTPS through the gateway to the API ($runs_as)"

#!/usr/bin/env bash
# Make sure the system tools Gatehouse builds and tests with are present.
# Idempotent and quiet: prints a single "deps: ok" when nothing had to change.
set -euo pipefail

# pebble: Let's Encrypt's ACME test server (with pebble-challtestsrv), for the ACME tests;
# prometheus: promtool, for the alert rule tests; redis-server: the shared rate-limit store;
# python3 + venv: the deployment-file checks (scripts/check-deploy.sh) and small helpers;
# chromium: the browser the front end's tests drive (scripts/web-test.sh, Playwright);
# nginx + nghttp2-client (h2load): the upstream and the load of the gateway's PGO training
# (scripts/pgo-build.sh).
APT_PACKAGES=(postgresql postgresql-contrib openssl cmake build-essential pkg-config curl ca-certificates pebble prometheus redis-server python3 python3-venv chromium nginx nghttp2-client)

have() { command -v "$1" >/dev/null 2>&1; }

# Debian keeps the server binaries off PATH (/usr/lib/postgresql/N/bin).
have_pg_tool() {
  local d
  have "$1" && return 0
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/$1 ]] && return 0
  done
  return 1
}

missing=()
for tool in initdb pg_ctl psql; do
  have_pg_tool "$tool" || missing+=("$tool")
done
for tool in openssl cmake cc pkg-config curl pebble pebble-challtestsrv promtool redis-server chromium h2load; do
  have "$tool" || missing+=("$tool")
done
[[ -x /usr/sbin/nginx ]] || have nginx || missing+=(nginx)
if [[ ! -x /usr/bin/python3 ]] || ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
  missing+=("python3-venv")
fi
# pg.sh runs the cluster as the postgres OS user when we are root; the
# Debian package creates that user.
if [[ $(id -u) -eq 0 ]] && ! id -u postgres >/dev/null 2>&1; then
  missing+=("postgres-user")
fi

did_something=0

if ((${#missing[@]} > 0)); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "deps: missing: ${missing[*]}" >&2
    echo "deps: install them with: sudo apt-get install -y --no-install-recommends ${APT_PACKAGES[*]}" >&2
    exit 1
  fi
  # Keep apt's chatter out of the way, but show it if something goes wrong.
  apt_log=$(mktemp)
  # Packages would start their daemons (prometheus on :9090, the gateway's admin port; a
  # system-wide PostgreSQL): only the binaries are wanted. policy-rc.d = 101 forbids starts.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
  fi
  trap 'rm -f "$apt_log"; if ((own_policy)); then rm -f "$policy"; fi' EXIT
  export DEBIAN_FRONTEND=noninteractive
  echo "deps: missing ${missing[*]}; running apt-get update"
  if ! apt-get update -q >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    exit 1
  fi
  echo "deps: apt-get install ${APT_PACKAGES[*]}"
  if ! apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}" >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    exit 1
  fi
  did_something=1
fi

# The front end (web/) builds with Next.js 16, which needs Node.js 20.9 or newer; Debian 12's
# own nodejs is 18, so it does not come from apt here.
node_ok() {
  have node && have npm && node -e '
const [a, b] = process.versions.node.split(".").map(Number);
process.exit(a > 20 || (a === 20 && b >= 9) ? 0 : 1)' 2>/dev/null
}
if ! node_ok; then
  echo "deps: Node.js 20.9+ with npm is needed for web/ (found: $(node --version 2>/dev/null || echo none));" >&2
  echo "deps: install it from https://nodejs.org (or NodeSource's Debian packages, or nvm)" >&2
  exit 1
fi

if ! have cargo; then
  echo "deps: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi

# `make test` gates on fmt and clippy, so their components must exist.
components=()
cargo fmt --version >/dev/null 2>&1 || components+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || components+=(clippy)
if ((${#components[@]} > 0)); then
  if ! have rustup; then
    echo "deps: missing Rust components ${components[*]} and no rustup to add them" >&2
    exit 1
  fi
  echo "deps: rustup component add ${components[*]}"
  rustup component add "${components[@]}"
  did_something=1
fi

if ((did_something == 0)); then
  echo "deps: ok"
fi

#!/usr/bin/env bash
# What `make test` (and CI) runs: fmt, clippy and the test suite against a
# throwaway PostgreSQL cluster that is always torn down afterwards.
# Extra arguments are passed to `cargo test`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

step() { printf '\n==> %s\n' "$*"; }

if [[ ${CI:-} == true ]]; then
  export RUST_BACKTRACE=1 CARGO_TERM_COLOR=never
fi

step "dependencies"
"$repo/scripts/install-deps.sh"

# shellcheck source=scripts/pg.sh
source "$repo/scripts/pg.sh"

pg_tmp=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-pg.XXXXXX")
cleanup() {
  # A second Ctrl-C/SIGTERM (make forwards them) must not cut the cleanup short.
  trap '' INT TERM
  pg_stop "$pg_tmp" || true
  rm -rf "$pg_tmp"
}
# EXIT covers success and failure; INT/TERM exit so that EXIT runs too.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "postgres: throwaway cluster in $pg_tmp"
if ! pg_start "$pg_tmp"; then
  if [[ -f $pg_tmp/postgres.log ]]; then
    echo "--- last 50 lines of $pg_tmp/postgres.log ---" >&2
    tail -n 50 "$pg_tmp/postgres.log" >&2
  fi
  exit 1
fi
echo "DATABASE_URL=$DATABASE_URL"

step "alert rules: promtool check + unit tests (deploy/prometheus)"
promtool check config deploy/prometheus/prometheus.yml
for t in deploy/prometheus/tests/*.test.yml; do
  promtool test rules "$t"
done
python3 deploy/grafana/check_dashboard.py

step "deployment files (scripts/check-deploy.sh): Kubernetes schemas, compose-spec, hadolint, project rules"
"$repo/scripts/check-deploy.sh"

step "cargo fmt --all --check (and the fuzz targets, their own workspace)"
cargo fmt --all --check
rustfmt --edition 2024 --check fuzz/fuzz_targets/*.rs

step "cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test --workspace --locked${*:+ $*}"
cargo test --workspace --locked "$@"

step "schemathesis: the core API against core-api/openapi.json, every check (scripts/schemathesis.sh)"
"$repo/scripts/schemathesis.sh"

step "front end: build, JavaScript budget, browser tests in chromium against the real stack (scripts/web-test.sh)"
"$repo/scripts/web-test.sh"

step "release build of the core API (what its image ships): cargo build --release -p core-api"
cargo build --release --locked -p core-api

step "the gateway's PGO release build (what its image ships; scripts/pgo-build.sh): instrumented build, trained on the bench's requests, optimised build"
"$repo/scripts/pgo-build.sh"

step "runtime image layout (scripts/image-test.sh): the shipped binaries in a distroless-like root filesystem"
"$repo/scripts/image-test.sh" "$repo/target/release" "$repo/target/pgo/bin/gateway"

step "all checks passed"

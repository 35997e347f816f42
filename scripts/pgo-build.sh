#!/usr/bin/env bash
# The gateway's release build with profile-guided optimisation (PGO): what the gateway image
# ships, what `make test` runs its image test with and what bench/gateway.sh measures.
#
#   scripts/pgo-build.sh          ->  target/pgo/bin/gateway, target/pgo/bin/bare_proxy
#   scripts/pgo-build.sh instrumented   step 1 only (Dockerfile.gateway's dependency layer)
#
# 1. An instrumented release build of the gateway and of the bare Pingora proxy
#    (gateway/examples/bare_proxy.rs) with -Cprofile-generate, in target/pgo-gen.
# 2. Training: bench/icount.sh with TOOL=none drives the bench's requests through both, on
#    loopback against the bench's nginx upstream: plain HTTP/1.1, TLS HTTP/1.1, TLS h2 and the
#    JWT + CORS + rate-limit route, PGO_N requests each; then the gateway again over TLS with
#    its access log on, as production runs it (config/gateway.toml logs at info). Every proxy
#    exits normally (SIGTERM) and writes its profile.
# 3. llvm-profdata merges the profiles into target/pgo/merged.profdata, and the same release
#    build is made again with -Cprofile-use in target/pgo. The bare proxy gets the same
#    treatment, so bench/gateway.sh's "gateway vs bare Pingora" compares like with like.
#    Both binaries are then copied to target/pgo/bin/, the one place the image build,
#    `make test` and bench/gateway.sh take them from (cargo's own path holds the host triple).
#
# Both builds use fat LTO and one codegen unit (the release profile's thin LTO and 4 units stay
# for everyday builds): with PGO it measured +2.0 to +4.3 % req/s and −2 to −3 % instructions,
# for ~1 min more per build. Both are full builds of the dependency graph (the flags differ
# from target/release's), ~5–6 min each on 2 cores. The measured gains are in bench/README.md
# ("Levers").
#
# Environment: PGO_N [40000] requests per scenario and proxy. llvm-profdata must come from the
# LLVM the compiler was built with: rustup's llvm-tools component (added here when missing),
# else llvm-profdata-<major> on PATH.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
say() { printf 'pgo-build: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

case ${1:-all} in
  all | instrumented) only=${1:-all} ;;
  *) die "usage: scripts/pgo-build.sh [instrumented]" ;;
esac
PGO_N=${PGO_N:-40000}
[[ $PGO_N =~ ^[0-9]+$ ]] && ((PGO_N >= 100)) || die "PGO_N must be a whole number >= 100 (got '$PGO_N')"

host=$(rustc -vV | awk '/^host:/ { print $2 }')
llvm_major=$(rustc -vV | awk '/^LLVM version:/ { split($3, v, "."); print v[1] }')
[[ -n $host && -n $llvm_major ]] || die "cannot read the host triple and LLVM version from rustc -vV"
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
if [[ ! -x $profdata ]] && command -v rustup >/dev/null; then
  say "adding rustup's llvm-tools component (llvm-profdata for LLVM $llvm_major)"
  rustup component add llvm-tools >&2 || say "rustup could not add llvm-tools"
fi
if [[ ! -x $profdata ]]; then
  profdata=$(command -v "llvm-profdata-$llvm_major" || true)
  [[ -n $profdata ]] || die "no llvm-profdata for LLVM $llvm_major: rustup component add llvm-tools"
fi

gen_dir=$repo/target/pgo-gen
use_dir=$repo/target/pgo
raw=$gen_dir/profraw
# build NAME=VALUE...: the gateway's binary, then the bare proxy, in two cargo runs: building an
# example enables the dev-dependencies' features too, and the binary that ships is built with the
# gateway's own features only (as `cargo build -p gateway` builds it).
build() {
  local target
  for target in "--bin gateway" "--example bare_proxy"; do
    # shellcheck disable=SC2086 # the target is two words
    env "$@" "CARGO_PROFILE_RELEASE_LTO=${CARGO_PROFILE_RELEASE_LTO:-fat}" \
      "CARGO_PROFILE_RELEASE_CODEGEN_UNITS=${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-1}" \
      cargo build --release --locked --target "$host" -p gateway $target
  done
}

say "1/3 instrumented build ($gen_dir)"
rm -rf "$raw"
build "RUSTFLAGS=${RUSTFLAGS:-} -Cprofile-generate=$raw" "CARGO_TARGET_DIR=$gen_dir"
[[ $only == all ]] || exit 0

say "2/3 training: bench/icount.sh TOOL=none, $PGO_N requests per scenario and proxy"
# train NAME=VALUE...: bench/icount.sh's requests through the instrumented binaries.
train() {
  env -u LLVM_PROFILE_FILE GATEWAY_BIN="$gen_dir/$host/release/gateway" BARE_BIN="$gen_dir/$host/release/examples/bare_proxy" \
    TOOL=none N="$PGO_N" "$@" bench/icount.sh
}
train SCENARIOS="plain-h1 tls-h1 tls-h2 tls-jwt"
train PROXIES=gateway SCENARIOS="tls-h1 tls-jwt" LOG_LEVEL=info
# One file per binary (LLVM merges the runs of one binary into its file): both must be there.
shopt -s nullglob
profiles=("$raw"/*.profraw)
((${#profiles[@]} >= 2)) || die "training left ${#profiles[@]} profile(s) in $raw, expected one per proxy"
mkdir -p "$use_dir"
"$profdata" merge -o "$use_dir/merged.profdata" "${profiles[@]}"

say "3/3 optimised build with the profile ($use_dir)"
build "RUSTFLAGS=${RUSTFLAGS:-} -Cprofile-use=$use_dir/merged.profdata" "CARGO_TARGET_DIR=$use_dir"
install -D -m 0755 "$use_dir/$host/release/gateway" "$use_dir/bin/gateway"
install -D -m 0755 "$use_dir/$host/release/examples/bare_proxy" "$use_dir/bin/bare_proxy"
say "built $use_dir/bin/gateway and $use_dir/bin/bare_proxy"

#!/usr/bin/env bash
# What `make fuzz` runs: the cargo-fuzz targets in fuzz/fuzz_targets/ (libFuzzer, nightly
# toolchain), each for FUZZ_SECONDS (default 60), one after another. Not part of `make test`.
#
#   scripts/fuzz.sh                  build, then run all four targets
#   scripts/fuzz.sh jwt cursor       build, then run only these
#   FUZZ_BUILD=0 scripts/fuzz.sh     run what was built last (no cargo at all)
#
# Inputs libFuzzer finds interesting go to fuzz/target/corpus/<target>/ (kept between runs,
# never committed); the hand-written seeds in fuzz/corpus/<target>/ are read, never written.
# A crash stops that target, saves the input under fuzz/artifacts/<target>/, and the script
# exits non-zero after the remaining targets have run.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

all_targets=(request_head cursor timestamp jwt)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")
seconds=${FUZZ_SECONDS:-60}
max_len=${FUZZ_MAX_LEN:-4096}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

if [[ ${FUZZ_BUILD:-1} != 0 ]]; then
  # The fuzz crate is its own workspace; its lock is the product's lock plus the two pinned
  # fuzz-only crates, so the fuzzers exercise exactly the dependency versions that ship.
  cp Cargo.lock fuzz/Cargo.lock
  # `cargo fuzz build` takes one target or none (= all).
  if [[ ${#targets[@]} -eq 1 ]]; then
    cargo +nightly fuzz build "${targets[0]}"
  else
    cargo +nightly fuzz build
  fi
fi

triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir=fuzz/target/$triple/release

failed=()
summary=()
for t in "${targets[@]}"; do
  bin=$bin_dir/$t
  if [[ ! -x $bin ]]; then
    echo "fuzz: $bin is not built (run without FUZZ_BUILD=0)" >&2
    exit 2
  fi
  mkdir -p "fuzz/target/corpus/$t" "fuzz/artifacts/$t"
  dict=()
  [[ -f fuzz/dict/$t.dict ]] && dict=("-dict=fuzz/dict/$t.dict")
  log=fuzz/target/fuzz-$t.log
  printf '\n==> fuzz %s for %ss\n' "$t" "$seconds"
  status=0
  "$bin" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" "${dict[@]}" \
    "fuzz/target/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1 || status=$?
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^SUMMARY|Test unit written' "$log" || true
  grep -A1 'panicked at' "$log" || true
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n1)
  corpus=$(sed -n 's/.*DONE .* corp: \([0-9]*\)\/.*/\1/p' "$log" | tail -n1)
  summary+=("$(printf '%-13s %12s execs %6ss  corpus %5s  %s' "$t" "${execs:-?}" "${took:-?}" "${corpus:-?}" \
    "$([[ $status -eq 0 ]] && echo ok || echo "CRASH (log: $log)")")")
  [[ $status -eq 0 ]] || failed+=("$t")
done

printf '\n==> fuzz summary\n'
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: crashes in ${failed[*]}; inputs in fuzz/artifacts/<target>/." >&2
  echo "      Reproduce: $bin_dir/<target> fuzz/artifacts/<target>/<file>" >&2
  exit 1
fi

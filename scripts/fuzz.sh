#!/usr/bin/env bash
# Runs castellan's fuzz targets (fuzz/fuzz_targets: path normalisation, return URLs, cookies,
# bearer tokens, conditions, configuration, WebAuthn/CBOR) with cargo fuzz (libFuzzer + AddressSanitizer).
#
#   scripts/fuzz.sh [--dev] SECONDS [TARGET...]     each target for SECONDS (default: all targets)
#
# --dev builds without optimisation (with debug assertions): the build takes under half the time
# and each run does far fewer executions, which suits the test suite's smoke (do the seeds still
# pass, do the targets still build); real fuzzing runs leave it out.
#
# New inputs go to fuzz/target/corpus/<target> (not committed); the committed seeds in
# fuzz/corpus/<target> are read first. A crash stops the run with the input in fuzz/artifacts/<target>/:
# add it to fuzz/corpus/<target> once fixed, so the unit test `fuzz_targets` keeps it fixed.
# cargo fuzz passes -Zsanitizer; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
profile=release
build=(--release)
if [ "${1:-}" = --dev ]; then
  profile=debug
  build=(--dev)
  shift
fi
secs=${1:?usage: scripts/fuzz.sh [--dev] SECONDS [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
export RUSTC_BOOTSTRAP=1
printf '==> building %d fuzz targets, %s (the first build takes %s)\n' "${#targets[@]}" "$profile" \
  "$([ "$profile" = debug ] && echo 'about 2.5 minutes' || echo 'about 5 minutes')" >&2
mkdir -p target
if ! cargo fuzz build "${build[@]}" >target/build.log 2>&1; then
  tail -30 target/build.log >&2
  echo "error: the fuzz targets did not build (whole log: fuzz/target/build.log)" >&2
  exit 1
fi
triple=$(rustc -vV | sed -n 's/^host: //p')
for t in "${targets[@]}"; do
  mkdir -p "target/corpus/$t" "artifacts/$t"
  log=$(mktemp)
  # The binaries built above, run directly (cargo fuzz run would rebuild after any source change).
  if ! "target/$triple/$profile/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$secs" \
       -print_final_stats=1 "target/corpus/$t" "corpus/$t" >"$log" 2>&1; then
    tail -40 "$log" >&2
    printf 'error: fuzz target %s failed: the input is in fuzz/artifacts/%s/\n' "$t" "$t" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
  corpus=$(find "target/corpus/$t" "corpus/$t" -type f | wc -l)
  printf '%-10s %6s s  %10s executions  %s  corpus %s  no crash\n' "$t" "$secs" "${runs:-?}" "${cov:-cov: ?}" "$corpus"
  rm -f "$log"
done

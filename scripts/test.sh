#!/usr/bin/env bash
# castellan's whole test suite: installs the test dependencies, then runs unit and end-to-end tests
# (a real OpenID Provider, a real Streamlit app in headless Chromium, the real castellan binary).
set -euo pipefail
cd "$(dirname "$0")/.."
# Each stage says how long the run has taken so far (CI has a 30-minute budget).
stage() { printf '==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }
stage "test dependencies"
scripts/test-deps.sh
# PostgreSQL for the store tests: CASTELLAN_TEST_POSTGRES when given, else the server on
# 127.0.0.1:5432 when one answers (each test makes and drops a database of its own), else the
# tests start a throwaway cluster. Tests that restart PostgreSQL always use a cluster of their own.
if [ -z "${CASTELLAN_TEST_POSTGRES:-}" ] && command -v psql >/dev/null \
   && psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  export CASTELLAN_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/postgres
fi
echo "==> PostgreSQL for the tests: ${CASTELLAN_TEST_POSTGRES:-a throwaway cluster}" >&2
stage "benchmark smoke"
# Each benchmark once, as a smoke test that they still build and run (timings: cargo bench).
cargo test --locked --bench decision
cargo test --locked --bench propagation
cargo test --locked --bench connections
cargo test --locked --bench peers
cargo test --locked --bench tunnel
cargo test --locked --bench audit
# Each fuzz target for a few seconds, so they keep building and the seeds keep passing; built
# without optimisation, which halves the build (long runs: scripts/fuzz.sh 600).
stage "fuzzing smoke"
scripts/fuzz.sh --dev "${FUZZ_SECONDS:-10}"
stage "unit and end-to-end tests"
# The e2e tests mostly wait on processes and sockets; four at a time suits two cores.
cargo test --locked --lib --bins --tests -- --test-threads="${TEST_THREADS:-4}"
# The instruction counter once, on the test build, so it keeps working (figures: a profiling build).
stage "instruction counter smoke"
REQUESTS=50 scripts/instructions.sh target/debug/castellan
stage "all tests passed"

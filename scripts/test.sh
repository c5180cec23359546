#!/usr/bin/env bash
# castellan's whole test suite: installs the test dependencies, then runs unit and end-to-end tests
# (a real OpenID Provider, a real Streamlit app in headless Chromium, the real castellan binary).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
# Each benchmark once, as a smoke test that they still build and run (timings: cargo bench).
cargo test --locked --bench decision
# The e2e tests mostly wait on processes and sockets; four at a time suits two cores.
cargo test --locked --lib --bins --tests -- --test-threads="${TEST_THREADS:-4}"

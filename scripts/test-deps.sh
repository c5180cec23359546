#!/usr/bin/env bash
# Installs what castellan's end-to-end tests need, from the package registries only:
#   - Debian's chromium (the headless browser), nginx and caddy (ingresses for forward-auth) and
#     postgresql (throwaway clusters for the store tests) and pebble (an ACME CA for the HTTPS
#     tests), apache2 + libapache2-mod-auth-openidc, wrk and nghttp2-client (the peer
#     benchmark), openssh-server (the tunnel tests) and faketime (a clock the condition tests can
#     set), rsyslog (audit streaming) and bind9 (DNS-01); apt-get needs root,
#   - npm packages in tests/support (oidc-provider, jose, playwright-core; exact versions from package-lock.json),
#   - Streamlit in a virtual environment at tests/support/.venv,
#   - cargo-fuzz (for scripts/fuzz.sh).
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || fail "cargo is not installed: install Rust with rustup (https://rustup.rs)"
command -v node >/dev/null || fail "Node.js is not installed: oidc-provider needs Node.js >= 20.18"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=18)?0:1)' \
  || fail "Node.js $(node --version) is too old: oidc-provider needs >= 20.18"
command -v python3 >/dev/null || fail "python3 is not installed (Streamlit runs in a virtual environment)"

# Debian packages: the browser, and the ingresses the forward-auth tests put in front of castellan.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -x /usr/bin/caddy ] || missing+=(caddy)
# Pebble, Let's Encrypt's ACME test server (with pebble-challtestsrv as its DNS), for the HTTPS tests.
[ -x /usr/bin/pebble ] || missing+=(pebble)
# PostgreSQL server binaries: tests start throwaway clusters (one they can stop and restart).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# The peer benchmark (benches/peers.rs, smoke-tested below): Apache + mod_auth_openidc, wrk, h2load.
[ -x /usr/sbin/apache2 ] || missing+=(apache2)
[ -f /usr/lib/apache2/modules/mod_auth_openidc.so ] || missing+=(libapache2-mod-auth-openidc)
[ -x /usr/bin/wrk ] || missing+=(wrk)
[ -x /usr/bin/h2load ] || missing+=(nghttp2-client)
# The tunnel tests: a real OpenSSH server (started by the test on loopback with its own host key).
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
# The office-hours condition test: libfaketime sets castellan's clock from a file the test writes.
[ -x /usr/bin/faketime ] || missing+=(faketime)
# The device-certificate test: curl presents a client certificate, as a script on a device would.
[ -x /usr/bin/curl ] || missing+=(curl)
# The audit streaming test: rsyslog receives castellan's RFC 5424 records over TCP and TLS.
[ -x /usr/sbin/rsyslogd ] || missing+=(rsyslog)
# scripts/instructions.sh (smoke-tested by scripts/test.sh): callgrind counts instructions.
[ -x /usr/bin/valgrind ] || missing+=(valgrind)
# The DNS-01 test: BIND 9 is the zone's primary, taking RFC 2136 updates; dig reads the zone.
[ -x /usr/sbin/named ] || missing+=(bind9)
[ -x /usr/bin/dig ] || missing+=(bind9-dnsutils)
[ -f /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_ossl.so ] || [ -f /usr/lib/rsyslog/lmnsd_ossl.so ] || missing+=(rsyslog-openssl)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || fail "missing Debian packages: run 'sudo apt-get install ${missing[*]}'"
  step "installing Debian's ${missing[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! cmp -s tests/support/package-lock.json tests/support/node_modules/.package-lock.json 2>/dev/null; then
  step "installing npm packages into tests/support/node_modules"
  (cd tests/support && npm ci --no-audit --no-fund --loglevel=error)
fi

venv=tests/support/.venv
if ! "$venv/bin/python" -c 'import streamlit' 2>/dev/null \
   || ! cmp -s tests/support/requirements.txt "$venv/requirements.installed" 2>/dev/null; then
  step "installing Streamlit into $venv (about 20 s)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/support/requirements.txt
  cp tests/support/requirements.txt "$venv/requirements.installed"
fi
# cargo fuzz, for the fuzzing smoke (scripts/fuzz.sh); built from crates.io (about 30 s).
if ! cargo fuzz --version >/dev/null 2>&1; then
  step "installing cargo-fuzz (cargo install)"
  cargo install --quiet --locked cargo-fuzz --version 0.13.2
fi
step "test dependencies are ready"

#!/usr/bin/env bash
# Instructions castellan executes per proxied request, counted by callgrind: repeatable to the
# last few hundred instructions for the same binary and inputs, whatever else the machine does,
# so it compares two builds (or two configurations) where wall-clock figures on a shared 2-core
# machine cannot.
#
#   scripts/instructions.sh [BINARY] [TOML]
#   CALLER=token scripts/instructions.sh …    # a service account's bearer token instead
#   scripts/instructions.sh floor             # the stack floor, for comparison
#   CALLGRIND_OUT=DIR scripts/instructions.sh  # keep callgrind's files (one per thread) in DIR
#
# BINARY defaults to target/profiling/castellan (`cargo build --profile profiling`). TOML is
# appended to the configuration (e.g. a [tracing] table). The caller is a person with a
# session cookie, as the peer benchmark's browser has (signed in through the form); each
# request is decided, audited
# (the audit writer's work is counted: instrumentation stays on until the writer has flushed) and
# proxied to a small file served by Python's http.server (keep-alive). Prints instructions per
# request, and how many of them ran on SQLite's threads (the audit trail): callgrind runs castellan about
# 50 times slower, so the audit's batches hold a record or two and that share is larger than at
# load, where a batch holds hundreds.
#
# `floor` counts the peer benchmark's stack floor instead (the same hyper server and upstream
# pool with no authentication, decision or audit; `cargo build --profile profiling --bench
# peers` builds it), on the same load and upstream.
set -euo pipefail
cd "$(dirname "$0")/.."
floor=
if [ "${1:-}" = floor ]; then
  floor=$(ls -t target/profiling/deps/peers-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
  [ -n "$floor" ] || { echo "error: no stack floor: run cargo build --profile profiling --bench peers" >&2; exit 1; }
  bin=$(realpath "$floor")
else
  bin=$(realpath "${1:-target/profiling/castellan}")
fi
extra=${2:-}
requests=${REQUESTS:-4000}
for tool in valgrind callgrind_control callgrind_annotate h2load curl python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing (valgrind, nghttp2-client, curl)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "error: no castellan binary at $bin: run cargo build --profile profiling" >&2; exit 1; }

dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

up=$(free_port); port=$(free_port)
mkdir -p "$dir/www" && printf 'a small body from the upstream\n' > "$dir/www/small"
# Keep-alive (HTTP/1.1), so castellan reuses its upstream connections as it would with any app.
python3 -c 'import functools, http.server as h, sys
h.SimpleHTTPRequestHandler.protocol_version = "HTTP/1.1"
handler = functools.partial(h.SimpleHTTPRequestHandler, directory=sys.argv[2])
h.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()' "$up" "$dir/www" >/dev/null 2>&1 & pids+=($!)
if [ -n "$floor" ]; then
  valgrind --tool=callgrind --separate-threads=yes --instr-atstart=no --callgrind-out-file="$dir/callgrind.out" \
    "$bin" --castellan-floor "127.0.0.1:$port" "http://127.0.0.1:$up" > "$dir/valgrind.log" 2>&1 & vg=$!; pids+=($vg)
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/small" >/dev/null && break; sleep 0.1; done
  credential="x-caller: nobody"
else # castellan (not indented: the here-documents below end at the line's start)
cat > "$dir/castellan.toml" <<EOF
listen = "127.0.0.1:$port"
public_url = "http://localhost:$port"
store = "sqlite://$dir/castellan.db"
$extra

[[apps]]
id = "demo"
host = "127.0.0.1"
upstream = "http://127.0.0.1:$up"
EOF
"$bin" users add bench@example.com --password-stdin --config "$dir/castellan.toml" <<<'a bench password, long enough' >/dev/null
"$bin" access add demo user:bench@example.com --config "$dir/castellan.toml" >/dev/null
if [ "${CALLER:-browser}" = token ]; then
  key=$("$bin" service-accounts create bench --config "$dir/castellan.toml" | sed -n 's/^  \([^ ]\+\)$/\1/p' | head -1)
  "$bin" access add demo serviceAccount:bench --config "$dir/castellan.toml" >/dev/null
fi

RUST_LOG=warn valgrind --tool=callgrind --separate-threads=yes --instr-atstart=no --callgrind-out-file="$dir/callgrind.out" \
  "$bin" serve --config "$dir/castellan.toml" > "$dir/valgrind.log" 2>&1 & vg=$!; pids+=($vg)
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/.castellan/healthz" >/dev/null && break; sleep 0.1; done
if [ "${CALLER:-browser}" = token ]; then
  token=$(curl -sf -u "bench:$key" -d grant_type=client_credentials -d audience=demo \
    "http://127.0.0.1:$port/.castellan/token" | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
  credential="authorization: Bearer $token"
else
  # Signed in as a browser is: the sign-in form (its CSRF token) on castellan's own host, the POST,
  # the hand-off that sets the app host's session cookie.
  cookie=$(python3 - "$port" <<'PY'
import html.parser, http.cookiejar, sys, urllib.parse, urllib.request
port = sys.argv[1]
jar = http.cookiejar.CookieJar()
web = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
form = web.open(f"http://127.0.0.1:{port}/.castellan/sign_in?rd=/small")
class Inputs(html.parser.HTMLParser):
    fields = {}
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and "name" in a:
            self.fields[a["name"]] = a.get("value") or ""
page = Inputs(); page.feed(form.read().decode())
origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(form.geturl()))
body = urllib.parse.urlencode({"csrf": page.fields["csrf"], "rd": page.fields.get("rd", "/small"),
    "email": "bench@example.com", "password": "a bench password, long enough"}).encode()
web.open(urllib.request.Request(origin + "/.castellan/sign_in", data=body, headers={"Origin": origin}))
print(next(f"{c.name}={c.value}" for c in jar if c.name == "castellan_session" and c.domain.startswith("127.0.0.1")))
PY
  )
  credential="cookie: $cookie"
fi
fi
# Every request must reach the upstream (a refusal would count the wrong work).
load() {
  local codes
  codes=$(h2load --h1 -c8 -n "$1" -H "$credential" "http://127.0.0.1:$port/small" | grep -E '^status codes')
  echo "$codes"
  case "$codes" in "status codes: $1 2xx,"*) ;; *) echo "error: not every request was answered 2xx" >&2; exit 1 ;; esac
}
load 400 >/dev/null   # warm: caches, pools, the audit writer's statements
sleep 3
callgrind_control -i on "$vg" >/dev/null
load "$requests" >&2
sleep 3               # the audit writer flushes these requests' records
callgrind_control -i off "$vg" >/dev/null
kill "$vg"; wait "$vg" 2>/dev/null || true
# One file a thread: SQLite runs on sqlx's connection threads (the audit writer's, and the store's
# for the odd session lookup), never on the request threads.
total=0; sqlite=0
for f in "$dir"/callgrind.out-*; do
  n=$(callgrind_annotate "$f" 2>/dev/null | sed -n 's/^\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
  total=$((total + ${n:-0}))
  if grep -q 'sqlite3_step' "$f"; then sqlite=$((sqlite + ${n:-0})); fi
done
[ "$total" -gt 0 ] || { echo "error: callgrind counted nothing (see $dir/valgrind.log)" >&2; cat "$dir/valgrind.log" >&2; exit 1; }
[ "$sqlite" -gt 0 ] || [ -n "$floor" ] || { echo "error: no SQLite thread counted: the audit trail wrote nothing" >&2; exit 1; }
[ -n "${CALLGRIND_OUT:-}" ] && mkdir -p "$CALLGRIND_OUT" && cp "$dir"/callgrind.out-* "$CALLGRIND_OUT"/
echo "$((total / requests)) instructions per request ($requests requests, $(basename "$bin")): $(((total - sqlite) / requests)) on the request threads, $((sqlite / requests)) in SQLite's threads (the audit trail)"

#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for tests and prints one line: "URL DATA_DIR PG_BIN".
# Stop and start it again with PG_BIN/pg_ctl -D DATA_DIR (as the postgres user when root).
#   throwaway-postgres.sh OWNER_PID
# The cluster listens on 127.0.0.1 only (a free port), trusts local connections, keeps nothing
# durable, and is stopped and deleted as soon as process OWNER_PID exits (a watchdog polls it), so
# a test that panics or is killed leaves nothing running. Needs Debian's `postgresql` package
# (scripts/test-deps.sh installs it); run as root it runs the server as the `postgres` user.
set -euo pipefail
owner=${1:?usage: throwaway-postgres.sh OWNER_PID}
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "error: PostgreSQL server binaries not found: run 'apt-get install postgresql' (scripts/test-deps.sh does)" >&2; exit 1; }
as_pg=()
dir=$(mktemp -d "${TMPDIR:-/tmp}/castellan-pg.XXXXXX")
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); chown postgres: "$dir"; fi
"${as_pg[@]}" "$pgbin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1; }
for attempt in 1 2 3 4 5 6 7 8; do
  port=$((20000 + RANDOM % 40000))
  # Settings go in the cluster's own file, so a plain `pg_ctl start` after a stop keeps them.
  cp "$dir/data/postgresql.conf.orig" "$dir/data/postgresql.conf" 2>/dev/null || cp "$dir/data/postgresql.conf" "$dir/data/postgresql.conf.orig"
  printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n" \
    "$port" "$dir" >>"$dir/data/postgresql.conf"
  if "${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start >/dev/null 2>&1; then
    # The watchdog: stop and delete the cluster when the owner is gone.
    setsid nohup bash -c "while kill -0 $owner 2>/dev/null; do sleep 1; done
      ${as_pg[*]} '$pgbin/pg_ctl' -D '$dir/data' -m immediate -w stop >/dev/null 2>&1; rm -rf '$dir'" \
      >/dev/null 2>&1 &
    echo "postgres://postgres@127.0.0.1:$port/postgres $dir/data $pgbin"
    exit 0
  fi
done
cat "$dir/server.log" >&2
rm -rf "$dir"
echo "error: could not start a throwaway PostgreSQL (see the log above)" >&2
exit 1

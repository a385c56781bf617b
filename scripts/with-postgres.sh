#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL server on loopback, its URL in MBV2_TEST_POSTGRES.
# Installs Debian's postgresql package if the server is missing. Used by .ci/run; locally:
#   bash scripts/with-postgres.sh .venv/bin/python -m pytest tests/test_postgres.py
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "installing PostgreSQL (Debian package) ..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null
fi
bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
port=${MBV2_PG_PORT:-54329}
root=$(mktemp -d /tmp/mbv2-pg.XXXXXX)
chown postgres "$root"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
as_pg "$bin/initdb" -D "$root/data" -A trust -U postgres >/dev/null
as_pg "$bin/pg_ctl" -D "$root/data" -l "$root/log" -w -o "-p $port -k $root -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
stop() { as_pg "$bin/pg_ctl" -D "$root/data" -m fast -w stop >/dev/null 2>&1 || true; rm -rf "$root"; }
trap stop EXIT
as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres mbv2
export MBV2_TEST_POSTGRES="postgresql+psycopg://postgres@127.0.0.1:$port/mbv2"
pg=""; [ "$(id -u)" = 0 ] && pg="runuser -u postgres --"
# for the test that stops and restarts the server mid-study
export MBV2_TEST_PG_STOP="$pg $bin/pg_ctl -D $root/data -m fast -w stop"
export MBV2_TEST_PG_START="$pg $bin/pg_ctl -D $root/data -l $root/log -w -o '-p $port -k $root -c listen_addresses=127.0.0.1 -c max_connections=200' start"
"$@"

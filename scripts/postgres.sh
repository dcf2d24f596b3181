#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the tests (installing Debian's postgresql if needed) on
# 127.0.0.1:${PGPORT:-55432} with trust auth for local connections, and prints the URL the
# tests read as MESHARA_TEST_POSTGRES_URL. Idempotent: a server already answering is reused.
# Stop it with: scripts/postgres.sh stop
set -euo pipefail

PORT=${PGPORT:-55432}
DATA=${MESHARA_PGDATA:-/tmp/meshara-test-pg}
URL="postgres://postgres@127.0.0.1:${PORT}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
as_pg() { as_root su postgres -s /bin/sh -c "$*"; }

if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

if [ "${1:-}" = stop ]; then
  as_pg "$BIN/pg_ctl -D $DATA stop -m fast" >&2 || true
  exit 0
fi

if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
  echo "$URL"
  exit 0
fi
as_root rm -rf "$DATA"
as_root mkdir -p "$DATA"
as_root chown postgres:postgres "$DATA"
as_pg "$BIN/initdb -D $DATA -A trust -U postgres --no-sync" >/dev/null
as_pg "$BIN/pg_ctl -D $DATA -l $DATA/server.log -w -t 60 -o \"-p $PORT -k $DATA -c listen_addresses=127.0.0.1 -c fsync=off\" start" >&2
for _ in $(seq 1 60); do
  "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.5
done
"$BIN/pg_isready" -h 127.0.0.1 -p "$PORT" >&2
echo "$URL"

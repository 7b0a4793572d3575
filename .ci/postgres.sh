#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server on a loopback port, in a temporary folder,
# and prints its base URL (no database name): the value for PADDOCK_TEST_POSTGRES.
#   export PADDOCK_TEST_POSTGRES=$(.ci/postgres.sh)
# Stop it with: pg_ctl -D <folder>/data stop (the folder is printed on stderr).
# PG_OPTIONS: more server options, e.g. "-c max_connections=20" (a later -c wins).
set -euo pipefail
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
# Elsewhere (Homebrew on macOS) pg_config knows where the server's programs are.
if [ -z "$PGBIN" ] && command -v pg_config >/dev/null; then
  PGBIN=$(pg_config --bindir)
fi
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
  echo "PostgreSQL is not installed (Debian: apt-get install postgresql; macOS: brew install postgresql@16)" >&2
  exit 1
fi
PORT=${PGPORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
DIR=$(mktemp -d /tmp/paddock-pg.XXXXXX)
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; fi
as_pg "$PGBIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c max_connections=300 ${PG_OPTIONS:-}" start >/dev/null
echo "PostgreSQL running in $DIR on 127.0.0.1:$PORT" >&2
echo "postgres://postgres@127.0.0.1:$PORT"

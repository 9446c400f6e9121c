#!/usr/bin/env bash
# Run a command with a throw-away PostgreSQL server: `scripts/with-postgres.sh CMD [ARGS...]`.
#
# Used by `make test` (and so by .ci/run) so that the PostgreSQL tests run wherever PostgreSQL can be had:
# Debian's `postgresql` (installed with apt when this is root and it is missing), a fresh cluster in a temporary
# folder on 127.0.0.1 at a free port, a scratch database `leukodx_test`, named to CMD by
# LEUKODX_TEST_POSTGRES_URL; the cluster is stopped and deleted when CMD ends. When LEUKODX_TEST_POSTGRES_URL is
# already set, that server is used as it is. Where PostgreSQL cannot be had, CMD still runs, this says why, and
# the PostgreSQL tests skip with a reason. LEUKODX_NO_POSTGRES=1 skips the server on purpose.
set -euo pipefail
[ "$#" -ge 1 ] || { echo "usage: scripts/with-postgres.sh CMD [ARGS...]" >&2; exit 2; }

say() { echo "with-postgres: $*" >&2; }
pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

PG_DIR=""
PG_RUN=()
stop_postgres() {
  if [ -n "$PG_DIR" ]; then
    "${PG_RUN[@]}" "$PG_CTL" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}

start_postgres() {
  if [ -z "$(pg_bindir)" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing Debian's postgresql with apt"
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
        || say "could not install postgresql with apt: the PostgreSQL tests will be skipped"
    else
      say "postgresql is not installed (apt-get install postgresql, as root): the PostgreSQL tests will be skipped"
    fi
  fi
  local bin; bin="$(pg_bindir)"
  [ -n "$bin" ] && [ -x "$bin/initdb" ] || return 0
  PG_DIR="$(mktemp -d /tmp/leukodx-pg.XXXXXX)"
  if [ "$(id -u)" = 0 ]; then  # the server refuses to run as root
    chown postgres: "$PG_DIR"
    PG_RUN=(runuser -u postgres --)
  fi
  local port
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  PG_CTL="$bin/pg_ctl"
  trap stop_postgres EXIT
  if "${PG_RUN[@]}" "$bin/initdb" -D "$PG_DIR/data" -A trust -U postgres -E UTF8 >"$PG_DIR/initdb.log" 2>&1 \
     && "${PG_RUN[@]}" "$PG_CTL" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
          -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR -c max_connections=200" start >/dev/null \
     && "${PG_RUN[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres leukodx_test; then
    export LEUKODX_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$port/leukodx_test"
    say "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (LEUKODX_TEST_POSTGRES_URL=$LEUKODX_TEST_POSTGRES_URL)"
  else
    say "could not start PostgreSQL (logs below): the PostgreSQL tests will be skipped"
    tail -n 20 "$PG_DIR"/*.log 2>/dev/null >&2 || true
  fi
}

if [ -n "${LEUKODX_TEST_POSTGRES_URL:-}" ]; then
  say "using the given LEUKODX_TEST_POSTGRES_URL"
elif [ "${LEUKODX_NO_POSTGRES:-}" = 1 ]; then
  say "LEUKODX_NO_POSTGRES=1: no PostgreSQL server, the PostgreSQL tests will be skipped"
else
  start_postgres
fi
"$@"

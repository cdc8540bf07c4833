#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the store tests (tests/server/stores).
#
#   eval "$(bash .ci/postgres.sh)"     # start one; prints the two export lines below
#   bash .ci/postgres.sh stop          # stop the one in $CURVSCOPE_TEST_POSTGRES_DIR, remove it
#
# Start prints, on stdout and nothing else:
#   export CURVSCOPE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:PORT/postgres
#   export CURVSCOPE_TEST_POSTGRES_DIR=/tmp/curvscope-pg.XXXXXX
# Idempotent: the server binaries are installed (apt-get) only when missing, and when
# $CURVSCOPE_TEST_POSTGRES_DIR already holds a running cluster it is reused, not started
# again. The cluster trusts local connections, listens on 127.0.0.1 only (a free port) and
# runs without fsync: it is for tests, its data is thrown away.
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }

find_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin /usr/local/pgsql/bin; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
    fi
  done | sort -V | tail -n 1
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  fi
}

bin_dir() {
  local dir
  dir="$(find_bin | head -n 1 || true)"
  if [ -z "$dir" ]; then
    if [ "$(id -u)" -ne 0 ]; then
      log "the PostgreSQL server (initdb, pg_ctl) is missing; install it (apt-get install postgresql)"
      exit 1
    fi
    log "installing the PostgreSQL server (apt-get install postgresql)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    dir="$(find_bin | head -n 1 || true)"
    [ -n "$dir" ] || { log "initdb/pg_ctl not found after installing postgresql"; exit 1; }
  fi
  echo "$dir"
}

# Run a server binary as the cluster's owner: `postgres` when we are root (PostgreSQL
# refuses to run as root), ourselves otherwise.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

print_exports() {  # dir port
  echo "export CURVSCOPE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$2/postgres"
  echo "export CURVSCOPE_TEST_POSTGRES_DIR=$1"
}

running_port() {  # dir -> the port of the cluster running there, or nothing
  local dir="$1"
  [ -f "$dir/postmaster.pid" ] || return 0
  as_owner "$BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1 || return 0
  sed -n 4p "$dir/postmaster.pid"
}

stop() {
  local dir="${CURVSCOPE_TEST_POSTGRES_DIR:-}"
  [ -n "$dir" ] && [ -d "$dir" ] || { log "no cluster to stop"; return 0; }
  if [ -f "$dir/postmaster.pid" ]; then
    as_owner "$BIN/pg_ctl" -D "$dir" -m immediate -w stop >&2 || true
  fi
  rm -rf "$dir"
  log "stopped and removed $dir"
}

start() {
  local dir port
  dir="${CURVSCOPE_TEST_POSTGRES_DIR:-}"
  if [ -n "$dir" ] && [ -d "$dir" ]; then
    port="$(running_port "$dir")"
    if [ -n "$port" ]; then
      log "reusing the cluster running in $dir (port $port)"
      print_exports "$dir" "$port"
      return 0
    fi
  fi
  dir="$(mktemp -d "${TMPDIR:-/tmp}/curvscope-pg.XXXXXX")"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$dir"
  fi
  chmod 700 "$dir"
  as_owner "$BIN/initdb" -D "$dir" -A trust -U postgres --no-sync >&2
  local attempt
  for attempt in 1 2 3; do
    port="$(free_port)"
    if as_owner "$BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off \
-c synchronous_commit=off -c full_page_writes=off -c max_connections=200" start >&2; then
      log "PostgreSQL running in $dir on 127.0.0.1:$port"
      print_exports "$dir" "$port"
      return 0
    fi
    log "start on port $port failed (attempt $attempt):"
    tail -n 5 "$dir/server.log" >&2 || true
  done
  rm -rf "$dir"
  exit 1
}

BIN="$(bin_dir)"
case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) log "usage: $0 [start|stop]"; exit 2 ;;
esac

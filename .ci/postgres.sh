#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the multi-host study test.
# Installs Debian's `postgresql` package when missing, creates a cluster in a temp folder
# (trust auth, 127.0.0.1 only), and prints two lines: the storage URL and the data folder
# (give it to `.ci/postgres.sh stop DIR` to shut the server down).
set -euo pipefail

run_as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "${1:-}" = "stop" ]; then
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    run_as_pg "$bin/pg_ctl" -D "$2" -m fast -w stop >/dev/null || true
    rm -rf "$2"
    exit 0
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get install -y -q postgresql >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q postgresql >/dev/null; }
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
# a free port unless one is given, so a server already running here is no obstacle
port=${AUTOWARM_PG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
data=$(mktemp -d /tmp/autowarm-pg.XXXXXX)
[ "$(id -u)" -eq 0 ] && chown postgres "$data"
run_as_pg "$bin/initdb" -D "$data" -U autowarm --auth=trust -E UTF8 >/dev/null
run_as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $data" start >/dev/null
run_as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U autowarm autowarm
echo "postgresql://autowarm@127.0.0.1:$port/autowarm"
echo "$data"

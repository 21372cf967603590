#!/usr/bin/env bash
# The multi-machine layout on one machine, with Debian's real programs:
#
#   nginx (STACK_URL) -> API_REPLICAS x `python -m server` -> PgBouncer (transaction pooling)
#                                                          -> PostgreSQL primary -> streaming standby
#
#   scripts/stack.sh up        install what is missing, start everything; last line STACK_URL=...
#   scripts/stack.sh status    what runs (exit 3 when something that should run does not)
#   scripts/stack.sh down      stop everything it started and remove its folder
#   scripts/stack.sh start|stop|restart primary|standby|pgbouncer    (used by the failure drills)
#
# Every setting in the environment (JWT_SECRET, ADMIN_EMAIL, ADMIN_PASSWORD,
# ORDER_TTL_SECONDS, WORKERS, ...) reaches the replicas; JWT_SECRET defaults to one random
# secret shared by all of them. Stack knobs: API_REPLICAS (2), STACK_READ_FROM_STANDBY (1:
# anonymous catalog reads go to the standby), STACK_DIR (.stack), STACK_HTTP_PORT,
# STACK_PRIMARY_PORT, STACK_STANDBY_PORT, STACK_PGBOUNCER_PORT (free ports by default),
# PGBOUNCER_POOL_SIZE (20), STACK_NGINX_UNLIMITED (addresses nginx's rate limits skip, e.g.
# 127.0.0.1 to run the HTTP test suite through the stack; none by default).
# It never touches another PostgreSQL: its clusters live in STACK_DIR on their own ports.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$ROOT/.stack}"
STATE="$STACK_DIR/stack.env"
RUN="$STACK_DIR/run"
LOG="$STACK_DIR/log"

say() { echo "stack: $*" >&2; }
die() { say "$*"; exit 1; }
CANNOT_INSTALL=4  # exit code when the packages are missing and cannot be installed

# initdb and PgBouncer refuse to run as root: as root their processes run as `postgres`.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
    local dir
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$dir" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
    echo "$dir"
}

install_missing() {
    local missing=()
    [ -d /usr/lib/postgresql ] && find /usr/lib/postgresql -name pg_basebackup -print -quit | grep -q . || missing+=(postgresql)
    command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    [ ${#missing[@]} = 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "missing ${missing[*]} and cannot install them (needs root and apt-get)"
        exit $CANNOT_INSTALL
    fi
    say "installing ${missing[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$STACK_DIR/apt.log" 2>&1; then
        apt-get update -q >>"$STACK_DIR/apt.log" 2>&1 || true  # a fresh machine has no package lists yet
        if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$STACK_DIR/apt.log" 2>&1; then
            say "apt-get install ${missing[*]} failed: $(tail -n 1 "$STACK_DIR/apt.log")"
            exit $CANNOT_INSTALL
        fi
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what="$2"
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "timed out waiting for $what"
        sleep 0.2
    done
}

http_ok() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1"; }

pgbouncer_version() {  # e.g. 1.18.0
    /usr/sbin/pgbouncer --version 2>/dev/null | head -n 1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n 1
}

version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }

# --- PostgreSQL ------------------------------------------------------------------

start_pg() {  # start_pg primary|standby
    as_pg "$PG_BIN/pg_ctl" -D "$STACK_DIR/$1" -l "$LOG/$1.log" -w -t 60 start >/dev/null
}

stop_pg() {
    if [ -f "$STACK_DIR/$1/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$STACK_DIR/$1" -m fast -w -t 60 stop >/dev/null || true
    fi
}

init_primary() {
    as_pg "$PG_BIN/initdb" -D "$STACK_DIR/primary" -U postgres --auth=trust -E UTF8 >"$LOG/initdb.log"
    # initdb's pg_hba.conf already trusts local and loopback connections, replication included.
    cat >>"$STACK_DIR/primary/postgresql.conf" <<EOF
# scripts/stack.sh
port = $PRIMARY_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$RUN'
max_connections = 200
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
hot_standby = on
EOF
    start_pg primary
    as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres storefront
}

init_standby() {
    # -R writes primary_conninfo and standby.signal; the slot keeps the WAL the standby
    # has not received yet while it is stopped (the drills stop it).
    as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -D "$STACK_DIR/standby" \
        -R -X stream -C -S stack_standby -c fast >"$LOG/basebackup.log" 2>&1
    echo "port = $STANDBY_PORT" >>"$STACK_DIR/standby/postgresql.conf"
    start_pg standby
}

streaming() {
    [ "$(psql -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d postgres -Atc \
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" -ge 1 ]
}

# --- PgBouncer -------------------------------------------------------------------

write_pgbouncer_ini() {
    local dir="$STACK_DIR/pgbouncer" prepared=""
    mkdir -p "$dir"
    # Protocol-level prepared statements in transaction pooling arrived in 1.21; before
    # that the replicas must not prepare (DB_STATEMENT_CACHE_SIZE=0, set in cmd_up).
    if [ "$PGBOUNCER_PREPARED" = 1 ]; then prepared="max_prepared_statements = 200"; fi
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
storefront = host=127.0.0.1 port=$PRIMARY_PORT dbname=storefront

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = ${PGBOUNCER_POOL_SIZE:-20}
# After PostgreSQL refused a login (it was restarting), try again after 1 s, not 15.
server_login_retry = 1
# A server connection idle for more than 1 s is checked (SELECT 1) before it is lent:
# after the primary restarts, the connections it cut are found and dropped here rather
# than handed to the next transaction one by one for as long as they sit idle (the
# default, 30 s, turned a restart into bursts of 503s for 10 s and more).
server_check_delay = 1
logfile = $LOG/pgbouncer.log
pidfile = $RUN/pgbouncer.pid
admin_users = postgres
$prepared
EOF
    echo '"postgres" ""' >"$dir/userlist.txt"  # trust still needs the user listed
    [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
    return 0
}

start_pgbouncer() {
    as_pg /usr/sbin/pgbouncer -d -q "$STACK_DIR/pgbouncer/pgbouncer.ini"  # it writes its own log
    wait_for 20 "PgBouncer" "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PGBOUNCER_PORT" -U postgres -d storefront
}

stop_pgbouncer() {
    local pid
    pid="$(cat "$RUN/pgbouncer.pid" 2>/dev/null || true)"
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true  # immediate shutdown: clients see their connections close
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

# --- API replicas ------------------------------------------------------------------

# Each replica runs under scripts/stack_replica.py, which restarts it when it dies.
# Its liveness lock is a session lock: straight to the primary, never through PgBouncer.
# Anonymous catalog reads go to the standby (STACK_READ_FROM_STANDBY=0: all to the primary).
start_replica() {  # start_replica N
    local n="$1" port_var="API_PORT_$1" read_url="$STANDBY_URL"
    [ "${STACK_READ_FROM_STANDBY:-1}" = 1 ] || read_url=""
    PORT="${!port_var}" HOST=127.0.0.1 DATABASE_URL="$PGBOUNCER_URL" LIVENESS_DATABASE_URL="$PRIMARY_URL" \
        DATABASE_READ_URL="$read_url" \
        PIDFILE="$RUN/api-$n.pid" \
        setsid "$PYTHON" "$ROOT/scripts/stack_replica.py" >>"$LOG/api-$n.log" 2>&1 </dev/null &
    echo $! >"$RUN/api-$n.loop.pid"
}

stop_replicas() {
    local loop pids=()
    for f in "$RUN"/api-*.loop.pid; do
        [ -f "$f" ] || continue
        loop="$(cat "$f")"
        kill -TERM "$loop" 2>/dev/null && pids+=("$loop")
    done
    [ ${#pids[@]} = 0 ] && return 0
    local deadline=$((SECONDS + ${SHUTDOWN_GRACE_SECONDS:-30} + 10))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    for f in "$RUN"/api-*.pid; do
        case "$f" in *.loop.pid) continue ;; esac
        kill -KILL "$(cat "$f")" 2>/dev/null || true  # only if it outlived its loop
    done
}

# --- nginx -------------------------------------------------------------------------

# Generated from deploy/nginx.conf (scripts/nginx_conf.py): the same rules as the
# deployment's load balancer, with the stack's address, replicas and folders.
write_nginx_conf() {
    local dir="$STACK_DIR/nginx" servers=() user=() unlimited=()
    mkdir -p "$dir"
    for address in ${STACK_NGINX_UNLIMITED//,/ }; do unlimited+=(--unlimited "$address"); done
    for n in $(seq "$API_REPLICAS"); do
        local port_var="API_PORT_$n"
        servers+=(--server "127.0.0.1:${!port_var}")
    done
    [ "$(id -u)" = 0 ] && user=(--user www-data)
    python3 "$ROOT/scripts/nginx_conf.py" --listen "127.0.0.1:$HTTP_PORT" "${servers[@]}" "${user[@]}" "${unlimited[@]}" \
        --pid "$RUN/nginx.pid" --error-log "$LOG/nginx-error.log" --temp "$dir" >"$dir/nginx.conf"
}

start_nginx() {
    /usr/sbin/nginx -e "$LOG/nginx-error.log" -p "$STACK_DIR/nginx" -c "$STACK_DIR/nginx/nginx.conf"
}

stop_nginx() {
    local pid
    pid="$(cat "$RUN/nginx.pid" 2>/dev/null || true)"
    [ -n "$pid" ] || return 0
    kill -QUIT "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

# --- commands ----------------------------------------------------------------------

load_state() {
    [ -f "$STATE" ] || die "no stack in $STACK_DIR (run: scripts/stack.sh up)"
    # shellcheck disable=SC1090
    . "$STATE"
    PG_BIN="$(pg_bin)"
}

cmd_up() {
    if [ -f "$STATE" ]; then die "a stack is already in $STACK_DIR (scripts/stack.sh status, or down first)"; fi
    mkdir -p "$STACK_DIR"
    install_missing
    PG_BIN="$(pg_bin)"
    API_REPLICAS="${API_REPLICAS:-2}"
    [[ "$API_REPLICAS" =~ ^[1-9][0-9]*$ ]] || die "API_REPLICAS must be a positive integer"
    mkdir -p "$RUN" "$LOG" "$STACK_DIR/primary" "$STACK_DIR/standby"
    chmod 755 "$STACK_DIR"
    chmod 700 "$STACK_DIR/primary" "$STACK_DIR/standby"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$RUN" "$LOG" "$STACK_DIR/primary" "$STACK_DIR/standby"
        as_pg test -w "$RUN" || die "the postgres user cannot reach $STACK_DIR (a parent folder is not searchable)"
    fi
    # Whatever way `up` fails, it leaves nothing running.
    trap 'say "up failed; last log lines:"; tail -n 5 "$LOG"/*.log >&2 || true; cmd_down >/dev/null 2>&1 || true' EXIT

    PRIMARY_PORT="${STACK_PRIMARY_PORT:-$(free_port)}"
    STANDBY_PORT="${STACK_STANDBY_PORT:-$(free_port)}"
    PGBOUNCER_PORT="${STACK_PGBOUNCER_PORT:-$(free_port)}"
    HTTP_PORT="${STACK_HTTP_PORT:-$(free_port)}"
    PGBOUNCER_VERSION="$(pgbouncer_version)"
    PGBOUNCER_PREPARED=0
    if version_at_least "$PGBOUNCER_VERSION" 1.21; then PGBOUNCER_PREPARED=1; fi
    PRIMARY_URL="postgresql://postgres@127.0.0.1:$PRIMARY_PORT/storefront"
    STANDBY_URL="postgresql://postgres@127.0.0.1:$STANDBY_PORT/storefront"
    PGBOUNCER_URL="postgresql://postgres@127.0.0.1:$PGBOUNCER_PORT/storefront"
    PYTHON="$(python3 "$ROOT/dev.py" python -c 'import sys; print(sys.executable)')"
    {
        echo "API_REPLICAS=$API_REPLICAS"
        for v in PRIMARY_PORT STANDBY_PORT PGBOUNCER_PORT HTTP_PORT PGBOUNCER_VERSION PGBOUNCER_PREPARED \
            PRIMARY_URL STANDBY_URL PGBOUNCER_URL PYTHON; do echo "$v=${!v}"; done
    } >"$STATE"
    for n in $(seq "$API_REPLICAS"); do
        port="$(free_port)"
        printf -v "API_PORT_$n" '%s' "$port"
        echo "API_PORT_$n=$port" >>"$STATE"
    done

    say "PostgreSQL primary on $PRIMARY_PORT"
    init_primary
    # Migrations take a session advisory lock, which transaction pooling cannot keep:
    # they run here on a direct connection, before any replica starts.
    (cd "$ROOT" && DATABASE_URL="$PRIMARY_URL" "$PYTHON" -m server migrate >"$LOG/migrate.log" 2>&1)
    say "streaming standby on $STANDBY_PORT"
    init_standby
    wait_for 30 "the standby to stream" streaming
    say "PgBouncer $PGBOUNCER_VERSION on $PGBOUNCER_PORT (transaction pooling)"
    write_pgbouncer_ini
    start_pgbouncer

    export JWT_SECRET="${JWT_SECRET:-$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(48))')}"
    export TRUST_FORWARDED_FOR="${TRUST_FORWARDED_FOR:-true}"  # nginx sets X-Forwarded-For
    if [ "$PGBOUNCER_PREPARED" = 0 ]; then
        [ "${DB_STATEMENT_CACHE_SIZE:-0}" = 0 ] || say "DB_STATEMENT_CACHE_SIZE=0: PgBouncer $PGBOUNCER_VERSION cannot keep prepared statements"
        export DB_STATEMENT_CACHE_SIZE=0
    fi
    cd "$ROOT"
    for n in $(seq "$API_REPLICAS"); do start_replica "$n"; done
    for n in $(seq "$API_REPLICAS"); do
        port_var="API_PORT_$n"
        wait_for 60 "API replica $n" http_ok "http://127.0.0.1:${!port_var}/readyz"
    done
    say "$API_REPLICAS API replica(s) ready, WORKERS=${WORKERS:-default}"
    write_nginx_conf
    start_nginx
    wait_for 20 "nginx" http_ok "http://127.0.0.1:$HTTP_PORT/readyz"
    trap - EXIT
    echo "STACK_URL=http://127.0.0.1:$HTTP_PORT" >>"$STATE"
    echo "PRIMARY_URL=$PRIMARY_URL"
    echo "STANDBY_URL=$STANDBY_URL"
    echo "PGBOUNCER_URL=$PGBOUNCER_URL"
    echo "STACK_URL=http://127.0.0.1:$HTTP_PORT"
}

cmd_down() {
    if [ ! -d "$STACK_DIR" ]; then say "nothing to stop"; return 0; fi
    PG_BIN="$(pg_bin)"
    stop_nginx
    stop_replicas
    stop_pgbouncer
    stop_pg standby
    stop_pg primary
    rm -rf "$STACK_DIR"
    say "stopped; removed $STACK_DIR"
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

cmd_status() {
    load_state
    local bad=0 line
    report() {  # report NAME OK DETAIL
        if [ "$2" = 1 ]; then line="running"; else line="NOT RUNNING"; bad=1; fi
        printf '%-12s %-12s %s\n' "$1" "$line" "$3"
    }
    for role in primary standby; do
        local port_var ok=0
        port_var="${role^^}_PORT"
        "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "${!port_var}" -U postgres && ok=1
        report "$role" "$ok" "127.0.0.1:${!port_var}"
    done
    line="$(psql -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d postgres -Atc \
        "SELECT state || ', replay lag ' || coalesce(replay_lag::text, '0') FROM pg_stat_replication" 2>/dev/null || true)"
    printf '%-12s %s\n' replication "${line:-none}"
    local ok=0
    alive "$(cat "$RUN/pgbouncer.pid" 2>/dev/null)" && ok=1
    report pgbouncer "$ok" "127.0.0.1:$PGBOUNCER_PORT, $PGBOUNCER_VERSION, transaction pooling"
    for n in $(seq "$API_REPLICAS"); do
        local port_var="API_PORT_$n"
        ok=0
        http_ok "http://127.0.0.1:${!port_var}/readyz" 2>/dev/null && ok=1
        report "api-$n" "$ok" "127.0.0.1:${!port_var}, pid $(cat "$RUN/api-$n.pid" 2>/dev/null)"
    done
    ok=0
    alive "$(cat "$RUN/nginx.pid" 2>/dev/null)" && ok=1
    report nginx "$ok" "$STACK_URL"
    return $((bad * 3))
}

cmd_component() {  # start|stop|restart primary|standby|pgbouncer
    load_state
    case "$2" in
        primary | standby)
            [ "$1" = start ] || stop_pg "$2"
            [ "$1" = stop ] || start_pg "$2" ;;
        pgbouncer)
            [ "$1" = start ] || stop_pgbouncer
            [ "$1" = stop ] || start_pgbouncer ;;
        *) die "unknown component: $2 (primary, standby, pgbouncer)" ;;
    esac
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    start | stop | restart) [ $# = 2 ] || die "usage: $0 $1 primary|standby|pgbouncer"; cmd_component "$1" "$2" ;;
    *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

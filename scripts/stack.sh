#!/usr/bin/env bash
# The multi-machine layout on one machine, with Debian's real programs. By default the
# database is highly available (STACK_HA=1):
#
#   nginx (STACK_URL) -> API_REPLICAS x `python -m server`
#       DATABASE_URL          -> PgBouncer (transaction pooling) -> HAProxy primary port -> the leader
#       LIVENESS_DATABASE_URL -> HAProxy primary port -> the leader   (session advisory locks)
#       DATABASE_READ_URL     -> HAProxy replica port -> one replica  (anonymous catalog reads)
#   Patroni x STACK_MEMBERS (3) PostgreSQL members, synchronous replication, etcd as the
#   consensus store; HAProxy routes by Patroni's REST checks (/primary, /replica);
#   pgBackRest archives the leader's WAL to a repository in STACK_DIR/backup.
#
# STACK_HA=0: the simple layout (PgBouncer -> a PostgreSQL primary -> a streaming
# standby), no failover.
#
#   scripts/stack.sh up        install what is missing, start everything; last line STACK_URL=...
#   scripts/stack.sh status    what runs; one `member=NAME role=leader|replica pid=PID` line per
#                              database member (exit 3 when something that should run does not)
#   scripts/stack.sh down      stop everything it started and remove its folder
#   scripts/stack.sh start|stop|restart pgbouncer                    (both layouts)
#   scripts/stack.sh start|stop|restart primary|standby               (STACK_HA=0)
#   HA (MEMBER is pg1..pgN, or `leader` for the current one):
#   scripts/stack.sh leader                  the leader's name
#   scripts/stack.sh kill-postmaster MEMBER  kill -9 of its postmaster (a crash of PostgreSQL)
#   scripts/stack.sh crash MEMBER            kill -9 of its Patroni and PostgreSQL together (the machine is gone)
#   scripts/stack.sh stop MEMBER             Patroni stops PostgreSQL cleanly (a leader hands over)
#   scripts/stack.sh start MEMBER            start its Patroni (the machine is back; it rejoins by itself)
#   scripts/stack.sh isolate|reconnect MEMBER   cut it off from etcd, or join it again
#   scripts/stack.sh wait-replica MEMBER [S] wait until it runs as a replica of the leader
#   scripts/stack.sh switchover [MEMBER]     hand the leadership over (maintenance)
#   scripts/stack.sh patronictl ARGS...      patronictl with the stack's configuration
#   scripts/stack.sh backup full|diff|incr   a pgBackRest backup of the leader
#   scripts/stack.sh restore TIME            restore into a new cluster, to TIME (timestamptz); prints RESTORE_URL
#
# Every setting in the environment (JWT_SECRET, ADMIN_EMAIL, ADMIN_PASSWORD,
# ORDER_TTL_SECONDS, WORKERS, ...) reaches the replicas; JWT_SECRET defaults to one random
# secret shared by all of them. Stack knobs: API_REPLICAS (2), STACK_HA (1), STACK_MEMBERS
# (3, or 2), STACK_SYNC_STRICT (0), STACK_PATRONI_TTL / _LOOP_WAIT / _RETRY_TIMEOUT (10, 2, 4;
# Patroni's own defaults are 30, 10, 10: docs/operations.md), STACK_READ_FROM_STANDBY (1:
# anonymous catalog reads go to a replica), STACK_DIR (.stack), STACK_HTTP_PORT,
# STACK_PRIMARY_PORT, STACK_STANDBY_PORT (HAProxy's ports in HA), STACK_PGBOUNCER_PORT (free
# ports by default), PGBOUNCER_POOL_SIZE (20), STACK_NGINX_UNLIMITED (addresses nginx's rate
# limits skip, e.g. 127.0.0.1 to run the HTTP test suite through the stack; none by default).
# It never touches another PostgreSQL: its clusters live in STACK_DIR on their own ports.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$ROOT/.stack}"
STATE="$STACK_DIR/stack.env"
RUN="$STACK_DIR/run"
LOG="$STACK_DIR/log"
STANZA=storefront

say() { echo "stack: $*" >&2; }
die() { say "$*"; exit 1; }
CANNOT_INSTALL=4  # exit code when the packages are missing and cannot be installed

# initdb and PgBouncer refuse to run as root: as root their processes run as `postgres`.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# daemon PIDFILE LOGFILE COMMAND...: COMMAND in the background, in a session of its own, as
# `postgres` when this runs as root; PIDFILE gets its pid (setsid and setpriv exec, so $!
# is the program itself).
daemon() {
    local pidfile="$1" logfile="$2" drop=()
    shift 2
    if [ "$(id -u)" = 0 ]; then
        drop=(setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$(getent passwd postgres | cut -d: -f6)")
    fi
    setsid "${drop[@]}" "$@" >>"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
}

pg_bin() {
    local dir
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$dir" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
    echo "$dir"
}

ha() { [ "${STACK_HA:-1}" = 1 ]; }

install_missing() {
    local missing=()
    [ -d /usr/lib/postgresql ] && find /usr/lib/postgresql -name pg_basebackup -print -quit | grep -q . || missing+=(postgresql)
    command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    if ha; then
        command -v etcd >/dev/null || missing+=(etcd-server)
        command -v patroni >/dev/null || missing+=(patroni)
        command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
        command -v pgbackrest >/dev/null || missing+=(pgbackrest)
        command -v setpriv >/dev/null || missing+=(util-linux)
    fi
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

# A port for one of the stack's servers: below the ephemeral range, where no client
# connection takes it before its server binds it, and never one given already
# (server/runtime/ports.py).
free_port() {
    python3 "$ROOT/server/runtime/ports.py" --taken "$STACK_DIR/ports.taken"
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

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

stop_pidfile() {  # stop_pidfile FILE SIGNAL: signal the process, wait up to 10 s, then kill -9
    local pid
    pid="$(cat "$1" 2>/dev/null || true)"
    [ -n "$pid" ] || return 0
    kill -"$2" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

# --- PostgreSQL (STACK_HA=0) -------------------------------------------------------

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
# asyncpg's type introspection, with JIT (see the HA members' parameters)
jit = off
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

# --- the highly available database (STACK_HA=1) -----------------------------------
#
# etcd: one member here (production runs three or five, on machines of their own). Each
# Patroni reaches it through an HAProxy port of its own (etcd_pgN), which `isolate` closes:
# that member alone is cut off from the consensus store, as a network partition would.

hactl() { python3 "$ROOT/scripts/stack_ha.py" "$STATE" "$@"; }

start_etcd() {
    daemon "$RUN/etcd.pid" "$LOG/etcd.log" etcd --name stack --data-dir "$STACK_DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "stack=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new --logger zap
    wait_for 30 "etcd" http_ok "http://127.0.0.1:$ETCD_PORT/health"
}

write_haproxy_cfg() {
    local dir="$STACK_DIR/haproxy" user="" primary="" replicas="" links="" n
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ] && id haproxy >/dev/null 2>&1; then user=$'    user haproxy\n    group haproxy'; fi
    for n in $(seq "$STACK_MEMBERS"); do
        local pg="PG_PORT_$n" rest="REST_PORT_$n" link="ETCD_LINK_PORT_$n"
        primary+="    server pg$n 127.0.0.1:${!pg} check port ${!rest}"$'\n'
        replicas+="    server pg$n 127.0.0.1:${!pg} check port ${!rest}"$'\n'
        links+="listen etcd_pg$n"$'\n'"    bind 127.0.0.1:${!link}"$'\n'"    server etcd 127.0.0.1:$ETCD_PORT"$'\n\n'
    done
    cat >"$dir/haproxy.cfg" <<EOF
# scripts/stack.sh: routes by Patroni's REST health checks, which answer for the
# member's role as the DCS knows it (/primary: 200 on the leader only). OPTIONS, not
# GET: the same answer without a body, which HAProxy would cut off mid-write.
global
    maxconn 4000
    pidfile $RUN/haproxy.pid
    stats socket $RUN/haproxy.sock mode 600 level admin
$user

defaults
    mode tcp
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    timeout check 2s
    # A server found dead takes its sessions with it (no client keeps writing to a member
    # that lost the leadership), and a new connection tries another server.
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
    option redispatch
    retries 1

# Writes (PgBouncer's server connections, the liveness locks, the lag monitor's primary):
# the one member whose Patroni holds the leader key.
listen pg_primary
    bind 127.0.0.1:$PRIMARY_PORT
    option httpchk
    http-check send meth OPTIONS uri /primary
    http-check expect status 200
$primary
# Catalog reads (DATABASE_READ_URL): a running replica less than 16 MB behind. Every
# connection goes to the same one (the one-entry stick table) until it fails its check:
# the service measures that replica's lag on one connection and reads on others, so they
# must all be the same server.
listen pg_replicas
    bind 127.0.0.1:$STANDBY_PORT
    option httpchk
    http-check send meth OPTIONS uri /replica?lag=16MB
    http-check expect status 200
    stick-table type integer size 1 expire 24h
    stick on int(1)
$replicas
# Each member's way to etcd (stack.sh isolate|reconnect MEMBER).
$links
EOF
}

start_haproxy() {
    /usr/sbin/haproxy -D -f "$STACK_DIR/haproxy/haproxy.cfg" >>"$LOG/haproxy.log" 2>&1
    wait_for 20 "HAProxy" test -S "$RUN/haproxy.sock"
}

write_pgbackrest_conf() {
    local dir="$STACK_DIR/pgbackrest" n
    mkdir -p "$dir" "$STACK_DIR/backup" "$LOG/pgbackrest" "$RUN/pgbackrest"
    {
        cat <<EOF
[global]
repo1-path=$STACK_DIR/backup
repo1-retention-full=2
log-path=$LOG/pgbackrest
lock-path=$RUN/pgbackrest
log-level-console=warn
log-level-file=info
start-fast=y
compress-type=lz4
archive-timeout=60

# Every member is listed: \`backup\` finds the leader among them.
[$STANZA]
EOF
        for n in $(seq "$STACK_MEMBERS"); do
            local pg="PG_PORT_$n"
            printf 'pg%s-path=%s\npg%s-port=%s\npg%s-socket-path=%s\n' \
                "$n" "$STACK_DIR/pg$n/data" "$n" "${!pg}" "$n" "$RUN"
        done
    } >"$dir/pgbackrest.conf"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$dir" "$STACK_DIR/backup" "$LOG/pgbackrest" "$RUN/pgbackrest"
    return 0
}

pgbackrest_cmd() { as_pg pgbackrest --config="$STACK_DIR/pgbackrest/pgbackrest.conf" --stanza="$STANZA" "$@"; }

write_patroni_yml() {  # write_patroni_yml N
    local n="$1" pg="PG_PORT_$1" rest="REST_PORT_$1" link="ETCD_LINK_PORT_$1" strict=false
    local data="$STACK_DIR/pg$n/data" pgbr="pgbackrest --config=$STACK_DIR/pgbackrest/pgbackrest.conf --stanza=$STANZA"
    [ "${STACK_SYNC_STRICT:-0}" = 1 ] && strict=true
    mkdir -p "$STACK_DIR/patroni"
    cat >"$STACK_DIR/patroni/pg$n.yml" <<EOF
# scripts/stack.sh: member pg$n
scope: storefront
namespace: /stack/
name: pg$n
restapi:
  listen: 127.0.0.1:${!rest}
  connect_address: 127.0.0.1:${!rest}
etcd3:
  hosts: 127.0.0.1:${!link}
  # Only this address, never the cluster members etcd advertises: the link is the way in.
  use_proxies: true
bootstrap:
  # The cluster-wide settings, written to etcd by the member that initialises the cluster
  # (later: stack.sh patronictl edit-config).
  dcs:
    ttl: $PATRONI_TTL
    loop_wait: $PATRONI_LOOP_WAIT
    retry_timeout: $PATRONI_RETRY_TIMEOUT
    maximum_lag_on_failover: 1048576
    # A crashed leader is not restarted in place: the synchronous standby, which has
    # every acknowledged commit, takes over at once, and the old one rejoins as a replica.
    primary_start_timeout: 0
    # A commit is acknowledged once it is on a second member (synchronous_commit = on),
    # and only that member may be promoted. Not strict: with no replica left the leader
    # goes on alone rather than refusing writes (docs/operations.md).
    synchronous_mode: true
    synchronous_mode_strict: $strict
    synchronous_node_count: 1
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 200
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 256MB
        archive_mode: "on"
        archive_timeout: 60
        synchronous_commit: "on"
        # What a drill or an incident needs to read afterwards: statements over 1 s,
        # lock waits over deadlock_timeout (1 s).
        log_min_duration_statement: 1000
        log_lock_waits: "on"
        log_line_prefix: "%m [%p] %a %c "
        # No JIT: asyncpg's type introspection on each new connection, which it runs with
        # JIT off by session settings that PgBouncer's transaction pooling scatters over
        # server connections, otherwise JIT-compiles: 4 to 8 s per connection, all of them
        # at once, right after a failover (measured; docs/operations.md).
        jit: "off"
  initdb:
  - encoding: UTF8
  - data-checksums
  - auth: trust
postgresql:
  listen: 127.0.0.1:${!pg}
  connect_address: 127.0.0.1:${!pg}
  data_dir: $data
  bin_dir: $PG_BIN
  pgpass: $RUN/pgpass-pg$n
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  # A member whose rewind fails is cloned again from the leader, without a hand step.
  remove_data_directory_on_rewind_failure: true
  parameters:
    unix_socket_directories: $RUN
    logging_collector: "on"
    log_directory: $LOG/pg$n
    log_filename: postgresql.log
    # The leader's WAL, to the repository (a replica does not archive: archive_mode on).
    archive_command: $pgbr --pg1-path=$data archive-push %p
  # No restore_command for the members: the repository holds WAL a dying leader archived
  # but never replicated (not acknowledged), and a replica that replayed it from there
  # could no longer follow the new leader (Patroni checks for that divergence once, when
  # the replica starts following). Replicas stream; one too far behind is cloned again.
  pg_hba:
  - local all all trust
  - host all all 127.0.0.1/32 trust
  - host replication all 127.0.0.1/32 trust
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
EOF
}

start_member() {  # start_member N
    local n="$1"
    if alive "$(cat "$RUN/patroni-pg$n.pid" 2>/dev/null)"; then say "pg$n: Patroni already runs"; return 0; fi
    daemon "$RUN/patroni-pg$n.pid" "$LOG/patroni-pg$n.log" patroni "$STACK_DIR/patroni/pg$n.yml"
}

postmaster_of() { head -n 1 "$STACK_DIR/pg$1/data/postmaster.pid" 2>/dev/null || true; }

stop_member() {  # stop_member N: Patroni stops PostgreSQL (fast) and releases what it holds
    local n="$1" pid postmaster
    pid="$(cat "$RUN/patroni-pg$n.pid" 2>/dev/null || true)"
    if alive "$pid"; then
        kill -TERM "$pid"
        for _ in $(seq 600); do alive "$pid" || break; sleep 0.1; done
        alive "$pid" && kill -KILL "$pid"
    fi
    postmaster="$(postmaster_of "$n")"
    if alive "$postmaster"; then  # Patroni did not stop it (killed, or stuck)
        as_pg "$PG_BIN/pg_ctl" -D "$STACK_DIR/pg$n/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
            as_pg "$PG_BIN/pg_ctl" -D "$STACK_DIR/pg$n/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
}

crash_member() {  # crash_member N: kill -9 of Patroni, the postmaster and its children at once
    local n="$1" pids=() postmaster
    pids+=("$(cat "$RUN/patroni-pg$n.pid" 2>/dev/null || true)")
    postmaster="$(postmaster_of "$n")"
    if alive "$postmaster"; then
        pids+=("$postmaster")
        mapfile -t -O "${#pids[@]}" pids < <(ps -o pid= --ppid "$postmaster" | tr -d ' ')
    fi
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

member_number() {  # member_number pgN|leader -> N
    local name="$1"
    if [ "$name" = leader ]; then name="$(hactl leader)" || die "no leader right now"; fi
    [[ "$name" =~ ^pg([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -ge 1 ] && [ "${BASH_REMATCH[1]}" -le "$STACK_MEMBERS" ] ||
        die "unknown member: $1 (pg1..pg$STACK_MEMBERS, or leader)"
    echo "${BASH_REMATCH[1]}"
}

init_ha() {
    local n
    for n in $(seq "$STACK_MEMBERS"); do
        mkdir -p "$STACK_DIR/pg$n" "$LOG/pg$n"
        chmod 700 "$STACK_DIR/pg$n"
        write_patroni_yml "$n"
    done
    mkdir -p "$STACK_DIR/etcd"
    chmod 700 "$STACK_DIR/etcd"
    write_pgbackrest_conf
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$STACK_DIR/etcd" "$STACK_DIR/patroni" "$LOG"; chown postgres: "$STACK_DIR"/pg*; fi
    # patronictl (stack.sh patronictl, switchover) asks etcd itself, not through a member's link.
    printf 'scope: storefront\nnamespace: /stack/\netcd3:\n  hosts: 127.0.0.1:%s\n' "$ETCD_PORT" >"$STACK_DIR/patroni/ctl.yml"
    say "etcd on $ETCD_PORT"
    start_etcd
    write_haproxy_cfg
    start_haproxy
    say "HAProxy: writes on $PRIMARY_PORT (/primary), reads on $STANDBY_PORT (/replica)"
    # The first member initialises the cluster; the others clone it once it leads.
    start_member 1
    wait_for 90 "pg1 to lead" sh -c "[ \"\$(python3 '$ROOT/scripts/stack_ha.py' '$STATE' leader)\" = pg1 ]"
    for n in $(seq 2 "$STACK_MEMBERS"); do start_member "$n"; done
    wait_for 120 "every member to stream, one of them synchronously" hactl wait-healthy 1
    say "Patroni: $STACK_MEMBERS members, leader pg1, synchronous replication"
    wait_for 20 "HAProxy to route writes" "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres
    as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres storefront
    pgbackrest_cmd stanza-create >>"$LOG/pgbackrest.out" 2>&1
    pgbackrest_cmd check >>"$LOG/pgbackrest.out" 2>&1 || die "pgbackrest check failed (WAL archiving): $LOG/pgbackrest.out"
}

# --- PgBouncer -------------------------------------------------------------------

write_pgbouncer_ini() {
    local dir="$STACK_DIR/pgbouncer" prepared=""
    mkdir -p "$dir"
    # Protocol-level prepared statements in transaction pooling arrived in 1.21; before
    # that the replicas must not prepare (DB_STATEMENT_CACHE_SIZE=0, set in cmd_up).
    if [ "$PGBOUNCER_PREPARED" = 1 ]; then prepared="max_prepared_statements = 200"; fi
    # In HA, PgBouncer's server connections go through HAProxy's primary port: whichever
    # member leads, PgBouncer needs no change, and HAProxy cuts its connections to a
    # member that lost the leadership (docs/scaling.md).
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

stop_pgbouncer() { stop_pidfile "$RUN/pgbouncer.pid" TERM; }  # immediate: clients see their connections close

# --- API replicas ------------------------------------------------------------------

# Each replica runs under scripts/stack_replica.py, which restarts it when it dies.
# Its liveness lock is a session lock: straight to the primary (HA: HAProxy's primary
# port), never through PgBouncer. Anonymous catalog reads go to the standby (HA: HAProxy's
# replica port; STACK_READ_FROM_STANDBY=0: all to the primary).
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
    local list="${STACK_NGINX_UNLIMITED:-}"
    for address in ${list//,/ }; do unlimited+=(--unlimited "$address"); done
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

stop_nginx() { stop_pidfile "$RUN/nginx.pid" QUIT; }

# --- backups (HA) --------------------------------------------------------------------

cmd_backup() {  # full|diff|incr
    case "$1" in full | diff | incr) ;; *) die "backup type: full, diff or incr" ;; esac
    local started=$SECONDS
    pgbackrest_cmd --type="$1" backup >>"$LOG/pgbackrest.out" 2>&1 || die "backup failed: $LOG/pgbackrest.out"
    pgbackrest_cmd --output=json info | python3 -c '
import json, sys
backup = json.load(sys.stdin)[0]["backup"][-1]
print("BACKUP_LABEL=" + backup["label"])
print("BACKUP_TYPE=" + backup["type"])
print("BACKUP_BYTES=" + str(backup["info"]["size"]))
print("BACKUP_REPO_BYTES=" + str(backup["info"]["repository"]["delta"]))'
    echo "BACKUP_SECONDS=$((SECONDS - started))"
}

# Restores the repository's newest backup that precedes TIME into a new cluster, replays
# the archived WAL up to TIME and promotes it. It runs on its own (it follows no member,
# archives nothing, has no Patroni); `down` stops it.
cmd_restore() {  # TIME
    local target="$1" k=1 dir port started
    while [ -e "$STACK_DIR/restore-$k" ]; do k=$((k + 1)); done
    dir="$STACK_DIR/restore-$k"
    port="$(free_port)"
    mkdir -p "$dir/data" "$LOG/restore-$k"
    chmod 700 "$dir/data"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$dir" "$LOG/restore-$k"
    started="$(date +%s.%N)"
    pgbackrest_cmd --pg1-path="$dir/data" --type=time "--target=$target" --target-action=promote \
        --archive-mode=off restore >>"$LOG/pgbackrest.out" 2>&1 || die "restore failed: $LOG/pgbackrest.out"
    local restored
    restored="$(date +%s.%N)"
    # The files come from a member, with Patroni's postgresql.conf (its port, its
    # primary_conninfo, its synchronous standby): replaced by the new cluster's own. The
    # limits are the members' (recovery needs at least the primary's values).
    cat >"$dir/data/postgresql.conf" <<EOF
# scripts/stack.sh restore $target
include 'postgresql.base.conf'
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$RUN'
hba_file = '$dir/data/pg_hba.conf'
ident_file = '$dir/data/pg_ident.conf'
max_connections = 200
max_wal_senders = 10
max_replication_slots = 10
max_worker_processes = 8
max_locks_per_transaction = 64
max_prepared_transactions = 0
wal_level = replica
archive_mode = off
logging_collector = off
EOF
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/data/postgresql.conf"
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$LOG/restore-$k/postgresql.log" -w -t 600 start >/dev/null ||
        die "the restored cluster did not start: $LOG/restore-$k/postgresql.log"
    wait_for 600 "the restored cluster to reach $target and promote" sh -c \
        "[ \"\$(psql -h 127.0.0.1 -p $port -U postgres -d postgres -Atc 'SELECT pg_is_in_recovery()')\" = f ]"
    echo "RESTORE_DIR=$dir"
    echo "RESTORE_URL=postgresql://postgres@127.0.0.1:$port/storefront"
    python3 -c 'import sys; a, b, c = map(float, sys.argv[1:]); print(f"RESTORE_SECONDS={b - a:.2f}"); print(f"RECOVERY_SECONDS={c - b:.2f}")' \
        "$started" "$restored" "$(date +%s.%N)"
}

stop_restores() {
    local d
    for d in "$STACK_DIR"/restore-*/data; do
        [ -f "$d/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$d" -m fast -w -t 60 stop >/dev/null 2>&1
    done
    return 0
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
    rm -f "$STACK_DIR/ports.taken"  # from an `up` that failed before it wrote its state
    install_missing
    PG_BIN="$(pg_bin)"
    API_REPLICAS="${API_REPLICAS:-2}"
    [[ "$API_REPLICAS" =~ ^[1-9][0-9]*$ ]] || die "API_REPLICAS must be a positive integer"
    STACK_HA="${STACK_HA:-1}"
    [[ "$STACK_HA" =~ ^[01]$ ]] || die "STACK_HA must be 0 or 1"
    mkdir -p "$RUN" "$LOG"
    chmod 755 "$STACK_DIR"
    if ! ha; then
        mkdir -p "$STACK_DIR/primary" "$STACK_DIR/standby"
        chmod 700 "$STACK_DIR/primary" "$STACK_DIR/standby"
    fi
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$RUN" "$LOG"
        ha || chown postgres: "$STACK_DIR/primary" "$STACK_DIR/standby"
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
        echo "STACK_HA=$STACK_HA"
        echo "API_REPLICAS=$API_REPLICAS"
        for v in PRIMARY_PORT STANDBY_PORT PGBOUNCER_PORT HTTP_PORT PGBOUNCER_VERSION PGBOUNCER_PREPARED \
            PRIMARY_URL STANDBY_URL PGBOUNCER_URL PYTHON; do echo "$v=${!v}"; done
    } >"$STATE"
    for n in $(seq "$API_REPLICAS"); do
        port="$(free_port)"
        printf -v "API_PORT_$n" '%s' "$port"
        echo "API_PORT_$n=$port" >>"$STATE"
    done

    if ha; then
        STACK_MEMBERS="${STACK_MEMBERS:-3}"
        [[ "$STACK_MEMBERS" =~ ^[23]$ ]] || die "STACK_MEMBERS must be 2 or 3"
        PATRONI_TTL="${STACK_PATRONI_TTL:-10}"
        PATRONI_LOOP_WAIT="${STACK_PATRONI_LOOP_WAIT:-2}"
        PATRONI_RETRY_TIMEOUT="${STACK_PATRONI_RETRY_TIMEOUT:-4}"
        # Patroni's rule: a leader cut off from the DCS must have demoted itself (after
        # retry_timeout, noticed within a loop) before its key expires and another takes over.
        [ $((PATRONI_LOOP_WAIT + 2 * PATRONI_RETRY_TIMEOUT)) -le "$PATRONI_TTL" ] ||
            die "STACK_PATRONI_TTL must be at least LOOP_WAIT + 2 x RETRY_TIMEOUT"
        ETCD_PORT="$(free_port)"
        ETCD_PEER_PORT="$(free_port)"
        for v in STACK_MEMBERS PATRONI_TTL PATRONI_LOOP_WAIT PATRONI_RETRY_TIMEOUT ETCD_PORT ETCD_PEER_PORT; do
            echo "$v=${!v}" >>"$STATE"
        done
        for n in $(seq "$STACK_MEMBERS"); do
            for kind in PG_PORT REST_PORT ETCD_LINK_PORT; do
                port="$(free_port)"
                printf -v "${kind}_$n" '%s' "$port"
                echo "${kind}_$n=$port" >>"$STATE"
            done
        done
        init_ha
    else
        say "PostgreSQL primary on $PRIMARY_PORT"
        init_primary
    fi
    # Migrations take a session advisory lock, which transaction pooling cannot keep:
    # they run here on a direct connection (HA: HAProxy's primary port), before any
    # replica starts.
    (cd "$ROOT" && DATABASE_URL="$PRIMARY_URL" "$PYTHON" -m server migrate >"$LOG/migrate.log" 2>&1)
    if ha; then
        say "pgBackRest: WAL archived to $STACK_DIR/backup; a first full backup"
        cmd_backup full >/dev/null
    else
        say "streaming standby on $STANDBY_PORT"
        init_standby
        wait_for 30 "the standby to stream" streaming
    fi
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
    # shellcheck disable=SC1090
    [ -f "$STATE" ] && . "$STATE"
    stop_nginx
    stop_replicas
    stop_pgbouncer
    stop_restores
    if [ "${STACK_HA:-0}" = 1 ] || [ -f "$RUN/etcd.pid" ]; then
        # Replicas first, the leader last: nothing fails over while the cluster stops.
        local leader="" n
        [ -f "$STATE" ] && leader="$(hactl leader 2>/dev/null || true)"
        for n in $(seq "${STACK_MEMBERS:-3}"); do [ "pg$n" = "$leader" ] || stop_member "$n"; done
        [ -n "$leader" ] && stop_member "${leader#pg}"
        stop_pidfile "$RUN/etcd.pid" TERM
        stop_pidfile "$RUN/haproxy.pid" TERM
    else
        stop_pg standby
        stop_pg primary
    fi
    rm -rf "$STACK_DIR"
    say "stopped; removed $STACK_DIR"
}

cmd_status() {
    load_state
    local bad=0 line
    report() {  # report NAME OK DETAIL
        if [ "$2" = 1 ]; then line="running"; else line="NOT RUNNING"; bad=1; fi
        printf '%-12s %-12s %s\n' "$1" "$line" "$3"
    }
    if ha; then
        hactl members || bad=1
        local ok=0
        http_ok "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null && ok=1
        report etcd "$ok" "127.0.0.1:$ETCD_PORT"
        ok=0
        alive "$(cat "$RUN/haproxy.pid" 2>/dev/null)" && ok=1
        report haproxy "$ok" "writes 127.0.0.1:$PRIMARY_PORT, reads 127.0.0.1:$STANDBY_PORT: $(hactl routes 2>/dev/null || echo unknown)"
        line="$(pgbackrest_cmd --output=json info 2>/dev/null | python3 -c '
import json, sys
stanza = json.load(sys.stdin)[0]
backups = stanza.get("backup", [])
archive = (stanza.get("archive") or [{}])[-1].get("max", "-")
print(", ".join(b["label"] + " (" + b["type"] + ")" for b in backups) + "; WAL archived up to " + archive)' 2>/dev/null || true)"
        printf '%-12s %s\n' backups "${line:-none}"
    else
        for role in primary standby; do
            local port_var ok=0
            port_var="${role^^}_PORT"
            "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "${!port_var}" -U postgres && ok=1
            report "$role" "$ok" "127.0.0.1:${!port_var}"
        done
        line="$(psql -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d postgres -Atc \
            "SELECT state || ', replay lag ' || coalesce(replay_lag::text, '0') FROM pg_stat_replication" 2>/dev/null || true)"
        printf '%-12s %s\n' replication "${line:-none}"
    fi
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

cmd_component() {  # start|stop|restart primary|standby|pgbouncer|MEMBER
    load_state
    case "$2" in
        pgbouncer)
            [ "$1" = start ] || stop_pgbouncer
            [ "$1" = stop ] || start_pgbouncer ;;
        primary | standby)
            ha && die "$2: STACK_HA=0 only (HA: kill-postmaster, crash, stop, start MEMBER; switchover)"
            [ "$1" = start ] || stop_pg "$2"
            [ "$1" = stop ] || start_pg "$2" ;;
        *)
            ha || die "unknown component: $2 (primary, standby, pgbouncer)"
            local n
            n="$(member_number "$2")"
            [ "$1" = start ] || stop_member "$n"
            [ "$1" = stop ] || start_member "$n" ;;
    esac
}

cmd_ha() {  # the HA-only commands
    load_state
    ha || die "$1: the highly available stack only (this one was brought up with STACK_HA=0)"
    local command="$1"
    shift
    case "$command" in
        leader) hactl leader || die "no leader right now" ;;
        kill-postmaster)
            local n pid
            n="$(member_number "${1:?member}")"
            pid="$(postmaster_of "$n")"
            alive "$pid" || die "pg$n: PostgreSQL does not run"
            kill -KILL "$pid"
            echo "KILLED=pg$n POSTMASTER_PID=$pid" ;;
        crash)
            local n
            n="$(member_number "${1:?member}")"
            crash_member "$n"
            echo "CRASHED=pg$n" ;;
        isolate | reconnect)
            local n
            n="$(member_number "${1:?member}")"
            if [ "$command" = isolate ]; then
                hactl haproxy "set server etcd_pg$n/etcd state maint" >/dev/null
                hactl haproxy "shutdown sessions server etcd_pg$n/etcd" >/dev/null
            else
                hactl haproxy "set server etcd_pg$n/etcd state ready" >/dev/null
            fi
            echo "${command^^}D=pg$n" ;;
        wait-replica)
            local n
            n="$(member_number "${1:?member}")"
            hactl wait-replica "pg$n" "${2:-120}" || die "pg$n is not a streaming replica of the leader after ${2:-120} s" ;;
        switchover)
            local leader args=()
            leader="$(hactl leader)" || die "no leader right now"
            args=(--leader "$leader" --force)
            [ $# -ge 1 ] && args+=(--candidate "pg$(member_number "$1")")
            patronictl -c "$STACK_DIR/patroni/ctl.yml" switchover "${args[@]}" ;;
        patronictl) patronictl -c "$STACK_DIR/patroni/ctl.yml" "$@" ;;
        backup) cmd_backup "${1:?full, diff or incr}" ;;
        restore) cmd_restore "${1:?a target time}" ;;
    esac
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    start | stop | restart) [ $# = 2 ] || die "usage: $0 $1 pgbouncer|primary|standby|MEMBER"; cmd_component "$1" "$2" ;;
    leader | kill-postmaster | crash | isolate | reconnect | wait-replica | switchover | patronictl | backup | restore)
        cmd_ha "$@" ;;
    *) sed -n '2,44p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Job: make sure a PostgreSQL database for the test suite exists (private cluster on 127.0.0.1:55432) and print its asyncpg URL last on stdout.
# Usage: scripts/ensure-postgres.sh [--durable]
#        --durable: the benchmarks' cluster on 127.0.0.1:55433 at PostgreSQL's default
#        durability (fsync=on, synchronous_commit=on), as a production database runs; the
#        tests' cluster runs with fsync=off, which no benchmark figure may rest on.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

durable=0
if [[ ${1:-} == --durable ]]; then
    durable=1
elif [[ -n ${TASKDEPLOY_TEST_DATABASE_URL:-} ]]; then
    log "using TASKDEPLOY_TEST_DATABASE_URL from the environment"
    printf '%s\n' "$TASKDEPLOY_TEST_DATABASE_URL"
    exit 0
fi

PG_HOST=127.0.0.1
PG_PORT=55432
PG_BASE=/var/tmp/taskdeploy-pg
SERVER_OPTIONS="-c fsync=off"
LOCK_NAME=postgres
if ((durable == 1)); then
    LOCK_NAME=postgres-durable
    PG_PORT=55433
    PG_BASE=/var/tmp/taskdeploy-pg-durable
    SERVER_OPTIONS="-c fsync=on -c synchronous_commit=on"
fi
PGDATA_DIR=$PG_BASE/data
PG_LOG=$PG_BASE/postgres.log
DB_USER=taskdeploy
DB_PASS=taskdeploy
DB_NAME=taskdeploy
URL="postgresql+asyncpg://$DB_USER:$DB_PASS@$PG_HOST:$PG_PORT/$DB_NAME"

# Client settings from the caller's environment must not redirect our commands.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGPASSWORD PGDATABASE PGSERVICE PGOPTIONS PGDATA

td_lock "$LOCK_NAME"

# Highest installed major version.
pg_bin() {
    local dirs=(/usr/lib/postgresql/*/bin)
    [[ -x ${dirs[0]}/initdb ]] || return 1
    printf '%s\n' "${dirs[@]}" | sort -V | tail -n 1
}
bin=$(pg_bin) || {
    td_apt_install postgresql
    bin=$(pg_bin) || die "no /usr/lib/postgresql/*/bin/initdb after installing postgresql"
}

# initdb refuses root: as root the cluster belongs to the postgres OS user, otherwise to the caller.
# Runs in a subshell without inherited descriptors: the postmaster started by pg_ctl outlives us.
as_owner() {
    (
        td_close_fds
        cd "$PG_BASE" || exit 1
        if [[ $EUID -eq 0 ]]; then
            exec runuser -u postgres -- "$@"
        else
            exec "$@"
        fi
    )
}

is_ready() { "$bin/pg_isready" -q -h "$PG_HOST" -p "$PG_PORT" -t 2; }

if is_ready; then
    log "PostgreSQL already answers on $PG_HOST:$PG_PORT; reusing it"
else
    if [[ $EUID -eq 0 ]]; then
        id -u postgres >/dev/null 2>&1 || die "no postgres OS user (is Debian's postgresql package installed?)"
        owner=postgres
    else
        owner=$(id -un)
    fi
    mkdir -p "$PG_BASE"
    if [[ $EUID -eq 0 ]]; then
        chown postgres:postgres "$PG_BASE"
    else
        [[ -O $PG_BASE ]] || die "$PG_BASE belongs to another user: run as root or set TASKDEPLOY_TEST_DATABASE_URL"
    fi
    chmod 0700 "$PG_BASE"

    if [[ ! -s $PGDATA_DIR/PG_VERSION ]]; then
        rm -rf "$PGDATA_DIR" # a half-made cluster from an interrupted initdb
        log "initdb $PGDATA_DIR (owner $owner, trust auth, $("$bin/postgres" --version))"
        as_owner "$bin/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust --encoding=UTF8 \
            --no-locale --no-sync >&2
    fi

    log "starting PostgreSQL on $PG_HOST:$PG_PORT (log $PG_LOG)"
    start=$(td_now_us)
    as_owner "$bin/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 60 -o "-c listen_addresses=$PG_HOST -p $PG_PORT -c unix_socket_directories=$PG_BASE $SERVER_OPTIONS -c max_connections=200" \
        start >&2 || {
        tail -n 20 "$PG_LOG" >&2 || true
        die "pg_ctl start failed; see $PG_LOG"
    }
    log "PostgreSQL up in $(td_elapsed "$start")s"
fi

psql_admin() {
    "$bin/psql" -X -q -v ON_ERROR_STOP=1 -At -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres "$@"
}
have=$(psql_admin -c "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = '$DB_USER')::text
                           || (SELECT count(*) FROM pg_database WHERE datname = '$DB_NAME')::text") ||
    die "cannot connect to $PG_HOST:$PG_PORT as postgres (is that our cluster?)"
if [[ ${have:0:1} != 1 ]]; then
    log "creating role $DB_USER"
    psql_admin -c "CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASS'"
fi
if [[ ${have:1:1} != 1 ]]; then
    log "creating database $DB_NAME"
    psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_USER"
fi
log "database ready"
printf '%s\n' "$URL"

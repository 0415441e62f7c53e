#!/usr/bin/env bash
# Job: make sure moto's S3 server answers on 127.0.0.1:55000 (starting it from the venv if needed) and print its URL last on stdout.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

if [[ -n ${TASKDEPLOY_TEST_S3_ENDPOINT:-} ]]; then
    log "using TASKDEPLOY_TEST_S3_ENDPOINT from the environment"
    printf '%s\n' "$TASKDEPLOY_TEST_S3_ENDPOINT"
    exit 0
fi

HOST=127.0.0.1
PORT=55000
URL=http://$HOST:$PORT
MOTO_DIR=/var/tmp/taskdeploy-moto
PIDFILE=$MOTO_DIR/moto.pid
LOGFILE=$MOTO_DIR/moto.log
DEADLINE=30

# 0: an S3 endpoint answers (ListBuckets on /), 2: something else answers, 1: nothing listens.
probe() {
    local response
    response=$(td_http_get "$HOST" "$PORT" /) || return 1
    [[ -n $response ]] || return 1
    [[ $response == *ListAllMyBucketsResult* ]] && return 0
    return 2
}
answers() {
    local rc=0
    probe || rc=$?
    case $rc in
    0) return 0 ;;
    2) die "something that is not an S3 server answers on $URL; free port $PORT or set TASKDEPLOY_TEST_S3_ENDPOINT" ;;
    *) return 1 ;;
    esac
}

if answers; then
    log "S3 (moto) already answers on $URL"
    printf '%s\n' "$URL"
    exit 0
fi

td_lock moto
mkdir -p "$MOTO_DIR"
if pid=$(td_pidfile_alive "$PIDFILE" moto_server); then
    log "moto_server (pid $pid) is running but not answering yet; waiting up to ${DEADLINE}s"
else
    [[ -x $TD_ROOT/.venv/bin/moto_server ]] || "$TD_SCRIPTS/ensure-venv.sh" >&2
    [[ -x $TD_ROOT/.venv/bin/moto_server ]] || die "no .venv/bin/moto_server (is moto[server] in the dev extras?)"
    log "starting moto_server on $URL (log $LOGFILE, pid file $PIDFILE)"
    td_start_daemon "$LOGFILE" "$PIDFILE" "$TD_ROOT/.venv/bin/moto_server" -H "$HOST" -p "$PORT"
    pid=$TD_PID
fi

start=$(td_now_us)
moto_up() {
    answers && return 0
    td_pid_alive "$pid" moto_server ||
        die "moto_server exited; last lines of $LOGFILE:"$'\n'"$(tail -n 20 "$LOGFILE")"
    return 1
}
td_wait_until "$DEADLINE" "moto_server on $URL" moto_up || die "moto_server (pid $pid) did not answer within ${DEADLINE}s; see $LOGFILE"
log "moto_server (pid $pid) answers after $(td_elapsed "$start")s"
printf '%s\n' "$URL"

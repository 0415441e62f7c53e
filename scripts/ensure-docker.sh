#!/usr/bin/env bash
# Job: make sure a Docker engine answers `docker info`; as root, install docker.io and start dockerd if needed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

DOCKERD_LOG=/var/log/taskdeploy-dockerd.log
DOCKERD_PIDFILE=/var/run/taskdeploy-dockerd.pid
DEADLINE=60

server_version() { docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'; }

# tests/e2e/test_deployment.py validates docker-compose.yml with Debian's docker-compose.
command -v docker-compose >/dev/null || td_apt_install --no-install-recommends docker-compose

if td_docker_ok; then
    log "Docker engine is up (server $(server_version))"
    exit 0
fi

td_lock docker
if td_docker_ok; then # someone else started it while we waited for the lock
    log "Docker engine is up (server $(server_version))"
    exit 0
fi

# Starting a local daemon cannot help a client that talks to another engine.
case ${DOCKER_HOST:-} in
"" | unix:///var/run/docker.sock | unix:///run/docker.sock) ;;
*) die "DOCKER_HOST=$DOCKER_HOST does not answer \`docker info\`; not starting a local dockerd for it (unset DOCKER_HOST to use the local engine)" ;;
esac

if command -v docker >/dev/null; then
    err=$(timeout 20 docker info 2>&1 >/dev/null) || true
    if [[ $err == *"permission denied"* ]]; then
        die "no access to the Docker socket: run as root or as a member of the docker group ($err)"
    fi
fi

# A dockerd that runs but does not answer yet (starting, or started by someone else): wait for it,
# never start a second one on the same socket.
running=$(td_pids_named dockerd | tr '\n' ' ')
if [[ -n $running ]]; then
    log "dockerd already running (pid ${running% }) but not answering yet; waiting up to ${DEADLINE}s"
    td_wait_until "$DEADLINE" "the running dockerd" td_docker_ok ||
        die "dockerd (pid ${running% }) runs but \`docker info\` still fails; not starting a second daemon (its log may be $DOCKERD_LOG)"
    log "Docker engine is up (server $(server_version))"
    exit 0
fi

[[ $EUID -eq 0 ]] ||
    die "no Docker engine answers and installing/starting one needs root: run as root, or start dockerd yourself"

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    td_apt_install docker.io
    command -v dockerd >/dev/null || die "dockerd still not found after installing docker.io"
    # The package scripts may have started a daemon already.
    if td_docker_ok; then
        log "Docker engine is up after install (server $(server_version))"
        exit 0
    fi
    [[ -z $(td_pids_named dockerd) ]] || {
        td_wait_until "$DEADLINE" "dockerd started by the package" td_docker_ok ||
            die "the dockerd started by the docker.io package does not answer"
        exit 0
    }
fi

log "starting dockerd in the background (log $DOCKERD_LOG, pid file $DOCKERD_PIDFILE)"
start=$(td_now_us)
td_start_daemon "$DOCKERD_LOG" "$DOCKERD_PIDFILE" dockerd
dockerd_pid=$TD_PID

dockerd_up() {
    td_docker_ok && return 0
    td_pid_alive "$dockerd_pid" ||
        die "dockerd exited during startup; last lines of $DOCKERD_LOG:"$'\n'"$(tail -n 20 "$DOCKERD_LOG")"
    return 1
}
if ! td_wait_until "$DEADLINE" "dockerd" dockerd_up; then
    kill "$dockerd_pid" 2>/dev/null || true # ours, and useless; the next run starts afresh
    die "dockerd did not answer \`docker info\` within ${DEADLINE}s; see $DOCKERD_LOG"
fi
log "dockerd (pid $dockerd_pid) up in $(td_elapsed "$start")s (server $(server_version))"

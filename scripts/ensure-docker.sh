#!/usr/bin/env bash
# Job: make sure a Docker engine answers `docker info` and can cap a container's disk
# (`--storage-opt size=`); as root, install docker.io and start dockerd on a btrfs data root if
# needed, then make the job network (see scripts/ensure-job-network.sh).
#
# Why btrfs: a run's workspace lives in its container's writable layer, capped per run with the
# engine's `size` storage option. Docker honours that option on btrfs, zfs, and overlay2 over XFS
# mounted with project quotas. This kernel has no quota support (CONFIG_QUOTA is off, so neither
# XFS nor ext4 project quotas mount), while btrfs quotas are part of btrfs itself; we use its
# simple quotas (scripts/btrfs-quota.py says why). The data root is a sparse file loop-mounted
# with discard, so deleted data goes back to the host.
#
# Env: TASKDEPLOY_DOCKER_DATA_ROOT (default /var/lib/taskdeploy/docker),
#      TASKDEPLOY_DOCKER_DISK_GB (size of the sparse btrfs file when it is first made; default
#      3/4 of the free space, at most 256).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

DOCKERD_LOG=/var/log/taskdeploy-dockerd.log
DOCKERD_PIDFILE=/var/run/taskdeploy-dockerd.pid
DATA_ROOT=${TASKDEPLOY_DOCKER_DATA_ROOT:-/var/lib/taskdeploy/docker}
DISK_IMAGE=$DATA_ROOT.btrfs.img
DEADLINE=60

server_version() { docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'; }
storage_driver() { docker info --format '{{.Driver}}' 2>/dev/null || echo '?'; }

# The drivers on which Docker enforces `--storage-opt size`: btrfs, zfs, and overlay2 over XFS
# (which also needs the pquota mount option; the service's own start-up probe tells that apart).
caps_disk() {
    case $(storage_driver) in
    btrfs | zfs) return 0 ;;
    overlay2) [[ $(docker info --format '{{json .DriverStatus}}' 2>/dev/null) == *'"Backing Filesystem","xfs"'* ]] ;;
    *) return 1 ;;
    esac
}

# simple_quotas: make our btrfs data root account with simple quotas (see scripts/btrfs-quota.py:
# classic quota groups stop enforcing limits whenever they go inconsistent).
simple_quotas() {
    local mode
    mode=$(python3 "$TD_SCRIPTS/btrfs-quota.py" "$DATA_ROOT" "$(findmnt -no UUID "$DATA_ROOT")") ||
        die "cannot switch $DATA_ROOT to btrfs simple quotas (Linux 6.7 or newer needed; got: ${mode:-?})"
}

engine_ready() {
    td_docker_ok || return 1
    if ! caps_disk; then
        log "the Docker engine's storage driver ($(storage_driver)) cannot cap a container's disk"
        return 1
    fi
    if [[ $(docker info --format '{{.DockerRootDir}}' 2>/dev/null) == "$DATA_ROOT" ]] &&
        [[ $(findmnt -no FSTYPE "$DATA_ROOT") == btrfs ]]; then
        simple_quotas
    fi
    "$TD_SCRIPTS/ensure-job-network.sh"
    log "Docker engine is up (server $(server_version), storage driver $(storage_driver))"
}

# tests/e2e/test_deployment.py validates docker-compose.yml with Debian's docker-compose.
command -v docker-compose >/dev/null || td_apt_install --no-install-recommends docker-compose

if td_docker_ok && caps_disk; then
    engine_ready
    exit 0
fi

td_lock docker

own_pid=$(td_pidfile_alive "$DOCKERD_PIDFILE" dockerd) || own_pid=
if td_docker_ok; then
    caps_disk && {
        engine_ready
        exit 0
    }
    # Only an engine these scripts started may be restarted; anyone else's stays as it is.
    [[ -n $own_pid ]] ||
        die "the running Docker engine uses storage driver $(storage_driver), which cannot cap a run's disk, and was not started by this script: run it on btrfs, zfs or overlay2 over XFS with pquota (or stop it and let this script start one)"
    log "stopping the dockerd this script started (pid $own_pid): its data root cannot cap a run's disk"
    kill "$own_pid"
    td_wait_until 60 "dockerd $own_pid to exit" bash -c "! kill -0 $own_pid 2>/dev/null" ||
        die "dockerd $own_pid did not stop"
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
    engine_ready || die "the engine that came up cannot cap a run's disk"
    exit 0
fi

[[ $EUID -eq 0 ]] ||
    die "no Docker engine answers and installing/starting one needs root: run as root, or start dockerd yourself"

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    td_apt_install docker.io
    command -v dockerd >/dev/null || die "dockerd still not found after installing docker.io"
    # The package scripts may have started a daemon (on the default data root); stop it only if
    # it cannot cap a run's disk and it is the package's own.
    if td_docker_ok && caps_disk; then
        engine_ready
        exit 0
    fi
    for pid in $(td_pids_named dockerd); do
        log "stopping the dockerd the docker.io package started (pid $pid)"
        kill "$pid" 2>/dev/null || true
        td_wait_until 60 "dockerd $pid to exit" bash -c "! kill -0 $pid 2>/dev/null" || true
    done
fi
command -v mkfs.btrfs >/dev/null || td_apt_install --no-install-recommends btrfs-progs

# The btrfs data root: a sparse file, loop-mounted with discard so freed blocks go back to the host.
if ! mountpoint -q "$DATA_ROOT"; then
    mkdir -p "$DATA_ROOT"
    if [[ ! -s $DISK_IMAGE ]]; then
        free_gb=$(($(df --output=avail -B1G "$(dirname "$DISK_IMAGE")" | tail -n 1)))
        size_gb=${TASKDEPLOY_DOCKER_DISK_GB:-$((free_gb * 3 / 4))}
        ((size_gb <= 256)) || size_gb=256
        ((size_gb >= 8)) || die "only ${free_gb} GB free under $(dirname "$DISK_IMAGE"); the Docker data root needs at least 8 (TASKDEPLOY_DOCKER_DISK_GB)"
        log "making a ${size_gb} GB sparse btrfs file system in $DISK_IMAGE for the Docker data root"
        truncate -s "${size_gb}G" "$DISK_IMAGE.part"
        mkfs.btrfs -q -f "$DISK_IMAGE.part" >&2
        mv -f "$DISK_IMAGE.part" "$DISK_IMAGE"
    fi
    mount -o loop,discard=async "$DISK_IMAGE" "$DATA_ROOT" ||
        die "cannot loop-mount $DISK_IMAGE on $DATA_ROOT"
    log "mounted $DISK_IMAGE on $DATA_ROOT ($(findmnt -no FSTYPE "$DATA_ROOT"))"
fi
[[ $(findmnt -no FSTYPE "$DATA_ROOT") == btrfs ]] || die "$DATA_ROOT is mounted but not btrfs"
simple_quotas

log "starting dockerd in the background (data root $DATA_ROOT, log $DOCKERD_LOG, pid file $DOCKERD_PIDFILE)"
start=$(td_now_us)
td_start_daemon "$DOCKERD_LOG" "$DOCKERD_PIDFILE" dockerd --data-root "$DATA_ROOT" --storage-driver btrfs
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
log "dockerd (pid $dockerd_pid) up in $(td_elapsed "$start")s"
engine_ready || die "the engine that came up cannot cap a run's disk"

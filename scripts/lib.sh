# shellcheck shell=bash
# Job: shared helpers for scripts/* (repo root, timestamped logging, deadlines, locks, apt); sourced, never run.
#
# Conventions: diagnostics go to stderr (some scripts print a URL as their last stdout line);
# fd 9 is reserved for td_lock; long-lived children are started with every fd above 2 closed.

TD_ROOT=$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/.." && pwd -P)
# shellcheck disable=SC2034 # used by the scripts that source this file
TD_SCRIPTS=$TD_ROOT/scripts
TD_NAME=$(basename -- "$0")
# Debian puts dockerd, runuser and friends in sbin; a root shell without a login PATH may lack it.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin ;; esac
export PATH

log() { printf '%(%H:%M:%S)T [%s] %s\n' -1 "$TD_NAME" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Microseconds since the epoch, without forking (EPOCHREALTIME uses the locale's decimal mark).
td_now_us() { local t=${EPOCHREALTIME/[.,]/}; printf '%s' "$t"; }
# td_elapsed START_US: seconds since START_US with one decimal, e.g. "3.4".
td_elapsed() {
    local ds=$((($(td_now_us) - $1) / 100000))
    printf '%d.%d' $((ds / 10)) $((ds % 10))
}

# td_wait_until SECONDS WHAT CMD [ARG...]: run CMD every 0.2 s until it succeeds; 1 on deadline.
# CMD runs in a condition context (set -e is off inside it); it may call die to give up early.
td_wait_until() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$(($(td_now_us) + seconds * 1000000))
    until "$@"; do
        if (($(td_now_us) >= deadline)); then
            log "gave up waiting for $what after ${seconds}s"
            return 1
        fi
        sleep 0.2
    done
}

# td_lock NAME: serialise concurrent runs of one step (fd 9, released when the script exits).
td_lock() {
    local file=/var/tmp/taskdeploy-$1.lock
    # Opening without O_CREAT also works on a file another user created (fs.protected_regular).
    { exec 9>>"$file"; } 2>/dev/null || { exec 9<"$file"; } 2>/dev/null || die "cannot open lock $file"
    if ! flock -n 9; then
        log "another run holds $file; waiting (up to 15 min)"
        flock -w 900 9 || die "timed out waiting for $file"
    fi
}

# td_short_hash STRING: 12 hex digits identifying STRING (e.g. a repo path in a lock name).
td_short_hash() {
    local h
    h=$(printf '%s' "$1" | sha256sum)
    printf '%s' "${h:0:12}"
}

td_need_root() {
    [[ $EUID -eq 0 ]] || die "$1 needs root: run this script as root (e.g. sudo $0)"
}

# td_apt_install PKG...: install Debian packages non-interactively (root only), output on stderr.
td_apt_install() {
    td_need_root "installing $*"
    log "installing Debian package(s): $*"
    if ! apt-get -q -o DPkg::Lock::Timeout=300 update >&2; then
        log "warning: apt-get update failed; trying the install with the current lists"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 install "$@" >&2 ||
        die "apt-get install $* failed"
    hash -r
}

# td_pid_alive PID [NEEDLE]: PID exists, is not a zombie and (if given) its command line contains NEEDLE.
td_pid_alive() {
    local pid=$1 needle=${2:-} stat cmdline
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]] || return 1
    [[ -z $needle ]] && return 0
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$needle"* ]]
}

# td_pids_named COMM: pids whose process name is exactly COMM (reads /proc; procps may be absent).
td_pids_named() {
    local f comm pid
    for f in /proc/[0-9]*/comm; do
        { read -r comm <"$f"; } 2>/dev/null || continue
        [[ $comm == "$1" ]] || continue
        pid=${f#/proc/}
        printf '%s\n' "${pid%/comm}"
    done
}

# td_pidfile_alive FILE NEEDLE: print the pid recorded in FILE if that process is still NEEDLE.
td_pidfile_alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    td_pid_alive "$pid" "$2" || return 1
    printf '%s' "$pid"
}

# td_close_fds: close every descriptor above 2 in the current (sub)shell, e.g. the lock on fd 9 or
# pipes inherited from a CI runner, so that long-lived children hold neither.
td_close_fds() {
    local fd
    for fd in /proc/self/fd/*; do
        fd=${fd##*/}
        if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
}

# td_start_daemon LOGFILE PIDFILE CMD [ARG...]: start CMD detached (own session, cwd /, stdin
# /dev/null, output appended to LOGFILE, no other descriptors) and record its pid in PIDFILE and
# $TD_PID.
td_start_daemon() {
    local logfile=$1 pidfile=$2
    shift 2
    (td_close_fds && cd / && exec setsid nohup "$@" </dev/null >>"$logfile" 2>&1) &
    TD_PID=$!
    printf '%s\n' "$TD_PID" >"$pidfile"
}

# td_http_get HOST PORT PATH: raw HTTP/1.0 GET over bash's /dev/tcp (no curl needed); prints the
# response, fails when nothing accepts the connection. Bounded to 3 s.
td_http_get() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s:%s\r\nConnection: close\r\n\r\n" "$3" "$1" "$2" >&3
        cat <&3' _ "$1" "$2" "$3" 2>/dev/null
}

td_docker_ok() { timeout 20 docker info >/dev/null 2>&1; }

# Temporary directories removed on exit; mounts left inside (e.g. by a failed debootstrap) are
# unmounted first and rm never crosses into another file system.
TD_TMPDIRS=()
td_mktemp_dir() { # VAR: create a directory under /var/tmp and store its path in VAR
    local dir
    dir=$(mktemp -d /var/tmp/taskdeploy-tmp.XXXXXX)
    TD_TMPDIRS+=("$dir")
    printf -v "$1" '%s' "$dir"
}
# td_mounts_under DIR: mount points below DIR, deepest first.
td_mounts_under() { awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r; }
td_cleanup_tmpdirs() {
    local dir mnt
    for dir in "${TD_TMPDIRS[@]}"; do
        [[ -d $dir ]] || continue
        while read -r mnt; do
            umount -l "$mnt" 2>/dev/null || true
        done < <(td_mounts_under "$dir")
        rm -rf --one-file-system -- "$dir" || log "warning: could not remove $dir"
    done
}
trap td_cleanup_tmpdirs EXIT

#!/bin/sh
# In-container wrapper: runs the job's command with capped, byte-exact logs and cgroup metrics.
#
# Lives in the environment image (root-owned, read-only) and is started as
#   /bin/sh /opt/taskdeploy/entrypoint.sh META_DIR COMMAND
# The command arrives as data in the wrapper's second argument (nothing is copied into the
# container before it starts); the wrapper writes it to META_DIR/command.sh and runs it from the
# folder above META_DIR (the workspace). Everything it writes lives in META_DIR:
#   command.sh                   the user's command, run as `/bin/sh command.sh`, stdin /dev/null
#   stdout.log, stderr.log       the first TASKDEPLOY_LOG_LIMIT bytes of each stream
#   stdout.total, stderr.total   every byte each stream produced, as one decimal number
#   output.empty                 present when the output folder was empty at the end
#   metrics.tsv                  `start T CPU_NS`, `s T CPU_NS MEM`, `f T CPU_NS PEAK`, `exit CODE`;
#                                `start T` and `nocgroup` without cgroup counters (the format is
#                                described and parsed in app/services/metrics.py)
# The `exit` line is written last: when it is present, every other file is complete.
#
# Portable to busybox ash, dash and bash: shell builtins plus sleep, dd, wc, mkfifo, rm (and
# head, tee, cat where dd is too old).
# Every variable is prefixed td_ because assigning to a name the job's environment exported
# would change what the command sees. Redirections that may fail stay on simple commands
# (`read`, `printf`): POSIX lets a shell exit on a failed redirection of a compound command.

if [ "$#" -ne 2 ] || [ -z "$1" ]; then
    echo "usage: entrypoint.sh META_DIR COMMAND" >&2
    exit 125
fi
cd "$1" || exit 125
td_dir=$PWD
# printf is a builtin everywhere: the text is written byte for byte, without a final newline.
printf '%s' "$2" >"$td_dir/command.sh" || exit 125
set --
cd .. || exit 125

# A malformed setting falls back to the default instead of breaking the run.
td_limit=${TASKDEPLOY_LOG_LIMIT:-10485760}
case $td_limit in '' | *[!0-9]*) td_limit=10485760 ;; esac
td_interval=${TASKDEPLOY_METRICS_INTERVAL:-1}
case $td_interval in '' | . | *[!0-9.]* | *.*.*) td_interval=1 ;; esac
case $td_interval in *[1-9]*) ;; *) td_interval=0 ;; esac
# Test hook: points the sampler at a fake cgroup tree.
td_cg=${TASKDEPLOY_TEST_CGROUP_ROOT:-/sys/fs/cgroup}
td_metrics=$td_dir/metrics.tsv

# --------------------------------------------------------------------------- cgroup counters
# Every read below is a builtin on a simple command: sampling forks nothing but `sleep`.
if [ -f "$td_cg/cgroup.controllers" ]; then
    td_cgv=2
    td_cpu_file=$td_cg/cpu.stat
    td_mem_file=$td_cg/memory.current
    td_peak_file=$td_cg/memory.peak
else
    td_cgv=1
    td_cpu_file=$td_cg/cpuacct/cpuacct.usage
    # Some hosts mount cpu and cpuacct as one folder.
    [ -r "$td_cpu_file" ] || td_cpu_file=$td_cg/cpu,cpuacct/cpuacct.usage
    td_mem_file=$td_cg/memory/memory.usage_in_bytes
    td_peak_file=$td_cg/memory/memory.max_usage_in_bytes
fi

# Sets td_now to the first field of /proc/uptime (10 ms resolution; busybox date has no %N).
read_clock() {
    td_now=
    read -r td_now _ </proc/uptime
}

# Sets td_cpu (ns) and td_mem (bytes); fails when either is unreadable or not a number.
read_counters() {
    td_cpu=
    td_mem=
    if [ "$td_cgv" = 2 ]; then
        # cpu.stat has several lines, hence a loop; its input must exist or some shells exit.
        [ -r "$td_cpu_file" ] || return 1
        while read -r td_key td_value; do
            if [ "$td_key" = usage_usec ]; then
                td_cpu=${td_value}000
                break
            fi
        done <"$td_cpu_file"
    else
        read -r td_cpu <"$td_cpu_file"
    fi
    read -r td_mem <"$td_mem_file"
    case $td_cpu$td_mem in *[!0-9]*) return 1 ;; esac
    [ -n "$td_cpu" ] && [ -n "$td_mem" ]
}

# Sets td_peak; where the kernel keeps no peak (cgroup v2 before Linux 5.19) the current usage
# stands in, and the parser takes the larger of it and every sample.
read_peak() {
    td_peak=
    read -r td_peak <"$td_peak_file"
    case $td_peak in '' | *[!0-9]*) td_peak=$td_mem ;; esac
}

write_sample() {
    read_clock
    if read_counters; then
        printf 's %s %s %s\n' "$td_now" "$td_cpu" "$td_mem" >>"$td_metrics"
    fi
}

# Runs in the background; TERM ends it at once, taking its pending `sleep` along.
sample_loop() {
    # $! names the sleep as soon as it is started, before the trap can run; a variable set on
    # the next line could still be stale.
    trap 'kill "$!" 2>/dev/null; exit 0' TERM
    while :; do
        sleep "$td_interval" &
        # A sleep that refuses fractions (busybox built without them) fails at once: without
        # this the loop would spin.
        wait "$!" || td_interval=1
        write_sample 2>/dev/null
    done
}

# --------------------------------------------------------------------------- stray processes
# Sets td_state, td_parent and td_session from /proc/PID/stat. The name field may hold spaces
# and parentheses, so the fields are taken after its last ") ".
read_stat() {
    td_line=
    { read -r td_line <"/proc/$1/stat"; } 2>/dev/null
    [ -n "$td_line" ] || return 1
    # shellcheck disable=SC2086 # split on purpose: the fields are numbers and one letter
    set -- ${td_line##*") "}
    td_state=$1
    td_parent=$2
    td_session=$4
}

# Kills what the command left running in the background: such a process may hold a log pipe
# open, and the readers would wait for it forever. Docker kills it anyway once the main process
# exits, so nothing is lost that a plain container would keep. Only orphans (parent PID 1) of
# our own session count, and only when this script is the container's main process, so running
# the script by hand on a host cannot touch anything else.
# With the argument `all`, every process of the session but ours goes, orphan or not: that is
# how a stop request (SIGTERM from `docker stop` or the service) ends the command while the
# log readers live on to flush what they hold.
kill_strays() {
    td_doomed=
    [ "${1:-orphans}" != all ] || td_doomed="$$"
    [ "$$" = 1 ] || [ "$PPID" = 1 ] || return 0
    read_stat "$$" || return 0
    td_own_session=$td_session
    # Each pass kills one generation: the children of a killed process are orphans in the next.
    td_pass=0
    while [ "$td_pass" -lt 50 ]; do
        td_pass=$((td_pass + 1))
        td_killed=0
        for td_proc in /proc/[0-9]*; do
            td_pid=${td_proc#/proc/}
            case " 1 $$ $td_keep " in *" $td_pid "*) continue ;; esac
            read_stat "$td_pid" || continue
            # In `all` mode the command and, transitively, its children go too (their parent
            # may not have been reparented to 1 yet when the next pass looks).
            case " $td_doomed " in
                *" $td_parent "*) td_doomed_child=1 ;;
                *) td_doomed_child=0 ;;
            esac
            if { [ "$td_parent" = 1 ] || [ "$td_doomed_child" = 1 ]; } &&
                [ "$td_session" = "$td_own_session" ] &&
                [ "$td_state" != Z ] && kill -9 "$td_pid" 2>/dev/null; then
                td_killed=1
                td_doomed="$td_doomed $td_pid"
            fi
        done
        [ "$td_killed" = 1 ] || return 0
    done
}

# --------------------------------------------------------------------------- run
is_count() {
    case $1 in '' | *[!0-9]*) return 1 ;; esac
}

read_clock
td_sampler=
if read_counters 2>/dev/null; then
    td_have_cgroup=1
    # The CPU time the container used before the command starts (runc, the init, this shell):
    # the parser counts from here.
    printf 'start %s %s\n' "$td_now" "$td_cpu" >"$td_metrics" || exit 125
    if [ "$td_interval" != 0 ]; then
        printf 's %s %s %s\n' "$td_now" "$td_cpu" "$td_mem" >>"$td_metrics"
        # Started before any other background job, so the loop never sees a foreign $!.
        sample_loop </dev/null &
        td_sampler=$!
    fi
else
    td_have_cgroup=0
    printf 'start %s\nnocgroup\n' "$td_now" >"$td_metrics" || exit 125
fi

# Each stream goes command -> NAME.fifo -> reader, the pipe on the workspace volume because /tmp
# may be a tiny tmpfs. The reader keeps the first LIMIT bytes in NAME.log and counts the rest
# without storing it, so the command never blocks on a full log.
# `{ head -c N; wc -c; } <fifo` would be simpler, but busybox head reads ahead through stdio and
# the bytes it buffered past N would be missing from the count. dd with count_bytes reads no
# further than N (busybox and GNU alike); where dd lacks it, tee hands every byte to wc while
# head takes the first bytes from a copy that cat drains (as exact, but slower).
# TASKDEPLOY_TEST_LOG_SPLIT=tee is a test hook: busybox sh runs its own dd whatever PATH says.
if [ "${TASKDEPLOY_TEST_LOG_SPLIT:-}" != tee ] &&
    dd if=/dev/null of=/dev/null bs=1 count=0 iflag=count_bytes,fullblock 2>/dev/null; then
    td_split="dd"
else
    td_split="tee"
fi
# The first bytes are copied one at a time, so the log file grows as the command writes and
# the service can show them live; the rest goes in 64 KiB blocks (fast, but block by block).
td_live=65536
[ "$td_limit" -ge "$td_live" ] || td_live=$td_limit
td_readers=
for td_stream in stdout stderr; do
    td_log=$td_dir/$td_stream.log
    td_fifo=$td_dir/$td_stream.fifo
    td_copy=$td_dir/$td_stream.copy
    rm -f "$td_fifo" "$td_copy"
    if ! mkfifo "$td_fifo" || { [ "$td_split" = tee ] && ! mkfifo "$td_copy"; }; then
        echo "taskdeploy entrypoint: cannot create pipes in $td_dir" >&2
        [ -z "$td_sampler" ] || kill "$td_sampler"
        exit 125
    fi
    if [ "$td_split" = dd ]; then
        {
            {
                dd bs=1 count="$td_live" 2>/dev/null
                [ "$td_limit" -le "$td_live" ] ||
                    dd bs=65536 count="$((td_limit - td_live))" iflag=count_bytes,fullblock \
                        2>/dev/null
            } >"$td_log"
            wc -c >"$td_dir/$td_stream.rest"
        } <"$td_fifo" &
        td_readers="$td_readers $!"
    else
        { tee "$td_copy" | wc -c >"$td_dir/$td_stream.total"; } <"$td_fifo" &
        td_readers="$td_readers $!"
        { head -c "$td_limit" >"$td_log"; cat >/dev/null; } <"$td_copy" &
        td_readers="$td_readers $!"
    fi
done
td_keep="$td_sampler $td_readers"

# The command runs in the background so that a TERM can be handled while it runs (a shell
# defers traps until its foreground command ends): the trap kills the command's processes and
# the script goes on to flush the logs and write the final sample.
td_stopping=0
# The `stopped` line records that a stop signal reached the wrapper. The service does not go by
# it (the job can write this file as well as the wrapper can): it judges a stop by what it sent
# itself and by the engine's own events.
trap 'td_stopping=1; printf "stopped\n" >>"$td_metrics"; kill_strays all' TERM INT
/bin/sh "$td_dir/command.sh" </dev/null >"$td_dir/stdout.fifo" 2>"$td_dir/stderr.fifo" &
td_command=$!
wait "$td_command"
td_code=$?
if [ "$td_stopping" = 1 ]; then
    # `wait` was interrupted by the trap; this one collects the command's own status.
    wait "$td_command" 2>/dev/null
    td_code=$?
    [ "$td_code" != 127 ] || td_code=143
fi
trap - TERM INT

if [ -n "$td_sampler" ]; then
    kill "$td_sampler" 2>/dev/null
    # A sampler killed before its trap was set dies of the TERM, and dash reports that on
    # stderr when it is reaped here: the wrapper itself writes nothing.
    wait "$td_sampler" 2>/dev/null
fi
kill_strays orphans
# shellcheck disable=SC2086 # a list of PIDs
wait $td_readers

# The totals, as bare numbers: wc may pad them with blanks.
for td_stream in stdout stderr; do
    td_total=
    if [ "$td_split" = dd ]; then
        td_kept=$(wc -c 2>/dev/null <"$td_dir/$td_stream.log")
        td_kept=${td_kept##* }
        td_rest=
        read -r td_rest 2>/dev/null <"$td_dir/$td_stream.rest"
        rm -f "$td_dir/$td_stream.rest"
        if is_count "$td_kept" && is_count "$td_rest"; then
            td_total=$((td_kept + td_rest))
        fi
    else
        read -r td_total 2>/dev/null <"$td_dir/$td_stream.total"
    fi
    if is_count "$td_total"; then
        printf '%s\n' "$td_total" >"$td_dir/$td_stream.total"
    else
        rm -f "$td_dir/$td_stream.total"
    fi
done
rm -f "$td_dir/stdout.fifo" "$td_dir/stdout.copy" "$td_dir/stderr.fifo" "$td_dir/stderr.copy"

# output.empty says the output folder was empty when the command ended: the service then skips
# reading it back (one archive read less). The job can forge the file, but only to hide its own
# outputs, which deleting them would do as well; anything unusual (no folder, a link, a folder
# this user cannot list) leaves it out and the folder is read.
rm -f "$td_dir/output.empty"
if [ -d output ] && [ ! -L output ] && [ -r output ] && [ -x output ]; then
    td_empty=1
    for td_entry in output/* output/.[!.]* output/..?*; do
        if [ -e "$td_entry" ] || [ -L "$td_entry" ]; then
            td_empty=0
            break
        fi
    done
    [ "$td_empty" = 0 ] || printf '' >"$td_dir/output.empty"
fi

if [ "$td_have_cgroup" = 1 ]; then
    read_clock
    if read_counters 2>/dev/null; then
        read_peak 2>/dev/null
        printf 'f %s %s %s\n' "$td_now" "$td_cpu" "$td_peak" >>"$td_metrics"
    fi
fi
printf 'exit %s\n' "$td_code" >>"$td_metrics"
exit "$td_code"

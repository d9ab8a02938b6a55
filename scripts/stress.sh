#!/usr/bin/env bash
# Outside exercisers inside a cachefs mount: xfstests' fsx and fsstress, with promotions
# happening all the time (promote_after=64K) and whole-file readers beside them. For a
# machine that has them built; this script does not build them. CI runs the project's
# own exerciser instead (tests/integration/exerciser.rs).
#
#   FSX=/path/to/fsx FSSTRESS=/path/to/fsstress scripts/stress.sh      (as root)
#   STRESS_REPS=3 STRESS_OPS=5000 FSX=... FSSTRESS=... scripts/stress.sh   (a sample)
#   STRESS_MODES="mmap direct-off" FSX=... FSSTRESS=... scripts/stress.sh  (a subset)
#
# Configurations, each with passthrough=auto and passthrough=off (the name's suffix):
#   fsx-mmap-*      fsx -N OPS -c 5                              (mmap reads and writes)
#   fsx-nommap-*    fsx -N OPS -c 5 -R -W                        (no mmap)
#   fsx-direct-*    fsx -N OPS -c 5 -Z -R -W -r 4096 -w 4096 -t 4096  (O_DIRECT, 4 KiB)
#   fsstress-*      fsstress -n 2000 -p 4
# Each run has a fresh mount (promote_after=64K, prefetch=0) and a new seed; the runs
# cycle through the configurations STRESS_REPS times. Beside each fsx, once it has made
# its file, a reader loop cats the file whole through the mount (`while :; do cat F;
# done`); beside fsstress, a loop cats every regular file under its directory. An fsx run
# fails on an fsx error, on a difference between its file through the mount and in
# SOURCE after fsx ends, on a reader error (a failed cat of fsx's file), or on a daemon
# log line with ERROR (but fuser's for a reply to a request the kernel had already
# dropped) or a panic. An fsstress run fails on a non-zero exit, a daemon error, or a
# difference between its tree and SOURCE's after an unmount and a remount (`diff -r
# --no-dereference`, and type, mode, size and link target of every entry).
# A checker also stops fsx every second (SIGSTOP: between two of its system calls),
# compares its file through the mount with SOURCE's, and resumes it (STRESS_CHECKER=0
# turns it off; it costs a few milliseconds a second, within the runs' noise).
#
# Prints one line per run and at the end a Markdown tally (configuration, runs,
# failures, kind of each failure: fsx's "Size error", "READ BAD DATA", or "other" with
# the reason: fsx's exit status and complaint, the checker, the end compare, a reader
# error, the daemon's log, the tree after the remount, a timeout). Exits 1 if any run
# failed. A failed run's directory (fsx's .fsxlog, .fsxgood and .fsxops, its output, the
# daemon's log, the reader's errors, both sides of a difference the checker saw, SOURCE
# and the cache) stays in the work dir, which is then kept; passing runs' directories
# are removed.
#
# Environment:
#   FSX, FSSTRESS    the binaries (required; only FSSTRESS if STRESS_MODES=fsstress)
#   STRESS_OPS       fsx operations per run (default 20000)
#   STRESS_REPS      times each configuration runs (default 34: 6 fsx configurations x 34
#                    = 204 fsx runs, plus 68 fsstress runs)
#   STRESS_MODES     the configurations to run, space or comma separated: mmap, nommap,
#                    direct, fsstress (both passthrough settings) or NAME-auto, NAME-off
#                    (default: all)
#   STRESS_FSSTRESS_OPS  fsstress operations per process (default 2000)
#   STRESS_CHECKER   1: the SIGSTOP checker beside fsx (default); 0: none
#   STRESS_SEED      seed of the first run; run k uses SEED + k (default: random)
#   STRESS_TIMEOUT   seconds a run may take before it is killed and fails (default 900)
#   CACHEFS_BIN      the binary (default: cargo build --release)
#   STRESS_DIR       where the work dir goes (default /var/tmp)
#   STRESS_OPTS      more mount options for every run (e.g. meta_ttl=3600)
#   KEEP=1           keep the whole work dir, passing runs included
#
# Every mount, daemon and process it starts is stopped on exit, failed or interrupted.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
repo=$PWD
BENCH_NAME=stress
# shellcheck source=scripts/bench-lib.sh
. "$repo/scripts/bench-lib.sh"

OPS=${STRESS_OPS:-20000}
REPS=${STRESS_REPS:-34}
FSSTRESS_OPS=${STRESS_FSSTRESS_OPS:-2000}
TIMEOUT=${STRESS_TIMEOUT:-900}
CHECKER=${STRESS_CHECKER:-1}
SEED=${STRESS_SEED:-$((RANDOM * 32768 + RANDOM))}

ALL_CONFIGS=(fsx-mmap-auto fsx-mmap-off fsx-nommap-auto fsx-nommap-off fsx-direct-auto
    fsx-direct-off fsstress-auto fsstress-off)
CONFIGS=()
selected() { # CONFIG: whether STRESS_MODES names it
    local c=${1#fsx-} w
    [ -n "${STRESS_MODES:-}" ] || return 0
    for w in ${STRESS_MODES//,/ }; do
        [ "$w" = "$c" ] || [ "$w" = "${c%-*}" ] && return 0
    done
    return 1
}
for c in "${ALL_CONFIGS[@]}"; do
    if selected "$c"; then CONFIGS+=("$c"); fi
done
[ "${#CONFIGS[@]}" -gt 0 ] ||
    die "STRESS_MODES='$STRESS_MODES' names no configuration (mmap, nommap, direct, fsstress, optionally -auto or -off)"
want_fsx=0 want_fsstress=0
for c in "${CONFIGS[@]}"; do
    case $c in
    fsx-*) want_fsx=1 ;;
    fsstress-*) want_fsstress=1 ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root (mounts)"
[ "$want_fsx" = 0 ] || [ -x "${FSX:-}" ] || die "set FSX to an fsx binary (xfstests ltp/fsx)"
[ "$want_fsstress" = 0 ] || [ -x "${FSSTRESS:-}" ] ||
    die "set FSSTRESS to an fsstress binary (xfstests ltp/fsstress)"
if ! [[ $REPS =~ ^[0-9]+$ ]] || [ "$REPS" -lt 1 ]; then die "STRESS_REPS must be a positive integer"; fi
for tool in diff cmp findmnt setsid python3; do
    command -v "$tool" >/dev/null || die "missing $tool"
done

WORK=$(mktemp -d "${STRESS_DIR:-/var/tmp}/cachefs-stress.XXXXXX")
PID=      # the daemon of the current mount
MNT=
SRC=
GROUPS_STARTED=() # process groups started with setsid (exercisers, readers): their pids
MONITOR=  # the monitor (checker and deadline) of the current run
FAILED=0
CLEANED=

# Ends a process group started with setsid (its leader's pid): SIGCONT in case the
# checker stopped it, SIGKILL, and reaps the leader.
end_group() { # PID
    [ -n "$1" ] || return 0
    kill -KILL -- "-$1" 2>/dev/null || kill -KILL "$1" 2>/dev/null || true
    kill -CONT -- "-$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local keep=() g
    for g in "${GROUPS_STARTED[@]}"; do
        [ "$g" = "$1" ] || keep+=("$g")
    done
    GROUPS_STARTED=("${keep[@]}")
}

# Starts COMMAND... in a new session (so its process group holds all it starts), output
# to LOG; sets LAST to its pid, which is also its process group id.
start_group() { # LOG COMMAND...
    local log=$1
    shift
    setsid "$@" >"$log" 2>&1 &
    LAST=$!
    GROUPS_STARTED+=("$LAST")
}

stop_daemon() {
    [ -n "$PID" ] || return 0
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 200); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$PID" 2>/dev/null; then
        say "daemon $PID did not exit on SIGTERM; lazy unmount and SIGKILL"
        umount -l "$MNT" 2>/dev/null
        kill -KILL "$PID"
    fi
    wait "$PID" 2>/dev/null || true
    PID=
}

cleanup() {
    [ -n "$CLEANED" ] && return 0
    CLEANED=1
    set +e
    local g m
    if [ -n "$MONITOR" ]; then
        kill "$MONITOR" 2>/dev/null
        wait "$MONITOR" 2>/dev/null
    fi
    for g in "${GROUPS_STARTED[@]}"; do end_group "$g"; done
    stop_daemon
    for m in $(findmnt -rn -o TARGET | grep "^$WORK/" | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    if [ "$FAILED" = 1 ] && [ "${KEEP:-}" != 1 ]; then
        say "work dir kept (failed runs): $WORK"
    else
        remove_work
    fi
}
trap_cleanup
private_binary

mount_at() { # DIR OPTS: mounts DIR/src at DIR/mnt with the cache DIR/cache; LOG name
    local dir=$1
    SRC=$dir/src MNT=$dir/mnt
    mkdir -p "$SRC" "$MNT"
    "$BIN" "$SRC" "$MNT" --cache "$dir/cache" -f -o "promote_after=64K,prefetch=0,$2${STRESS_OPTS:+,$STRESS_OPTS}" \
        2>>"$dir/daemon.log" &
    PID=$!
    for _ in $(seq 200); do
        findmnt -rn -o FSTYPE --mountpoint "$MNT" 2>/dev/null | grep -q fuse.cachefs && return 0
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.05
    done
    die "no mount at $MNT: $(tail -3 "$dir/daemon.log")"
}

# Watches PROC every second until it exits: kills it (its group) past the deadline,
# and with CHECK=1 stops it and compares MNT/FILE with SRC/FILE. Writes "checks N",
# "mismatch" or "timeout" to OUT.
monitor() { # PROC DEADLINE(epoch s) CHECK FILE OUT
    local proc=$1 deadline=$2 check=$3 file=$4 out=$5 n=0
    while kill -0 "$proc" 2>/dev/null; do
        sleep 1
        if [ "${EPOCHSECONDS}" -ge "$deadline" ]; then
            echo timeout >"$out"
            kill -KILL -- "-$proc" 2>/dev/null
            return 0
        fi
        [ "$check" = 1 ] || continue
        kill -STOP "$proc" 2>/dev/null || break
        for _ in $(seq 100); do
            grep -q '^State:.*T' "/proc/$proc/status" 2>/dev/null && break
            sleep 0.01
        done
        if [ -e "$SRC/$file" ] && ! cmp -s "$MNT/$file" "$SRC/$file"; then
            # Both sides as they were, for the post-mortem, before fsx goes on.
            local d
            d=$(dirname "$out")
            cp "$MNT/$file" "$d/checker.mnt" 2>/dev/null
            cp "$SRC/$file" "$d/checker.src" 2>/dev/null
            cmp "$d/checker.mnt" "$d/checker.src" >"$d/checker.cmp" 2>&1
            echo "mismatch (check $((n + 1)))" >"$out"
            kill -CONT "$proc" 2>/dev/null
            return 0
        fi
        n=$((n + 1))
        kill -CONT "$proc" 2>/dev/null || break
    done
    echo "checks $n" >"$out"
}

# Daemon log lines that fail a run. fuser logs a reply to a request the kernel has
# already dropped (an interrupted one) as an ERROR with ENOENT: not a failure.
daemon_errors() { # LOG
    grep -E 'ERROR|panicked' "$1" |
        grep -v 'Failed to send FUSE reply: No such file or directory' || true
}

status_summary() { # prints "promotions P, hits H" of the current mount
    local st
    st=$("$BIN" status "$MNT" --json 2>/dev/null || echo '{}')
    python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('promotions %s, hits %s' % (d.get('promotions_done','?'), d.get('hits','?')))" "$st" 2>/dev/null ||
        echo "promotions ?, hits ?"
}

# fsx beside a whole-file reader loop. Sets KIND (empty: passed) and INFO.
# Waits for an exerciser (PROC) to end, then ends its checker and its reader (READER);
# sets RUN_RC (its exit status) and RUN_SECS (since T0).
finish_run() { # PROC READER T0
    RUN_RC=0
    # (braces: no "Bus error" job notice from the shell; the tally names the signal)
    { wait "$1"; } 2>/dev/null || RUN_RC=$?
    wait "$MONITOR" 2>/dev/null || true
    MONITOR=
    end_group "$2"
    end_group "$1"
    RUN_SECS=$(awk -v a="$3" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
}

run_fsx() { # DIR PT SEED FSX-ARGS...
    local dir=$1 pt=$2 seed=$3 file=fsx.f
    shift 3
    KIND='' INFO=''
    mount_at "$dir" "passthrough=$pt"
    local t0=$EPOCHREALTIME
    start_group "$dir/out.log" "$FSX" -N "$OPS" -S "$seed" -P "$dir" "$@" "$MNT/$file"
    local proc=$LAST
    local mon_out=$dir/monitor.out
    monitor "$proc" $((EPOCHSECONDS + TIMEOUT)) "$CHECKER" "$file" "$mon_out" &
    MONITOR=$!
    # The reader starts once fsx has made its file (its first step).
    local reader=
    for _ in $(seq 1000); do
        [ -e "$MNT/$file" ] && break
        kill -0 "$proc" 2>/dev/null || break
        sleep 0.01
    done
    if [ -e "$MNT/$file" ]; then
        # shellcheck disable=SC2016
        start_group "$dir/reader.log" bash -c 'while :; do cat "$1" >/dev/null; done' reader "$MNT/$file"
        reader=$LAST
    fi
    local rc secs
    finish_run "$proc" "$reader" "$t0"
    rc=$RUN_RC secs=$RUN_SECS
    local mon_res
    mon_res=$(cat "$mon_out" 2>/dev/null || echo "checks ?")
    local differs=0
    [ "$mon_res" = timeout ] || cmp -s "$MNT/$file" "$SRC/$file" || differs=1
    local promo
    promo=$(status_summary)
    stop_daemon
    local bad reader_errs
    bad=$(daemon_errors "$dir/daemon.log")
    reader_errs=$(grep -c . "$dir/reader.log" 2>/dev/null || true)
    if grep -q 'Size error' "$dir/out.log"; then
        KIND="Size error"
    elif grep -q 'READ BAD DATA' "$dir/out.log"; then
        KIND="READ BAD DATA"
    elif [ "$mon_res" = timeout ]; then
        KIND="other: timeout after ${TIMEOUT} s"
    elif [[ $mon_res == mismatch* ]]; then
        KIND="other: checker saw the mount differ from SOURCE"
    elif [ "$rc" -ne 0 ]; then
        # fsx's own complaint: the line before its LOG DUMP, numbers elided.
        local msg
        msg=$(awk '/^LOG DUMP/ { print prev; exit } { prev = $0 }' "$dir/out.log" |
            sed -E 's/0x[0-9a-fA-F]+/N/g; s/[0-9]+/N/g' | cut -c1-60)
        if [ -z "$msg" ] && [ "$rc" -gt 128 ]; then
            KIND="other: fsx killed by SIG$(kill -l $((rc - 128)) 2>/dev/null || echo "$((rc - 128))")"
        else
            KIND="other: fsx rc $rc${msg:+, $msg}"
        fi
    elif [ "$differs" = 1 ]; then
        KIND="other: file differs from SOURCE at the end"
    elif [ "${reader_errs:-0}" -gt 0 ]; then
        KIND="other: reader error"
    elif [ -n "$bad" ]; then
        KIND="other: daemon ERROR/panic"
    fi
    INFO="seed $seed, ${secs} s, $promo"
    [ "$CHECKER" = 0 ] || INFO+=", checker: $mon_res"
    if [ -n "$KIND" ]; then
        [ -z "$bad" ] || INFO+="; daemon: $(head -1 <<<"$bad")"
        [ "${reader_errs:-0}" -eq 0 ] || INFO+="; reader: $(head -1 "$dir/reader.log")"
        [ "$differs" = 0 ] || INFO+="; file differs from SOURCE at the end"
        [ ! -s "$dir/checker.cmp" ] ||
            INFO+="; checker: $(head -1 "$dir/checker.cmp") (checker.mnt, checker.src)"
    fi
}

# Entries under DIR: relative path, type, mode, size of regular files, link target.
listing() { # DIR
    (cd "$1" && find . -printf '%P %y %m %l\n' -type f -printf '%P size %s\n' | sort)
}

# fsstress beside a loop that reads every file of its tree, then the tree after an
# unmount and a remount against SOURCE's. Sets KIND and INFO.
run_fsstress() { # DIR PT SEED
    local dir=$1 pt=$2 seed=$3
    KIND='' INFO=''
    mount_at "$dir" "passthrough=$pt"
    mkdir -p "$MNT/stress"
    local t0=$EPOCHREALTIME
    start_group "$dir/out.log" "$FSSTRESS" -d "$MNT/stress" -n "$FSSTRESS_OPS" -p 4 -s "$seed"
    local proc=$LAST
    monitor "$proc" $((EPOCHSECONDS + TIMEOUT)) 0 "" "$dir/monitor.out" &
    MONITOR=$!
    # shellcheck disable=SC2016
    start_group "$dir/reader.log" bash -c \
        'while :; do find "$1" -type f -exec cat {} + >/dev/null; sleep 0.01; done' \
        reader "$MNT/stress"
    local reader=$LAST
    local rc secs mon_res
    finish_run "$proc" "$reader" "$t0"
    rc=$RUN_RC secs=$RUN_SECS
    mon_res=$(cat "$dir/monitor.out" 2>/dev/null || true)
    local promo
    promo=$(status_summary)
    stop_daemon
    # The same SOURCE and cache mounted again: what a new mount shows must be SOURCE.
    echo "--- remount" >>"$dir/daemon.log"
    mount_at "$dir" "passthrough=$pt"
    diff -r --no-dereference "$MNT/stress" "$SRC/stress" >"$dir/diff.out" 2>&1 || true
    # diff names every pair of fifos, equal or not; their type is in the listing.
    grep -v '^File .* is a fifo while file .* is a fifo$' "$dir/diff.out" >"$dir/diff.log" || true
    listing "$MNT/stress" >"$dir/list.mnt" 2>&1 || true
    listing "$SRC/stress" >"$dir/list.src" 2>&1 || true
    diff "$dir/list.mnt" "$dir/list.src" >>"$dir/diff.log" || true
    local ndiff entries
    ndiff=$(grep -c . "$dir/diff.log" || true)
    entries=$(grep -vc ' size ' "$dir/list.src" || true)
    stop_daemon
    local bad reader_errs
    bad=$(daemon_errors "$dir/daemon.log")
    # Files fsstress removes between find and cat are expected to go missing.
    reader_errs=$(grep -v 'No such file or directory' "$dir/reader.log" | grep -c . || true)
    if [ "$mon_res" = timeout ]; then
        KIND="other: timeout after ${TIMEOUT} s"
    elif [ "$rc" -ne 0 ]; then
        KIND="other: fsstress rc $rc"
    elif [ "${ndiff:-0}" -gt 0 ]; then
        KIND="other: tree differs from SOURCE after remount"
    elif [ "${reader_errs:-0}" -gt 0 ]; then
        KIND="other: reader error"
    elif [ -n "$bad" ]; then
        KIND="other: daemon ERROR/panic"
    fi
    INFO="seed $seed, ${secs} s, $entries entries, $promo"
    if [ -n "$KIND" ]; then
        [ -z "$bad" ] || INFO+="; daemon: $(head -1 <<<"$bad")"
        [ "${ndiff:-0}" -eq 0 ] || INFO+="; $ndiff lines in diff.log, first: $(head -1 "$dir/diff.log")"
        [ "${reader_errs:-0}" -eq 0 ] ||
            INFO+="; reader: $(grep -v 'No such file or directory' "$dir/reader.log" | head -1)"
    fi
}

declare -A RUNS FAILS
for c in "${CONFIGS[@]}"; do RUNS[$c]=0 FAILS[$c]=0; done
declare -A KIND_COUNT # "CONFIG|KIND" -> count
FAILED_DIRS=()

total=$((REPS * ${#CONFIGS[@]}))
say "work dir $WORK; ${#CONFIGS[@]} configurations x $REPS reps = $total runs; fsx -N $OPS; first seed $SEED; checker $([ "$CHECKER" = 1 ] && echo on || echo off)"
n=0
start=$EPOCHSECONDS
for ((rep = 1; rep <= REPS; rep++)); do
    for c in "${CONFIGS[@]}"; do
        n=$((n + 1))
        seed=$((SEED + n))
        dir=$WORK/$c.$rep
        mkdir -p "$dir"
        pt=${c##*-}
        case $c in
        fsx-mmap-*) run_fsx "$dir" "$pt" "$seed" -c 5 ;;
        fsx-nommap-*) run_fsx "$dir" "$pt" "$seed" -c 5 -R -W ;;
        fsx-direct-*) run_fsx "$dir" "$pt" "$seed" -c 5 -Z -R -W -r 4096 -w 4096 -t 4096 ;;
        fsstress-*) run_fsstress "$dir" "$pt" "$seed" ;;
        esac
        RUNS[$c]=$((RUNS[$c] + 1))
        if [ -z "$KIND" ]; then
            echo "[$n/$total] PASS $c #$rep ($INFO)"
            [ "${KEEP:-}" = 1 ] || rm -rf "$dir"
        else
            FAILED=1
            FAILS[$c]=$((FAILS[$c] + 1))
            k="$c|$KIND"
            KIND_COUNT[$k]=$((${KIND_COUNT[$k]:-0} + 1))
            FAILED_DIRS+=("$dir")
            echo "[$n/$total] FAIL $c #$rep: $KIND ($INFO); logs: $dir"
            grep -m1 -E 'Size error|READ BAD DATA' "$dir/out.log" | sed 's/^/    /' || true
        fi
    done
done

echo
echo "$total runs in $(((EPOCHSECONDS - start) / 60)) min; fsx -N $OPS, fsstress -n $FSSTRESS_OPS -p 4, promote_after=64K, readers beside every run${STRESS_OPTS:+; options $STRESS_OPTS}; checker $([ "$CHECKER" = 1 ] && echo on || echo off); binary ${CACHEFS_BIN}"
echo
echo "| configuration | runs | failures | kinds |"
echo "| --- | --- | --- | --- |"
tot_runs=0 tot_fails=0
for c in "${CONFIGS[@]}"; do
    kinds=
    for k in "${!KIND_COUNT[@]}"; do
        [ "${k%%|*}" = "$c" ] || continue
        kinds+="${kinds:+, }${k#*|} x${KIND_COUNT[$k]}"
    done
    echo "| $c | ${RUNS[$c]} | ${FAILS[$c]} | ${kinds:--} |"
    tot_runs=$((tot_runs + RUNS[$c]))
    tot_fails=$((tot_fails + FAILS[$c]))
done
echo "| total | $tot_runs | $tot_fails | |"
if [ "${#FAILED_DIRS[@]}" -gt 0 ]; then
    echo
    echo "Failed runs' logs (out.log, *.fsxlog, daemon.log, reader.log, diff.log):"
    printf '  %s\n' "${FAILED_DIRS[@]}"
fi
exit "$FAILED"

#!/usr/bin/env bash
# Outside exercisers inside a cachefs mount: xfstests' fsx and fsstress, with promotions
# happening all the time (promote_after=64K). For a machine that has them built; this
# script does not build them. CI runs the project's own exerciser instead
# (tests/integration/exerciser.rs).
#
#   FSX=/path/to/fsx FSSTRESS=/path/to/fsstress scripts/stress.sh      (as root)
#
# Runs, each in a fresh mount, with passthrough=auto and then passthrough=off:
#   fsx -N 20000 -c 5             (mmap, reopen)
#   fsx -N 20000 -c 5 -R -W       (no mmap)
#   fsx -N 20000 -c 5 -Z ...      (O_DIRECT, 4 KiB aligned)
#   fsstress -n 2000 -p 4
# While an fsx runs, a checker stops it every second (SIGSTOP: between two of its system
# calls), compares its file through the mount with the file in SOURCE, and resumes it;
# any difference fails the run. After each fsx run the two are compared once more. Each
# daemon's log must have no ERROR (but fuser's for a reply to a request the kernel had
# already dropped) and no panic. Prints one line per run and exits 1 if
# any failed.
#
# Environment: FSX, FSSTRESS (required), STRESS_OPS (fsx operations, default 20000),
# CACHEFS_BIN (default: cargo build --release), STRESS_DIR (default /var/tmp), KEEP=1
# keeps the work dir.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
BENCH_NAME=stress
# shellcheck source=scripts/bench-lib.sh
. "$repo/scripts/bench-lib.sh"

[ "$(id -u)" -eq 0 ] || die "must run as root (mounts)"
[ -x "${FSX:-}" ] || die "set FSX to an fsx binary (xfstests ltp/fsx)"
[ -x "${FSSTRESS:-}" ] || die "set FSSTRESS to an fsstress binary (xfstests ltp/fsstress)"
WORK=$(mktemp -d "${STRESS_DIR:-/var/tmp}/cachefs-stress.XXXXXX")
PID=
OPS=${STRESS_OPS:-20000}
FAILED=0

stop_daemon() {
    [ -n "$PID" ] || return 0
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 200); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.05
    done
    kill -0 "$PID" 2>/dev/null && { umount -l "$MNT" 2>/dev/null; kill -KILL "$PID"; }
    wait "$PID" 2>/dev/null || true
    PID=
}

cleanup() {
    set +e
    stop_daemon
    for m in $(findmnt -rn -o TARGET | grep "^$WORK/" | sort -r); do umount -l "$m"; done
    remove_work
}
trap_cleanup
private_binary

mount_fresh() { # NAME OPTS
    local dir=$WORK/$1
    SRC=$dir/src MNT=$dir/mnt
    mkdir -p "$SRC" "$MNT"
    "$BIN" "$SRC" "$MNT" --cache "$dir/cache" -f -o "promote_after=64K,prefetch=0,$2" \
        2>"$dir/daemon.log" &
    PID=$!
    for _ in $(seq 200); do
        findmnt -rn -o FSTYPE --mountpoint "$MNT" 2>/dev/null | grep -q fuse.cachefs && return 0
        sleep 0.05
    done
    die "no mount for $1: $(tail -3 "$dir/daemon.log")"
}

# Compares MNT/FILE with SRC/FILE while PROC is stopped, every second until it exits.
checker() { # PROC FILE
    local proc=$1 file=$2 n=0
    while kill -0 "$proc" 2>/dev/null; do
        sleep 1
        kill -STOP "$proc" 2>/dev/null || break
        for _ in $(seq 100); do
            grep -q '^State:.*T' "/proc/$proc/status" 2>/dev/null && break
            sleep 0.01
        done
        if [ -e "$SRC/$file" ] && ! cmp -s "$MNT/$file" "$SRC/$file"; then
            echo "checker: $file differs between the mount and SOURCE" >&2
            kill -CONT "$proc"
            return 1
        fi
        n=$((n + 1))
        kill -CONT "$proc" 2>/dev/null || break
    done
    echo "$n"
}

run() { # NAME OPTS COMMAND... (MNT in the command is replaced)
    local name=$1 opts=$2 rc=0 checks=0 file
    shift 2
    mount_fresh "$name" "$opts"
    local cmd=("${@//MNT/$MNT}")
    "${cmd[@]}" >"$WORK/$name/out.log" 2>&1 &
    local proc=$!
    file=$(basename "${cmd[-1]}")
    if [[ $(basename "${cmd[0]}") == fsx ]]; then
        checks=$(checker "$proc" "$file") || rc=1
    fi
    wait "$proc" || rc=$?
    if [[ $(basename "${cmd[0]}") == fsx ]] && ! cmp -s "$MNT/$file" "$SRC/$file"; then
        rc=1
        echo "$name: $file differs at the end" >&2
    fi
    local st
    st=$("$BIN" status "$MNT" --json 2>/dev/null || echo '{}')
    stop_daemon
    # fuser logs a reply to a request the kernel has already dropped (an interrupted
    # one) as an ERROR with ENOENT: not a failure of the mount.
    local bad
    bad=$(grep -E 'ERROR|panicked' "$WORK/$name/daemon.log" |
        grep -v 'Failed to send FUSE reply: No such file or directory' || true)
    if [ -n "$bad" ]; then
        rc=1
        head -3 <<<"$bad" >&2
    fi
    local promo
    promo=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d.get('promotions_done','?'), d.get('hits','?'))" "$st")
    if [ "$rc" -eq 0 ]; then
        echo "PASS $name: ${cmd[*]} (checks $checks, promotions/hits $promo)"
    else
        FAILED=1
        echo "FAIL $name: ${cmd[*]} (rc $rc); last lines:"
        tail -30 "$WORK/$name/out.log"
    fi
}

for pt in auto off; do
    run "fsx-mmap-$pt" "passthrough=$pt" "$FSX" -N "$OPS" -c 5 MNT/fsx.a
    run "fsx-nommap-$pt" "passthrough=$pt" "$FSX" -N "$OPS" -c 5 -R -W MNT/fsx.b
    run "fsx-direct-$pt" "passthrough=$pt" "$FSX" -N "$OPS" -c 5 -Z -R -W -r 4096 -w 4096 -t 4096 MNT/fsx.c
    run "fsstress-$pt" "passthrough=$pt" "$FSSTRESS" -d MNT/stress -n 2000 -p 4
done
exit "$FAILED"

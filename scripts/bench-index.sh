#!/usr/bin/env bash
# Startup time and memory of the cache index at scale: a cache of N copies (default
# 100000), each a small file with a path like "Show 042/Season 03/Show 042 - S03E017 -
# The Long Night.mkv" (49-58 bytes), printed as a Markdown table.
#
#   scripts/bench-index.sh                         (as root; a few minutes at N = 100000)
#   BENCH_ENTRIES=2000 scripts/bench-index.sh      (a quick check)
#
# 1. SOURCE gets N files of 1 KiB, CACHE/data a copy of each with the provenance xattr
#    (user.cachefs.src) of its source, as if all had been promoted
#    (scripts/bench-index-gen.py).
# 2. Startup, rebuild path: no CACHE/index, so the daemon walks CACHE/data. Time from the
#    exec of `cachefs SOURCE MNT --cache CACHE -f -o promote=manual` to its fuse.cachefs
#    mount in /proc/self/mountinfo (polled every 5 ms); `status` must say N cached files.
#    Then SIGTERM: a clean stop, which writes CACHE/index. BENCH_REPS runs with warm
#    caches (the index deleted before each), then one more after dropping the page,
#    dentry and inode caches ("cold").
# 3. Startup, index path: the same with CACHE/index present; the log must say "cache
#    index loaded: N copies". BENCH_REPS runs, then one cold run (reported below the table).
# 4. Memory: VmRSS of the daemon once `status` has answered (index fully loaded) with the
#    N copies, against a daemon with an empty cache (same binary, same options);
#    (RSS_N - RSS_0) / N is the cost of one entry, and that minus the mean path length is
#    the overhead beyond the path bytes themselves.
# 5. For reading the rebuild numbers: `find CACHE/data | wc -l` (readdir only) and
#    `find CACHE/data -printf '%s %T@\n'` (readdir + a stat per file, the daemon's walk)
#    timed cold and warm. And one read through the mount, which must be a cache hit (the
#    provenance xattrs are right).
#
# Environment:
#   BENCH_ENTRIES  number of cached files (default 100000)
#   BENCH_REPS     runs per startup / memory measurement, median shown (default 3)
#   BENCH_DIR      where the work dir goes (default /var/tmp)
#   CACHEFS_BIN    the binary (default: cargo build --release, target/release/cachefs)
#   KEEP=1         keep the work dir (and daemon logs) after the run
#
# Everything it makes (daemons, mounts, files) is removed on exit, failed or not. It
# drops the page cache of the whole machine (twice).
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C
cd "$(dirname "$0")/.."
repo=$PWD
T_BEGIN=$EPOCHREALTIME

N=${BENCH_ENTRIES:-100000}
REPS=${BENCH_REPS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp}

BENCH_NAME=bench-index
# shellcheck source=scripts/bench-lib.sh
. "$repo/scripts/bench-lib.sh"

if ! [[ $N =~ ^[0-9]+$ ]] || [ "$N" -lt 1 ]; then die "BENCH_ENTRIES must be a positive integer"; fi
if ! [[ $REPS =~ ^[0-9]+$ ]] || [ "$REPS" -lt 1 ]; then die "BENCH_REPS must be a positive integer"; fi
[ "$(id -u)" -eq 0 ] || die "must run as root (mounts, drop_caches)"
[ -c /dev/fuse ] || die "no /dev/fuse"
[ -w /proc/sys/vm/drop_caches ] || die "cannot write /proc/sys/vm/drop_caches"
for tool in python3 findmnt find awk; do
    command -v "$tool" >/dev/null || die "missing $tool"
done

# ---- the work dir and its cleanup -------------------------------------------------------

# Two 1 KiB files per entry, a 4 KiB block each, plus directories, index and slack.
need_mb=$((N * 10 / 1024 + 512))
avail_mb=$(df -Pm "$BENCH_DIR" | awk 'NR == 2 { print $4 }')
[ "$avail_mb" -ge "$need_mb" ] ||
    die "$BENCH_DIR has $avail_mb MiB free; this run needs about $need_mb MiB"

WORK=$(mktemp -d "$BENCH_DIR/cachefs-bench-index.XXXXXX")
chmod 755 "$WORK"
SRC=$WORK/source
CACHE=$WORK/cache
ECACHE=$WORK/cache-empty
MNT=$WORK/mnt
mkdir "$MNT"
DAEMONS=() # pids of the daemons started and not yet stopped
CLEANED=
TICK=

# Stops one daemon we started: SIGTERM (it unmounts, writes the index and exits 0), then
# a lazy unmount and SIGKILL if it has not exited within 30 s. Sets STOP_S (seconds from
# the signal to the exit) and STOP_RC.
stop_daemon() { # PID
    local pid=$1 t0 i e keep=()
    STOP_RC=0
    STOP_S=
    t0=$EPOCHREALTIME
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 6000; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            nap 0.005
        done
        STOP_S=$(secs "$t0" "$EPOCHREALTIME")
        if kill -0 "$pid" 2>/dev/null; then
            say "daemon $pid did not exit within 30 s of SIGTERM; lazy unmount and SIGKILL"
            umount -l "$MNT" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || STOP_RC=$?
    for e in "${DAEMONS[@]}"; do
        [ "$e" = "$pid" ] || keep+=("$e")
    done
    DAEMONS=("${keep[@]}")
}

cleanup() {
    [ -n "$CLEANED" ] && return 0
    CLEANED=1
    set +e
    local p m
    for p in "${DAEMONS[@]}"; do
        stop_daemon "$p"
        [ "$STOP_RC" -eq 0 ] || say "daemon $p exited with status $STOP_RC"
    done
    release_work_mounts
    [ -n "$TICK" ] && exec {TICK}>&-
    remove_work
    if findmnt -rn -t fuse.cachefs -o TARGET | grep -q "^$WORK/"; then
        say "WARNING: a fuse.cachefs mount below $WORK is still there"
    fi
}
trap_cleanup

# ---- the binary ---------------------------------------------------------------------------

private_binary

# ---- helpers ------------------------------------------------------------------------------

# A sleep without a fork: read with a timeout from a FIFO nobody writes to.
mkfifo "$WORK/tick"
exec {TICK}<>"$WORK/tick"
nap() { read -r -t "$1" -u "$TICK" _ || true; }

# Seconds between two $EPOCHREALTIME readings.
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b - a }'; }

# A fuse.cachefs mount at MNT in /proc/self/mountinfo (root "/", then the mount point;
# the fs type follows the " - " separator). Builtins only: this runs every 5 ms.
mounted() {
    local l
    mapfile -t MOUNTINFO </proc/self/mountinfo
    for l in "${MOUNTINFO[@]}"; do
        [[ $l == *" / $MNT "*" - fuse.cachefs "* ]] && return 0
    done
    return 1
}

# Starts a foreground daemon on MNT and waits for its mount. Sets DPID, DLOG and
# STARTUP_S (seconds from just before the fork+exec to the mount in mountinfo).
start_daemon() { # NAME CACHE
    local name=$1 cache=$2 t0 t1 i
    DLOG=$WORK/$name.log
    t0=$EPOCHREALTIME
    "$BIN" "$SRC" "$MNT" --cache "$cache" -f -o promote=manual >"$DLOG" 2>&1 &
    DPID=$!
    DAEMONS+=("$DPID")
    for ((i = 0; i < 12000; i++)); do # 60 s at most
        if mounted; then
            t1=$EPOCHREALTIME
            STARTUP_S=$(secs "$t0" "$t1")
            return 0
        fi
        if ! kill -0 "$DPID" 2>/dev/null; then
            cat "$DLOG" >&2
            die "cachefs ($name) exited before mounting"
        fi
        nap 0.005
    done
    cat "$DLOG" >&2
    die "no fuse.cachefs mount at $MNT after 60 s ($name)"
}

# `status --json` of the mount (retried until the control socket answers); prints
# "cached_files cached_bytes hits misses".
status() {
    local i out
    for ((i = 0; i < 1000; i++)); do
        if out=$("$BIN" status "$MNT" --json 2>/dev/null); then
            python3 -c 'import json, sys
d = json.load(sys.stdin)
print(d["cached_files"], d["cached_bytes"], d["hits"], d["misses"])' <<<"$out"
            return 0
        fi
        nap 0.01
    done
    die "cachefs status $MNT did not answer within 10 s"
}

# VmRSS or VmHWM of PID in bytes.
vm() { awk -v k="$2:" '$1 == k { print $2 * 1024 }' /proc/"$1"/status; }

# Checks the running daemon reports WANT cached files and records its RSS (after status
# answered, so the index is in memory). Sets RSS and HWM.
check_daemon() { # NAME WANT
    local files _b _h _m
    read -r files _b _h _m < <(status)
    [ "$files" -eq "$2" ] || {
        cat "$DLOG" >&2
        die "$1: status says cached_files=$files, expected $2"
    }
    RSS=$(vm "$DPID" VmRSS)
    HWM=$(vm "$DPID" VmHWM)
}

# Clean stop; it must exit 0 and leave CACHE/index behind (when CACHE is given).
stop_clean() { # NAME [CACHE]
    stop_daemon "$DPID"
    [ "$STOP_RC" -eq 0 ] || {
        cat "$DLOG" >&2
        die "$1: daemon exited with status $STOP_RC"
    }
    if [ -n "${2:-}" ] && [ ! -s "$2/index" ]; then
        cat "$DLOG" >&2
        die "$1: no $2/index after a clean stop"
    fi
}

expect_log() { # NAME TEXT
    grep -qF -- "$2" "$DLOG" || {
        cat "$DLOG" >&2
        die "$1: the log does not say \"$2\""
    }
}

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

# Seconds a command takes (its output discarded).
timed() {
    local t0=$EPOCHREALTIME
    "$@" >/dev/null
    secs "$t0" "$EPOCHREALTIME"
}

# ---- 1. the tree --------------------------------------------------------------------------

say "work dir $WORK; creating $N source files and their copies"
t0=$EPOCHREALTIME
GEN=$(python3 "$repo/scripts/bench-index-gen.py" "$SRC" "$CACHE" "$N")
GEN_S=$(secs "$t0" "$EPOCHREALTIME")
read -r PATH_MEAN PATH_MIN PATH_MAX SAMPLE < <(python3 -c 'import json, sys
d = json.loads(sys.argv[1])
print("%.1f" % d["path_mean"], d["path_min"], d["path_max"], d["sample"])' "$GEN")
say "created in $GEN_S s; path length mean $PATH_MEAN bytes (min $PATH_MIN, max $PATH_MAX)"
sync

# ---- 4a. memory with an empty cache ------------------------------------------------------

RSS0=()
EMPTY=()
for ((r = 1; r <= REPS; r++)); do
    rm -rf "$ECACHE"
    start_daemon "empty-$r" "$ECACHE"
    check_daemon "empty-$r" 0
    RSS0+=("$RSS")
    EMPTY+=("$STARTUP_S")
    stop_clean "empty-$r"
done
say "empty cache: startup ${EMPTY[*]} s, RSS ${RSS0[*]}"

# ---- 2. startup, rebuild path ------------------------------------------------------------

REBUILD=()
RSS_RB=()
STOPS=()
for ((r = 1; r <= REPS; r++)); do
    rm -f "$CACHE/index"
    start_daemon "rebuild-$r" "$CACHE"
    expect_log "rebuild-$r" "rebuilt the cache index from the cache directory: $N copies"
    check_daemon "rebuild-$r" "$N"
    REBUILD+=("$STARTUP_S")
    RSS_RB+=("$RSS")
    stop_clean "rebuild-$r" "$CACHE"
    STOPS+=("$STOP_S")
    say "rebuild (warm) $r: startup $STARTUP_S s, RSS $RSS, stop $STOP_S s"
done

rm -f "$CACHE/index"
drop_caches
start_daemon rebuild-cold "$CACHE"
expect_log rebuild-cold "rebuilt the cache index from the cache directory: $N copies"
check_daemon rebuild-cold "$N"
REBUILD_COLD=$STARTUP_S
stop_clean rebuild-cold "$CACHE"
say "rebuild (cold): startup $REBUILD_COLD s"

# ---- 3. startup, index path --------------------------------------------------------------

INDEX_BYTES=$(stat -c %s "$CACHE/index")
INDEXED=()
RSS_IX=()
HWM_IX=()
for ((r = 1; r <= REPS; r++)); do
    start_daemon "index-$r" "$CACHE"
    expect_log "index-$r" "cache index loaded: $N copies"
    [ ! -e "$CACHE/index" ] || die "index-$r: CACHE/index still there after it was loaded"
    check_daemon "index-$r" "$N"
    INDEXED+=("$STARTUP_S")
    RSS_IX+=("$RSS")
    HWM_IX+=("$HWM")
    if [ "$r" -eq "$REPS" ]; then
        # One read through the mount must be served from the cache (provenance matches).
        cat "$MNT/$SAMPLE" >/dev/null
        read -r _f _b hits misses < <(status)
        if [ "$hits" -lt 1 ] || [ "$misses" -ne 0 ]; then
            die "reading $SAMPLE through the mount: hits=$hits misses=$misses, expected a hit"
        fi
    fi
    stop_clean "index-$r" "$CACHE"
    STOPS+=("$STOP_S")
    say "index $r: startup $STARTUP_S s, RSS $RSS, stop $STOP_S s"
done

drop_caches
start_daemon index-cold "$CACHE"
expect_log index-cold "cache index loaded: $N copies"
check_daemon index-cold "$N"
INDEX_COLD=$STARTUP_S
stop_clean index-cold "$CACHE"
say "index (cold): startup $INDEX_COLD s"

# ---- 5. the walk alone ---------------------------------------------------------------------

drop_caches
# shellcheck disable=SC2016 # $1 is the inner shell's
FIND_COLD=$(timed sh -c 'find "$1" | wc -l' sh "$CACHE/data")
# shellcheck disable=SC2016
FIND_WARM=$(timed sh -c 'find "$1" | wc -l' sh "$CACHE/data")
drop_caches
FSTAT_COLD=$(timed find "$CACHE/data" -printf '%s %T@\n')
FSTAT_WARM=$(timed find "$CACHE/data" -printf '%s %T@\n')

# ---- the table ------------------------------------------------------------------------------

IX_MED=$(median "${INDEXED[@]}")
RB_MED=$(median "${REBUILD[@]}")
RSS0_MED=$(median "${RSS0[@]}")
RSSN_MED=$(median "${RSS_IX[@]}")
RSSRB_MED=$(median "${RSS_RB[@]}")
PER=$(awk -v a="$RSSN_MED" -v b="$RSS0_MED" -v n="$N" 'BEGIN { printf "%.0f", (a - b) / n }')
BEYOND=$(awk -v p="$PER" -v l="$PATH_MEAN" 'BEGIN { printf "%.0f", p - l }')
PER_RB=$(awk -v a="$RSSRB_MED" -v b="$RSS0_MED" -v n="$N" 'BEGIN { printf "%.0f", (a - b) / n }')
ok() { awk "BEGIN { exit !($1) }" && echo met || echo MISSED; }

cat <<EOF

N = $N cached files, paths $PATH_MIN-$PATH_MAX bytes (mean $PATH_MEAN); medians of $REPS runs unless marked

| measurement | value | target |
|---|---|---|
| mean path length | $PATH_MEAN B | |
| startup with index | $IX_MED s | < 2 s ($(ok "$IX_MED < 2")) |
| startup rebuild, warm | $RB_MED s | |
| startup rebuild, cold (1 run, caches dropped) | $REBUILD_COLD s | |
| RSS empty cache | $(mib "$RSS0_MED") ($RSS0_MED B) | |
| RSS with N entries (index path) | $(mib "$RSSN_MED") ($RSSN_MED B) | |
| bytes/entry | $PER B | |
| bytes/entry beyond path | $BEYOND B | ≤ 300 ($(ok "$BEYOND <= 300")) |

Details:
- runs: index ${INDEXED[*]} s; empty cache ${EMPTY[*]} s (the fixed cost); rebuild warm ${REBUILD[*]} s; index cold (1 run) $INDEX_COLD s
- RSS: empty ${RSS0[*]}; index path ${RSS_IX[*]} (peak VmHWM ${HWM_IX[*]}); rebuild path ${RSS_RB[*]} ($PER_RB B/entry)
- CACHE/index: $INDEX_BYTES bytes; clean stop (SIGTERM to exit, index written): ${STOPS[*]} s
- walk of CACHE/data: \`find | wc -l\` cold $FIND_COLD s, warm $FIND_WARM s; \`find -printf '%s %T@'\` (stat per file) cold $FSTAT_COLD s, warm $FSTAT_WARM s
- tree creation: $GEN_S s; total runtime before cleanup: $(secs "$T_BEGIN" "$EPOCHREALTIME") s
EOF

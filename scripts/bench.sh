#!/usr/bin/env bash
# Benchmarks for the README: cachefs against the native file system it stands in for,
# measured side by side in one run, printed as a Markdown table (ratio = mount / native).
#
#   scripts/bench.sh                       (as root; about 4-5 minutes at the default size)
#   BENCH_SIZE_MB=256 scripts/bench.sh     (a quick run)
#   BENCH_ONLY=datapath scripts/bench.sh   (only 5, the data path: about 1.5 minutes)
#
# 1. Sequential read (dd bs=1M), warm page cache, of a promoted file through the mount
#    (passthrough=auto) against reading its copy in CACHE/data directly.
# 2. The same through a second mount with passthrough=off (the daemon serves the reads).
# 3. A slow source: an ext4 image on a loop device mounted as SOURCE, reads of the loop
#    device capped by a blkio (cgroup v1) throttle; the readers and the cachefs daemon run
#    in that cgroup, caches are dropped before each run. (a) time to the first 4 KiB (open +
#    read) and (b) streaming a file through the mount while its promotion runs (default
#    promote_after=16M), each against the same read of an identical file on the loop fs.
# 4. Promotion of an unthrottled file (plain directory on the real disk): trigger to the
#    "promoted" log line, against `cp` of the same file to the same file system, and
#    against `cp` + `sync FILE` (the promoter fsyncs its copy).
# 5. The data path, native / cachefs / mergerfs (with `passthrough.io=rw`), each in a fresh
#    mount per measurement; SOURCE is a plain directory on the real disk:
#    (a) uncached read: `dd bs=1M` of a BENCH_DATA_MB file that is in SOURCE's page cache,
#        through a promote=manual mount (the daemon serves every read), and through a
#        promote=auto mount with an empty cache (the first open of a fresh file, its
#        promotion starting after 16 MiB; the run waits for the promotion to end);
#    (b) `dd bs=1M conv=fsync` of BENCH_DATA_MB to a new file;
#    (c) `dd bs=4k` of BENCH_DATA_MB / 4 to a new file, no fsync;
#    and the daemons' CPU time (utime + stime of /proc/PID/stat) during (a) and (b).
#    mergerfs runs with `-o cache.files=auto-full,passthrough.io=rw` (its docs: passthrough
#    needs page caching, cache.files partial, full or auto-full; auto-full is the value it
#    falls back to and the one its own passthrough benchmark uses).
#
# Environment:
#   BENCH_SIZE_MB        size of the files of 1, 2 and 4 (default 2048)
#   BENCH_STREAM_MB      size of the streamed file of 3 (default BENCH_SIZE_MB / 2)
#   BENCH_THROTTLE_MBPS  read cap of the slow source in MB/s, 10^6 bytes (default 100)
#   BENCH_REPS           runs per measurement; the table shows the median (default 3)
#   BENCH_TTFB_SAMPLES   first-byte samples per run of 3 (default 5; they are noisy)
#   BENCH_DATA_MB        size of the files of 5 (default BENCH_SIZE_MB if set, else 1024)
#   BENCH_ONLY           the parts to run, space or comma separated: warm (1, 2), throttled
#                        (3), promote (4), datapath (5) (default: all)
#   MERGERFS             the mergerfs binary for 5 (default: mergerfs on PATH, else the
#                        first executable named mergerfs under /var/tmp/mergerfs; `off`
#                        skips it); without one, 5 runs without its column
#   BENCH_DIR            where the work dir goes, on the real disk (default /var/tmp)
#   CACHEFS_BIN          the binary (default: cargo build --release, target/release/cachefs)
#   KEEP=1               keep the work dir (and logs) after the run
#
# Everything it makes (mounts, daemons, loop device, cgroup, files) is removed on exit,
# failed or not. It drops the page cache of the whole machine between runs.
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C
cd "$(dirname "$0")/.."
repo=$PWD

SIZE_MB=${BENCH_SIZE_MB:-2048}
DATA_MB=${BENCH_DATA_MB:-${BENCH_SIZE_MB:-1024}}
SMALLW_MB=$((DATA_MB / 4))
ONLY=${BENCH_ONLY:-warm throttled promote datapath}
STREAM_MB=${BENCH_STREAM_MB:-$((SIZE_MB / 2))}
THROTTLE_MBPS=${BENCH_THROTTLE_MBPS:-100}
REPS=${BENCH_REPS:-3}
TTFB_SAMPLES=${BENCH_TTFB_SAMPLES:-5}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
THROTTLE_BPS=$((THROTTLE_MBPS * 1000 * 1000))

BENCH_NAME=bench
# shellcheck source=scripts/bench-lib.sh
. "$repo/scripts/bench-lib.sh"

for part in ${ONLY//,/ }; do
    case $part in
    warm | throttled | promote | datapath) ;;
    *) die "BENCH_ONLY: unknown part '$part' (warm, throttled, promote, datapath)" ;;
    esac
done
want() { [[ " ${ONLY//,/ } " == *" $1 "* ]]; }

if want warm || want promote; then
    [ "$SIZE_MB" -ge 64 ] || die "BENCH_SIZE_MB must be at least 64 (promotion starts after 16 MiB)"
fi
if want throttled; then
    [ "$STREAM_MB" -ge 32 ] || die "BENCH_STREAM_MB must be at least 32 (promotion starts after 16 MiB)"
    [ -d /sys/fs/cgroup/blkio ] || die "no cgroup v1 blkio hierarchy at /sys/fs/cgroup/blkio"
fi
if want datapath; then
    [ "$DATA_MB" -ge 64 ] || die "BENCH_DATA_MB must be at least 64 (promotion starts after 16 MiB)"
fi
if ! [[ $REPS =~ ^[0-9]+$ ]] || [ "$REPS" -lt 1 ]; then die "BENCH_REPS must be a positive integer"; fi
[ "$(id -u)" -eq 0 ] || die "must run as root (mounts, loop devices, cgroups, drop_caches)"
for tool in losetup mkfs.ext4 findmnt perl dd; do
    command -v "$tool" >/dev/null || die "missing $tool"
done

# mergerfs for 5: MERGERFS, else on PATH, else built under /var/tmp/mergerfs.
MERGERFS_BIN=
if want datapath && [ "${MERGERFS:-}" != off ]; then
    if [ -n "${MERGERFS:-}" ]; then
        [ -x "$MERGERFS" ] || die "MERGERFS=$MERGERFS is not an executable"
        MERGERFS_BIN=$MERGERFS
    else
        MERGERFS_BIN=$(command -v mergerfs ||
            find /var/tmp/mergerfs -name mergerfs -type f -perm -u+x 2>/dev/null | sort | head -1 || true)
    fi
    if [ -n "$MERGERFS_BIN" ]; then
        "$MERGERFS_BIN" --version >/dev/null 2>&1 || die "$MERGERFS_BIN --version failed"
    fi
fi

# ---- the work dir and its cleanup -------------------------------------------------------

need_mb=2048
if want warm || want promote; then need_mb=$((need_mb + 4 * SIZE_MB)); fi
if want throttled; then need_mb=$((need_mb + 2 * STREAM_MB + 128)); fi
if want datapath; then need_mb=$((need_mb + 3 * DATA_MB)); fi
avail_mb=$(df -Pm "$BENCH_DIR" | awk 'NR == 2 { print $4 }')
[ "$avail_mb" -ge "$need_mb" ] ||
    die "$BENCH_DIR has $avail_mb MiB free; this run needs about $need_mb MiB"

WORK=$(mktemp -d "$BENCH_DIR/cachefs-bench.XXXXXX")
chmod 755 "$WORK"
CG=
LOOP=
SLOW=$WORK/slow
DAEMONS=()   # "pid mountpoint" of every daemon (cachefs, mergerfs) started and not yet stopped
CLEANED=

# Stops one daemon we started: SIGTERM (it unmounts and exits 0; mergerfs too), then a lazy unmount
# and SIGKILL if it does not exit within 10 s.
stop_daemon() { # PID MOUNTPOINT
    local pid=$1 mnt=$2 rc=0 i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 200); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "daemon $pid did not exit on SIGTERM; lazy unmount and SIGKILL"
            umount -l "$mnt" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || rc=$?
    [ "$rc" -eq 0 ] || say "daemon $pid exited with status $rc"
    local keep=() e
    for e in "${DAEMONS[@]}"; do
        [ "${e%% *}" = "$pid" ] || keep+=("$e")
    done
    DAEMONS=("${keep[@]}")
}

cleanup() {
    [ -n "$CLEANED" ] && return 0
    CLEANED=1
    set +e
    local e m
    for e in "${DAEMONS[@]}"; do
        stop_daemon "${e%% *}" "${e#* }"
    done
    release_work_mounts
    if [ -n "$CG" ] && [ -d "$CG" ]; then
        # Only processes this script put there can be in this fresh cgroup.
        local p
        while read -r p; do
            echo "$p" >/sys/fs/cgroup/blkio/cgroup.procs 2>/dev/null
        done <"$CG/cgroup.procs"
        rmdir "$CG" 2>/dev/null || say "cannot remove cgroup $CG"
    fi
    remove_work
}
trap_cleanup

# ---- the binary ---------------------------------------------------------------------------

private_binary

# ---- helpers ------------------------------------------------------------------------------

now() { echo "$EPOCHREALTIME"; }

# bytes/s from dd's summary line on stdin ("N bytes (...) copied, S s, R unit/s").
parse_dd() {
    awk '/ copied, / { n = $1; s = $(NF - 3) } END { if (!n || s <= 0) exit 1; printf "%.0f\n", n / s }'
}

# Sequential read of FILE with 1 MiB blocks; prints bytes/s. Extra args: a command
# prefix (cg_exec) to run dd under.
seq_read() { # FILE [PREFIX...]
    local f=$1
    shift
    "$@" dd if="$f" of=/dev/null bs=1M 2>&1 | parse_dd
}

# Runs a command inside the throttled cgroup (the process moves itself, then execs).
cg_exec() {
    sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG" "$@"
}

# Seconds from open to the first 4 KiB read of FILE (timed inside the process).
# shellcheck disable=SC2016 # Perl, not shell
TTFB_PL='use strict; use Fcntl; use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC);
my $f = shift; my $buf;
my $t0 = clock_gettime(CLOCK_MONOTONIC);
sysopen(my $fh, $f, O_RDONLY) or die "open $f: $!\n";
my $n = sysread($fh, $buf, 4096);
die "read $f: $!\n" unless defined $n && $n > 0;
my $t1 = clock_gettime(CLOCK_MONOTONIC);
printf "%.9f\n", $t1 - $t0;'
ttfb() { # FILE [PREFIX...]
    local f=$1
    shift
    "$@" perl -e "$TTFB_PL" "$f"
}

# FILE of MB MiB of incompressible bytes (copies of one random 64 MiB block).
RAND=$WORK/rand.64M
mkdata() { # FILE MB
    [ -f "$RAND" ] || head -c 64M /dev/urandom >"$RAND"
    local i
    {
        for ((i = 0; i < $2 / 64; i++)); do cat "$RAND"; done
        head -c "$((($2 % 64) << 20))" "$RAND"
    } >"$1"
}

is_mounted() { # MOUNTPOINT [FSTYPE]: a mount of FSTYPE (fuse.cachefs) there, per mountinfo
    awk -v t="$1" -v want="${2:-fuse.cachefs}" '{ for (i = 7; i <= NF; i++) if ($i == "-") { fs = $(i + 1); break }
        if ($5 == t && fs == want) found = 1 } END { exit !found }' /proc/self/mountinfo
}

# Starts a foreground daemon and waits for its mount. Sets DPID and DLOG.
# With CGROUP non-empty, the daemon runs in that cgroup from its first instruction.
start_daemon() { # NAME SOURCE MOUNTPOINT CACHE CGROUP [OPTIONS...]
    local name=$1 src=$2 mnt=$3 cache=$4 cg=$5 i
    shift 5
    mkdir -p "$mnt"
    DLOG=$WORK/$name.log
    if [ -n "$cg" ]; then
        sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" \
            "$BIN" "$src" "$mnt" --cache "$cache" -f "$@" >"$DLOG" 2>&1 &
    else
        "$BIN" "$src" "$mnt" --cache "$cache" -f "$@" >"$DLOG" 2>&1 &
    fi
    DPID=$!
    DAEMONS+=("$DPID $mnt")
    for i in $(seq 400); do
        is_mounted "$mnt" && return 0
        if ! kill -0 "$DPID" 2>/dev/null; then
            cat "$DLOG" >&2
            die "cachefs ($name) exited before mounting"
        fi
        sleep 0.025
    done
    cat "$DLOG" >&2
    die "no fuse.cachefs mount at $mnt after 10 s"
}

# Waits for "promoted REL" in LOG; prints the line's timestamp (epoch seconds).
wait_promoted() { # LOG REL TIMEOUT_S
    local log=$1 rel=$2 deadline ts
    deadline=$(awk -v n="$(now)" -v t="$3" 'BEGIN { printf "%.6f", n + t }')
    while :; do
        ts=$(awk -v r="$rel" '$(NF - 1) == "promoted" && $NF == r { print $1; exit }' "$log")
        if [ -n "$ts" ]; then
            date -d "$ts" +%s.%N
            return 0
        fi
        if grep -q "cannot promote $rel" "$log"; then
            cat "$log" >&2
            die "promotion of $rel failed"
        fi
        if awk -v n="$(now)" -v d="$deadline" 'BEGIN { exit !(n > d) }'; then
            cat "$log" >&2
            die "no 'promoted $rel' within $3 s"
        fi
        sleep 0.02
    done
}

# On-CPU nanoseconds of all of PID's threads (schedstat: exact, unlike clock ticks).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
# CPU use in % of one core from two cpu_ns readings over SECONDS of wall time.
cpu_pct() { awk -v a="$1" -v b="$2" -v s="$3" 'BEGIN { printf "%.1f", (b - a) / 1e7 / s }'; }

# Whether the daemon holds CACHEFILE open while FILE (on its mount) is open.
served_from_copy() { # PID FILE CACHEFILE
    local fd l found=no
    exec {fd}<"$2"
    for l in /proc/"$1"/fd/*; do
        [ "$(readlink "$l" 2>/dev/null)" = "$3" ] && found=yes
    done
    exec {fd}<&-
    echo "$found"
}

# Bytes the cgroup has read from the loop device (blkio.throttle.io_service_bytes).
cg_read_bytes() {
    awk -v d="$LOOP_DEV" '$1 == d && $2 == "Read" { n = $3 } END { printf "%.0f\n", n }' \
        "$CG/blkio.throttle.io_service_bytes"
}

mbps() { awk -v b="$1" 'BEGIN { printf "%.0f MB/s", b / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t ? "met" : "MISSED") }'; }

ROWS=()
NOTES=()
# One table row: the first five columns, then mergerfs's value and ratio (empty for the
# rows it has no part in).
row() { # BENCHMARK NATIVE CACHEFS RATIO TARGET [MERGERFS MERGERFS-RATIO]
    local u=$'\x1f' # a separator no cell holds (and not IFS white space: empty cells stay)
    ROWS+=("$1$u$2$u$3$u$4$u$5$u${6:-}$u${7:-}")
}
note() {
    NOTES+=("- $*")
    say "$*"
}

# ---- data ---------------------------------------------------------------------------------

say "work dir $WORK; parts: $ONLY; size ${SIZE_MB} MiB, stream ${STREAM_MB} MiB, throttle ${THROTTLE_MBPS} MB/s, data path ${DATA_MB} MiB, ${REPS} runs each"
SRC=$WORK/src
mkdir -p "$SRC" "$WORK/cp"
if want warm || want promote; then
    say "writing ${SIZE_MB} MiB source file"
    mkdata "$SRC/big" "$SIZE_MB"
fi

if want throttled; then
    say "making the slow source: ext4 image on a loop device, blkio throttle"
    img=$WORK/slow.img
    truncate -s "$(((2 * STREAM_MB + 64) * 11 / 10 + 128))M" "$img"
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$img"
    LOOP=$(losetup -f --show --direct-io=on "$img")
    LOOP_DEV=$(printf '%d:%d' "0x$(stat -c %t "$LOOP")" "0x$(stat -c %T "$LOOP")")
    mkdir -p "$SLOW"
    mount -t ext4 "$LOOP" "$SLOW"
    mkdir -p "$SLOW/n" "$SLOW/m/ttfb" "$SLOW/m/stream"
    # Each mount-side file alone in its directory: prefetch (next file in the directory)
    # has nothing to add, so 3(b) measures the stream with only its own promotion beside it.
    mkdata "$SLOW/n/ttfb" 8
    mkdata "$SLOW/m/ttfb/file" 8
    mkdata "$SLOW/n/stream" "$STREAM_MB"
    mkdata "$SLOW/m/stream/file" "$STREAM_MB"
    rm -f "$RAND"
    sync

    CG=/sys/fs/cgroup/blkio/cachefs-bench.$$
    mkdir "$CG"
    echo "$LOOP_DEV $THROTTLE_BPS" >"$CG/blkio.throttle.read_bps_device"
fi

# ---- 1 and 2: warm sequential reads of a promoted file ----------------------------------

warm_reads() { # LABEL TARGET  (uses MNT, CACHE, DPID; reads the mount and the copy)
    local label=$1 target=$2 r native=() mounted=() t0 t1 c0 c1 cpu busy=0
    dd if="$CACHE/data/big" of=/dev/null bs=1M 2>/dev/null
    dd if="$MNT/big" of=/dev/null bs=1M 2>/dev/null
    c0=$(cpu_ns "$DPID")
    for ((r = 0; r < REPS; r++)); do
        # Alternate which goes first, so a drift in machine speed hits both alike.
        if ((r % 2 == 1)); then native+=("$(seq_read "$CACHE/data/big")"); fi
        t0=$(now)
        mounted+=("$(seq_read "$MNT/big")")
        t1=$(now)
        if ((r % 2 == 0)); then native+=("$(seq_read "$CACHE/data/big")"); fi
        busy=$(awk -v b="$busy" -v a="$t0" -v z="$t1" 'BEGIN { print b + z - a }')
    done
    c1=$(cpu_ns "$DPID")
    cpu=$(cpu_pct "$c0" "$c1" "$busy")
    local n m q
    n=$(median "${native[@]}")
    m=$(median "${mounted[@]}")
    q=$(ratio "$m" "$n")
    row "$label" "$(mbps "$n")" "$(mbps "$m")" "${q}x" "≥ ${target}x: $(verdict "$q" "$target")"
    note "$label: native [$(for x in "${native[@]}"; do mbps "$x"; echo -n ' '; done)] mount [$(for x in "${mounted[@]}"; do mbps "$x"; echo -n ' '; done)]; daemon CPU during the mount reads ${cpu}% of one core"
    LAST_CPU=$cpu
}

if want warm; then
    MNT=$WORK/mnt
    CACHE=$WORK/cache
    say "1: promoting $SIZE_MB MiB through a passthrough=auto mount"
    start_daemon warm-auto "$SRC" "$MNT" "$CACHE" "" --passthrough auto
    dd if="$MNT/big" of=/dev/null bs=1M count=17 2>/dev/null
    wait_promoted "$DLOG" big 600 >/dev/null
    [ -f "$CACHE/data/big" ] || die "promoted, but no $CACHE/data/big"
    pt_copy=$(served_from_copy "$DPID" "$MNT/big" "$CACHE/data/big")
    warm_reads "seq read ${SIZE_MB} MiB, warm, passthrough=auto" 0.95
    pt_cpu=$LAST_CPU
    if grep -qE "does not offer FUSE passthrough|refused a passthrough" "$DLOG"; then
        note "passthrough NOT in use: $(grep -E 'passthrough' "$DLOG" | head -1)"
    elif awk -v c="$pt_cpu" 'BEGIN { exit !(c > 5) }'; then
        note "passthrough seems NOT in use: the daemon used ${pt_cpu}% CPU during the reads"
    else
        note "passthrough in use: the daemon held the copy open ($pt_copy) and used ${pt_cpu}% CPU while the mount was read"
    fi
    stop_daemon "$DPID" "$MNT"

    say "2: the same copy through a passthrough=off mount"
    start_daemon warm-off "$SRC" "$MNT" "$CACHE" "" --passthrough off
    if [ "$(served_from_copy "$DPID" "$MNT/big" "$CACHE/data/big")" != yes ]; then
        # The copy was not taken over from the cache directory: promote it again.
        note "passthrough=off mount did not open the existing copy at first; promoted again"
        dd if="$MNT/big" of=/dev/null bs=1M count=17 2>/dev/null
        wait_promoted "$DLOG" big 600 >/dev/null
    fi
    off_copy=$(served_from_copy "$DPID" "$MNT/big" "$CACHE/data/big")
    warm_reads "seq read ${SIZE_MB} MiB, warm, passthrough=off" 0.50
    note "passthrough=off: served from the copy: $off_copy"
    stop_daemon "$DPID" "$MNT"
    rm -rf "$CACHE"
fi

# ---- 3: uncached reads from a throttled source --------------------------------------------

if want throttled; then
    say "3: throttled source (${THROTTLE_MBPS} MB/s on loop $LOOP_DEV)"
    SMNT=$WORK/mnt-slow
    SCACHE=$WORK/cache-slow
    ttfb_n=()
    ttfb_m=()
    stream_n=()
    stream_m=()
    for ((r = 0; r < REPS; r++)); do
        rm -rf "$SCACHE"
        start_daemon "slow-$r" "$SLOW/m" "$SMNT" "$SCACHE" "$CG"
        for ((k = 0; k < TTFB_SAMPLES; k++)); do
            drop_caches
            ttfb_n+=("$(ttfb "$SLOW/n/ttfb" cg_exec)")
            drop_caches
            ttfb_m+=("$(ttfb "$SMNT/ttfb/file" cg_exec)")
        done

        drop_caches
        b0=$(cg_read_bytes)
        stream_n+=("$(seq_read "$SLOW/n/stream" cg_exec)")
        b1=$(cg_read_bytes)
        drop_caches
        c0=$(cpu_ns "$DPID")
        t0=$(now)
        stream_m+=("$(seq_read "$SMNT/stream/file" cg_exec)")
        t1=$(now)
        c1=$(cpu_ns "$DPID")
        tp=$(wait_promoted "$DLOG" stream/file $((3 * STREAM_MB * 1049 / 1000 / THROTTLE_MBPS + 60)))
        b2=$(cg_read_bytes)
        note "3 run $((r + 1)): native stream $(mbps "${stream_n[r]}") (cgroup read $(((b1 - b0) >> 20)) MiB from the loop device); mount stream $(mbps "${stream_m[r]}"), daemon CPU $(cpu_pct "$c0" "$c1" "$(awk -v a="$t0" -v z="$t1" 'BEGIN { print z - a }')")%, promoted $(awk -v a="$t0" -v z="$tp" 'BEGIN { printf "%+.1f", z - a }') s after the stream started (stream took $(awk -v a="$t0" -v z="$t1" 'BEGIN { printf "%.1f", z - a }') s), cgroup read $(((b2 - b1) >> 20)) MiB for the stream and its promotion (file: $STREAM_MB MiB)"
        stop_daemon "$DPID" "$SMNT"
    done
    rm -rf "$SCACHE"
    ms_list() { for x in "$@"; do awk -v s="$x" 'BEGIN { printf "%.2f ", s * 1000 }'; done; }
    note "first 4 KiB, ms, in run order: native [$(ms_list "${ttfb_n[@]}")] mount [$(ms_list "${ttfb_m[@]}")]"
    n=$(median "${ttfb_n[@]}")
    m=$(median "${ttfb_m[@]}")
    delta=$(awk -v n="$n" -v m="$m" 'BEGIN { printf "%+.2f", (m - n) * 1000 }')
    row "first 4 KiB (open + read), cold, source throttled to ${THROTTLE_MBPS} MB/s" \
        "$(awk -v s="$n" 'BEGIN { printf "%.2f ms", s * 1000 }')" \
        "$(awk -v s="$m" 'BEGIN { printf "%.2f ms", s * 1000 }')" \
        "${delta} ms ($(ratio "$m" "$n")x)" \
        "≤ +5 ms: $(awk -v d="$delta" 'BEGIN { print (d <= 5 ? "met" : "MISSED") }')"
    n=$(median "${stream_n[@]}")
    m=$(median "${stream_m[@]}")
    q=$(ratio "$m" "$n")
    row "stream ${STREAM_MB} MiB, cold, throttled to ${THROTTLE_MBPS} MB/s, promotion running" \
        "$(mbps "$n")" "$(mbps "$m")" "${q}x" "≥ 0.85x: $(verdict "$q" 0.85)"
    nat=$(median "${stream_n[@]}")
    if awk -v r="$nat" -v c="$THROTTLE_BPS" 'BEGIN { exit !(r > 1.2 * c) }'; then
        note "THE THROTTLE DID NOT APPLY: native throttled read ran at $(mbps "$nat") (cap ${THROTTLE_MBPS} MB/s)"
    fi
fi

# ---- 4: promotion against cp --------------------------------------------------------------

if want promote; then
    say "4: promotion of ${SIZE_MB} MiB against cp"
    PMNT=$WORK/mnt-p
    PCACHE=$WORK/cache-p
    cp_t=()
    cps_t=()
    pr_t=()
    for ((r = 0; r < REPS; r++)); do
        rm -f "$WORK/cp/big"
        drop_caches
        t0=$(now)
        cp "$SRC/big" "$WORK/cp/big"
        t1=$(now)
        sync "$WORK/cp/big"
        t2=$(now)
        cp_t+=("$(awk -v a="$t0" -v z="$t1" 'BEGIN { print z - a }')")
        cps_t+=("$(awk -v a="$t0" -v z="$t2" 'BEGIN { print z - a }')")
        rm -f "$WORK/cp/big"

        rm -rf "$PCACHE"
        start_daemon "promote-$r" "$SRC" "$PMNT" "$PCACHE" ""
        drop_caches
        t0=$(now)
        dd if="$PMNT/big" of=/dev/null bs=1M count=16 2>/dev/null
        tp=$(wait_promoted "$DLOG" big 600)
        pr_t+=("$(awk -v a="$t0" -v z="$tp" 'BEGIN { print z - a }')")
        stop_daemon "$DPID" "$PMNT"
        rm -rf "$PCACHE"
        note "4 run $((r + 1)): cp $(printf '%.2f' "${cp_t[r]}") s, cp+sync $(printf '%.2f' "${cps_t[r]}") s, promotion $(printf '%.2f' "${pr_t[r]}") s"
    done
    bytes=$((SIZE_MB << 20))
    c=$(median "${cp_t[@]}")
    cs=$(median "${cps_t[@]}")
    p=$(median "${pr_t[@]}")
    fmt_t() { awk -v t="$1" -v b="$bytes" 'BEGIN { printf "%.2f s (%.0f MB/s)", t, b / t / 1e6 }'; }
    q=$(ratio "$c" "$p")
    row "promote ${SIZE_MB} MiB, cold, unthrottled, vs cp" "$(fmt_t "$c")" "$(fmt_t "$p")" "${q}x" \
        "≥ 0.80x: $(verdict "$q" 0.80)"
    q=$(ratio "$cs" "$p")
    row "promote ${SIZE_MB} MiB, cold, unthrottled, vs cp + sync FILE" "$(fmt_t "$cs")" "$(fmt_t "$p")" "${q}x" \
        "≥ 0.80x: $(verdict "$q" 0.80)"
fi

# ---- 5: the data path: uncached reads and writes, native / cachefs / mergerfs -------------

CLK_TCK=$(getconf CLK_TCK)
# CPU time of PID so far (utime + stime of all its threads, /proc/PID/stat), in ms.
cpu_ms() {
    awk -v hz="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%.0f\n", ($12 + $13) * 1000 / hz }' "/proc/$1/stat"
}

MERGERFS_OPTS=cache.files=auto-full,passthrough.io=rw
MERGERFS_VERSION=
if [ -n "$MERGERFS_BIN" ]; then
    MERGERFS_VERSION=$("$MERGERFS_BIN" --version 2>&1 | awk 'NR == 1 { print $1 " " $2 }')
fi

# Starts mergerfs in the foreground over the one branch SOURCE and waits for its mount.
# Sets DPID and DLOG.
start_mergerfs() { # NAME SOURCE MOUNTPOINT
    local name=$1 src=$2 mnt=$3 i
    mkdir -p "$mnt"
    DLOG=$WORK/$name.log
    "$MERGERFS_BIN" -f -o "$MERGERFS_OPTS" "$src" "$mnt" >"$DLOG" 2>&1 &
    DPID=$!
    DAEMONS+=("$DPID $mnt")
    for i in $(seq 400); do
        is_mounted "$mnt" fuse.mergerfs && return 0
        if ! kill -0 "$DPID" 2>/dev/null; then
            cat "$DLOG" >&2
            die "mergerfs ($name) exited before mounting"
        fi
        sleep 0.025
    done
    cat "$DLOG" >&2
    die "no fuse.mergerfs mount at $mnt after 10 s"
}

# Results of 5: DP[TEST.SYSTEM] holds one value per rep, space-separated.
declare -A DP
dp_add() { DP[$1]="${DP[$1]:-}${DP[$1]:+ }$2"; }
dp_med() { # shellcheck disable=SC2086 # one word per rep
    median ${DP[$1]}
}
dp_list() { # TEST.SYSTEM: the values in run order, as MB/s
    local x IFS=' '
    local out=()
    for x in ${DP[$1]}; do out+=("$(mbps "$x")"); done
    echo -n "${out[*]}"
}

# Mounts SYSTEM over DSRC (a fresh mount, fresh cache; with cachefs, promote=MODE); sets
# DIR, the path to use, and DPID (empty natively).
dp_mount() { # SYSTEM NAME [PROMOTE-MODE]
    case $1 in
    native) DIR=$DSRC DPID= ;;
    cachefs)
        rm -rf "$DCACHE"
        start_daemon "$2" "$DSRC" "$DMNT" "$DCACHE" "" --promote "${3:-auto}"
        DIR=$DMNT
        ;;
    mergerfs)
        start_mergerfs "$2" "$DSRC" "$MMNT"
        DIR=$MMNT
        ;;
    esac
}
dp_umount() {
    if [ -n "$DPID" ]; then
        stop_daemon "$DPID" "$DIR"
        DPID=
    fi
    rm -rf "$DCACHE"
}

# One write test through SYSTEM: dd from /dev/zero to the new file DIR/w, COUNT blocks of
# BS (further dd arguments: conv=fsync); records bytes/s in DP[TEST.SYSTEM] and the
# daemon's CPU ms in DP[cpu_TEST.SYSTEM]. The file is removed (and that synced) after.
dp_write() { # SYSTEM TEST REP BS COUNT [DD-ARGS...]
    local sys=$1 test=$2 r=$3 bs=$4 count=$5 c0=0 c1=0 v size
    shift 5
    dp_mount "$sys" "dp-$test-$sys-$r"
    [ -z "$DPID" ] || c0=$(cpu_ms "$DPID")
    v=$(dd if=/dev/zero of="$DIR/w" bs="$bs" count="$count" "$@" 2>&1 | parse_dd) ||
        die "dd to $DIR/w ($sys) failed"
    [ -z "$DPID" ] || c1=$(cpu_ms "$DPID")
    dp_umount
    size=$(stat -c %s "$DSRC/w")
    [ "$size" -eq "$(($(numfmt --from=iec "${bs^^}") * count))" ] ||
        die "$sys: $DSRC/w has $size bytes after dd bs=$bs count=$count"
    rm -f "$DSRC/w"
    sync
    dp_add "$test.$sys" "$v"
    dp_add "cpu_$test.$sys" $((c1 - c0))
}

if want datapath; then
    say "5: data path, ${DATA_MB} MiB: native / cachefs$([ -n "$MERGERFS_BIN" ] && echo " / mergerfs ($MERGERFS_BIN)")"
    if [ -z "$MERGERFS_BIN" ]; then
        note "no mergerfs binary (MERGERFS=path, or mergerfs on PATH or under /var/tmp/mergerfs): 5 ran without it"
    fi
    DSRC=$WORK/dsrc
    DMNT=$WORK/mnt-d
    DCACHE=$WORK/cache-d
    MMNT=$WORK/mnt-m
    mkdir -p "$DSRC"
    mkdata "$DSRC/big" "$DATA_MB"
    rm -f "$RAND"
    sync
    SYSTEMS=(native cachefs)
    [ -z "$MERGERFS_BIN" ] || SYSTEMS+=(mergerfs)
    nsys=${#SYSTEMS[@]}
    for ((r = 0; r < REPS; r++)); do
        say "5 run $((r + 1)) of $REPS"
        # Each run starts with another system, so a drift in machine speed hits all alike.
        for ((k = 0; k < nsys; k++)); do
            sys=${SYSTEMS[(k + r) % nsys]}
            # Whatever else runs on the machine may have evicted it: back into the page
            # cache, untimed, right before the timed read.
            dd if="$DSRC/big" of=/dev/null bs=1M 2>/dev/null
            dp_mount "$sys" "dp-read-$sys-$r" manual
            c0=0 c1=0
            [ -z "$DPID" ] || c0=$(cpu_ms "$DPID")
            v=$(seq_read "$DIR/big") || die "dd of $DIR/big ($sys) failed"
            [ -z "$DPID" ] || c1=$(cpu_ms "$DPID")
            dp_umount
            dp_add "read.$sys" "$v"
            dp_add "cpu_read.$sys" $((c1 - c0))
        done
        # The first open of a fresh file with promote=auto: its promotion starts after
        # 16 MiB and runs beside the read; it must end before the next measurement.
        dd if="$DSRC/big" of=/dev/null bs=1M 2>/dev/null
        dp_mount cachefs "dp-auto-$r" auto
        c0=$(cpu_ms "$DPID")
        v=$(seq_read "$DMNT/big") || die "dd of $DMNT/big (promote=auto) failed"
        c1=$(cpu_ms "$DPID")
        wait_promoted "$DLOG" big 600 >/dev/null
        dp_umount
        sync
        dp_add "auto.cachefs" "$v"
        dp_add "cpu_auto.cachefs" $((c1 - c0))
        for ((k = 0; k < nsys; k++)); do
            dp_write "${SYSTEMS[(k + r) % nsys]}" w1m "$r" 1M "$DATA_MB" conv=fsync
        done
        for ((k = 0; k < nsys; k++)); do
            dp_write "${SYSTEMS[(k + r) % nsys]}" w4k "$r" 4k $((SMALLW_MB * 256))
        done
    done

    # Rows: throughput of each system and its ratio to native.
    dp_row() { # LABEL TEST [CACHEFS-TEST]
        local n c m=
        n=$(dp_med "$2.native")
        c=$(dp_med "${3:-$2}.cachefs")
        if [ -n "$MERGERFS_BIN" ] && [ -z "${3:-}" ]; then
            m=$(dp_med "$2.mergerfs")
            row "$1" "$(mbps "$n")" "$(mbps "$c")" "$(ratio "$c" "$n")x" "" "$(mbps "$m")" "$(ratio "$m" "$n")x"
        else
            row "$1" "$(mbps "$n")" "$(mbps "$c")" "$(ratio "$c" "$n")x" ""
        fi
        note "5 ${3:-$2}, MB/s in run order: native [$(dp_list "$2.native")] cachefs [$(dp_list "${3:-$2}.cachefs")]$([ -n "$m" ] && echo " mergerfs [$(dp_list "$2.mergerfs")]")"
    }
    dp_cpu_row() { # LABEL TEST
        local m=
        [ -z "$MERGERFS_BIN" ] || m="$(dp_med "cpu_$2.mergerfs") ms"
        row "$1" "-" "$(dp_med "cpu_$2.cachefs") ms" "-" "" "$m" "-"
    }
    dp_row "uncached read ${DATA_MB} MiB (in SOURCE's page cache), dd bs=1M, promote=manual" read
    dp_row "uncached read ${DATA_MB} MiB, promote=auto, first open of a fresh file (promotion running)" read auto
    dp_row "write ${DATA_MB} MiB + fsync, dd bs=1M conv=fsync, new file" w1m
    dp_row "write ${SMALLW_MB} MiB in 4 KiB writes, dd bs=4k, no fsync, new file" w4k
    dp_cpu_row "daemon CPU (utime+stime) during the uncached read of ${DATA_MB} MiB, promote=manual" read
    dp_cpu_row "daemon CPU (utime+stime) during the ${DATA_MB} MiB write + fsync" w1m
    note "5 daemon CPU, ms in run order: cachefs read [${DP[cpu_read.cachefs]}], promote=auto read [${DP[cpu_auto.cachefs]}], write+fsync [${DP[cpu_w1m.cachefs]}], 4 KiB writes [${DP[cpu_w4k.cachefs]}]$([ -n "$MERGERFS_BIN" ] && echo "; mergerfs read [${DP[cpu_read.mergerfs]}], write+fsync [${DP[cpu_w1m.mergerfs]}], 4 KiB writes [${DP[cpu_w4k.mergerfs]}]")"
    if [ -n "$MERGERFS_BIN" ] && awk -v c="$(dp_med cpu_read.mergerfs)" 'BEGIN { exit !(c > 100) }'; then
        note "mergerfs passthrough seems NOT in use: it used $(dp_med cpu_read.mergerfs) ms of CPU for the ${DATA_MB} MiB read"
    fi
fi

# ---- report -------------------------------------------------------------------------------

cleanup
left=$(findmnt -rn -t fuse.cachefs,fuse.mergerfs -o TARGET | grep "^$WORK/" || true)
[ -z "$left" ] || die "mounts left behind: $left"
others=$(findmnt -rn -t fuse.cachefs -o TARGET || true)
[ -z "$others" ] || note "fuse.cachefs mounts not made by this run still exist: ${others//$'\n'/ }"

echo
echo "Machine: $(nproc) cores, Linux $(uname -r), $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo); disk file system: $(df -PT "$BENCH_DIR" | awk 'NR == 2 { print $2 " on " $1 }')"
echo "Median of $REPS runs; ratio = cachefs / native (throughput); for the first byte, the difference."
if [ -n "$MERGERFS_BIN" ]; then
    echo "mergerfs: $MERGERFS_VERSION, -o $MERGERFS_OPTS; its ratio = mergerfs / native."
fi
echo
if [ -n "$MERGERFS_BIN" ]; then
    echo "| benchmark | native | cachefs | ratio | mergerfs | ratio | target |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
else
    echo "| benchmark | native | cachefs | ratio | target |"
    echo "| --- | --- | --- | --- | --- |"
fi
for r in "${ROWS[@]}"; do
    IFS=$'\x1f' read -r c1 c2 c3 c4 c5 c6 c7 <<<"$r"
    if [ -n "$MERGERFS_BIN" ]; then
        echo "| $c1 | $c2 | $c3 | $c4 | $c6 | $c7 | $c5 |"
    else
        echo "| $c1 | $c2 | $c3 | $c4 | $c5 |"
    fi
done
echo
echo "Notes:"
printf '%s\n' "${NOTES[@]}"

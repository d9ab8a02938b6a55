#!/usr/bin/env bash
# Library scans: what a media server's scan costs through cachefs, and through its peers
# when they are installed, against the same SOURCE read directly ("native"), in one run,
# printed as one Markdown table (each row a ratio to native, native in seconds).
#
#   scripts/bench-scan.sh                  (as root; about 4 minutes at BENCH_REPS=3)
#   MERGERFS=/path/to/mergerfs RCLONE=/path/to/rclone scripts/bench-scan.sh
#
# SOURCE is an ext4 image on a loop device, so /sys/block/loopN/stat (field 1, read
# requests completed) counts the reads that reach the "disk". The image file is in RAM
# (/dev/shm) by default: a read costs the same every time, so the times measure the file
# systems' own work, not a disk that other work on the machine shares, and the read
# counts say what a real disk would add (BENCH_IMAGE_DIR puts the image on one). It holds
# 100 shows x 5 seasons x 100 episodes (sparse files), the .nfo/.jpg a scraper leaves, and
# one season of 1,500 episodes (scripts/bench-scan.py). For each system, BENCH_REPS times
# (a fresh mount and an empty cache each time; within a rep the systems take turns, each
# rep starting one further on):
#
#   first scan   caches dropped (echo 3 >/proc/sys/vm/drop_caches), then
#                `find MNT -printf '%s %T@\n'`; with the SOURCE reads it caused
#   warm scan    the same find again
#   ls -lR       of the 1,500-episode season directory
#   probes       BENCH_PROBES (12,000) stats of missing ".srt" names next to real
#                episodes, timed in one python3 process (os.stat in a loop), as natively
#   probes again the same names at once again: what every rescan's probes cost
#   rescan after expiry    caches dropped again, find; with SOURCE reads (cachefs only)
#   rescan after restart   clean stop of the daemon (SIGTERM), mount again with the same
#                options, caches dropped, find; with SOURCE reads (cachefs only)
#
# Native is the loop mount read directly. Its first scan and its rescan (caches dropped,
# find) are the same operation: the 2 x BENCH_REPS samples are pooled, and their median
# is the denominator of the first-scan column and of both rescan columns. The table shows
# medians over the reps.
# The peers run with every cache they have on, and are also rescanned after the drop
# (reported below the table, not in it: the rescan columns measure cachefs's meta_ttl).
#
# Systems:
#   native             SOURCE (the loop mount) itself
#   cachefs            `cachefs SOURCE MNT --cache DIR -f` (default options)
#   cachefs meta_ttl   the same with `-o meta_ttl=1d`
#   cachefs nosys      the same with `-o meta_ttl=1d,xattr=nosys` (no extended
#                      attributes: ls -l asks nothing per file)
#   mergerfs           single branch SOURCE, `-o cache.files=partial,cache.attr=86400,
#                      cache.entry=86400,cache.negative_entry=86400,cache.readdir=true,
#                      cache.statfs=86400`
#   rclone             `rclone mount SOURCE MNT --vfs-cache-mode full --cache-dir DIR`
#                      (SOURCE as a local path remote, an empty config)
#
# Environment:
#   BENCH_REPS    runs per system; the table shows the median (default 3)
#   BENCH_PROBES  missing names stat'ed per probe run (default 12000)
#   BENCH_DIR     where the work dir (mount points, caches, logs) goes (default /var/tmp)
#   BENCH_IMAGE_DIR  where SOURCE's image file goes (default /dev/shm: see below)
#   CACHEFS_BIN   the binary (default: cargo build --release, target/release/cachefs)
#   MERGERFS      the mergerfs binary (default: `mergerfs` on PATH; `off` skips it)
#   RCLONE        the rclone binary (default: `rclone` on PATH; `off` skips it)
#   KEEP=1        keep the work dir (daemon logs) after the run
#
# Everything it makes (daemons, mounts, the loop device, files) is removed on exit, failed
# or not; it stops only the processes it started, by pid. It drops the page, dentry and
# inode caches of the whole machine many times. A benchmark, not a test: not run by CI.
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C
cd "$(dirname "$0")/.."
repo=$PWD
T_BEGIN=$EPOCHREALTIME

REPS=${BENCH_REPS:-3}
PROBES=${BENCH_PROBES:-12000}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
IMAGE_DIR=${BENCH_IMAGE_DIR:-/dev/shm}
IMAGE_MB=2048 # sparse; 131,072 inodes at mkfs's default ratio, about 60 MiB used

BENCH_NAME=bench-scan
# shellcheck source=scripts/bench-lib.sh
. "$repo/scripts/bench-lib.sh"

if ! [[ $REPS =~ ^[0-9]+$ ]] || [ "$REPS" -lt 1 ]; then die "BENCH_REPS must be a positive integer"; fi
if ! [[ $PROBES =~ ^[0-9]+$ ]] || [ "$PROBES" -lt 1 ] || [ "$PROBES" -gt 50000 ]; then
    die "BENCH_PROBES must be an integer from 1 to 50000"
fi
require_loop_bench python3 losetup mkfs.ext4 mount umount findmnt find ls awk sort truncate
if [ -z "${CACHEFS_BIN:-}" ]; then
    command -v cargo >/dev/null || die "missing cargo (or set CACHEFS_BIN)"
else
    [ -x "$CACHEFS_BIN" ] || die "CACHEFS_BIN=$CACHEFS_BIN is not an executable"
fi

# A peer: the binary named by its variable (which must then work), else the one on PATH,
# else none. Prints its path, or nothing.
peer() { # VARIABLE COMMAND
    local given=${!1:-}
    if [ "$given" = off ]; then
        return 0
    elif [ -n "$given" ]; then
        [ -x "$given" ] || die "$1=$given is not an executable"
        echo "$given"
    else
        command -v "$2" || true
    fi
}
MERGERFS_BIN=$(peer MERGERFS mergerfs)
RCLONE_BIN=$(peer RCLONE rclone)
if [ -n "$MERGERFS_BIN" ]; then
    "$MERGERFS_BIN" --version >/dev/null 2>&1 || die "$MERGERFS_BIN --version failed"
fi
if [ -n "$RCLONE_BIN" ]; then
    "$RCLONE_BIN" version >/dev/null 2>&1 || die "$RCLONE_BIN version failed"
    command -v fusermount3 >/dev/null || command -v fusermount >/dev/null ||
        die "rclone mount needs fusermount3 (Debian: fuse3)"
fi

avail_mb=$(df -Pm "$BENCH_DIR" | awk 'NR == 2 { print $4 }')
[ "$avail_mb" -ge 256 ] || die "$BENCH_DIR has $avail_mb MiB free; this run needs about 256 MiB"
[ -d "$IMAGE_DIR" ] || die "BENCH_IMAGE_DIR=$IMAGE_DIR is not a directory"
avail_mb=$(df -Pm "$IMAGE_DIR" | awk 'NR == 2 { print $4 }')
[ "$avail_mb" -ge 256 ] || die "$IMAGE_DIR has $avail_mb MiB free; the image needs about 128 MiB"

# ---- the work dir and its cleanup -------------------------------------------------------

WORK=$(mktemp -d "$BENCH_DIR/cachefs-bench-scan.XXXXXX")
chmod 755 "$WORK"
SRC=$WORK/source
MNT=$WORK/mnt
mkdir "$SRC" "$MNT"
IMAGE_TMP=
LOOP=
DAEMON=      # pid of the one daemon running, if any
DAEMON_LOG=
CLEANED=

# Stops the daemon we started: SIGTERM (each of the three unmounts and exits on it), then
# a lazy unmount and SIGKILL if it is still there after 30 s. Sets STOP_RC.
stop_daemon() {
    local pid=$DAEMON i
    STOP_RC=0
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 600; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "daemon $pid did not exit within 30 s of SIGTERM; lazy unmount and SIGKILL"
            umount -l "$MNT" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || STOP_RC=$?
    DAEMON=
}

cleanup() {
    [ -n "$CLEANED" ] && return 0
    CLEANED=1
    set +e
    stop_daemon
    release_work_mounts
    [ -n "$IMAGE_TMP" ] && rm -rf "$IMAGE_TMP"
    remove_work
    if findmnt -rn -o TARGET | grep -q "^$WORK/"; then
        say "WARNING: a mount below $WORK is still there"
    fi
}
trap_cleanup
IMAGE_TMP=$(mktemp -d "$IMAGE_DIR/cachefs-bench-scan.XXXXXX")
IMAGE=$IMAGE_TMP/source.img

# ---- the binary ---------------------------------------------------------------------------

CACHEFS_GIVEN=${CACHEFS_BIN:-}
private_binary

# ---- helpers ------------------------------------------------------------------------------

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b - a }'; }

# Read requests completed by the loop device since it was attached.
reads() { awk '{ print $1 }' "/sys/block/${LOOP#/dev/}/stat"; }

# The file system type mounted at MOUNTPOINT per /proc/self/mountinfo, or nothing.
fstype_at() { # MOUNTPOINT
    awk -v t="$1" '$5 == t { for (i = 7; i <= NF; i++) if ($i == "-") { print $(i + 1); exit } }' \
        /proc/self/mountinfo
}

# The command line of SYSTEM's daemon (cachefs SYSTEMs: cachefs, cachefs-ttl, cachefs-nox).
daemon_cmd() { # SYSTEM
    case $1 in
    cachefs) CMD=("$BIN" "$SRC" "$MNT" --cache "$WORK/cache-$1" -f) ;;
    cachefs-ttl) CMD=("$BIN" "$SRC" "$MNT" --cache "$WORK/cache-$1" -f -o meta_ttl=1d) ;;
    cachefs-nox) CMD=("$BIN" "$SRC" "$MNT" --cache "$WORK/cache-$1" -f -o meta_ttl=1d,xattr=nosys) ;;
    mergerfs)
        CMD=("$MERGERFS_BIN" -f -o "cache.files=partial,cache.attr=86400,cache.entry=86400,cache.negative_entry=86400,cache.readdir=true,cache.statfs=86400" "$SRC" "$MNT")
        ;;
    rclone)
        CMD=(env RCLONE_CONFIG="$WORK/rclone.conf" "$RCLONE_BIN" mount "$SRC" "$MNT"
            --vfs-cache-mode full --cache-dir "$WORK/rclone-cache")
        ;;
    *) die "unknown system $1" ;;
    esac
}

fs_of() { # SYSTEM
    case $1 in
    cachefs*) echo fuse.cachefs ;;
    mergerfs) echo fuse.mergerfs ;;
    rclone) echo fuse.rclone ;;
    esac
}

# Mounts SYSTEM at MNT (a daemon in the background) and waits for the mount.
start_system() { # SYSTEM
    local want i
    want=$(fs_of "$1")
    daemon_cmd "$1"
    DAEMON_LOG=$WORK/$1.log
    echo "---- ${CMD[*]}" >>"$DAEMON_LOG"
    "${CMD[@]}" >>"$DAEMON_LOG" 2>&1 &
    DAEMON=$!
    for ((i = 0; i < 1200; i++)); do # 60 s
        [ "$(fstype_at "$MNT")" = "$want" ] && return 0
        if ! kill -0 "$DAEMON" 2>/dev/null; then
            cat "$DAEMON_LOG" >&2
            die "$1 exited before mounting"
        fi
        sleep 0.05
    done
    cat "$DAEMON_LOG" >&2
    die "no $want mount at $MNT after 60 s"
}

# Unmounts SYSTEM cleanly: its daemon must exit 0 (rclone: 143, its answer to SIGTERM)
# and leave no mount at MNT.
stop_system() { # SYSTEM
    stop_daemon
    if [ "$STOP_RC" -ne 0 ] && ! { [ "$1" = rclone ] && [ "$STOP_RC" -eq 143 ]; }; then
        cat "$DAEMON_LOG" >&2
        die "$1 exited with status $STOP_RC on SIGTERM"
    fi
    [ -z "$(fstype_at "$MNT")" ] || die "$1 left a mount at $MNT"
}

# One timed find of ROOT, after dropping the caches with DROP=1. Sets SCAN_S and
# SCAN_READS (SOURCE read requests meanwhile); its output must have every entry.
scan() { # ROOT DROP
    local r0 t0 t1 n
    [ "$2" = 1 ] && drop_caches
    r0=$(reads)
    t0=$EPOCHREALTIME
    find "$1" -printf '%s %T@\n' >"$WORK/scan.out" 2>"$WORK/scan.err" ||
        die "find $1 failed: $(head -3 "$WORK/scan.err")"
    t1=$EPOCHREALTIME
    SCAN_READS=$(($(reads) - r0))
    SCAN_S=$(secs "$t0" "$t1")
    [ ! -s "$WORK/scan.err" ] || die "find $1 printed errors: $(head -3 "$WORK/scan.err")"
    n=$(wc -l <"$WORK/scan.out")
    [ "$n" -eq "$ENTRIES" ] || die "find $1 listed $n entries, SOURCE has $ENTRIES"
}

lsr() { # ROOT: sets LS_S
    local t0 t1 n
    t0=$EPOCHREALTIME
    ls -lR "$1/$BIG" >"$WORK/ls.out" 2>"$WORK/ls.err" || die "ls -lR $1/$BIG failed: $(head -3 "$WORK/ls.err")"
    t1=$EPOCHREALTIME
    LS_S=$(secs "$t0" "$t1")
    n=$(grep -c '\.mkv$' "$WORK/ls.out" || true)
    [ "$n" -eq "$BIG_FILES" ] || die "ls -lR $1/$BIG listed $n episodes, expected $BIG_FILES"
}

probe() { # ROOT: sets PROBE_S (first pass) and PROBE2_S (the same names again)
    local s
    s=$(python3 "$repo/scripts/bench-scan.py" probe "$1" "$PROBES") || die "probes under $1 failed"
    PROBE_S=$(awk -v s="${s% *}" 'BEGIN { printf "%.3f\n", s }')
    PROBE2_S=$(awk -v s="${s#* }" 'BEGIN { printf "%.3f\n", s }')
}

# Results: R[system.metric] holds one value per rep, space-separated.
declare -A R
add() { R[$1.$2]="${R[$1.$2]:-}${R[$1.$2]:+ }$3"; }
med() { # SYSTEM METRIC
    # shellcheck disable=SC2086 # one word per rep
    median ${R[$1.$2]}
}

# ---- SOURCE: an ext4 image on a loop device ---------------------------------------------------

say "work dir $WORK; making SOURCE (ext4 on a loop device) and the library"
truncate -s "${IMAGE_MB}M" "$IMAGE"
# Inode tables and journal written now, so no lazy init runs during the measurements.
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$IMAGE"
LOOP=$(losetup -f --show "$IMAGE")
[ -r "/sys/block/${LOOP#/dev/}/stat" ] || die "no /sys/block/${LOOP#/dev/}/stat"
mount -o noatime "$LOOP" "$SRC"
t0=$EPOCHREALTIME
GEN=$(python3 "$repo/scripts/bench-scan.py" make "$SRC")
GEN_S=$(secs "$t0" "$EPOCHREALTIME")
read -r FILES DIRS EPISODES BIG_FILES BIG < <(python3 -c 'import json, sys
d = json.loads(sys.argv[1])
print(d["files"], d["directories"], d["episodes"], d["big_dir_files"], d["big_dir"])' "$GEN")
# A fresh mount: a drop_caches right after the writes leaves much of the new metadata
# cached (still held by the journal), and the first "cold" scan would read nothing.
umount "$SRC"
mount -o noatime "$LOOP" "$SRC"
# find lists SOURCE's root and lost+found too.
ENTRIES=$((FILES + DIRS + 2))
say "library made in $GEN_S s: $FILES files ($EPISODES episodes), $DIRS directories"
: >"$WORK/rclone.conf"

SYSTEMS=(native cachefs cachefs-ttl cachefs-nox)
if [ -n "$MERGERFS_BIN" ]; then SYSTEMS+=(mergerfs); else say "mergerfs: not installed, skipped"; fi
if [ -n "$RCLONE_BIN" ]; then SYSTEMS+=(rclone); else say "rclone: not installed, skipped"; fi

# ---- the runs ------------------------------------------------------------------------------

# One rep of SYSTEM: mount, the four measurements, the rescan after the drop, and for
# cachefs the rescan after a restart; unmount.
run() { # SYSTEM
    local s=$1 root=$MNT
    if [ "$s" = native ]; then
        root=$SRC
    else
        # An empty cache each rep: a first scan must not be answered from what the last
        # rep left (cachefs's metadata snapshot in CACHE/meta, rclone's cache dir).
        rm -rf "$WORK/cache-$s" "$WORK/rclone-cache"
        start_system "$s"
    fi
    scan "$root" 1
    add "$s" first "$SCAN_S"
    add "$s" first_reads "$SCAN_READS"
    scan "$root" 0
    add "$s" warm "$SCAN_S"
    lsr "$root"
    add "$s" ls "$LS_S"
    probe "$root"
    add "$s" probe "$PROBE_S"
    add "$s" probe2 "$PROBE2_S"
    scan "$root" 1
    add "$s" expiry "$SCAN_S"
    add "$s" expiry_reads "$SCAN_READS"
    say "$s: first ${R[$s.first]##* } s (${R[$s.first_reads]##* } reads), warm ${R[$s.warm]##* } s," \
        "ls -lR $LS_S s, probes $PROBE_S s (again $PROBE2_S s), rescan after the drop $SCAN_S s ($SCAN_READS reads)"
    case $s in
    native) ;;
    cachefs*)
        stop_system "$s"
        start_system "$s"
        scan "$root" 1
        add "$s" restart "$SCAN_S"
        add "$s" restart_reads "$SCAN_READS"
        say "$s: rescan after a restart $SCAN_S s ($SCAN_READS reads)"
        stop_system "$s"
        ;;
    *) stop_system "$s" ;;
    esac
}

# Each rep starts one system further on, so no system is always first after another.
for ((rep = 1; rep <= REPS; rep++)); do
    say "rep $rep of $REPS"
    for ((i = 0; i < ${#SYSTEMS[@]}; i++)); do
        run "${SYSTEMS[(i + rep - 1) % ${#SYSTEMS[@]}]}"
    done
done

# ---- the table ------------------------------------------------------------------------------

# Native's first scan and its rescan are one operation (caches dropped, then find): their
# samples are pooled, the denominator of the first-scan column and both rescan columns.
R[native.cold]="${R[native.first]} ${R[native.expiry]}"
R[native.cold_reads]="${R[native.first_reads]} ${R[native.expiry_reads]}"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b <= 0) print "n/a"; else printf "%.2fx\n", a / b }'; }
reads_fmt() { awk -v n="$1" 'BEGIN { printf "%.0f reads\n", n }'; }

# A cell of SYSTEM for METRIC: native in seconds, others a ratio to NATIVE_METRIC; with
# the median read count when READS (the metric's _reads) is set.
cell() { # SYSTEM METRIC NATIVE_METRIC READS
    local v n out
    v=$(med "$1" "$2")
    if [ "$1" = native ]; then
        out=$(awk -v v="$v" 'BEGIN { printf "%.3f s\n", v }')
    else
        n=$(med native "$3")
        out=$(ratio "$v" "$n")
    fi
    [ -n "${4:-}" ] && out="$out ($(reads_fmt "$(med "$1" "${2}_reads")"))"
    echo "$out"
}

label() {
    case $1 in
    native) echo "native (SOURCE itself)" ;;
    cachefs) echo "cachefs, default options" ;;
    cachefs-ttl) echo "cachefs, meta_ttl=1d" ;;
    cachefs-nox) echo "cachefs, meta_ttl=1d, xattr=nosys" ;;
    mergerfs) echo "mergerfs $("$MERGERFS_BIN" --version 2>&1 | awk 'NR == 1 { print $2 }'), all caches on" ;;
    rclone) echo "rclone $("$RCLONE_BIN" version 2>/dev/null | awk 'NR == 1 { print $2 }'), vfs-cache-mode full" ;;
    esac
}

if [ -n "${CACHEFS_GIVEN:-}" ]; then
    REV="binary $CACHEFS_GIVEN"
else
    REV=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        REV="$REV+changes"
    fi
fi

{
    echo
    echo "$(date -u +%Y-%m-%d), $(nproc) cores, Linux $(uname -r), cachefs $REV; SOURCE ext4 on ${LOOP} (image in $IMAGE_DIR):" \
        "$FILES files ($EPISODES episodes) in $DIRS directories; median of $REPS"
    echo
    echo "| system | first scan | warm scan | ls -lR | probes | probes again | rescan after expiry (reads) | rescan after restart (reads) |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    for s in "${SYSTEMS[@]}"; do
        case $s in
        native)
            first=$(cell native cold cold 1)
            exp=$first rst=$first
            ;;
        cachefs*)
            first=$(cell "$s" first cold 1)
            exp=$(cell "$s" expiry cold 1)
            rst=$(cell "$s" restart cold 1)
            ;;
        *)
            first=$(cell "$s" first cold 1)
            exp=n/a rst=n/a
            ;;
        esac
        echo "| $(label "$s") | $first | $(cell "$s" warm warm) | $(cell "$s" ls ls) | $(cell "$s" probe probe) | $(cell "$s" probe2 probe2) | $exp | $rst |"
    done
    echo
    echo "Details:"
    for s in "${SYSTEMS[@]}"; do
        line="- $s: first ${R[$s.first]} s (reads ${R[$s.first_reads]}); warm ${R[$s.warm]} s; ls -lR ${R[$s.ls]} s; probes ${R[$s.probe]} s, again ${R[$s.probe2]} s; rescan after the drop ${R[$s.expiry]} s (reads ${R[$s.expiry_reads]})"
        [ -n "${R[$s.restart]:-}" ] && line="$line; after a restart ${R[$s.restart]} s (reads ${R[$s.restart_reads]})"
        echo "$line"
    done
    echo "- ls -lR: $BIG ($BIG_FILES episodes); probes: $PROBES missing .srt names; library made in $GEN_S s"
    echo "- total runtime before cleanup: $(secs "$T_BEGIN" "$EPOCHREALTIME") s"
}

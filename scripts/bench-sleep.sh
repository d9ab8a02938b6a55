#!/usr/bin/env bash
# Does a sleeping disk stay asleep? What each step of a media server's day costs SOURCE,
# counted in read requests on SOURCE's block device, with `meta_ttl` on and the files
# played already cached (invariant 11 of docs/architecture.md: every figure should be 0).
#
#   scripts/bench-sleep.sh        (as root; about 20 s)
#
# SOURCE is an ext4 image on a loop device: /sys/block/loopN/stat counts the requests
# that would reach the disk (field 1 reads completed, field 3 sectors read, field 5
# writes completed). The library: 2,400 small episode files (sparse) in 40 shows x 3
# seasons x 20, a film of about 64 MiB `Films/Film (2020)/Film (2020).mkv` with its
# `Film (2020).en.srt` beside it, and two real episodes (`Show 01/Season 01/Show 01 -
# S01E01.mkv` and E02) made by ffmpeg; without ffmpeg the film and the episodes are
# random bytes and are "played" with cat. CACHE and MOUNTPOINT are on the normal disk.
#
# The mount is `cachefs SOURCE MNT --cache CACHE -o meta_ttl=86400` (in the background,
# as fstab would start it). A rescan and an ls -l of the film's directory fill the
# metadata cache (the steps below were each done once before), then `cachefs promote
# --wait` caches the film, its .srt and the two episodes. Before each step the page,
# dentry and inode caches are dropped (`echo 3 >/proc/sys/vm/drop_caches`, standing in
# for hours of other work), then the step runs with the loop device's counters read
# before and after:
#
#   idle              nothing asked of the mount for 3 s: what the daemon (or ext4) reads
#                     on its own, the baseline of the other rows (ext4 alone may read
#                     once in its first seconds after its mount); again at the end
#   rescan            find MNT -printf '%s %T@\n' (every entry must be listed)
#   probe + listing   stat of a missing `Film (2020).de.srt` (must fail with ENOENT),
#                     ls -l of the film's directory
#   play film         ffmpeg -i FILM -f null - (cat without ffmpeg)
#   play film + subs  ffmpeg -i FILM -i SRT ... (cat of both without ffmpeg)
#   play episode after a restart
#                     `cachefs unmount`, mount again with the same options (the
#                     metadata snapshot is written at a clean stop and read at start),
#                     then ffmpeg -i EPISODE -f null -
#   probe + listing after a restart
#                     the probe and the ls -l again (extended attributes come from the
#                     snapshot too)
#
# Beside each figure: what `cachefs status --json` says SOURCE was asked during the step
# (every key starting with `source_`, numbers as deltas, nested objects such as
# `source_ops` flattened), where the daemon reports it.
#
# Environment:
#   CACHEFS        the binary (default: `cargo build --release`, target/release/cachefs);
#                  CACHEFS_BIN is the same
#   BENCH_DIR      where the work dir (image, cache, mount point, logs) goes (default /var/tmp)
#   KEEP=1         keep the work dir (the daemon's log) after the run
#
# Everything it makes (the mount, the daemon, the loop device and its mount, files) is
# removed on exit, failed, interrupted or not; it stops only the daemon it started, by pid.
# It drops the page cache of the whole machine before every step: a benchmark, not a test.
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C
cd "$(dirname "$0")/.."
repo=$PWD

BENCH_DIR=${BENCH_DIR:-/var/tmp}
CACHEFS_BIN=${CACHEFS:-${CACHEFS_BIN:-}}
IMAGE_MB=512
SHOWS=40 SEASONS=3 EPISODES=20 # 2,400 episode files
STEP_TIMEOUT=120               # seconds any one step may take before the run fails

BENCH_NAME=bench-sleep
# shellcheck source=scripts/bench-lib.sh
. "$repo/scripts/bench-lib.sh"

require_loop_bench python3 losetup mkfs.ext4 mount umount findmnt find ls stat timeout truncate
if [ -n "$CACHEFS_BIN" ]; then
    [ -x "$CACHEFS_BIN" ] || die "CACHEFS=$CACHEFS_BIN is not an executable"
else
    command -v cargo >/dev/null || die "missing cargo (or set CACHEFS)"
fi
FFMPEG=$(command -v ffmpeg || true)
avail_mb=$(df -Pm "$BENCH_DIR" | awk 'NR == 2 { print $4 }')
[ "$avail_mb" -ge $((IMAGE_MB + 256)) ] ||
    die "$BENCH_DIR has $avail_mb MiB free; this run needs about $((IMAGE_MB + 256)) MiB"

# ---- the work dir and its cleanup -------------------------------------------------------

WORK=$(mktemp -d "$BENCH_DIR/cachefs-bench-sleep.XXXXXX")
chmod 755 "$WORK"
SRC=$WORK/source # the loop device's mount point
MNT=$WORK/mnt
CACHE=$WORK/cache
LOG=$WORK/cachefs.log
mkdir "$SRC" "$MNT"
LOOP=
DAEMON= # pid of the daemon we mounted, while it runs
CLEANED=

# Stops the daemon we started: `cachefs unmount` (graceful), else SIGTERM, else a lazy
# unmount and SIGKILL, each with a deadline; waits for the pid to be gone.
stop_daemon() {
    local pid=$DAEMON i
    [ -n "$pid" ] || return 0
    if ! timeout 60 "$BIN" unmount "$MNT" >/dev/null 2>&1; then
        say "cachefs unmount failed or hung; SIGTERM to daemon $pid"
        kill -TERM "$pid" 2>/dev/null || true
    fi
    for ((i = 0; i < 400; i++)); do # 20 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "daemon $pid still running; lazy unmount and SIGKILL"
        umount -l "$MNT" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 200; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
    fi
    DAEMON=
}

cleanup() {
    [ -n "$CLEANED" ] && return 0
    CLEANED=1
    set +e
    stop_daemon
    release_work_mounts
    if findmnt -rn -o TARGET | grep -q "^$WORK/"; then
        say "WARNING: a mount below $WORK is still there"
    fi
    remove_work
}
trap_cleanup

# ---- the binary ---------------------------------------------------------------------------

private_binary

# ---- helpers ------------------------------------------------------------------------------

# Field N of the loop device's stat: 1 reads completed, 3 sectors read, 5 writes completed.
loop_stat() { awk '{ print $1, $3, $5 }' "/sys/block/${LOOP#/dev/}/stat"; }

is_mounted() { # MOUNTPOINT: a fuse.cachefs mount there, per mountinfo
    [ "$(findmnt -rn -o FSTYPE --mountpoint "$1" 2>/dev/null | tail -1)" = fuse.cachefs ]
}

# The end of the daemon's log, on stderr (before a failure).
show_log() { tail -20 "$LOG" 2>/dev/null | sed 's/^/    /' >&2 || true; }

# Any command under the step deadline: a hung SOURCE or daemon fails the run, never hangs it.
T() { timeout "$STEP_TIMEOUT" "$@"; }

# Mounts cachefs as fstab would (the command returns once the mount is live) and learns
# the daemon's pid from its status.
mount_cachefs() {
    if ! timeout 60 "$BIN" "$SRC" "$MNT" --cache "$CACHE" -o "meta_ttl=86400,log=$LOG"; then
        show_log
        die "mounting cachefs failed"
    fi
    is_mounted "$MNT" || die "cachefs returned, but nothing is mounted at $MNT"
    DAEMON=$(timeout 30 "$BIN" status "$MNT" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])') ||
        die "cachefs status did not answer"
}

status_json() { timeout 30 "$BIN" status "$MNT" --json || echo '{}'; }

# What SOURCE was asked between two status objects (files): every key starting with
# "source_", nested objects flattened (source_ops.lookup), numbers as non-zero deltas,
# anything else as its value. "none moved" when such keys exist and none moved; "n/a"
# when the daemon reports none.
# shellcheck disable=SC2016 # Python, not shell
SOURCE_DELTA_PY='import json, sys
def flat(v, key, out):
    if isinstance(v, dict):
        for k, x in v.items():
            flat(x, key + "." + k, out)
    else:
        out[key] = v
def keys(path):
    try:
        d = json.load(open(path))
    except (OSError, ValueError):
        return {}
    out = {}
    for k, v in d.items():
        if k.startswith("source_"):
            flat(v, k, out)
    return out
a, b = keys(sys.argv[1]), keys(sys.argv[2])
if not b:
    print("n/a")
    sys.exit()
cells = []
for k in sorted(b):
    v = b[k]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        d = v - a.get(k, 0)
        if d:
            cells.append("%s %+d" % (k, d))
    else:
        cells.append("%s=%s" % (k, json.dumps(v)))
print(", ".join(cells) or "none moved")'

ROWS=()
# Runs one measured step: the status before, the caches dropped, the loop device's
# counters around the command (whose commands run under T), the status after; appends
# a row.
step() { # LABEL COMMAND...
    local label=$1 r0 r1 s0=$WORK/status.before s1=$WORK/status.after reads sectors writes
    shift
    status_json >"$s0"
    drop_caches
    r0=$(loop_stat)
    if ! "$@" >"$WORK/step.out" 2>"$WORK/step.err"; then
        show_log
        die "step '$label' failed: $(head -5 "$WORK/step.err")"
    fi
    r1=$(loop_stat)
    status_json >"$s1"
    read -r reads sectors writes < <(echo "$r0 $r1" | awk '{ print $4 - $1, $5 - $2, $6 - $3 }')
    ROWS+=("| $label | $reads | $sectors | $writes | $(python3 -c "$SOURCE_DELTA_PY" "$s0" "$s1") |")
    say "$label: $reads reads, $sectors sectors, $writes writes"
}

# ---- SOURCE and the library ---------------------------------------------------------------

say "work dir $WORK; making SOURCE (ext4 on a loop device) and the library"
truncate -s "${IMAGE_MB}M" "$WORK/source.img"
# Inode tables and journal written now, so no lazy init runs during the measurements.
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$WORK/source.img"
LOOP=$(losetup --find --show "$WORK/source.img")
[ -r "/sys/block/${LOOP#/dev/}/stat" ] || die "no /sys/block/${LOOP#/dev/}/stat"
mount -t ext4 "$LOOP" "$SRC"

for ((s = 1; s <= SHOWS; s++)); do
    show=$(printf 'Show %02d' "$s")
    for ((n = 1; n <= SEASONS; n++)); do
        dir=$(printf '%s/%s/Season %02d' "$SRC" "$show" "$n")
        mkdir -p "$dir"
        files=()
        for ((e = 1; e <= EPISODES; e++)); do
            files+=("$(printf '%s/%s - S%02dE%02d.mkv' "$dir" "$show" "$n" "$e")")
        done
        truncate -s "$((300 + s))M" "${files[@]}" # sparse: sizes only
    done
done
FILM_DIR="Films/Film (2020)"
FILM="$FILM_DIR/Film (2020).mkv"
SRT="$FILM_DIR/Film (2020).en.srt"
MISSING="$FILM_DIR/Film (2020).de.srt"
EP1="Show 01/Season 01/Show 01 - S01E01.mkv"
EP2="Show 01/Season 01/Show 01 - S01E02.mkv"
mkdir -p "$SRC/$FILM_DIR"
printf '1\n00:00:01,000 --> 00:00:04,000\nA line.\n\n2\n00:00:05,000 --> 00:00:08,000\nAnother line.\n\n' \
    >"$SRC/$SRT"
if [ -n "$FFMPEG" ]; then
    # Uncompressed 320x180 video and PCM audio: about 64 MiB in 29.7 s, made in a second.
    "$FFMPEG" -nostdin -loglevel error -f lavfi -i testsrc=size=320x180:rate=25 \
        -f lavfi -i sine=frequency=440 -t 29.7 -c:v rawvideo -pix_fmt yuv420p \
        -c:a pcm_s16le -shortest -y "$SRC/$FILM"
    i=0
    for ep in "$EP1" "$EP2"; do
        i=$((i + 1))
        "$FFMPEG" -nostdin -loglevel error -f lavfi -i testsrc=size=640x360:rate=25 \
            -f lavfi -i "sine=frequency=$((300 + 100 * i))" -t 5 \
            -vf "noise=alls=40:allf=t:all_seed=$i" -c:v mpeg4 -b:v 5M -c:a aac -shortest \
            -y "$SRC/$ep"
    done
    PLAYER=ffmpeg
else
    say "ffmpeg not found: the film and the two episodes are random bytes, played with cat"
    head -c 64M /dev/urandom >"$SRC/$FILM"
    head -c 4M /dev/urandom >"$SRC/$EP1"
    head -c 4M /dev/urandom >"$SRC/$EP2"
    PLAYER="cat"
fi
sync
# A fresh mount of SOURCE: right after the writes, the journal still holds much of the
# new metadata, which a drop of the caches would not make cold.
umount "$SRC"
# no_prefetch_block_bitmaps: ext4 otherwise reads its block bitmaps in the background
# for a while after a mount (one read now and then, whatever the mount above it does),
# which would blur what the steps below cost.
mount -t ext4 -o no_prefetch_block_bitmaps "$LOOP" "$SRC"
# find lists SOURCE's root and lost+found too.
ENTRIES=$(find "$SRC" | wc -l)
FILM_BYTES=$(stat -c %s "$SRC/$FILM")
say "library: $ENTRIES entries; film $FILM_BYTES bytes; player: $PLAYER"

# ---- the steps ----------------------------------------------------------------------------

rescan() {
    local n
    T find "$MNT" -printf '%s %T@\n' >"$WORK/scan.out"
    n=$(wc -l <"$WORK/scan.out")
    [ "$n" -eq "$ENTRIES" ] || { echo "find listed $n entries, SOURCE has $ENTRIES" >&2; return 1; }
}

probe_and_list() {
    local err
    if err=$(T stat -- "$MNT/$MISSING" 2>&1); then
        echo "stat of the missing $MISSING succeeded" >&2
        return 1
    fi
    case $err in
    *"No such file or directory"*) ;;
    *) echo "stat of the missing name: $err" >&2; return 1 ;;
    esac
    T ls -l -- "$MNT/$FILM_DIR"
}

# Plays FILE (and SUBTITLES): ffmpeg decodes every stream, or cat reads every byte.
play() { # FILE [SUBTITLES]
    if [ "$PLAYER" = cat ]; then
        T cat -- "$@" >/dev/null
    elif [ $# -eq 2 ]; then
        T "$FFMPEG" -nostdin -loglevel error -i "$1" -i "$2" -map 0 -map 1 -c:s copy -f null -
    else
        T "$FFMPEG" -nostdin -loglevel error -i "$1" -f null -
    fi
}

say "mounting with meta_ttl=86400"
mount_cachefs
rescan || die "the first scan through the mount failed"
# A library's day repeats itself: the listing below was made once before too (ls -l asks
# for each file's ACL and security label, which the metadata cache then remembers).
T ls -l -- "$MNT/$FILM_DIR" >/dev/null || die "the first ls -l through the mount failed"
say "promoting the film, its subtitles and two episodes"
if ! timeout 600 "$BIN" promote --wait "$MNT/$FILM" "$MNT/$SRT" "$MNT/$EP1" "$MNT/$EP2" >/dev/null; then
    show_log
    die "cachefs promote --wait failed"
fi
for f in "$FILM" "$SRT" "$EP1" "$EP2"; do
    [ -f "$CACHE/data/$f" ] || die "promoted, but no copy $CACHE/data/$f"
done
sync

step "idle 3 s (a baseline: nothing asked of the mount)" sleep 3
step "rescan (find -printf '%s %T@')" rescan
step "missing-name probe + ls of the film's directory" probe_and_list
step "play the cached film" play "$MNT/$FILM"
step "play the cached film with its subtitles" play "$MNT/$FILM" "$MNT/$SRT"

say "restarting the mount (cachefs unmount, mount again)"
stop_daemon
is_mounted "$MNT" && die "$MNT is still mounted after cachefs unmount"
mount_cachefs
step "after a restart: play a cached episode" play "$MNT/$EP1"
step "after a restart: missing-name probe + ls of the film's directory" probe_and_list
step "idle 3 s again" sleep 3

# ---- the table ------------------------------------------------------------------------------

if [ -n "${CACHEFS:-}" ]; then
    REV="binary $CACHEFS_BIN"
else
    REV=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        REV="$REV+changes"
    fi
fi
# Read requests in the steps, and in the idle rows (what reads on its own).
total=0 idle=0
for r in "${ROWS[@]}"; do
    n=$(awk -F'|' '{ print $3 + 0 }' <<<"$r")
    if [[ $r == "| idle"* ]]; then idle=$((idle + n)); else total=$((total + n)); fi
done

echo
echo "$(date -u +%Y-%m-%d), Linux $(uname -r), cachefs $REV; SOURCE ext4 on $LOOP, $ENTRIES entries;" \
    "meta_ttl=86400; caches dropped before each step; player: $PLAYER"
echo
echo "| step | reads | sectors read | writes | SOURCE calls (status --json) |"
echo "| --- | --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
echo
# shellcheck disable=SC2016 # Python, not shell
echo "SOURCE counters the daemon reports: $(python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(", ".join(sorted(k for k in d if k.startswith("source_"))) or "none")' "$WORK/status.after")"
if [ "$total" -eq 0 ]; then
    echo "Every step left SOURCE's disk asleep (0 reads; the goal)."
else
    echo "SOURCE's disk was woken: $total read requests in the steps (the goal is 0 in every step)."
fi
if [ "$idle" -ne 0 ]; then
    echo "While idle, $idle read requests: ext4 itself or the daemon on its own (see the idle rows)."
fi

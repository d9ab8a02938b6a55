#!/usr/bin/env bash
# A library of a million files under a small descriptor limit: the scan must have no
# error and the same output as SOURCE, and the daemon's descriptors stay bounded.
#
#   scripts/scale.sh                                  (as root; ~10 minutes at 1,000,000)
#   SCALE_ENTRIES=50000 scripts/scale.sh              (a quick run)
#
# 1. SOURCE gets SCALE_ENTRIES episode files, "Show 0042/Season 03/Show 0042 - S03E17.mkv"
#    (10 seasons of 50 episodes per show, sparse files of 100-1,100 MB; scale-gen.py), and
#    one 32 MiB film of random bytes.
# 2. Native: `find . -printf '%p %s %T@\n'` in SOURCE, first with the page, dentry and
#    inode caches dropped, then warm, twice.
# 3. The daemon is started under `prlimit --nofile=SCALE_NOFILE:SCALE_NOFILE` (default
#    1024:1024), in the foreground, promote=manual; the film is promoted (--wait).
# 4. The same find through the mount, caches dropped, then warm, then warm again (the
#    first warm scan asks the daemon for each directory's attributes once: the kernel
#    marked its atime stale when it read it; later ones ask nothing). Each must print nothing
#    on stderr and the same lines as on SOURCE. /proc/PID/fd is counted every 50 ms during
#    the scans: its peak must not exceed the daemon's bound (its descriptor cache bound
#    from `status --json`, plus the 64 it reserves), nor its limit.
# 5. The film read through the mount must hash as on SOURCE and be a cache hit; 1,000
#    stats of missing `.srt` names spread over the library must all fail with ENOENT.
# 6. Prints a Markdown table: scan times and their ratio to native, the daemon's RSS
#    before and after (and per remembered inode), its peak descriptor count and bound.
#    Exits 1 if any check failed.
#
# Environment:
#   SCALE_ENTRIES  episode files (default 1000000)
#   SCALE_NOFILE   the daemon's soft and hard descriptor limit (default 1024)
#   SCALE_OPTS     extra -o options for the mount (e.g. inode_handles=off)
#   SCALE_DIR      where the work dir goes (default /var/tmp)
#   CACHEFS_BIN    the binary (default: cargo build --release, target/release/cachefs)
#   KEEP=1         keep the work dir after the run
#
# Everything it makes (the daemon, the mount, files) is removed on exit, failed or not.
# It drops the page cache of the whole machine (twice).
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C
cd "$(dirname "$0")/.."
repo=$PWD

N=${SCALE_ENTRIES:-1000000}
NOFILE=${SCALE_NOFILE:-1024}
OPTS=${SCALE_OPTS:-}
SCALE_DIR=${SCALE_DIR:-/var/tmp}

BENCH_NAME=scale
# shellcheck source=scripts/bench-lib.sh
. "$repo/scripts/bench-lib.sh"

if ! [[ $N =~ ^[0-9]+$ ]] || [ "$N" -lt 1 ]; then die "SCALE_ENTRIES must be a positive integer"; fi
if ! [[ $NOFILE =~ ^[0-9]+$ ]] || [ "$NOFILE" -lt 64 ]; then die "SCALE_NOFILE must be an integer >= 64"; fi
[ "$(id -u)" -eq 0 ] || die "must run as root (mounts, drop_caches)"
[ -c /dev/fuse ] || die "no /dev/fuse"
for tool in python3 prlimit findmnt find sha256sum; do
    command -v "$tool" >/dev/null || die "missing $tool"
done
need_inodes=$((N + N / 40 + 1000))
free_inodes=$(df -Pi "$SCALE_DIR" | awk 'NR == 2 { print $4 }')
[ "$free_inodes" -ge "$need_inodes" ] ||
    die "$SCALE_DIR has $free_inodes free inodes; this run needs about $need_inodes"

WORK=$(mktemp -d "$SCALE_DIR/cachefs-scale.XXXXXX")
chmod 755 "$WORK"
SRC=$WORK/source
CACHE=$WORK/cache
MNT=$WORK/mnt
mkdir "$SRC" "$MNT"
PID=
SAMPLER=
FAILED=0

cleanup() {
    set +e
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null && wait "$SAMPLER" 2>/dev/null
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID"
        for _ in $(seq 600); do
            kill -0 "$PID" 2>/dev/null || break
            sleep 0.05
        done
        kill -0 "$PID" 2>/dev/null && { umount -l "$MNT"; kill -KILL "$PID"; }
        wait "$PID" 2>/dev/null
    fi
    findmnt -rn -o TARGET | grep -qx "$MNT" && umount -l "$MNT"
    remove_work
}
trap_cleanup

check() { # WHAT OK(0/1)
    if [ "$2" -eq 0 ]; then
        say "FAILED: $1"
        FAILED=1
    fi
}

private_binary

# ---- the library --------------------------------------------------------------------------

say "building a library of $N files in $SRC"
t0=$EPOCHREALTIME
python3 "$repo/scripts/scale-gen.py" "$SRC" "$N" >"$WORK/gen.json"
mkdir -p "$SRC/Movies/Film (2020)"
FILM="Movies/Film (2020)/Film (2020).mkv"
head -c $((32 << 20)) /dev/urandom >"$SRC/$FILM"
sync
say "built in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s: $(cat "$WORK/gen.json")"

# Seconds taken by a find in DIR; its output goes to OUT, its stderr to OUT.err.
scan() { # DIR OUT
    local t0=$EPOCHREALTIME
    (cd "$1" && find . -printf '%p %s %T@\n' >"$2" 2>"$2.err") || true
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'
}

drop_caches
native_first=$(scan "$SRC" "$WORK/native.txt")
native_warm=$(scan "$SRC" "$WORK/native-warm.txt")
native_again=$(scan "$SRC" "$WORK/native-again.txt")
sort -o "$WORK/native.txt" "$WORK/native.txt"
entries=$(wc -l <"$WORK/native.txt")
say "native: first $native_first s, warm $native_warm s, again $native_again s, $entries entries"

# ---- the mount ------------------------------------------------------------------------------

mount_opts=promote=manual
[ -n "$OPTS" ] && mount_opts="$mount_opts,$OPTS"
prlimit --nofile="$NOFILE:$NOFILE" "$BIN" "$SRC" "$MNT" --cache "$CACHE" -f -o "$mount_opts" \
    2>"$WORK/daemon.log" &
PID=$!
for _ in $(seq 400); do
    findmnt -rn -o FSTYPE --mountpoint "$MNT" 2>/dev/null | grep -q fuse.cachefs && break
    kill -0 "$PID" 2>/dev/null || die "the daemon exited: $(tail -3 "$WORK/daemon.log")"
    sleep 0.025
done
findmnt -rn --mountpoint "$MNT" >/dev/null || die "no mount after 10 s"
limit=$(awk '/^Max open files/ { print $4 }' "/proc/$PID/limits")
"$BIN" promote --wait "$MNT/$FILM" >/dev/null
status_json() { "$BIN" status "$MNT" --json; }
# A key of status --json, or n/a (a binary from before the key existed, for comparisons).
jnum() { python3 -c "import json,sys; print(json.load(sys.stdin).get('$1', 'n/a'))"; }
bound=$(status_json | jnum fds_bound)
handles=$(status_json | jnum inode_handles)
rss_before=$(awk '/^VmRSS/ { print $2 }' "/proc/$PID/status")
fds_before=$(find "/proc/$PID/fd" -mindepth 1 | wc -l)
say "daemon $PID: limit $limit, descriptor cache bound $bound, by handle: $handles, $fds_before fds"

# Peak of the daemon's descriptor count, sampled every 50 ms into $WORK/fds.
(
    peak=0
    while kill -0 "$PID" 2>/dev/null; do
        n=$(find "/proc/$PID/fd" -mindepth 1 2>/dev/null | wc -l)
        if [ "$n" -gt "$peak" ]; then
            peak=$n
            echo "$peak" >"$WORK/fds"
        fi
        sleep 0.05
    done
) &
SAMPLER=$!

drop_caches
mount_first=$(scan "$MNT" "$WORK/mount.txt")
mount_warm=$(scan "$MNT" "$WORK/mount-warm.txt")
mount_again=$(scan "$MNT" "$WORK/mount-again.txt")
say "mount: first $mount_first s, warm $mount_warm s, again $mount_again s"
for f in mount mount-warm mount-again; do
    errs=$(wc -l <"$WORK/$f.txt.err")
    check "$f scan: $errs lines on stderr: $(head -3 "$WORK/$f.txt.err")" $((errs == 0))
    sort -o "$WORK/$f.txt" "$WORK/$f.txt"
    cmp -s "$WORK/native.txt" "$WORK/$f.txt"
    check "$f scan differs from SOURCE's: $(diff "$WORK/native.txt" "$WORK/$f.txt" | head -4)" $(($? == 0))
done
sleep 0.2
if kill "$SAMPLER" 2>/dev/null; then wait "$SAMPLER" 2>/dev/null || true; fi
SAMPLER=
peak=$(cat "$WORK/fds" 2>/dev/null || echo 0)
if [[ $bound =~ ^[0-9]+$ ]]; then
    check "peak of $peak descriptors exceeds the bound $bound + 64" $((peak <= bound + 64))
fi
check "peak of $peak descriptors exceeds the limit $limit" $((peak <= limit))

# ---- reads after the scan -----------------------------------------------------------------

hits_before=$(status_json | jnum hits)
want=$(sha256sum <"$SRC/$FILM")
got=$(sha256sum <"$MNT/$FILM" || echo "read failed")
check "the film read through the mount hashes differently ($got)" "$([ "$got" = "$want" ] && echo 1 || echo 0)"
hits_after=$(status_json | jnum hits)
check "the film was not a cache hit" $((hits_after == hits_before + 1))
probe=$(python3 - "$MNT" "$N" <<'EOF'
import errno, os, sys
mnt, n = sys.argv[1], int(sys.argv[2])
shows = max(1, (n + 499) // 500)
bad = []
for i in range(1000):
    show = 1 + (i * 7919) % shows
    p = f"{mnt}/Show {show:04d}/Season 01/Show {show:04d} - S01E{1 + i % 50:02d}.srt"
    try:
        os.stat(p)
        bad.append(f"{p}: exists")
    except OSError as e:
        if e.errno != errno.ENOENT:
            bad.append(f"{p}: {os.strerror(e.errno)}")
print(len(bad), bad[:3])
EOF
)
check "missing-name probes: $probe" "$([ "${probe%% *}" = 0 ] && echo 1 || echo 0)"

st=$(status_json)
inodes=$(jnum inodes <<<"$st")
reopened=$(jnum fds_reopened <<<"$st")
shed=$(jnum fds_shed <<<"$st")
rss_after=$(awk '/^VmRSS/ { print $2 }' "/proc/$PID/status")
[[ $inodes =~ ^[0-9]+$ ]] || inodes=$entries
per_inode=$(awk -v a="$rss_before" -v b="$rss_after" -v n="$inodes" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
# The failover journal (a memfd its watchdog holds: shared memory, not the daemon's RSS).
journal_bytes=0
for w in $(cat "/proc/$PID/task/"*/children 2>/dev/null); do
    [ "$(cat "/proc/$w/comm" 2>/dev/null)" = cachefs-watch ] || continue
    for fd in "/proc/$w/fd/"*; do
        case $(readlink "$fd") in *cachefs-failover*) journal_bytes=$(stat -L -c %s "$fd") ;; esac
    done
done
grep -iE "error|descriptor" "$WORK/daemon.log" | head -5 >&2 || true

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
cat <<EOF

### scripts/scale.sh: $entries entries, daemon under prlimit --nofile=$NOFILE:$NOFILE${OPTS:+, -o $OPTS}

| measure | native | cachefs | ratio |
| --- | --- | --- | --- |
| first scan (caches dropped), s | $native_first | $mount_first | $(ratio "$mount_first" "$native_first") |
| warm scan, s | $native_warm | $mount_warm | $(ratio "$mount_warm" "$native_warm") |
| warm scan again, s | $native_again | $mount_again | $(ratio "$mount_again" "$native_again") |

- scan errors: $(cat "$WORK"/mount*.txt.err | wc -l); output identical to SOURCE's: $( [ "$FAILED" = 0 ] && echo yes || echo see above)
- daemon RSS: $((rss_before / 1024)) MiB before the scan, $((rss_after / 1024)) MiB after; $inodes inodes remembered, $per_inode B each; failover journal $((journal_bytes >> 20)) MiB (shared memory its watchdog holds)
- descriptors: peak $peak (bound $bound cached + 64 reserved, limit $limit); $reopened reopened, cache shed $shed times; inodes by file handle: $handles
- cached film through the mount: $( [ "$got" = "$want" ] && echo "same sha256, a cache hit" || echo FAILED); 1,000 missing-name probes: ${probe}
EOF
exit "$FAILED"

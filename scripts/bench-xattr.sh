#!/usr/bin/env bash
# `ls -lR` through cachefs over SOURCEs with and without extended attributes, against the
# same SOURCE read directly ("native"), in one run, printed as one Markdown table.
#
#   scripts/bench-xattr.sh                                (as root; under a minute)
#   CACHEFS_BASE=/path/to/older/cachefs scripts/bench-xattr.sh   (adds its rows)
#
# `ls -l` asks for two extended attributes of every file (`security.selinux` and
# `system.posix_acl_access`). SOURCE kinds, each a directory of BENCH_FILES (1,500) files:
#   ext4     an ext4 image on a loop device: it has extended attributes, and cachefs
#            passes them through (the kernel keeps ACLs, FUSE_POSIX_ACL; the label is a
#            request per file)
#   ramfs    a ramfs: no extended attributes in any namespace, as on FAT, exFAT or
#            NFSv3 without ACLs (ramfs because every kernel has it)
#   rclone   an `rclone mount` of a local directory (Debian's rclone): a FUSE SOURCE
#            that answers ENOSYS for extended attributes, so its kernel answers
#            EOPNOTSUPP for every one
# rclone is skipped with a line saying so when it is not installed. The ext4 image lives
# in /dev/shm. For each kind: native (SOURCE itself), cachefs (CACHEFS_BIN, default: the
# release build) and, if set, CACHEFS_BASE. Each is timed BENCH_REPS (11) times after one
# untimed listing (so every run is a repeat, as a media server's rescans are); the table
# shows the median, cachefs's as a ratio to native, and the extended attribute requests
# that reached SOURCE through the daemon during one listing (`source_ops.xattr`).
#
# Everything it makes (mounts, loop devices, files) is removed on exit, failed or not.
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C
cd "$(dirname "$0")/.."
repo=$PWD

FILES=${BENCH_FILES:-1500}
REPS=${BENCH_REPS:-11}
BENCH_NAME=bench-xattr
# shellcheck source=scripts/bench-lib.sh
. "$repo/scripts/bench-lib.sh"

[[ $FILES =~ ^[0-9]+$ ]] && [ "$FILES" -ge 1 ] || die "BENCH_FILES must be a positive integer"
[[ $REPS =~ ^[0-9]+$ ]] && [ "$REPS" -ge 1 ] || die "BENCH_REPS must be a positive integer"
require_loop_bench mkfs.ext4 losetup findmnt python3
if [ -n "${CACHEFS_BASE:-}" ]; then
    [ -x "$CACHEFS_BASE" ] || die "CACHEFS_BASE=$CACHEFS_BASE is not an executable"
fi

WORK=$(mktemp -d /var/tmp/cachefs-bench-xattr.XXXXXX)
LOOPS=()
PIDS=()
cleanup() {
    local p l
    release_work_mounts
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || say "cannot detach $l"; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -f /dev/shm/cachefs-bench-xattr.*."$$"
    remove_work
}
trap_cleanup
private_binary
if [ -n "${CACHEFS_BASE:-}" ]; then
    cp "$CACHEFS_BASE" "$WORK/cachefs-base"
fi

# Fills DIR with FILES files of a few bytes, named as episodes.
populate() {
    python3 - "$1" "$FILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
for i in range(n):
    with open(os.path.join(d, f"Show - S01E{i:04d}.mkv"), "w") as f:
        f.write("x")
PY
}

# A loop-mounted image of filesystem KIND at WORK/src-KIND, populated.
image() { # KIND MKFS...
    local kind=$1 img
    shift
    img=/dev/shm/cachefs-bench-xattr.$kind.$$
    truncate -s 64M "$img"
    "$@" "$img" >/dev/null 2>&1 || die "$* failed"
    local loop
    loop=$(losetup -f --show "$img")
    LOOPS+=("$loop")
    mkdir -p "$WORK/src-$kind"
    mount "$loop" "$WORK/src-$kind"
    populate "$WORK/src-$kind/season"
}

# Median seconds of REPS listings of DIR (after one untimed).
time_ls() {
    local dir=$1 t=()
    ls -lR "$dir" >/dev/null 2>&1 || true
    for _ in $(seq "$REPS"); do
        local a b
        a=$(date +%s%N)
        ls -lR "$dir" >/dev/null 2>&1 || true
        b=$(date +%s%N)
        t+=("$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.4f", (b - a) / 1e9 }')")
    done
    median "${t[@]}"
}

xattr_ops() {
    "$BIN" status "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("source_ops", {}).get("xattr", 0))'
}

# cachefs binary BIN over SOURCE at MNT: prints "seconds requests".
through() { # BIN SOURCE MNT
    local bin=$1 src=$2 mnt=$3
    mkdir -p "$mnt" "$mnt.cache"
    "$bin" "$src" "$mnt" --cache "$mnt.cache" -o promote=manual >"$mnt.log" 2>&1 ||
        die "$bin failed to mount $src: $(tail -1 "$mnt.log")"
    local s before after
    s=$(time_ls "$mnt/season")
    before=$(xattr_ops "$mnt")
    ls -lR "$mnt/season" >/dev/null 2>&1 || true
    after=$(xattr_ops "$mnt")
    umount "$mnt"
    echo "$s $((after - before))"
}

KINDS=()
image ext4 mkfs.ext4 -q -F
KINDS+=(ext4)
mkdir -p "$WORK/src-ramfs"
mount -t ramfs ramfs "$WORK/src-ramfs"
populate "$WORK/src-ramfs/season"
KINDS+=(ramfs)
if command -v rclone >/dev/null && command -v fusermount3 >/dev/null; then
    populate "$WORK/rclone-dir/season"
    mkdir -p "$WORK/src-rclone"
    : >"$WORK/rclone.conf"
    RCLONE_CONFIG="$WORK/rclone.conf" rclone mount "$WORK/rclone-dir" "$WORK/src-rclone" \
        --dir-cache-time 1h --attr-timeout 1h >"$WORK/rclone.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        findmnt -rn "$WORK/src-rclone" >/dev/null && break
        sleep 0.1
    done
    findmnt -rn "$WORK/src-rclone" >/dev/null || die "rclone mount did not come up: $(tail -1 "$WORK/rclone.log")"
    KINDS+=(rclone)
else
    say "rclone: not installed (Debian: rclone, and fuse3), skipped"
fi

rows=()
for kind in "${KINDS[@]}"; do
    src=$WORK/src-$kind
    say "$kind: native"
    native=$(time_ls "$src/season")
    row="| $kind | $native s"
    say "$kind: cachefs"
    read -r s n < <(through "$BIN" "$src" "$WORK/mnt-$kind")
    row+=" | $(awk -v a="$s" -v b="$native" 'BEGIN { printf "%.2fx", a / b }') ($n)"
    if [ -n "${CACHEFS_BASE:-}" ]; then
        say "$kind: cachefs base"
        read -r s n < <(through "$WORK/cachefs-base" "$src" "$WORK/mnt-base-$kind")
        row+=" | $(awk -v a="$s" -v b="$native" 'BEGIN { printf "%.2fx", a / b }') ($n)"
    fi
    rows+=("$row |")
done

head="| SOURCE | native ls -lR | cachefs (xattr requests to SOURCE)"
sep="| --- | --- | ---"
if [ -n "${CACHEFS_BASE:-}" ]; then
    head+=" | cachefs base (xattr requests to SOURCE)"
    sep+=" | ---"
fi
echo "$head |"
echo "$sep |"
printf '%s\n' "${rows[@]}"
echo
echo "$FILES files in one directory, medians of $REPS repeated listings; $(nproc) cores, Linux $(uname -r)."

# Helpers shared by scripts/bench.sh, bench-index.sh, scale.sh and stress.sh (sourced, not
# run). The sourcing script sets BENCH_NAME (its log prefix) first; private_binary needs
# `repo` and `WORK`, and sets BIN for the sourcing script.
# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # BIN is the sourcing script's; repo and WORK are set there

say() { echo "$BENCH_NAME: $*" >&2; }

die() {
    say "$*"
    exit 1
}

median() {
    printf '%s\n' "$@" | sort -g |
        awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# Sets BIN to a private copy of the release binary (built unless CACHEFS_BIN names one):
# a concurrent `cargo build` must not swap the binary mid-run.
private_binary() {
    if [ -z "${CACHEFS_BIN:-}" ]; then
        say "building target/release/cachefs"
        cargo build --quiet --release
        CACHEFS_BIN=$repo/target/release/cachefs
    fi
    cp "$CACHEFS_BIN" "$WORK/cachefs"
    BIN=$WORK/cachefs
}

# What a benchmark with SOURCE on a loop device needs: root, /dev/fuse, drop_caches, loop
# devices, and the commands named; dies naming the first thing missing.
require_loop_bench() { # COMMAND...
    [ "$(id -u)" -eq 0 ] || die "must run as root (loop devices, mounts, drop_caches)"
    [ -c /dev/fuse ] || die "no /dev/fuse"
    [ -w /proc/sys/vm/drop_caches ] || die "cannot write /proc/sys/vm/drop_caches"
    [ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true
    [ -e /dev/loop-control ] || die "no loop devices (/dev/loop-control)"
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "missing $tool"
    done
}

# Unmounts every mount left below the work dir, innermost first (ours by construction),
# and detaches the loop device $LOOP if the script made one (for a cleanup function).
release_work_mounts() {
    local m
    for m in $(findmnt -rn -o TARGET | grep "^$WORK/" | sort -r); do
        # A FUSE daemon stopped first may have unmounted itself meanwhile.
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    if [ -n "${LOOP:-}" ]; then
        losetup -d "$LOOP" 2>/dev/null || say "cannot detach $LOOP"
    fi
}

# Removes the work dir, or keeps it with KEEP=1 (for a cleanup function).
remove_work() {
    if [ "${KEEP:-}" = 1 ]; then
        say "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}

# Runs the sourcing script's `cleanup` on exit, also after SIGINT or SIGTERM.
trap_cleanup() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

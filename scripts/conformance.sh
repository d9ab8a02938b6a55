#!/usr/bin/env bash
# POSIX conformance: run pjdfstest (the Rust rewrite, from crates.io) on a plain
# directory and on a cachefs mount of a directory on the same file system, and diff the
# failures. Exits 1 when the mount fails a test the plain directory passes.
#
#   scripts/conformance.sh [PJDFSTEST_PATTERN...]     (as root)
#
# Environment: CACHEFS_BIN (default: build target/release/cachefs), PJDFSTEST (default:
# install pjdfstest 0.2.2 into target/tools), KEEP=1 keeps the work dir. Creates a system
# user `pjdtest` if missing (pjdfstest needs two unprivileged users; nobody is the other).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

if [ "$(id -u)" -ne 0 ]; then
    echo "conformance.sh must run as root (pjdfstest switches users, cachefs mounts)" >&2
    exit 1
fi
bash scripts/prereqs.sh

pjd_version=0.2.2
if [ -z "${PJDFSTEST:-}" ]; then
    PJDFSTEST=$repo/target/tools/bin/pjdfstest
    if [ ! -x "$PJDFSTEST" ] || ! "$PJDFSTEST" --version | grep -q "$pjd_version"; then
        echo "installing pjdfstest $pjd_version from crates.io into target/tools" >&2
        CARGO_TARGET_DIR=$repo/target/tools-build \
            cargo install --quiet --locked pjdfstest --version "$pjd_version" \
            --root "$repo/target/tools"
    fi
fi
if [ -z "${CACHEFS_BIN:-}" ]; then
    cargo build --quiet --release --locked
    CACHEFS_BIN=$repo/target/release/cachefs
fi

# pjdfstest needs two unprivileged users, each with a group of its own name or given
# explicitly. nobody/nogroup is on Debian; make a second one if missing.
if ! id pjdtest >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin pjdtest
fi

work=$(mktemp -d /tmp/cachefs-conformance.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/source" "$work/mnt" "$work/plain"
chmod 755 "$work/source" "$work/mnt" "$work/plain"
pid=
shm=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            umount -l "$work/mnt" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
    if findmnt -n "$work/mnt" >/dev/null 2>&1; then
        umount -l "$work/mnt" || true
    fi
    if [ -n "${shm:-}" ]; then
        rm -rf "$shm"
    fi
    if [ "${KEEP:-}" = 1 ]; then
        echo "work dir kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

cat >"$work/pjdfstest.toml" <<'TOML'
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[settings]
# The pause between two timestamp checks; it must exceed the source's timestamp
# granularity (nanoseconds on ext4 and tmpfs).
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["pjdtest", "pjdtest"]]
TOML

"$CACHEFS_BIN" "$work/source" "$work/mnt" --cache "$work/cache" --allow-other -f \
    >"$work/cachefs.log" 2>&1 &
pid=$!
for _ in $(seq 200); do
    if [ "$(findmnt -n -o FSTYPE "$work/mnt" 2>/dev/null || true)" = fuse.cachefs ]; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "cachefs exited before mounting:" >&2
        cat "$work/cachefs.log" >&2
        exit 1
    fi
    sleep 0.05
done
if [ "$(findmnt -n -o FSTYPE "$work/mnt" 2>/dev/null || true)" != fuse.cachefs ]; then
    echo "no fuse.cachefs mount at $work/mnt after 10 s" >&2
    cat "$work/cachefs.log" >&2
    exit 1
fi

run() { # DIR OUT
    (cd "$1" && NO_COLOR=1 "$PJDFSTEST" -c "$work/pjdfstest.toml" -p "$1" "${@:3}" >"$2" 2>&1) || true
}
# A second file system for the EXDEV cases: a directory on /dev/shm (tmpfs), if it is one.
secondary=()
if [ -d /dev/shm ] && [ "$(stat -f -c %T /dev/shm)" != "$(stat -f -c %T "$work")" ]; then
    shm=$(mktemp -d /dev/shm/cachefs-conformance.XXXXXX)
    chmod 755 "$shm"
    secondary=(-s "$shm")
fi
run "$work/plain" "$work/plain.out" "${secondary[@]}" "$@"
run "$work/mnt" "$work/mount.out" "${secondary[@]}" "$@"

failed() { awk 'NF >= 2 && ($NF == "FAILED" || $(NF-1) " " $NF == "PASSED UNEXPECTEDLY") {print $1}' "$1" | sort -u; }
skipped() { awk 'NF >= 2 && $NF == "skipped" {print $1}' "$1" | sort -u; }
failed "$work/plain.out" >"$work/plain.failed"
failed "$work/mount.out" >"$work/mount.failed"
skipped "$work/plain.out" >"$work/plain.skipped"
skipped "$work/mount.out" >"$work/mount.skipped"

echo "plain directory: $(grep '^Summary' "$work/plain.out" || echo 'no summary')"
echo "cachefs mount:   $(grep '^Summary' "$work/mount.out" || echo 'no summary')"
regressions=$(comm -13 "$work/plain.failed" "$work/mount.failed")
extra_skips=$(comm -13 "$work/plain.skipped" "$work/mount.skipped")
if [ -n "$extra_skips" ]; then
    echo "skipped on the mount only:"
    while read -r t; do echo "  $t"; done <<<"$extra_skips"
fi
if [ -n "$regressions" ]; then
    echo "FAILED on the mount, passed on a plain directory:"
    while read -r t; do
        echo "  $t"
        # The failure message pjdfstest printed under the test's line.
        awk -v t="$t" '$1 == t {p = 1; next} p && /^\t/ {print "      " $0; next} {p = 0}' \
            "$work/mount.out" | head -3
    done <<<"$regressions"
    exit 1
fi
echo "conformance: the mount fails nothing that a plain directory passes"

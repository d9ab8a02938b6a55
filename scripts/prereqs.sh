#!/usr/bin/env bash
# Make this machine able to run cachefs and its tests: install fuse3, attr, ffmpeg and the
# other tools the tests use if missing (Debian/Ubuntu, as root), and check that FUSE is
# usable. Under CI=true any missing prerequisite is fatal; elsewhere it is a warning and
# the mount tests skip themselves.
set -euo pipefail

ci=${CI:-}
fail() {
    # Loud under CI: never let a missing FUSE turn into a green run that tested nothing.
    echo "FUSE unavailable: $*" >&2
    if [ "$ci" = true ]; then
        exit 1
    fi
    echo "warning: mount tests will be skipped (set CI=true to make this fatal)" >&2
}

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v setfattr >/dev/null 2>&1 || need+=(attr)
# The ACL tests (parity, users, acl): setfacl and getfacl, both in the acl package.
command -v setfacl >/dev/null 2>&1 || need+=(acl)
command -v findmnt >/dev/null 2>&1 || need+=(util-linux)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v mount >/dev/null 2>&1 || need+=(mount)
command -v chattr >/dev/null 2>&1 || need+=(e2fsprogs)
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
# The fault tests: ext2/ext4 images (debugfs finds a file's blocks) on loop devices.
command -v mkfs.ext2 >/dev/null 2>&1 || need+=(e2fsprogs)
command -v debugfs >/dev/null 2>&1 || need+=(e2fsprogs)
command -v losetup >/dev/null 2>&1 || need+=(mount)
command -v dd >/dev/null 2>&1 || need+=(coreutils)
command -v find >/dev/null 2>&1 || need+=(findutils)
# The media tests: episodes made by the real ffmpeg, probed by ffprobe and played.
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
# The container test: the README's recipe run by podman with runc, on base images made by
# debootstrap (scripts/container-bases.sh).
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages ${need[*]}: run as root or install them" >&2
        exit 1
    fi
    echo "installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ "$(id -u)" -ne 0 ]; then
    if [ "$ci" = true ]; then
        echo "the tests must run as root under CI (second-user and mount tests need it)" >&2
        exit 1
    fi
    echo "warning: not root: mount and second-user tests will be skipped" >&2
fi

# The tests loop-mount small filesystem images (a source without entry types).
if [ ! -e /dev/loop-control ]; then
    modprobe loop >/dev/null 2>&1 || true
fi
if [ ! -e /dev/loop-control ]; then
    echo "no loop devices (/dev/loop-control; modprobe loop failed): the untyped-source test will fail" >&2
    [ "$ci" = true ] && exit 1
fi

# faults::source_very_slow throttles a loop device through the cgroup v1 blkio hierarchy.
if [ ! -e /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device ]; then
    echo "no blkio throttle at /sys/fs/cgroup/blkio: faults::source_very_slow will skip (fail under CI=true)" >&2
fi

if [ ! -e /dev/fuse ]; then
    modprobe fuse >/dev/null 2>&1 || true
fi
if [ ! -e /dev/fuse ]; then
    fail "/dev/fuse does not exist (modprobe fuse failed or is not possible here)"
elif [ ! -c /dev/fuse ]; then
    fail "/dev/fuse is not a character device"
elif ! grep -qw fuse /proc/filesystems; then
    modprobe fuse >/dev/null 2>&1 || true
    grep -qw fuse /proc/filesystems || fail "the kernel does not list fuse in /proc/filesystems"
elif [ "$(id -u)" -eq 0 ] && ! (: <>/dev/fuse) 2>/dev/null; then
    fail "/dev/fuse cannot be opened"
fi

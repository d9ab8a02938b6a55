#!/usr/bin/env bash
# Supplies the base images scripts/Dockerfile names, built locally, for a machine that
# cannot reach an image registry (this project's CI): `podman build` then runs the real
# Dockerfile.
#   debian:bookworm-slim  a minimal Debian bookworm made by debootstrap (Debian's packages
#                         are reachable where registries are not)
#   rust:1-bookworm       the same with gcc and this machine's Rust toolchain (rustc
#                         --print sysroot) on PATH, and this machine's CA bundle, so that
#                         cargo reaches crates.io through whatever proxy the machine trusts
# Both are tagged under docker.io/library/, the names the Dockerfile's short names mean.
#
# Usage: scripts/container-bases.sh WORKDIR   (as root; podman, debootstrap and tar needed)
# Images already present are kept. podman's own configuration (CONTAINERS_CONF,
# CONTAINERS_STORAGE_CONF) decides where they are stored.
set -euo pipefail
work=${1:?usage: container-bases.sh WORKDIR}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
slim=docker.io/library/debian:bookworm-slim
rust=docker.io/library/rust:1-bookworm

if podman image exists "$slim" && podman image exists "$rust"; then
    echo "base images present: $slim, $rust"
    exit 0
fi
for c in podman debootstrap tar rustc; do
    command -v "$c" >/dev/null || { echo "container-bases: $c is missing: install it" >&2; exit 1; }
done
mkdir -p "$work"
rootfs="$work/rootfs"
if [ ! -x "$rootfs/usr/bin/gcc" ]; then
    rm -rf "$rootfs"
    echo "debootstrap bookworm into $rootfs"
    debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log" >&2; exit 1; }
fi
# The machine's trust store: a TLS-intercepting proxy's CA included.
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"

echo "import $slim"
tar -C "$rootfs" -cf - . | podman import --change 'CMD ["bash"]' - "$slim" >/dev/null

# The toolchain without its documentation, as rust:1-bookworm has it (under another path).
sysroot=$(rustc --print sysroot)
stage="$work/toolchain"
rm -rf "$stage"
mkdir -p "$stage/usr/local/rust"
for d in bin lib libexec etc; do
    [ -e "$sysroot/$d" ] && cp -a "$sysroot/$d" "$stage/usr/local/rust/"
done
echo "import $rust (toolchain from $sysroot)"
tar -cf - -C "$rootfs" . -C "$stage" ./usr/local/rust |
    podman import \
        --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$rust" >/dev/null
rm -rf "$stage"
echo "base images ready: $slim, $rust"

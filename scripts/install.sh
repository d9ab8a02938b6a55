#!/usr/bin/env bash
# Build cachefs and install it to /usr/local/bin (where mount.fuse3, which runs helpers
# with no PATH set, finds it) and its manual page to /usr/local/share/man/man8/cachefs.8
# (`man cachefs`). Needs root and cargo (from rustup: https://rustup.rs; this script does
# not install a Rust toolchain). CACHEFS_BIN=PATH installs that binary instead of building
# one (the tests install their own build this way).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: installs packages and writes /usr/local/bin" >&2
    exit 1
fi
bin=${CACHEFS_BIN:-}
if [ -z "$bin" ]; then
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found: install a Rust toolchain with rustup first (https://rustup.rs)" >&2
        exit 1
    fi
fi
if ! command -v fusermount3 >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq fuse3 >/dev/null
fi
if [ -z "$bin" ]; then
    cargo build --release --locked
    bin=target/release/cachefs
fi
install -m755 "$bin" /usr/local/bin/cachefs
echo "installed /usr/local/bin/cachefs" >&2

# The page comes from the installed binary's own tables, so it matches its options.
man_dir=/usr/local/share/man/man8
install -d -m755 "$man_dir"
/usr/local/bin/cachefs man >"$man_dir/cachefs.8.tmp"
chmod 644 "$man_dir/cachefs.8.tmp"
mv -f "$man_dir/cachefs.8.tmp" "$man_dir/cachefs.8"
# man finds the page without its index; mandb adds it for whatis and apropos (updating
# the index: only what changed is read).
if command -v mandb >/dev/null 2>&1; then
    mandb -q >/dev/null 2>&1 || true
fi
echo "installed $man_dir/cachefs.8 (man cachefs)" >&2

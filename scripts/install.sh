#!/usr/bin/env bash
# Build cachefs and install it to /usr/local/bin (where mount.fuse3, which runs helpers
# with no PATH set, finds it). Needs root and cargo (from rustup: https://rustup.rs; this
# script does not install a Rust toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: installs packages and writes /usr/local/bin" >&2
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install a Rust toolchain with rustup first (https://rustup.rs)" >&2
    exit 1
fi
if ! command -v fusermount3 >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq fuse3 >/dev/null
fi
cargo build --release --locked
install -m755 target/release/cachefs /usr/local/bin/cachefs
echo "installed /usr/local/bin/cachefs" >&2

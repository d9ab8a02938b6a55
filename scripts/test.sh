#!/usr/bin/env bash
# The test command: prerequisites (fuse3, attr, ffmpeg, a usable /dev/fuse), then every test.
# Run as root: the mount and second-user tests need it (under CI=true they fail without it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
cargo test --all-targets "$@"

#!/bin/sh
# scripts/soak.sh SECONDS: the soak run (not CI). Readers, writers and an evictor churn a
# tree of 12 files through a mount with small max_size (4M) and promote_after=64K, so
# promotions and evictions never stop; every read is checked against the model
# (tests/model). A thin wrapper around the ignored test `faults::soak` in release mode:
# its mount and daemon are removed by the test's own teardown, and an interrupted run is
# stopped through its process group. Prints "N operations, M errors"; exits non-zero if
# M > 0 or the run failed. SOAK_SEED=N picks another seed.
set -u
secs=${1:?usage: scripts/soak.sh SECONDS}
cd "$(dirname "$0")/.." || exit 1
log=$(mktemp /tmp/cachefs-soak.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null
    rm -f "$log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cargo build --release --tests --quiet || exit 1
SOAK_SECS=$secs setsid cargo test --release --quiet --test integration -- \
    --ignored --exact faults::soak --nocapture >"$log" 2>&1 &
pid=$!
wait "$pid"
rc=$?
pid=
line=$(grep -E '^[0-9]+ operations, [0-9]+ errors$' "$log" | tail -1)
if [ -z "$line" ] || [ "$rc" -ne 0 ]; then
    tail -50 "$log" >&2
    [ -n "$line" ] && echo "$line"
    exit 1
fi
grep "^soak: " "$log" >&2
echo "$line"

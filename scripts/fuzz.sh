#!/usr/bin/env bash
# The long run of tests/fuzz.rs: each target (options, mountinfo, proto, codec, index,
# meta) for MINUTES (default 10), all targets at once, in rounds of PROPTEST_CASES cases
# per property (default 20000), each round with a new random seed. A failing round stops
# its target and its log is kept; the counts of cases run are printed per target.
#   scripts/fuzz.sh [MINUTES] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(options mountinfo proto codec index meta)
cases="${PROPTEST_CASES:-20000}"

cargo test --release --test fuzz --no-run 2>&1 | tail -1
bin=$(cargo test --release --test fuzz --no-run 2>&1 | sed -n 's/.*Executable tests\/fuzz\.rs (\(.*\))$/\1/p')
[ -x "$bin" ] || { echo "no fuzz test binary" >&2; exit 1; }
logs=$(mktemp -d)
echo "logs in $logs"

run_target() {
    local t=$1 end=$(( $(date +%s) + minutes * 60 )) start rounds=0 props
    start=$(date +%s)
    props=$("$bin" --list "fuzz_${t}_" 2>/dev/null | grep -c ': test$' || true)
    while [ "$(date +%s)" -lt "$end" ]; do
        if ! PROPTEST_CASES="$cases" PROPTEST_MAX_SHRINK_TIME=60000 RUST_BACKTRACE=0 \
            "$bin" -q "fuzz_${t}_" >"$logs/$t.round" 2>&1; then
            cp "$logs/$t.round" "$logs/$t.failed"
            echo "fuzz_$t: FAILED in round $((rounds + 1)); see $logs/$t.failed"
            return 1
        fi
        rounds=$((rounds + 1))
    done
    echo "fuzz_$t: $props properties x $cases cases x $rounds rounds = $((props * cases * rounds)) cases in $(( $(date +%s) - start )) s, no failure"
}

pids=()
for t in "${targets[@]}"; do
    run_target "$t" &
    pids+=($!)
done
status=0
for p in "${pids[@]}"; do
    wait "$p" || status=1
done
exit $status

#!/usr/bin/env bash
# Live restarts under load: RESTARTS (default 20) `cachefs restart` into another copy of
# the binary, one every GAP seconds (default 0.8), while four clients run; or, with MODE
# `kill`, as many SIGKILLs of the serving daemon, each answered by a failover (its
# watchdog starts a successor that takes the mount over). The clients:
#   - a reader the daemon serves (a 200 MiB film whose reads count toward promotion,
#     bigger than max_size=150M, so no copy of it is ever made) and
#   - a passthrough reader (a 100 MiB film, promoted first), each reading its film whole
#     in 1 MiB reads and comparing its sha256;
#   - `find` over a 1,530-entry library in a loop, comparing the count;
#   - a writer appending a numbered line with fsync every 5 ms, comparing the file.
# Prints each client's runs, errors and worst stall (one read, one find, one append), the
# restarts' times end to end (for a kill: until `cachefs status` answers from the
# successor), and whether the mount left mountinfo. As root.
# Usage: scripts/restart-soak.sh [RESTARTS] [GAP] [restart|kill]
set -u
cd "$(dirname "$0")/.."
restarts=${1:-20}
gap=${2:-0.8}
mode=${3:-restart}
case $mode in restart | kill) ;; *) echo "restart-soak: MODE is restart or kill" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "restart-soak: run as root" >&2; exit 1; }
cargo build --release --quiet || exit 1
work=$(mktemp -d /var/tmp/cachefs-restart-soak.XXXXXX)
mnt=$work/mnt
cleanup() {
    if findmnt -n "$mnt" >/dev/null 2>&1; then
        "$work/cachefs-a" unmount "$mnt" >/dev/null 2>&1 || umount -l "$mnt"
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/src/lib" "$work/cache" "$mnt"
head -c 200M /dev/urandom >"$work/src/served.mkv"
head -c 100M /dev/urandom >"$work/src/cached.mkv"
for d in $(seq 1 30); do
    mkdir "$work/src/lib/d$d"
    for f in $(seq 1 50); do echo x >"$work/src/lib/d$d/e$f.mkv"; done
done
cp target/release/cachefs "$work/cachefs-a"
cp target/release/cachefs "$work/cachefs-b"
"$work/cachefs-a" "$work/src" "$mnt" --cache "$work/cache" -o max_size=150M,log="$work/daemon.log" ||
    exit 1
"$work/cachefs-a" promote --wait "$mnt/cached.mkv" >/dev/null || exit 1
want=$(sha256sum "$work/src/served.mkv" | cut -d' ' -f1)
want_cached=$(sha256sum "$work/src/cached.mkv" | cut -d' ' -f1)

# The mount must never leave mountinfo: watched every 10 ms.
(
    while [ -e "$work/watching" ]; do
        findmnt -n "$mnt" >/dev/null || echo gone >>"$work/left"
        sleep 0.01
    done
) &
touch "$work/watching"

# The clients run until this file goes, a second after the last restart.
touch "$work/loading"
python3 - "$mnt" "$work/loading" "$want" "$want_cached" >"$work/load.out" <<'EOF' &
import os, sys, time, threading, hashlib, subprocess
mnt, loading, want, want_cached = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
res = {}
def running():
    return os.path.exists(loading)
def reader(name, path, want):
    errs, worst, runs = 0, 0.0, 0
    while running():
        try:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while True:
                    t = time.time(); b = f.read(1 << 20); worst = max(worst, time.time() - t)
                    if not b: break
                    h.update(b)
            errs += h.hexdigest() != want
            runs += 1
        except OSError as e:
            errs += 1; print(name, e, file=sys.stderr); time.sleep(0.1)
    res[name] = (runs, errs, worst)
def finder():
    errs, worst, runs = 0, 0.0, 0
    while running():
        t = time.time(); p = subprocess.run(["find", mnt + "/lib"], capture_output=True)
        worst = max(worst, time.time() - t)
        errs += p.returncode != 0 or p.stdout.count(b"\n") != 1531
        runs += 1
    res["find"] = (runs, errs, worst)
def writer():
    errs, worst, n, path = 0, 0.0, 0, mnt + "/append.log"
    with open(path, "ab") as f:
        while running():
            t = time.time()
            try:
                f.write(b"%08d\n" % n); f.flush(); os.fsync(f.fileno()); n += 1
            except OSError as e:
                errs += 1; print("writer", e, file=sys.stderr); time.sleep(0.1)
            worst = max(worst, time.time() - t); time.sleep(0.005)
    errs += open(path, "rb").read() != b"".join(b"%08d\n" % i for i in range(n))
    res["writer (append + fsync)"] = (n, errs, worst)
ts = [threading.Thread(target=reader, args=("daemon-served reader", mnt + "/served.mkv", want)),
      threading.Thread(target=reader, args=("passthrough reader", mnt + "/cached.mkv", want_cached)),
      threading.Thread(target=finder), threading.Thread(target=writer)]
for t in ts: t.start()
for t in ts: t.join()
print("| client | runs | errors | worst stall |")
print("| --- | --- | --- | --- |")
for k, (runs, errs, worst) in res.items():
    print(f"| {k} | {runs} | {errs} | {worst * 1000:.1f} ms |")
EOF
load=$!
sleep 1
failed=0
times=()
serving_pid() {
    "$work/cachefs-a" status "$mnt" --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])' 2>/dev/null
}
for i in $(seq 1 "$restarts"); do
    if [ $((i % 2)) = 1 ]; then bin=$work/cachefs-b; else bin=$work/cachefs-a; fi
    s=$(date +%s%N)
    if [ "$mode" = kill ]; then
        old=$(serving_pid)
        date +%s.%N >>"$work/kills"
        kill -KILL "$old"
        # Answered by the successor within 10 s, or counted as failed.
        new=$old
        for _ in $(seq 1 1000); do
            new=$(serving_pid)
            [ -n "$new" ] && [ "$new" != "$old" ] && break
            sleep 0.01
        done
        [ -n "$new" ] && [ "$new" != "$old" ] || failed=$((failed + 1))
    else
        "$work/cachefs-a" restart "$mnt" --binary "$bin" >/dev/null || failed=$((failed + 1))
    fi
    times+=($((($(date +%s%N) - s) / 1000000)))
    sleep "$gap"
done
sleep 1
rm -f "$work/loading"
wait "$load"
rm -f "$work/watching"
wait
echo "$mode: $restarts, failed: $failed, each (ms, end to end): ${times[*]}"
if [ "$mode" = kill ]; then
    echo "failovers counted by the daemon: $("$work/cachefs-a" status "$mnt" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["failovers"])')"
    # From each kill to its successor's "took over" line in the log (the successor logs
    # there too): the time the connection had no daemon.
    python3 - "$work/kills" "$work/daemon.log" <<'EOF'
import re, sys, datetime
kills = [float(l) for l in open(sys.argv[1])]
took = {}
for l in open(sys.argv[2]):
    m = re.match(r"(\S+Z) .*failover (\d+): took over", l)
    if m:
        t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        took[int(m.group(2))] = t
gaps = [(took[i + 1] - k) * 1000 for i, k in enumerate(kills) if i + 1 in took]
print("kill to successor serving (ms): " + " ".join(f"{g:.0f}" for g in gaps)
      + f"; worst {max(gaps):.0f}, {len(gaps)} of {len(kills)} logged")
EOF
fi
echo "served by this daemon: $("$work/cachefs-a" status "$mnt" --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["source_read_bytes"] >> 20, "MiB from SOURCE,", d["passthrough_opens"], "passthrough opens")')"
echo "mount left mountinfo: $([ -s "$work/left" ] && echo "yes ($(wc -l <"$work/left") times)" || echo no)"
cat "$work/load.out"

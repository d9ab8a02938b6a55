#!/usr/bin/env python3
"""Test tree for scripts/bench-index.sh: N small files in SOURCE and a valid copy of each
in CACHE/data, as if every one had been promoted.

    bench-index-gen.py SOURCE CACHE N [FILE_SIZE]

Paths look like "Show 042/Season 03/Show 042 - S03E017 - The Long Night.mkv": shows of
10 seasons of 100 episodes (1000 leaf directories of 100 files at N = 100000), with a
title of varying length so that paths are 49-58 bytes long.

Each copy gets the provenance xattr the daemon checks, `user.cachefs.src` =
"v2 <size> <mtime_sec> <mtime_nsec> <ino> <ctime_sec> <ctime_nsec>" of its source file (fstat of the source after
its last write). Work is split over as many processes as there are CPUs, by show.

Prints one line of JSON: entries, path bytes (total, mean, min, max), file bytes, and
the path of the first file ("sample").
"""

import json
import multiprocessing
import os
import sys

XATTR = "user.cachefs.src"
PER_SEASON = 100
SEASONS = 10
PER_SHOW = PER_SEASON * SEASONS
TITLES = [
    "Pilot",
    "Homecoming",
    "The Return",
    "Crossroads",
    "The Long Night",
    "Reunion",
    "Endgame",
    "Old Friends",
    "Exodus",
    "No Way Back",
]


def rel_path(i):
    show = i // PER_SHOW
    season = (i // PER_SEASON) % SEASONS + 1
    ep = i % PER_SEASON + 1
    title = TITLES[(i * 7 + show) % len(TITLES)]
    d = f"Show {show:03d}/Season {season:02d}"
    return d, f"{d}/Show {show:03d} - S{season:02d}E{ep:03d} - {title}.mkv"


def make_show(args):
    source, data, show, n, size = args
    payload = (f"cachefs bench {show}\n".encode() * (size // 16 + 1))[:size]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    made = 0
    path_bytes = 0
    lo, hi = 1 << 30, 0
    last_dir = None
    for i in range(show * PER_SHOW, min(n, (show + 1) * PER_SHOW)):
        d, rel = rel_path(i)
        if d != last_dir:
            os.makedirs(os.path.join(source, d), exist_ok=True)
            os.makedirs(os.path.join(data, d), mode=0o700, exist_ok=True)
            last_dir = d
        fd = os.open(os.path.join(source, rel), flags, 0o644)
        os.write(fd, payload)
        st = os.fstat(fd)
        os.close(fd)
        sec, nsec = divmod(st.st_mtime_ns, 1_000_000_000)
        csec, cnsec = divmod(st.st_ctime_ns, 1_000_000_000)
        prov = f"v2 {st.st_size} {sec} {nsec} {st.st_ino} {csec} {cnsec}".encode()
        fd = os.open(os.path.join(data, rel), flags, 0o644)
        os.write(fd, payload)
        os.setxattr(fd, XATTR, prov)
        os.close(fd)
        b = len(rel.encode())
        path_bytes += b
        lo, hi = min(lo, b), max(hi, b)
        made += 1
    return made, path_bytes, lo, hi


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    source, cache, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    size = int(sys.argv[4]) if len(sys.argv) == 5 else 1024
    data = os.path.join(cache, "data")
    os.makedirs(source, exist_ok=True)
    os.makedirs(data, mode=0o700, exist_ok=True)
    shows = (n + PER_SHOW - 1) // PER_SHOW
    jobs = [(source, data, s, n, size) for s in range(shows)]
    with multiprocessing.Pool(os.cpu_count() or 1) as pool:
        parts = pool.map(make_show, jobs, chunksize=1)
    made = sum(p[0] for p in parts)
    total = sum(p[1] for p in parts)
    if made != n:
        sys.exit(f"made {made} files, wanted {n}")
    print(
        json.dumps(
            {
                "entries": made,
                "path_bytes": total,
                "path_mean": total / made,
                "path_min": min(p[2] for p in parts),
                "path_max": max(p[3] for p in parts),
                "file_bytes": made * size,
                "sample": rel_path(0)[1],
            }
        )
    )


if __name__ == "__main__":
    main()

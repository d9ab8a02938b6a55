#!/usr/bin/env python3
"""Library tree for scripts/scale.sh and the descriptor-bound tests: N episode files.

    scale-gen.py SOURCE N

Paths look like "Show 0042/Season 03/Show 0042 - S03E17.mkv": shows of 10 seasons of 50
episodes (2,000 shows at N = 1,000,000; the last show may be partial). Files are sparse,
with sizes of 100-1,100 MB that differ per file, so a scan's `%s` column means something.
Work is split over as many processes as there are CPUs, by show.

Prints one line of JSON: files, directories, and the path of the first file ("sample").
"""

import json
import multiprocessing
import os
import sys

SEASONS = 10
EPISODES = 50
PER_SHOW = SEASONS * EPISODES


def show_files(args):
    root, show, count = args
    made = 0
    dirs = 1
    sdir = os.path.join(root, f"Show {show:04d}")
    os.makedirs(sdir, exist_ok=True)
    for season in range(1, SEASONS + 1):
        if made >= count:
            break
        d = os.path.join(sdir, f"Season {season:02d}")
        os.makedirs(d, exist_ok=True)
        dirs += 1
        for ep in range(1, EPISODES + 1):
            if made >= count:
                break
            p = os.path.join(d, f"Show {show:04d} - S{season:02d}E{ep:02d}.mkv")
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(fd, (100 + (show * 7 + season * 13 + ep * 31) % 1000) << 20)
            os.close(fd)
            made += 1
    return made, dirs


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: scale-gen.py SOURCE N")
    root, n = sys.argv[1], int(sys.argv[2])
    os.makedirs(root, exist_ok=True)
    jobs = []
    left, show = n, 1
    while left > 0:
        jobs.append((root, show, min(left, PER_SHOW)))
        left -= PER_SHOW
        show += 1
    with multiprocessing.Pool(os.cpu_count() or 2) as pool:
        results = pool.map(show_files, jobs, chunksize=8)
    files = sum(r[0] for r in results)
    dirs = sum(r[1] for r in results)
    print(
        json.dumps(
            {
                "files": files,
                "directories": dirs,
                "sample": "Show 0001/Season 01/Show 0001 - S01E01.mkv",
            }
        )
    )


if __name__ == "__main__":
    main()

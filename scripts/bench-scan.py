#!/usr/bin/env python3
"""The media library and the missing-name prober of scripts/bench-scan.sh.

    bench-scan.py make ROOT        builds the library under ROOT, prints one line of JSON
    bench-scan.py probe ROOT N     stats N missing subtitle names, prints the seconds

The library is what a media server scans: SHOWS shows of SEASONS seasons of EPISODES
episodes, "Show 042/Season 03/Show 042 - S03E017.mkv", sparse files of 100-1,100 MB whose
sizes differ (so a scan's `%s` column means something), with the small files a scraper
leaves beside them: tvshow.nfo, poster.jpg and fanart.jpg in each show, a poster per
season. One more show, "Daily Show", has a single season of BIG_DIR episodes: the large
directory that `ls -lR` lists.

The prober's names are "<episode>.srt" next to N real episodes spread evenly over the
library (what a player asks for before it plays a file). Every stat must fail with
ENOENT; anything else is an error. It is timed in process around the loop alone, so the
interpreter's start costs nothing, and the same way on every system measured.
"""

import errno
import json
import os
import sys
import time

SHOWS = 100
SEASONS = 5
EPISODES = 100
BIG_DIR = 1500
BIG_SHOW = "Daily Show"
BIG_SEASON = "Season 2024"
JPG_BYTES = 8192


def episode(show, season, ep):
    """The path of one regular episode, without its extension."""
    name = f"Show {show:03d}"
    return f"{name}/Season {season:02d}/{name} - S{season:02d}E{ep:03d}"


def sparse(path, size):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def small(path, data):
    with open(path, "wb") as f:
        f.write(data)


def make(root):
    files = 0
    dirs = 0
    jpg = bytes(range(256)) * (JPG_BYTES // 256)
    for show in range(1, SHOWS + 1):
        sdir = os.path.join(root, f"Show {show:03d}")
        os.makedirs(sdir)
        dirs += 1
        nfo = f"<tvshow><title>Show {show:03d}</title></tvshow>\n"
        small(os.path.join(sdir, "tvshow.nfo"), nfo.encode())
        small(os.path.join(sdir, "poster.jpg"), jpg)
        small(os.path.join(sdir, "fanart.jpg"), jpg)
        files += 3
        for season in range(1, SEASONS + 1):
            os.makedirs(os.path.join(sdir, f"Season {season:02d}"))
            small(os.path.join(sdir, f"season{season:02d}-poster.jpg"), jpg)
            dirs += 1
            files += 1
            for ep in range(1, EPISODES + 1):
                size = (100 + (show * 7 + season * 13 + ep * 31) % 1000) << 20
                sparse(os.path.join(root, episode(show, season, ep) + ".mkv"), size)
                files += 1
    big = os.path.join(root, BIG_SHOW, BIG_SEASON)
    os.makedirs(big)
    dirs += 2
    nfo = f"<tvshow><title>{BIG_SHOW}</title></tvshow>\n"
    small(os.path.join(root, BIG_SHOW, "tvshow.nfo"), nfo.encode())
    files += 1
    for ep in range(1, BIG_DIR + 1):
        name = f"{BIG_SHOW} - S2024E{ep:04d}.mkv"
        sparse(os.path.join(big, name), (200 + ep % 300) << 20)
        files += 1
    print(
        json.dumps(
            {
                "files": files,
                "directories": dirs,
                "episodes": SHOWS * SEASONS * EPISODES,
                "big_dir": f"{BIG_SHOW}/{BIG_SEASON}",
                "big_dir_files": BIG_DIR,
            }
        )
    )


def probe(root, n):
    total = SHOWS * SEASONS * EPISODES
    if not 1 <= n <= total:
        sys.exit(f"probe: N must be 1..{total}")
    paths = []
    for i in range(n):
        k = i * total // n
        show, rest = divmod(k, SEASONS * EPISODES)
        season, ep = divmod(rest, EPISODES)
        paths.append(os.path.join(root, episode(show + 1, season + 1, ep + 1) + ".srt"))
    # Twice: a scanner probes the same missing names at every rescan, so the second pass
    # is what a rescan pays; the first is what the first scan pays.
    times = []
    for _ in range(2):
        missing = 0
        other = []
        t0 = time.perf_counter()
        for p in paths:
            try:
                os.stat(p)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    missing += 1
                else:
                    other.append(f"{p}: {e}")
            else:
                other.append(f"{p}: exists")
        times.append(time.perf_counter() - t0)
        if other or missing != n:
            sys.exit(f"probe: {missing} of {n} gave ENOENT; first other outcome: {other[:1]}")
    print(f"{times[0]:.6f} {times[1]:.6f}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "probe":
        probe(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: bench-scan.py make ROOT | bench-scan.py probe ROOT N")


if __name__ == "__main__":
    main()
